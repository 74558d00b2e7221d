"""Run the autobot-otel observability stack on this machine, without Docker.

It starts the same pieces as compose.yml, each as a local process listening on 127.0.0.1:

- redis-server, private and disposable;
- the OpenTelemetry Collector built from collector/ (``collector/build.sh``), with
  collector/config.yaml;
- Prometheus with ``--enable-feature=exemplar-storage``, a copy of
  config/prometheus/prometheus.yml whose targets are the local ports, and the rule files
  of config/prometheus/rules/;
- Alertmanager with the configuration that config/alertmanager/render_config.py writes;
- the demo service (``autobot-otel demo``), which sends OTLP to the collector;
- an OTLP/gRPC trace sink in place of Tempo, and an alert webhook receiver that prints
  each notification, unless ``--tempo-endpoint`` or ``AUTOBOT_ALERT_WEBHOOK_URL`` name
  real ones.

Tempo and Grafana are not Debian packages, so the stack does not start them;
docs/local-stack.md explains how to point them at it.

Usage (scripts/stack.sh first installs what is missing, then runs this file)::

    bash scripts/stack.sh                                 # until Ctrl-C
    .venv/bin/python scripts/stack.py --duration 60 --fault stall

``Stack`` is the importable core: ``Stack(StackSettings(...)).start()`` returns once
every server is ready, and ``stop()`` stops them and removes the temporary directory.
tests/integration/test_e2e.py uses it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import yaml

from autobot_otel.demo.redis_server import RedisServer, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
COLLECTOR_BUILD_SCRIPT = REPO_ROOT / "collector" / "build.sh"
COLLECTOR_CONFIG = REPO_ROOT / "collector" / "config.yaml"
PROMETHEUS_CONFIG = REPO_ROOT / "config" / "prometheus" / "prometheus.yml"
RULES_DIR = REPO_ROOT / "config" / "prometheus" / "rules"
ALERTMANAGER_RENDER_SCRIPT = REPO_ROOT / "config" / "alertmanager" / "render_config.py"

# A cold collector build takes minutes (collector/README.md gives a measured time), and a
# cached one returns at once.
COLLECTOR_BUILD_TIMEOUT_SECONDS = 900
READY_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 15
# Spans the trace sink keeps; the oldest are dropped first.
TRACE_SINK_CAPACITY = 200_000
WEBHOOK_CAPACITY = 1_000
LOG_TAIL_CHARACTERS = 3_000

# The listening port of each server, by name, with what listens there.
PORT_NAMES = {
    "redis": "redis-server",
    "otlp_grpc": "the collector's OTLP/gRPC receiver",
    "otlp_http": "the collector's OTLP/HTTP receiver",
    "collector_metrics": "the collector's Prometheus exporter",
    "collector_health": "the collector's health check",
    "collector_telemetry": "the collector's own metrics",
    "prometheus": "Prometheus",
    "alertmanager": "Alertmanager",
    "demo": "the demo service",
}


class StackError(RuntimeError):
    """A server of the stack could not be configured, started or reached."""


# --- stand-ins for Tempo and for an alert receiver -------------------------------------


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the trace sink received it, with its attributes as plain values."""

    trace_id: str
    span_id: str
    name: str
    # OTLP status code: 0 unset, 1 ok, 2 error.
    status_code: int
    status_message: str
    attributes: Mapping[str, Any]
    service_name: str


STATUS_CODE_ERROR = 2


