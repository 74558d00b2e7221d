"""Integration tests for the OpenTelemetry Collector in collector/.

The session builds (or reuses) the collector binary with collector/build.sh, starts it with
collector/config.yaml on free 127.0.0.1 ports, and sends metrics and a span to it with the
Python OpenTelemetry SDK over OTLP/HTTP. A small gRPC server in this file replaces Tempo.
The same SDK meter provider also feeds an in-process PrometheusMetricReader, configured
like the app's, so the tests compare the collector's Prometheus output with the in-process one.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.tools import require_tool, running_in_ci

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "collector" / "build.sh"
CONFIG_FILE = REPO_ROOT / "collector" / "config.yaml"

# A cold build (ocb install, module download, compile) took about 2.5 minutes on 2 cores.
BUILD_TIMEOUT_SECONDS = 900
STARTUP_TIMEOUT_SECONDS = 30
DELIVERY_TIMEOUT_SECONDS = 15

SERVICE_NAME = "autobot-demo"
SERVICE_INSTANCE_ID = "collector-test-1"
HISTOGRAM_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# The `le` values as both exporters write them in the OpenMetrics format.
EXPECTED_LE_VALUES = ["0.001", "0.01", "0.1", "0.5", "1.0", "2.0", "5.0", "10.0", "30.0", "+Inf"]
# Prometheus prefers OpenMetrics when it scrapes, so ask for it the same way.
OPENMETRICS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;charset=utf-8,text/plain;version=0.0.4;q=0.5"
)
# Labels that the collector derives from the resource and Prometheus sets on every scrape.
SCRAPE_LABELS = {"job", "instance"}

TIMEOUT_ATTRIBUTES = {"operation_type": "redis.get", "database": "main", "status": "timeout"}
DURATION_ATTRIBUTES = {"operation_type": "redis.get", "database": "main"}
SATURATION_ATTRIBUTES = {"database": "cache"}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_get(url: str, accept: str | None = None) -> tuple[str, str]:
    """Return the body and the Content-Type of a GET request to ``url``."""
    headers = {"Accept": accept} if accept else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        body: bytes = response.read()
        return body.decode(), response.headers.get("Content-Type", "")


def samples_named(openmetrics_text: str, sample_name: str) -> list[Sample]:
    """Return every sample called ``sample_name`` in an OpenMetrics exposition."""
    return [
        sample
        for family in text_string_to_metric_families(openmetrics_text)
        for sample in family.samples
        if sample.name == sample_name
    ]


def series_signature(openmetrics_text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Return (sample name, labels without job/instance) for every sample of the exposition."""
    signature = set()
    for family in text_string_to_metric_families(openmetrics_text):
        for sample in family.samples:
            labels = tuple(
                sorted((k, v) for k, v in sample.labels.items() if k not in SCRAPE_LABELS)
            )
            signature.add((sample.name, labels))
    return signature


@pytest.fixture(scope="session")
def collector_binary() -> Path:
    """Build the collector with collector/build.sh, or reuse the cached binary."""
    require_tool("go", "install Go 1.26 and put its bin directory on PATH")
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"collector/build.sh failed with exit code {result.returncode}:\n"
            f"{result.stderr[-4000:]}",
            pytrace=False,
        )
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class TempoStub:
    """A gRPC OTLP trace receiver that stores each ExportTraceServiceRequest it receives."""

    endpoint: str
    requests: queue.Queue[trace_service_pb2.ExportTraceServiceRequest]


