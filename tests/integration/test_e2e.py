"""End-to-end test of the local stack: demo → collector → Prometheus → Alertmanager.

One stack from scripts/stack.py serves the whole module: redis-server, the collector, the
trace sink in place of Tempo, Prometheus, Alertmanager with a webhook receiver, and the
demo service exporting OTLP every second. Prometheus scrapes and evaluates rules every
second. The module then runs its phases in order, each a module-scoped fixture:

1. normal traffic until Prometheus has the demo's series;
2. a Redis stall (CLIENT PAUSE) longer than the redis.get timeout, so calls time out;
3. a Redis outage (redis-server killed) until the breaker alert reaches the webhook,
   then Redis is restarted and the breakers close again.

The temporary rule files change one thing: AutobotCircuitBreakerOpen fires after 5 s
instead of 2 minutes (its `for:`), so the outage phase fits in the time budget.
Alertmanager keeps its shipped group_wait of 30 s. The whole module took 52 to 65 s on
2 cores.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.monitoring_exprs import MonitoringExpression, all_expressions
from tests.tools import require_tool, running_in_ci

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_SCRIPT = REPO_ROOT / "scripts" / "stack.py"

DEMO_JOB = "autobot-demo"
DEMO_DATABASES = {"main", "cache"}
OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0"
EXPECTED_LE_VALUES = ["0.001", "0.01", "0.1", "0.5", "1.0", "2.0", "5.0", "10.0", "30.0", "+Inf"]
# Labels that identify the scrape target rather than the series.
TARGET_LABELS = {"job", "instance"}

BREAKER_ALERT = "AutobotCircuitBreakerOpen"
BREAKER_ALERT_FOR = "5s"
# Longer than the 1.0 s redis.get and redis.set timeouts, shorter than every other one.
STALL_SECONDS = 2.5
# A stall times out nothing when every client happens to wait in a call with a longer
# timeout (pipeline, scan_iter). From the demo's request mix, an estimated 2 % of stalls
# with 4 clients do so, which is why the stall is retried.
MAX_STALLS = 3

FIRST_DATA_TIMEOUT = 30.0
SPAN_DELIVERY_TIMEOUT = 20.0
# Breaker opens (~1 s) + scrape and evaluation (~2 s) + `for:` 5 s + group_wait 30 s.
ALERT_TIMEOUT = 90.0
BREAKER_CLOSE_TIMEOUT = 40.0
CONVERGENCE_TIMEOUT = 20.0

# Expressions that legitimately return no data in this run, by source, with the reason.
# Every other expression must return data while the outage is under way.
EXPECTED_EMPTY = {
    "alert AutobotTimeoutRateHigh (warning)": (
        "needs more than 5 % of an operation's calls over 5 minutes to time out; a stall "
        "times out only the few redis.get and redis.set calls that the 4 clients have in flight"
    ),
    "alert AutobotTimeoutRateHigh (critical)": "needs more than 20 %, see the warning",
    "alert AutobotRedisPoolSaturationHigh (warning)": (
        "needs 90 % of 64 pool connections in use; the load driver has 4 clients"
    ),
    "alert AutobotLatencyNearTimeout (warning)": (
        "has data only while the stall's slow calls are more than 1 % of an operation's "
        "calls in the 5-minute window, which depends on the load driver's pace"
    ),
    "alert AutobotConfigReloadFailed (warning)": (
        "needs an invalid configuration reload; the demo does not watch its settings"
    ),
    "alert AutobotTelemetryAbsent (critical)": "the demo reports all the time",
    "alert AutobotCollectorDown (critical)": "the collector stays up",
}

T = TypeVar("T")


def load_stack_module() -> ModuleType:
    """Import scripts/stack.py, which is a script and not part of a package."""
    spec = importlib.util.spec_from_file_location("autobot_local_stack", STACK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first, because dataclasses look up their module while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


stack_module = load_stack_module()
Stack = stack_module.Stack


def wait_for(probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T | None:
    """Call ``probe`` until it returns a truthy value or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def prometheus_query(stack: Any, expr: str) -> dict[str, Any]:
    """Run an instant query and return Prometheus' JSON response, errors included."""
    response = httpx.get(f"{stack.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    body: dict[str, Any] = response.json()
    return body


def prometheus_vector(stack: Any, expr: str) -> list[dict[str, Any]]:
    """Return the result list of a successful instant query."""
    body = prometheus_query(stack, expr)
    assert body["status"] == "success", f"query {expr!r} failed: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


SeriesKey = tuple[str, frozenset[tuple[str, str]]]


def series_key(name: str, labels: dict[str, str]) -> SeriesKey:
    """Return (name, labels without job and instance) for comparing two expositions."""
    return name, frozenset((k, v) for k, v in labels.items() if k not in TARGET_LABELS)


def in_process_series(stack: Any) -> set[SeriesKey]:
    """Return the autobot_* samples of the demo's /monitoring/metrics in OpenMetrics format."""
    response = httpx.get(
        f"{stack.demo_url}/monitoring/metrics", headers={"Accept": OPENMETRICS_ACCEPT}, timeout=10
    )
    response.raise_for_status()
    return {
        series_key(sample.name, sample.labels)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name.startswith("autobot_")
    }


def prometheus_series(stack: Any) -> set[SeriesKey]:
    """Return the autobot_* series that Prometheus has now for the demo's job."""
    result = prometheus_vector(stack, f'{{__name__=~"autobot_.+", job="{DEMO_JOB}"}}')
    keys = set()
    for item in result:
        labels = dict(item["metric"])
        name = labels.pop("__name__")
        keys.add(series_key(name, labels))
    return keys


def in_process_gauge(stack: Any, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Return the samples of one gauge from /monitoring/metrics, by label set."""
    response = httpx.get(
        f"{stack.demo_url}/monitoring/metrics", headers={"Accept": OPENMETRICS_ACCEPT}, timeout=10
    )
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name
    }


def firing_alerts(stack: Any, alertname: str) -> list[dict[str, Any]]:
    """Return the firing alerts called ``alertname`` that the webhook has received."""
    return [
        alert
        for payload in stack.webhook.payloads()
        for alert in payload["alerts"]
        if alert["labels"].get("alertname") == alertname and alert["status"] == "firing"
    ]


def alerted_databases(alerts: list[dict[str, Any]]) -> set[str]:
    return {alert["labels"]["database"] for alert in alerts}


@dataclass
class RunningStack:
    """The module's stack and the wall-clock time (Unix seconds) when it started."""

    stack: Any
    started_at: float


@pytest.fixture(scope="module")
def running() -> Iterator[RunningStack]:
    """Start the stack with a 1 s cadence and wait until Prometheus has the demo's data."""
    if not os.environ.get("AUTOBOT_COLLECTOR_BIN"):
        require_tool("go", "install Go 1.26 and put its bin directory on PATH")
    require_tool("redis-server", "apt-get install redis-server")
    require_tool("prometheus", "apt-get install prometheus")
    require_tool("promtool", "apt-get install prometheus")
    require_tool("prometheus-alertmanager", "apt-get install prometheus-alertmanager")
    if importlib.util.find_spec("grpc") is None:
        message = "grpcio is not installed, so the trace sink cannot run: pip install -e '.[test]'"
        if running_in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    settings = stack_module.StackSettings(
        scrape_interval="1s",
        export_interval_ms=1000,
        span_batch_delay_ms=500,
        demo_concurrency=4,
        alert_for={BREAKER_ALERT: BREAKER_ALERT_FOR},
    )
    started_at = time.time()
    stack = Stack(settings).start()
    try:
        first_data = wait_for(
            lambda: prometheus_vector(
                stack, f'autobot_operation_duration_seconds_count{{job="{DEMO_JOB}"}}'
            ),
            FIRST_DATA_TIMEOUT,
        )
        if not first_data:
            pytest.fail(
                f"Prometheus had no autobot_operation_duration_seconds_count from job "
                f"{DEMO_JOB} within {FIRST_DATA_TIMEOUT} s. End of the collector log:\n"
                f"{stack.services['collector'].log_tail()}\nEnd of the demo log:\n"
                f"{stack.services['demo'].log_tail()}",
                pytrace=False,
            )
        yield RunningStack(stack, started_at)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def stalled(running: RunningStack) -> list[Any]:
    """Stall Redis past the redis.get timeout; return the timed-out spans the sink received."""
    stack = running.stack

    def timed_out_spans() -> list[Any]:
        return [
            span
            for span in stack.trace_sink.spans()
            if span.attributes.get("autobot.outcome") == "timeout"
        ]

    spans: list[Any] = []
    for _ in range(MAX_STALLS):
        stack.stall_redis(STALL_SECONDS)
        time.sleep(STALL_SECONDS)
        spans = wait_for(timed_out_spans, SPAN_DELIVERY_TIMEOUT / MAX_STALLS) or []
        if spans:
            break
    return spans


@dataclass
class OutageResult:
    """What the outage phase observed while Redis was down."""

    breaker_alerts: list[dict[str, Any]]
    # Prometheus' response to every monitoring expression, by expression.
    responses: list[tuple[MonitoringExpression, dict[str, Any]]]
    breakers_closed_again: bool


@pytest.fixture(scope="module")
def outage(running: RunningStack, stalled: list[Any]) -> OutageResult:
    """Kill redis-server until the breaker alert reaches the webhook, then restart it."""
    stack = running.stack
    stack.stop_redis()
    try:
        # Alertmanager groups by database, so each database's alert comes in its own
        # notification, and the cache breaker may open a moment after the main one.
        wait_for(
            lambda: alerted_databases(firing_alerts(stack, BREAKER_ALERT)) >= DEMO_DATABASES,
            ALERT_TIMEOUT,
        )
        alerts = firing_alerts(stack, BREAKER_ALERT)
        responses = [(item, prometheus_query(stack, item.expr)) for item in all_expressions()]
    finally:
        stack.start_redis()

    def breakers_closed() -> bool:
        states = in_process_gauge(stack, "autobot_circuit_breaker_state")
        return bool(states) and all(value == 0 for value in states.values())

    closed = bool(wait_for(breakers_closed, BREAKER_CLOSE_TIMEOUT))
    return OutageResult(alerts, responses, closed)


def test_derived_prometheus_config_is_valid(running: RunningStack) -> None:
    """promtool accepts the stack's prometheus.yml with its copied rule files."""
    promtool = require_tool("promtool", "apt-get install prometheus")
    result = subprocess.run(
        [promtool, "check", "config", str(running.stack.prometheus_config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    rule_files = sorted(stack_module.RULES_DIR.glob("*.yml"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert rule_files
    assert f"SUCCESS: {len(rule_files)} rule files found" in result.stdout


def test_duration_histogram_keeps_buckets(running: RunningStack) -> None:
    """Every duration histogram in Prometheus has exactly the contract's `le` values."""
    result = prometheus_vector(
        running.stack, f'autobot_operation_duration_seconds_bucket{{job="{DEMO_JOB}"}}'
    )
    buckets: dict[tuple[str, str], list[str]] = {}
    for item in result:
        labels = item["metric"]
        key = (labels["operation_type"], labels["database"])
        buckets.setdefault(key, []).append(labels["le"])

    assert ("redis.get", "main") in buckets
    assert ("llm.fast", "llm") in buckets
    for key, values in buckets.items():
        assert sorted(values, key=float) == EXPECTED_LE_VALUES, key


def test_exemplars_point_to_received_traces(running: RunningStack) -> None:
    """Each latency exemplar in Prometheus names a trace that reached the trace sink."""
    stack = running.stack
    response = httpx.get(
        f"{stack.prometheus_url}/api/v1/query_exemplars",
        params={
            "query": f'autobot_operation_duration_seconds_bucket{{job="{DEMO_JOB}"}}',
            "start": str(running.started_at),
            "end": str(time.time()),
        },
        timeout=10,
    ).json()
    assert response["status"] == "success", response
    exemplar_trace_ids = {
        exemplar["labels"]["trace_id"]
        for series in response["data"]
        for exemplar in series["exemplars"]
    }
    operations_with_exemplars = {
        (series["seriesLabels"]["operation_type"], series["seriesLabels"]["database"])
        for series in response["data"]
        if series["exemplars"]
    }
    operations = {
        (item["metric"]["operation_type"], item["metric"]["database"])
        for item in prometheus_vector(
            stack, f'autobot_operation_duration_seconds_count{{job="{DEMO_JOB}"}}'
        )
    }

    def missing_trace_ids() -> set[str]:
        received = {span.trace_id for span in stack.trace_sink.spans()}
        return exemplar_trace_ids - received

    # The spans of the newest exemplars may still be in a batch on their way.
    wait_for(lambda: not missing_trace_ids(), SPAN_DELIVERY_TIMEOUT)

    # Every operation records its duration inside its span, so each has exemplars.
    assert operations_with_exemplars == operations
    assert missing_trace_ids() == set()


def test_timed_out_spans_are_errors(running: RunningStack, stalled: list[Any]) -> None:
    """Spans of calls cut off by the stall arrive with status ERROR and outcome timeout."""
    timeouts = in_process_gauge(running.stack, "autobot_operation_timeout_seconds")

    assert stalled, "no span with autobot.outcome=timeout reached the trace sink"
    for span in stalled:
        attributes = span.attributes
        configured = timeouts[
            frozenset(
                {
                    "operation_type": attributes["autobot.operation"],
                    "database": attributes["autobot.database"],
                }.items()
            )
        ]
        assert span.status_code == stack_module.STATUS_CODE_ERROR
        assert span.service_name == DEMO_JOB
        assert span.name == attributes["autobot.operation"]
        assert span.name in {"redis.get", "redis.set", "redis.hgetall"}
        assert attributes["error.type"] == "timeout"
        assert attributes["db.system.name"] == "redis"
        assert attributes["db.operation.name"] == span.name.removeprefix("redis.").upper()
        assert attributes["autobot.timeout_seconds"] == configured


def test_breaker_alert_reaches_webhook(outage: OutageResult) -> None:
    """A Redis outage fires AutobotCircuitBreakerOpen and Alertmanager posts it."""
    alerts = outage.breaker_alerts

    assert alerts, f"no firing {BREAKER_ALERT} reached the webhook"
    # Both databases of the demo live on the one redis-server that was killed.
    assert alerted_databases(alerts) == DEMO_DATABASES
    for alert in alerts:
        assert set(alert["labels"]) == {"alertname", "database", "severity"}
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"] == f"docs/runbooks/{BREAKER_ALERT}.md"


def test_breakers_close_after_outage(outage: OutageResult) -> None:
    """Once redis-server is back, every breaker of the demo returns to closed."""
    assert outage.breakers_closed_again, (
        f"a breaker was still open or half-open {BREAKER_CLOSE_TIMEOUT} s after the restart"
    )


def test_monitoring_expressions_return_data(outage: OutageResult) -> None:
    """Every rule and dashboard expression parses, and all but EXPECTED_EMPTY have data."""
    failed = {
        item.source: response
        for item, response in outage.responses
        if response["status"] != "success"
    }
    empty = {
        item.source
        for item, response in outage.responses
        if response["status"] == "success" and not response["data"]["result"]
    }
    sources = {item.source for item, _ in outage.responses}

    assert failed == {}
    assert set(EXPECTED_EMPTY) <= sources
    assert empty - set(EXPECTED_EMPTY) == set()


def test_in_process_series_match_prometheus(running: RunningStack, outage: OutageResult) -> None:
    """Every autobot_* series of /monitoring/metrics is in Prometheus, and nothing more."""
    stack = running.stack
    pairs: list[tuple[set[SeriesKey], set[SeriesKey]]] = []

    def converged() -> bool:
        pairs.append((in_process_series(stack), prometheus_series(stack)))
        return pairs[-1][0] == pairs[-1][1]

    # Prometheus trails the demo by an export and a scrape, so new series need a moment.
    wait_for(converged, CONVERGENCE_TIMEOUT, interval=1.0)
    in_process, in_prometheus = pairs[-1]

    assert in_process - in_prometheus == set()
    assert in_prometheus - in_process == set()
    names = {name for name, _ in in_process}
    assert "autobot_timeout_total" in names
    assert "autobot_circuit_breaker_events_total" in names