def _any_value(value: Any) -> Any:
    """Convert an OTLP AnyValue to the Python value it holds."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _any_value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind)


class TraceSink:
    """An OTLP/gRPC trace receiver on 127.0.0.1 that keeps the spans it receives.

    It replaces Tempo, so that the collector's trace pipeline delivers somewhere and tests
    can see what arrived. It needs grpcio, which the package's ``test`` extra has.
    """

    def __init__(self, port: int = 0, capacity: int = TRACE_SINK_CAPACITY) -> None:
        import grpc  # type: ignore[import-untyped]
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        self._spans: deque[ReceivedSpan] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.received_count = 0
        sink = self

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                sink._store(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self._executor = futures.ThreadPoolExecutor(max_workers=2)
        self._server = grpc.server(self._executor)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            TraceService(), self._server
        )
        self.port: int = self._server.add_insecure_port(f"127.0.0.1:{port}")
        if self.port == 0:
            raise StackError(f"the trace sink could not listen on 127.0.0.1:{port}")

    @property
    def endpoint(self) -> str:
        """The host:port that the collector's OTLP/gRPC exporter sends to."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)
        self._executor.shutdown(wait=True)

    def spans(self) -> list[ReceivedSpan]:
        """Return a copy of the spans kept so far, oldest first."""
        with self._lock:
            return list(self._spans)

    def _store(self, request: Any) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {
                item.key: _any_value(item.value) for item in resource_spans.resource.attributes
            }
            service_name = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            name=span.name,
                            status_code=span.status.code,
                            status_message=span.status.message,
                            attributes={
                                item.key: _any_value(item.value) for item in span.attributes
                            },
                            service_name=service_name,
                        )
                    )
        with self._lock:
            self._spans.extend(received)
            self.received_count += len(received)


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that keeps the Alertmanager webhook payloads it receives.

    ``on_notification``, if given, is called with each payload from the server's thread.
    """

    def __init__(
        self,
        port: int = 0,
        on_notification: Callable[[dict[str, Any]], None] | None = None,
        capacity: int = WEBHOOK_CAPACITY,
    ) -> None:
        self._payloads: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                try:
                    payload = json.loads(body)
                except json.JSONDecodeError:
                    self.send_error(400, "the body is not JSON")
                    return
                receiver._store(payload)
                if on_notification is not None:
                    on_notification(payload)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                # Alertmanager posts often; the payloads are what matters, not access logs.
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="alert-webhook", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def payloads(self) -> list[dict[str, Any]]:
        """Return a copy of the payloads received so far, oldest first."""
        with self._lock:
            return list(self._payloads)

    def _store(self, payload: dict[str, Any]) -> None:
        with self._lock:
            self._payloads.append(payload)


def print_notification(payload: dict[str, Any]) -> None:
    """Print one line per alert of an Alertmanager webhook payload."""
    for alert in payload.get("alerts", []):
        labels = dict(alert.get("labels", {}))
        name = labels.pop("alertname", "?")
        details = ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))
        print(f"alert {alert.get('status', '?')}: {name} ({details})", flush=True)


# --- configuration files ---------------------------------------------------------------


@dataclass
class StackSettings:
    """Settings of a local stack: ports, receivers, load and telemetry cadence."""

    # Port of each server, keyed by a name in PORT_NAMES; a missing name gets a free port.
    ports: Mapping[str, int] = field(default_factory=dict)
    # Prometheus scrape and rule evaluation interval, a Prometheus duration such as "1s".
    scrape_interval: str = "15s"
    # How often the demo exports metrics by OTLP, and how long its spans wait in the
    # batch processor (OTEL_METRIC_EXPORT_INTERVAL and OTEL_BSP_SCHEDULE_DELAY), in ms.
    export_interval_ms: int = 15_000
    span_batch_delay_ms: int = 5_000
    # Concurrent clients of the demo's load driver.
    demo_concurrency: int = 16
    # Replacement `for:` durations by alert name, written into a copy of the rules.
    alert_for: Mapping[str, str] = field(default_factory=dict)
    # Tempo's OTLP/gRPC address; None starts the built-in trace sink.
    tempo_endpoint: str | None = None
    # Alertmanager's webhook URL; None starts the built-in webhook receiver.
    webhook_url: str | None = None
    # Called with each payload that the built-in webhook receiver gets.
    on_notification: Callable[[dict[str, Any]], None] | None = None
    # The collector binary; None takes AUTOBOT_COLLECTOR_BIN, else runs collector/build.sh.
    collector_binary: Path | None = None


def write_rule_files(directory: Path, alert_for: Mapping[str, str]) -> list[Path]:
    """Copy the rule files into ``directory``, with the `for:` of each alert in ``alert_for``."""
    directory.mkdir(parents=True, exist_ok=True)
    remaining = dict(alert_for)
    written = []
    for source in sorted(RULES_DIR.glob("*.yml")):
        target = directory / source.name
        if not alert_for:
            # An unchanged copy keeps the comments, which a YAML round trip would drop.
            shutil.copyfile(source, target)
        else:
            document = yaml.safe_load(source.read_text(encoding="utf-8"))
            for group in document["groups"]:
                for rule in group["rules"]:
                    if rule.get("alert") in alert_for:
                        rule["for"] = alert_for[rule["alert"]]
                        remaining.pop(rule["alert"], None)
            target.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        written.append(target)
    if remaining:
        raise StackError(
            f"no alert named {', '.join(sorted(remaining))} in {RULES_DIR}; "
            "check the names given for `for:` overrides"
        )
    return written


def write_prometheus_config(
    path: Path, rules_dir: Path, addresses: Mapping[str, str], scrape_interval: str
) -> Path:
    """Write a copy of prometheus.yml that scrapes and alerts on 127.0.0.1 ports.

    ``addresses`` maps each compose target of prometheus.yml (such as "collector:8889")
    to its local host:port. A target without an entry raises StackError, so that a job
    added to prometheus.yml is not silently scraped at a compose host name.
    """
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["evaluation_interval"] = scrape_interval
    config["rule_files"] = [str(rules_dir / "*.yml")]

    def local(target: str, where: str) -> str:
        if target not in addresses:
            raise StackError(
                f"target {target!r} of {where} in {PROMETHEUS_CONFIG} has no local address; "
                "add it to the address map in scripts/stack.py"
            )
        return addresses[target]

    for alertmanager in config.get("alerting", {}).get("alertmanagers", []):
        for static in alertmanager.get("static_configs", []):
            static["targets"] = [local(t, "alerting") for t in static["targets"]]
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            where = f"scrape job {job['job_name']!r}"
            static["targets"] = [local(t, where) for t in static["targets"]]

    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"autobot_stack_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise StackError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_alertmanager_config(path: Path, webhook_url: str) -> Path:
    """Render the Alertmanager configuration from the AUTOBOT_ALERT_* variables.

    AUTOBOT_ALERT_WEBHOOK_URL is set to ``webhook_url``; every other variable comes from
    this process's environment, so Slack and e-mail work as in compose.
    """
    render_config = _load_script(ALERTMANAGER_RENDER_SCRIPT)
    environment = {**os.environ, "AUTOBOT_ALERT_WEBHOOK_URL": webhook_url}
    try:
        text = render_config.render(environment)
    except render_config.ConfigError as exc:
        raise StackError(f"invalid AUTOBOT_ALERT_* settings for Alertmanager: {exc}") from exc
    path.write_text(text, encoding="utf-8")
    return path


def find_collector_binary() -> Path:
    """Return AUTOBOT_COLLECTOR_BIN, or the binary that collector/build.sh builds or caches."""
    configured = os.environ.get("AUTOBOT_COLLECTOR_BIN")
    if configured:
        binary = Path(configured)
        if not os.access(binary, os.X_OK):
            raise StackError(
                f"AUTOBOT_COLLECTOR_BIN={configured!r} is not an executable file; "
                "unset it to build the collector with collector/build.sh"
            )
        return binary
    # The build log goes to stderr as it happens, because a first build takes minutes.
    result = subprocess.run(
        ["bash", str(COLLECTOR_BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        text=True,
        timeout=COLLECTOR_BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise StackError(
            f"collector/build.sh failed with exit code {result.returncode}; its log is "
            "on stderr above. Set AUTOBOT_COLLECTOR_BIN to use a collector built elsewhere."
        )
    return Path(lines[-1])


# --- processes -------------------------------------------------------------------------


@dataclass
class Service:
    """A server process started by the stack, with its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARACTERS:]
        except OSError as exc:
            return f"(log {self.log_path} unreadable: {exc})"

    def stop(self) -> None:
        """Send SIGTERM, then SIGKILL after STOP_TIMEOUT_SECONDS."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            response.read()
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class Stack:
    """The local stack: ``start()`` returns once every server is ready, ``stop()`` ends it."""

    def __init__(self, settings: StackSettings | None = None) -> None:
        self.settings = settings or StackSettings()
        unknown = set(self.settings.ports) - set(PORT_NAMES)
        if unknown:
            raise StackError(
                f"unknown port name(s) {', '.join(sorted(unknown))}; "
                f"expected some of {', '.join(PORT_NAMES)}"
            )
        self.ports: dict[str, int] = {}
        self.directory: Path | None = None
        self.redis: RedisServer | None = None
        self.trace_sink: TraceSink | None = None
        self.webhook: WebhookReceiver | None = None
        self.services: dict[str, Service] = {}
        self.prometheus_config: Path | None = None
        self.alertmanager_config: Path | None = None
        # Why traces go nowhere, when neither the sink nor a Tempo endpoint is available.
        self.trace_note = ""
        self._unreachable_tempo_endpoint = ""

    # URLs and addresses, valid after start().
    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['prometheus']}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['alertmanager']}"

    @property
    def demo_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['demo']}"

    @property
    def otlp_http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['otlp_http']}"

    @property
    def collector_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['collector_metrics']}/metrics"

    @property
    def tempo_endpoint(self) -> str:
        if self.settings.tempo_endpoint:
            return self.settings.tempo_endpoint
        if self.trace_sink is not None:
            return self.trace_sink.endpoint
        return self._unreachable_tempo_endpoint

    @property
    def webhook_url(self) -> str:
        if self.settings.webhook_url:
            return self.settings.webhook_url
        assert self.webhook is not None
        return self.webhook.url

    def start(self) -> Stack:
        """Start every server, in dependency order; on any failure stop those already started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.ports = {name: self.settings.ports.get(name) or free_port() for name in PORT_NAMES}
        self.directory = Path(tempfile.mkdtemp(prefix="autobot-stack-"))
        collector_binary = self.settings.collector_binary or find_collector_binary()

        self._start_receivers()
        self.redis = RedisServer(port=self.ports["redis"]).start()
        self._start_collector(collector_binary)
        self._start_alertmanager()
        self._start_prometheus()
        self._start_demo()

    def _start_receivers(self) -> None:
        if self.settings.tempo_endpoint is None:
            try:
                self.trace_sink = TraceSink()
            except ImportError as exc:
                # Without a receiver the collector logs export errors and drops the spans,
                # which does not affect metrics. Any free port other than the collector's
                # own OTLP/gRPC port will do; that one would send every trace in a loop.
                self._unreachable_tempo_endpoint = f"127.0.0.1:{free_port()}"
                self.trace_note = (
                    f"traces are dropped: grpcio is not installed ({exc}), so no trace sink "
                    f"runs and the collector sends them to {self._unreachable_tempo_endpoint}, "
                    "where nothing listens; install the package's test extra or pass "
                    "--tempo-endpoint"
                )
            else:
                self.trace_sink.start()
        if self.settings.webhook_url is None:
            self.webhook = WebhookReceiver(on_notification=self.settings.on_notification)
            self.webhook.start()

    def _spawn(
        self, name: str, command: list[str], environment: Mapping[str, str] | None = None
    ) -> Service:
        assert self.directory is not None
        log_path = self.directory / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(environment or {})},
                # Its own session, so that Ctrl-C reaches only this script, which then stops
                # the servers in order: the demo first, so its last export still arrives.
                start_new_session=True,
            )
        service = Service(name, process, log_path)
        self.services[name] = service
        return service

    def _wait_ready(self, service: Service, url: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise StackError(
                    f"{service.name} exited with code {service.process.returncode} during "
                    f"startup; the end of its log:\n{service.log_tail()}"
                )
            if _http_ok(url):
                return
            time.sleep(0.2)
        raise StackError(
            f"{service.name} did not return HTTP 200 from {url} within {READY_TIMEOUT_SECONDS} s; "
            f"the end of its log:\n{service.log_tail()}"
        )

    def _start_collector(self, binary: Path) -> None:
        ports = self.ports
        environment = {
            "AUTOBOT_COLLECTOR_OTLP_GRPC": f"127.0.0.1:{ports['otlp_grpc']}",
            "AUTOBOT_COLLECTOR_OTLP_HTTP": f"127.0.0.1:{ports['otlp_http']}",
            "AUTOBOT_COLLECTOR_PROMETHEUS": f"127.0.0.1:{ports['collector_metrics']}",
            "AUTOBOT_COLLECTOR_HEALTH": f"127.0.0.1:{ports['collector_health']}",
            "AUTOBOT_COLLECTOR_TELEMETRY_HOST": "127.0.0.1",
            "AUTOBOT_COLLECTOR_TELEMETRY_PORT": str(ports["collector_telemetry"]),
            "AUTOBOT_TEMPO_OTLP_ENDPOINT": self.tempo_endpoint,
        }
        if environment["AUTOBOT_TEMPO_OTLP_ENDPOINT"] == environment["AUTOBOT_COLLECTOR_OTLP_GRPC"]:
            raise StackError(
                f"--tempo-endpoint {self.tempo_endpoint} is the collector's own OTLP/gRPC "
                "address, which would send every trace back to the collector in a loop; "
                "give Tempo's address or choose another --otlp-grpc-port"
            )
        service = self._spawn(
            "collector", [str(binary), "--config", str(COLLECTOR_CONFIG)], environment
        )
        self._wait_ready(service, f"http://127.0.0.1:{ports['collector_health']}/")

    def _start_alertmanager(self) -> None:
        assert self.directory is not None
        self.alertmanager_config = write_alertmanager_config(
            self.directory / "alertmanager.yml", self.webhook_url
        )
        storage = self.directory / "alertmanager-data"
        storage.mkdir()
        command = [
            "prometheus-alertmanager",
            f"--config.file={self.alertmanager_config}",
            f"--storage.path={storage}",
            f"--web.listen-address=127.0.0.1:{self.ports['alertmanager']}",
            # An empty address turns clustering off; the default listens on 0.0.0.0:9094.
            "--cluster.listen-address=",
        ]
        service = self._spawn("alertmanager", command)
        self._wait_ready(service, f"{self.alertmanager_url}/-/ready")

    def _start_prometheus(self) -> None:
        assert self.directory is not None
        rules_dir = self.directory / "rules"
        write_rule_files(rules_dir, self.settings.alert_for)
        ports = self.ports
        addresses = {
            "collector:8889": f"127.0.0.1:{ports['collector_metrics']}",
            "localhost:9090": f"127.0.0.1:{ports['prometheus']}",
            "alertmanager:9093": f"127.0.0.1:{ports['alertmanager']}",
        }
        self.prometheus_config = write_prometheus_config(
            self.directory / "prometheus.yml", rules_dir, addresses, self.settings.scrape_interval
        )
        storage = self.directory / "prometheus-data"
        command = [
            "prometheus",
            f"--config.file={self.prometheus_config}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
            # Keeps the trace ids that the collector attaches to samples, as in compose.
            "--enable-feature=exemplar-storage",
        ]
        service = self._spawn("prometheus", command)
        self._wait_ready(service, f"{self.prometheus_url}/-/ready")

    def _start_demo(self) -> None:
        assert self.redis is not None
        settings = self.settings
        command = [
            sys.executable,
            "-m",
            "autobot_otel.cli",
            "demo",
            "--duration",
            "0",
            "--no-live",
            "--port",
            str(self.ports["demo"]),
            "--redis-url",
            self.redis.url,
            "--concurrency",
            str(settings.demo_concurrency),
        ]
        environment = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_http_url,
            "OTEL_METRIC_EXPORT_INTERVAL": str(settings.export_interval_ms),
            "OTEL_BSP_SCHEDULE_DELAY": str(settings.span_batch_delay_ms),
        }
        service = self._spawn("demo", command, environment)
        self._wait_ready(service, f"{self.demo_url}/monitoring/metrics")

    # Faults on the stack's Redis, for the demo's circuit breakers and timeouts.
    def stall_redis(self, seconds: float) -> None:
        """Stall every Redis client for ``seconds`` with CLIENT PAUSE; returns at once."""
        assert self.redis is not None
        self.redis.pause(int(seconds * 1000))

    def stop_redis(self) -> None:
        """Kill redis-server, an outage; ``start_redis()`` brings it back on the same port."""
        assert self.redis is not None
        self.redis.kill()

    def start_redis(self) -> None:
        """Start redis-server again after ``stop_redis()``, on the same port."""
        assert self.redis is not None
        self.redis.start()

    def stop(self) -> None:
        """Stop every server, the demo first, and remove the temporary directory."""
        for name in ("demo", "prometheus", "alertmanager", "collector"):
            service = self.services.pop(name, None)
            if service is not None:
                service.stop()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self.trace_sink is not None:
            self.trace_sink.stop()
            self.trace_sink = None
        if self.webhook is not None:
            self.webhook.stop()
            self.webhook = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def describe(self) -> str:
        """Return the addresses of the running stack, one per line."""
        ports = self.ports
        lines = [
            f"  demo service        {self.demo_url}  (metrics at /monitoring/metrics)",
            f"  Prometheus          {self.prometheus_url}",
            f"  Alertmanager        {self.alertmanager_url}",
            f"  collector OTLP      {self.otlp_http_url} (HTTP), "
            f"127.0.0.1:{ports['otlp_grpc']} (gRPC)",
            f"  collector metrics   {self.collector_metrics_url}",
            f"  Redis               redis://127.0.0.1:{ports['redis']}/0",
        ]
        if self.trace_sink is not None:
            lines.append(f"  trace sink          {self.trace_sink.endpoint} (OTLP/gRPC, for Tempo)")
        else:
            lines.append(f"  Tempo               {self.tempo_endpoint}")
        alert_target = "built-in receiver, printed below" if self.webhook else "given URL"
        lines.append(f"  alert webhook       {self.webhook_url} ({alert_target})")
        lines.append(f"  logs                {self.directory}")
        if self.trace_note:
            lines.append(f"NOTE: {self.trace_note}")
        return "\n".join(lines)