@pytest.fixture(scope="module")
def tempo_stub() -> Iterator[TempoStub]:
    """Run an OTLP/gRPC trace receiver on 127.0.0.1 in place of Tempo."""
    try:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
    except ImportError as exc:
        message = f"grpcio is not installed, so the Tempo stub cannot run: {exc}"
        if running_in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    received: queue.Queue[trace_service_pb2.ExportTraceServiceRequest] = queue.Queue()

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(
            self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
        ) -> trace_service_pb2.ExportTraceServiceResponse:
            received.put(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield TempoStub(endpoint=f"127.0.0.1:{port}", requests=received)
    server.stop(grace=None)


@dataclass
class RunningCollector:
    """Addresses of a collector process started for the tests."""

    otlp_http_url: str
    prometheus_url: str


def wait_until_healthy(process: subprocess.Popen[bytes], health_url: str, log_file: Path) -> None:
    """Poll the health_check extension until it returns 200, or fail with the collector log."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"collector exited with code {process.returncode} during startup:\n"
                f"{log_file.read_text()[-4000:]}",
                pytrace=False,
            )
        try:
            http_get(health_url)
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    pytest.fail(
        f"collector health check {health_url} did not return 200 within "
        f"{STARTUP_TIMEOUT_SECONDS} s; collector log:\n{log_file.read_text()[-4000:]}",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def collector(
    collector_binary: Path, tempo_stub: TempoStub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningCollector]:
    """Run collector/config.yaml with every endpoint on a free 127.0.0.1 port."""
    ports = {name: free_port() for name in ("grpc", "http", "prometheus", "health", "telemetry")}
    env = {
        **os.environ,
        "AUTOBOT_COLLECTOR_OTLP_GRPC": f"127.0.0.1:{ports['grpc']}",
        "AUTOBOT_COLLECTOR_OTLP_HTTP": f"127.0.0.1:{ports['http']}",
        "AUTOBOT_COLLECTOR_PROMETHEUS": f"127.0.0.1:{ports['prometheus']}",
        "AUTOBOT_COLLECTOR_HEALTH": f"127.0.0.1:{ports['health']}",
        "AUTOBOT_COLLECTOR_TELEMETRY_HOST": "127.0.0.1",
        "AUTOBOT_COLLECTOR_TELEMETRY_PORT": str(ports["telemetry"]),
        "AUTOBOT_TEMPO_OTLP_ENDPOINT": tempo_stub.endpoint,
    }
    log_file = tmp_path_factory.mktemp("collector") / "collector.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [str(collector_binary), "--config", str(CONFIG_FILE)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_healthy(process, f"http://127.0.0.1:{ports['health']}/", log_file)
        yield RunningCollector(
            otlp_http_url=f"http://127.0.0.1:{ports['http']}",
            prometheus_url=f"http://127.0.0.1:{ports['prometheus']}/metrics",
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class SentTelemetry:
    """What the SDK sent, and both Prometheus expositions of it."""

    trace_id: str
    collector_text: str
    in_process_text: str


def scrape_until_complete(url: str, sample_names: list[str]) -> str:
    """Scrape ``url`` as OpenMetrics until every name in ``sample_names`` appears."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
    text = ""
    while time.monotonic() < deadline:
        text, content_type = http_get(url, accept=OPENMETRICS_ACCEPT)
        if not content_type.startswith("application/openmetrics-text"):
            pytest.fail(
                f"{url} returned Content-Type {content_type!r}, expected OpenMetrics; "
                "check enable_open_metrics in collector/config.yaml",
                pytrace=False,
            )
        if all(samples_named(text, name) for name in sample_names):
            return text
        time.sleep(0.2)
    pytest.fail(
        f"{url} did not show all of {sample_names} within {DELIVERY_TIMEOUT_SECONDS} s; "
        f"last scrape:\n{text}",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def sent(collector: RunningCollector) -> Iterator[SentTelemetry]:
    """Record the contract instruments once, export them by OTLP/HTTP and scrape both sides."""
    # Resource(...) rather than Resource.create(...), so that OTEL_* variables of the
    # machine running the tests cannot add labels to target_info.
    resource = Resource(
        {
            "service.name": SERVICE_NAME,
            "service.instance.id": SERVICE_INSTANCE_ID,
            "telemetry.sdk.language": "python",
        }
    )
    registry = CollectorRegistry()
    in_process_reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
    # An hour-long interval, so only the explicit force_flush exports.
    otlp_reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{collector.otlp_http_url}/v1/metrics"),
        export_interval_millis=3_600_000,
    )
    duration_view = View(
        instrument_name="autobot.operation.duration",
        aggregation=ExplicitBucketHistogramAggregation(boundaries=HISTOGRAM_BUCKETS),
    )
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=[in_process_reader, otlp_reader],
        views=[duration_view],
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{collector.otlp_http_url}/v1/traces"))
    )

    meter = meter_provider.get_meter("autobot_otel.tests")
    tracer = tracer_provider.get_tracer("autobot_otel.tests")
    timeouts = meter.create_counter("autobot.timeout", unit="{timeout}")
    duration = meter.create_histogram("autobot.operation.duration", unit="s")
    saturation = meter.create_gauge("autobot.redis.pool.saturation_ratio", unit="1")

    # Recording inside a sampled span attaches it as an exemplar to the counter and histogram.
    with tracer.start_as_current_span("redis.get") as span:
        timeouts.add(1, TIMEOUT_ATTRIBUTES)
        duration.record(0.2, DURATION_ATTRIBUTES)
        trace_id = format(span.get_span_context().trace_id, "032x")
    saturation.set(0.25, SATURATION_ATTRIBUTES)

    try:
        assert otlp_reader.force_flush(timeout_millis=10_000)
        assert tracer_provider.force_flush(timeout_millis=10_000)
        collector_text = scrape_until_complete(
            collector.prometheus_url,
            [
                "autobot_timeout_total",
                "autobot_operation_duration_seconds_count",
                "autobot_redis_pool_saturation_ratio",
            ],
        )
        in_process_text = openmetrics_exposition.generate_latest(registry).decode()
        yield SentTelemetry(
            trace_id=trace_id, collector_text=collector_text, in_process_text=in_process_text
        )
    finally:
        # Shut the SDK down while the collector still runs, so the final export succeeds.
        meter_provider.shutdown()
        tracer_provider.shutdown()


