"""PromQL expressions and Prometheus configuration of the monitoring stack, for tests.

``all_expressions()`` returns every PromQL expression of the alert rules, the recording
rules and the Grafana dashboard, with Grafana's variables replaced so that Prometheus can
run them as they are. ``write_prometheus_config()`` writes a copy of
config/prometheus/prometheus.yml whose targets are 127.0.0.1 ports.

Typical end-to-end use::

    config = write_prometheus_config(tmp_path, collector="127.0.0.1:18889",
                                     prometheus="127.0.0.1:19090", scrape_interval="1s")
    for item in all_expressions():
        ...  # GET /api/v1/query?query=item.expr; alert expressions return nothing while
             # their alert is quiet (item.kind == "alert")
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO_ROOT / "config" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
PROMTOOL_TESTS_DIR = PROMETHEUS_DIR / "tests"
ALERTMANAGER_DIR = REPO_ROOT / "config" / "alertmanager"
GRAFANA_DIR = REPO_ROOT / "config" / "grafana"
DASHBOARD_PATH = GRAFANA_DIR / "dashboards" / "autobot-timeouts.json"
DASHBOARD_GENERATOR = GRAFANA_DIR / "generate_dashboard.py"
ALERTMANAGER_RENDER_SCRIPT = ALERTMANAGER_DIR / "render_config.py"
RUNBOOKS_DIR = REPO_ROOT / "docs" / "runbooks"

COLLECTOR_JOB = "autobot-collector"
PROMETHEUS_JOB = "prometheus"

# Series names a Prometheus scrape of the collector shows for the metrics contract.
CONTRACT_METRIC_NAMES = frozenset(
    {
        "autobot_timeout_total",
        "autobot_operation_duration_seconds_bucket",
        "autobot_operation_duration_seconds_count",
        "autobot_operation_duration_seconds_sum",
        "autobot_redis_requests_total",
        "autobot_circuit_breaker_state",
        "autobot_circuit_breaker_events_total",
        "autobot_redis_pool_connections",
        "autobot_redis_pool_saturation_ratio",
        "autobot_config_reloads_total",
        "autobot_config_info",
        "autobot_operation_timeout_seconds",
    }
)

# Series that Prometheus itself produces for every scrape target.
PROMETHEUS_SERIES_NAMES = frozenset({"up"})

# Values for Grafana's built-in variables when an expression runs outside Grafana.
# $__rate_interval is at least 4 scrape intervals (4 x 15 s).
GRAFANA_BUILTIN_VALUES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

ExpressionKind = Literal["alert", "recording", "dashboard"]


@dataclass(frozen=True)
class MonitoringExpression:
    """One PromQL expression and where it comes from."""

    kind: ExpressionKind
    source: str
    expr: str


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def rule_files() -> list[Path]:
    """Return the rule files that prometheus.yml loads, sorted by name."""
    return sorted(RULES_DIR.glob("*.yml"))


def promtool_test_files() -> list[Path]:
    return sorted(PROMTOOL_TESTS_DIR.glob("*.yml"))


def iter_rules() -> Iterator[dict[str, Any]]:
    """Yield every rule (alerting and recording) of every group in every rule file."""
    for path in rule_files():
        for group in load_yaml(path)["groups"]:
            yield from group["rules"]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in iter_rules() if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    return [rule for rule in iter_rules() if "record" in rule]


def recording_rule_names() -> frozenset[str]:
    return frozenset(rule["record"] for rule in recording_rules())


def describe_recording_rule(rule: dict[str, Any]) -> str:
    """Return e.g. 'autobot_redis_success_rate{time_window="1m"}' for a recording rule."""
    labels = ", ".join(f'{key}="{value}"' for key, value in sorted(rule.get("labels", {}).items()))
    return f"{rule['record']}{{{labels}}}"


def rule_expressions() -> list[MonitoringExpression]:
    expressions = []
    for rule in iter_rules():
        if "alert" in rule:
            source = f"alert {rule['alert']} ({rule['labels']['severity']})"
            expressions.append(MonitoringExpression("alert", source, rule["expr"].strip()))
        else:
            source = f"recording rule {describe_recording_rule(rule)}"
            expressions.append(MonitoringExpression("recording", source, rule["expr"].strip()))
    return expressions


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))
    return dashboard


def load_script(path: Path) -> ModuleType:
    """Import a stand-alone script such as config/grafana/generate_dashboard.py."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, f"cannot import {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_prometheus_target(panel: dict[str, Any], target: dict[str, Any]) -> bool:
    datasource = target.get("datasource") or panel.get("datasource") or {}
    return datasource.get("type") == "prometheus"


def expand_grafana_variables(expr: str, template_variables: frozenset[str]) -> str:
    """Replace $name and ${name} by what Prometheus can run without Grafana.

    Template variables become ".*", their "All" value, and built-ins take the values in
    GRAFANA_BUILTIN_VALUES. An unknown variable raises ValueError.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in GRAFANA_BUILTIN_VALUES:
            return GRAFANA_BUILTIN_VALUES[name]
        if name in template_variables:
            return ".*"
        raise ValueError(
            f"unknown Grafana variable ${name} in {expr!r}. Add it to the dashboard's "
            "templating list or to GRAFANA_BUILTIN_VALUES."
        )

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


def dashboard_expressions(dashboard: dict[str, Any] | None = None) -> list[MonitoringExpression]:
    """Return the PromQL of every Prometheus target of the dashboard, variables expanded."""
    dashboard = load_dashboard() if dashboard is None else dashboard
    variables = frozenset(item["name"] for item in dashboard["templating"]["list"])
    expressions = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if not is_prometheus_target(panel, target):
                continue
            source = f"dashboard panel {panel['title']!r} target {target['refId']}"
            expr = expand_grafana_variables(target["expr"], variables)
            expressions.append(MonitoringExpression("dashboard", source, expr))
    return expressions


def all_expressions() -> list[MonitoringExpression]:
    """Return every PromQL expression of the rule files and of the dashboard."""
    return rule_expressions() + dashboard_expressions()


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# A name not preceded by a word character, `$` or `.` (so not part of a number or
# duration) and not followed by `(` (so not a function or aggregation).
_NAME = re.compile(r"(?<![\w$.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"}  # operators, numbers
    | {"by", "without", "on", "ignoring", "group_left", "group_right"}  # modifiers
)


def promql_metric_names(expr: str) -> frozenset[str]:
    """Return the metric names that a PromQL expression selects.

    A small lexer, not a parser: it drops strings, label matchers, ranges and label lists
    of by/without/on/ignoring/group_*, then keeps the names that are not followed by "(".
    Selectors written only as {__name__="..."} are not reported.
    """
    text = _STRING.sub('""', expr)
    text = _LABEL_MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    text = _LABEL_LIST.sub(" ", text)
    names = {match.group(1) for match in _NAME.finditer(text)}
    return frozenset(name for name in names if name.lower() not in _KEYWORDS)


def write_prometheus_config(
    directory: Path,
    *,
    collector: str,
    prometheus: str,
    alertmanager: str | None = None,
    scrape_interval: str | None = None,
) -> Path:
    """Write a copy of prometheus.yml for a test into ``directory`` and return its path.

    ``collector``, ``prometheus`` and ``alertmanager`` are host:port targets, normally on
    127.0.0.1. Without ``alertmanager`` the copy sends no alerts. ``scrape_interval`` sets
    the scrape and rule evaluation interval, e.g. "1s" to get data sooner. Rule files are
    referenced by absolute path, so the copy works from any directory.
    """
    config = load_yaml(PROMETHEUS_CONFIG)
    config["rule_files"] = [str(RULES_DIR / "*.yml")]

    if alertmanager is None:
        config.pop("alerting", None)
    else:
        config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]

    if scrape_interval is not None:
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval

    targets = {COLLECTOR_JOB: collector, PROMETHEUS_JOB: prometheus}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job_name, target in targets.items():
        if job_name not in jobs:
            raise KeyError(f"scrape job {job_name!r} not found in {PROMETHEUS_CONFIG}")
        jobs[job_name]["static_configs"] = [{"targets": [target]}]

    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path