# --- command line ----------------------------------------------------------------------


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run Redis, the OpenTelemetry Collector, Prometheus, Alertmanager and "
        "the autobot-otel demo on 127.0.0.1, without Docker.",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="seconds to run, then stop everything; 0 (default) runs until Ctrl-C",
    )
    parser.add_argument(
        "--fault",
        choices=("none", "stall", "outage"),
        default="none",
        help="stall: pause Redis with CLIENT PAUSE; outage: kill and restart it (default: none)",
    )
    parser.add_argument(
        "--fault-interval", type=float, default=8.0, help="seconds between faults (default: 8)"
    )
    parser.add_argument(
        "--fault-length", type=float, default=2.0, help="seconds each fault lasts (default: 2)"
    )
    parser.add_argument(
        "--scrape-interval",
        default="15s",
        help="Prometheus scrape and rule evaluation interval (default: 15s)",
    )
    parser.add_argument(
        "--export-interval",
        type=int,
        default=15_000,
        help="milliseconds between the demo's OTLP metric exports (default: 15000)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="clients of the demo's load driver (default: 16)",
    )
    parser.add_argument(
        "--tempo-endpoint",
        default=None,
        help="host:port of a running Tempo's OTLP/gRPC receiver (default: a built-in trace sink)",
    )
    for name, server in PORT_NAMES.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}-port",
            dest=f"{name}_port",
            type=int,
            default=0,
            help=f"port of {server} on 127.0.0.1 (default: a free port)",
        )
    return parser.parse_args(argv)