def test_build_script_reuses_cached_binary(collector_binary: Path) -> None:
    """A second build.sh run prints the same absolute path without rebuilding."""
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=60, check=True
    )
    elapsed = time.monotonic() - started

    assert result.stdout.strip().splitlines()[-1] == str(collector_binary)
    assert collector_binary.is_absolute()
    assert os.access(collector_binary, os.X_OK)
    assert "using cached collector" in result.stderr
    assert elapsed < 10


def test_validate_accepts_config(collector_binary: Path) -> None:
    """otelcol validate accepts collector/config.yaml with its default variables."""
    result = subprocess.run(
        [str(collector_binary), "validate", "--config", str(CONFIG_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr


def test_config_defaults_listen_on_loopback() -> None:
    """Each AUTOBOT_COLLECTOR_* default in config.yaml is pinned, listen addresses on 127.0.0.1."""
    defaults = dict(
        re.findall(r"\$\{env:(AUTOBOT_COLLECTOR_\w+):-([^}]*)\}", CONFIG_FILE.read_text())
    )

    assert defaults == {
        "AUTOBOT_COLLECTOR_HEALTH": "127.0.0.1:13133",
        "AUTOBOT_COLLECTOR_OTLP_GRPC": "127.0.0.1:4317",
        "AUTOBOT_COLLECTOR_OTLP_HTTP": "127.0.0.1:4318",
        "AUTOBOT_COLLECTOR_MEMORY_LIMIT_MIB": "512",
        "AUTOBOT_COLLECTOR_PROMETHEUS": "127.0.0.1:8889",
        "AUTOBOT_COLLECTOR_TELEMETRY_HOST": "127.0.0.1",
        "AUTOBOT_COLLECTOR_TELEMETRY_PORT": "8888",
    }


def test_timeout_counter_has_contract_labels(sent: SentTelemetry) -> None:
    """autobot_timeout_total carries exactly operation_type, database and status."""
    samples = samples_named(sent.collector_text, "autobot_timeout_total")

    assert len(samples) == 1
    assert set(samples[0].labels) - SCRAPE_LABELS == {"operation_type", "database", "status"}
    assert {k: v for k, v in samples[0].labels.items() if k not in SCRAPE_LABELS} == (
        TIMEOUT_ATTRIBUTES
    )
    assert samples[0].value == 1.0


def test_duration_histogram_has_contract_buckets(sent: SentTelemetry) -> None:
    """autobot_operation_duration_seconds_bucket has exactly the contract `le` values."""
    buckets = samples_named(sent.collector_text, "autobot_operation_duration_seconds_bucket")

    assert [sample.labels["le"] for sample in buckets] == EXPECTED_LE_VALUES
    for sample in buckets:
        assert set(sample.labels) - SCRAPE_LABELS == {"operation_type", "database", "le"}
    # 0.2 s falls into the 0.5 s bucket and every bucket above it.
    assert [sample.value for sample in buckets] == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]


def test_saturation_gauge_has_database_label(sent: SentTelemetry) -> None:
    """autobot_redis_pool_saturation_ratio carries only the database label."""
    samples = samples_named(sent.collector_text, "autobot_redis_pool_saturation_ratio")

    assert len(samples) == 1
    assert set(samples[0].labels) - SCRAPE_LABELS == {"database"}
    assert samples[0].labels["database"] == "cache"
    assert samples[0].value == 0.25


def test_job_and_instance_come_from_resource(sent: SentTelemetry) -> None:
    """The collector sets job from service.name and instance from service.instance.id."""
    samples = samples_named(sent.collector_text, "autobot_timeout_total")

    assert samples[0].labels["job"] == SERVICE_NAME
    assert samples[0].labels["instance"] == SERVICE_INSTANCE_ID


def test_collector_series_match_in_process_exporter(sent: SentTelemetry) -> None:
    """Every sample name and label set, target_info included, matches the in-process one."""
    collector_series = series_signature(sent.collector_text)
    in_process_series = series_signature(sent.in_process_text)

    assert collector_series - in_process_series == set()
    assert in_process_series - collector_series == set()
    # 1 counter, 10 buckets with _sum and _count, 1 gauge and target_info.
    assert len(collector_series) == 15


def test_target_info_keeps_service_attributes(sent: SentTelemetry) -> None:
    """target_info from the collector still carries service_name and service_instance_id."""
    samples = samples_named(sent.collector_text, "target_info")

    assert len(samples) == 1
    assert samples[0].labels["service_name"] == SERVICE_NAME
    assert samples[0].labels["service_instance_id"] == SERVICE_INSTANCE_ID


def test_exemplars_carry_trace_id(sent: SentTelemetry) -> None:
    """The counter and the 0.5 s bucket keep the span's trace_id as an exemplar."""
    counter_exemplar = samples_named(sent.collector_text, "autobot_timeout_total")[0].exemplar
    buckets = samples_named(sent.collector_text, "autobot_operation_duration_seconds_bucket")
    exemplars_by_le = {
        sample.labels["le"]: sample.exemplar for sample in buckets if sample.exemplar is not None
    }

    assert counter_exemplar is not None
    assert counter_exemplar.labels["trace_id"] == sent.trace_id
    assert list(exemplars_by_le) == ["0.5"]
    assert exemplars_by_le["0.5"].labels["trace_id"] == sent.trace_id
    assert exemplars_by_le["0.5"].value == 0.2


def test_traces_reach_tempo_endpoint(sent: SentTelemetry, tempo_stub: TempoStub) -> None:
    """The span sent over OTLP/HTTP arrives at the Tempo endpoint over OTLP/gRPC."""
    request = tempo_stub.requests.get(timeout=DELIVERY_TIMEOUT_SECONDS)
    resource_spans = request.resource_spans[0]
    span = resource_spans.scope_spans[0].spans[0]
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}

    assert span.name == "redis.get"
    assert span.trace_id.hex() == sent.trace_id
    assert resource["service.name"] == SERVICE_NAME
