"""Shared fixtures: clean configuration per test, in-memory telemetry, a real Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest

from autobot_otel import _breaker_registry, _config, _operation, _telemetry
from autobot_otel.demo.redis_server import RedisServer
from tests.tools import require_tool


@pytest.fixture(autouse=True)
def clean_configuration(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Give each test the packaged defaults only: no AUTOBOT_* variables, fresh breakers."""
    for name in list(os.environ):
        if name.upper().startswith("AUTOBOT_"):
            monkeypatch.delenv(name)
    _breaker_registry._reset_for_tests()
    _operation._reset_for_tests()
    _config.configure()
    yield
    monkeypatch.undo()
    _breaker_registry._reset_for_tests()
    _operation._reset_for_tests()
    _config.configure()


@dataclass
class Telemetry:
    """In-memory views of what the package recorded during one test."""

    reader: InMemoryMetricReader
    exporter: InMemorySpanExporter
    handle: _telemetry.TelemetryHandle

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """Return finished spans, optionally only those called ``name``."""
        spans = list(self.exporter.get_finished_spans())
        return [span for span in spans if name is None or span.name == name]

    def points(self, metric: str) -> list[Any]:
        """Return the data points of OpenTelemetry metric ``metric`` (dotted name)."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for item in scope_metrics.metrics:
                    if item.name == metric:
                        found.extend(item.data.data_points)
        return found

    def counted(self, metric: str) -> list[Any]:
        """Return the points of ``metric`` with a value above 0.

        Counter series of each operation are created at 0 when it is first used, so
        "nothing was counted" means no point above 0, not no point at all.
        """
        return [point for point in self.points(metric) if getattr(point, "value", 0) > 0]

    def value(self, metric: str, **attributes: str) -> float:
        """Return the value (or histogram count) of the point with exactly ``attributes``."""
        for point in self.points(metric):
            if dict(point.attributes) == attributes:
                return float(getattr(point, "count", None) or getattr(point, "value", 0))
        return 0.0

    def scrape(self) -> str:
        """Return the Prometheus text exposition, as /monitoring/metrics serves it."""
        return generate_latest(self.handle.prometheus_registry).decode()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """Set up telemetry with in-memory readers, without touching global providers."""
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    handle = _telemetry.setup_telemetry(
        "autobot-test",
        metric_readers=[reader],
        span_processors=[SimpleSpanProcessor(exporter)],
        set_global=False,
    )
    yield Telemetry(reader, exporter, handle)
    handle.shutdown()


@pytest.fixture(scope="session")
def redis_server_process() -> Iterator[RedisServer]:
    """One real redis-server for the session, on a free loopback port."""
    require_tool("redis-server", "apt-get install redis-server")
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(redis_server_process: RedisServer) -> RedisServer:
    """The session's redis-server, running, unpaused and empty."""
    server = redis_server_process
    if not server.ping():
        server.start()
    # CLIENT UNPAUSE waits out a pause left by an earlier test, so allow for it.
    server.command("CLIENT", "UNPAUSE", timeout=15)
    server.command("FLUSHALL")
    server.command("CONFIG", "RESETSTAT")
    return server