def _run_faults(stack: Stack, fault: str, interval: float, length: float, stop_at: float) -> None:
    """Inject a fault every ``interval`` seconds until ``stop_at`` (time.monotonic(), inf)."""
    while time.monotonic() + interval < stop_at:
        time.sleep(interval)
        if fault == "stall":
            print(f"fault: stalling Redis for {length:g} s", flush=True)
            stack.stall_redis(length)
            time.sleep(length)
        else:
            print(f"fault: Redis is down for {length:g} s", flush=True)
            stack.stop_redis()
            time.sleep(length)
            stack.start_redis()
            print("fault: Redis is back", flush=True)
    time.sleep(max(0.0, stop_at - time.monotonic()))


def _run(stack: Stack, arguments: argparse.Namespace) -> None:
    """Run until ``--duration`` passes, injecting the ``--fault`` faults meanwhile."""
    stop_at = time.monotonic() + arguments.duration if arguments.duration else float("inf")
    if arguments.fault == "none":
        while time.monotonic() < stop_at:
            time.sleep(min(1.0, stop_at - time.monotonic()))
        return
    _run_faults(stack, arguments.fault, arguments.fault_interval, arguments.fault_length, stop_at)


def _settings_from_arguments(arguments: argparse.Namespace) -> StackSettings:
    ports = {name: getattr(arguments, f"{name}_port") for name in PORT_NAMES}
    return StackSettings(
        ports={name: port for name, port in ports.items() if port},
        scrape_interval=arguments.scrape_interval,
        export_interval_ms=arguments.export_interval,
        demo_concurrency=arguments.concurrency,
        tempo_endpoint=arguments.tempo_endpoint,
        webhook_url=os.environ.get("AUTOBOT_ALERT_WEBHOOK_URL") or None,
        on_notification=print_notification,
    )


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    arguments = _parse_arguments(argv)
    stack = Stack(_settings_from_arguments(arguments))

    # SIGTERM stops the stack the same way as Ctrl-C. SIGINT is set too, because a shell
    # without job control starts background commands with SIGINT ignored.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    try:
        print("starting the stack (a first run also builds the collector, which takes minutes)")
        stack.start()
        duration = f"for {arguments.duration:g} s" if arguments.duration else "until Ctrl-C"
        print(f"autobot-otel stack is running {duration}:\n{stack.describe()}", flush=True)
        _run(stack, arguments)
    except KeyboardInterrupt:
        print("stopping the stack", flush=True)
    except StackError as exc:
        print(f"stack.py: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C while stopping would leave the remaining servers running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        spans = stack.trace_sink.received_count if stack.trace_sink is not None else None
        stack.stop()

    if spans is not None:
        print(f"the trace sink received {spans} spans")
    print("stopped every server and removed the temporary directory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
