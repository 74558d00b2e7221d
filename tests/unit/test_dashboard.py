"""Tests of the generated Grafana dashboard config/grafana/dashboards/autobot-timeouts.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.monitoring_exprs import (
    CONTRACT_METRIC_NAMES,
    DASHBOARD_GENERATOR,
    DASHBOARD_PATH,
    dashboard_expressions,
    expand_grafana_variables,
    load_dashboard,
    load_script,
    promql_metric_names,
    recording_rule_names,
)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def generator() -> Any:
    return load_script(DASHBOARD_GENERATOR)


def panels_by_title(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {panel["title"]: panel for panel in dashboard["panels"]}


def test_checked_in_json_matches_generator(generator: Any) -> None:
    """The committed dashboard JSON is exactly what the generator writes."""
    assert DASHBOARD_PATH.read_text(encoding="utf-8") == generator.render()


def test_generator_check_flags_stale_file(generator: Any, tmp_path: Path) -> None:
    """--check exits 1 for a stale or missing file and 0 for a current one."""
    path = tmp_path / "dashboard.json"
    assert generator.main(["--check", "--output", str(path)]) == 1

    path.write_text("{}\n", encoding="utf-8")
    assert generator.main(["--check", "--output", str(path)]) == 1

    assert generator.main(["--output", str(path)]) == 0
    assert generator.main(["--check", "--output", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == generator.render()


def test_dashboard_title_and_uid(dashboard: dict[str, Any]) -> None:
    """The dashboard has its fixed title and uid."""
    assert dashboard["title"] == "AutoBot Timeout & Performance"
    assert dashboard["uid"] == "autobot-timeouts"


def test_every_panel_has_a_target(dashboard: dict[str, Any]) -> None:
    """No panel is left without a query."""
    for panel in dashboard["panels"]:
        assert panel.get("targets"), f"panel {panel['title']!r} has no targets"


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    """Grafana needs a distinct id per panel."""
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    """Panels fit the 24-column grid and no two share a cell."""
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_prometheus_targets_use_only_known_metrics(dashboard: dict[str, Any]) -> None:
    """Every PromQL target selects contract metrics or recording rules, nothing else."""
    known = CONTRACT_METRIC_NAMES | recording_rule_names()
    expressions = dashboard_expressions(dashboard)

    assert len(expressions) == 12
    for item in expressions:
        names = promql_metric_names(item.expr)
        assert names, f"{item.source} selects no metric"
        assert names - known == frozenset(), f"{item.source} selects unknown metrics"


def test_required_panels_exist(dashboard: dict[str, Any]) -> None:
    """The panels the dashboard promises exist with the right type."""
    types = {title: panel["type"] for title, panel in panels_by_title(dashboard).items()}
    assert types == {
        "Timeout rate": "timeseries",
        "Timeouts per second by status": "timeseries",
        "Latency distribution": "heatmap",
        "p99 latency against configured timeout": "timeseries",
        "Circuit breaker state": "state-timeline",
        "Circuit breaker events": "timeseries",
        "Redis requests per second by status": "timeseries",
        "Redis success rate": "timeseries",
        "Redis pool utilisation": "timeseries",
        "Redis pool connections": "timeseries",
        "Recent timed-out traces": "table",
    }


def test_latency_heatmap_reads_histogram_buckets(dashboard: dict[str, Any]) -> None:
    """The heatmap shows the histogram's own buckets, with exemplars."""
    panel = panels_by_title(dashboard)["Latency distribution"]
    target = panel["targets"][0]

    assert target["format"] == "heatmap"
    assert target["exemplar"] is True
    assert "autobot_operation_duration_seconds_bucket" in target["expr"]
    assert target["expr"].startswith("sum by (le) (rate(")
    assert panel["options"]["calculate"] is False


def test_p99_panel_draws_configured_timeout(dashboard: dict[str, Any]) -> None:
    """p99 latency (with exemplars) and the configured timeout share one panel."""
    targets = panels_by_title(dashboard)["p99 latency against configured timeout"]["targets"]
    p99, timeout = targets

    assert p99["expr"].startswith("histogram_quantile(0.99, ")
    assert p99["exemplar"] is True
    assert promql_metric_names(timeout["expr"]) == {"autobot_operation_timeout_seconds"}


def test_breaker_state_maps_values_to_names(dashboard: dict[str, Any]) -> None:
    """0, 1 and 2 show as closed, open and half_open."""
    panel = panels_by_title(dashboard)["Circuit breaker state"]
    options = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {value: option["text"] for value, option in options.items()} == {
        "0": "closed",
        "1": "open",
        "2": "half_open",
    }


def test_requests_by_status_are_stacked(dashboard: dict[str, Any]) -> None:
    """The request rate panel stacks one series per status."""
    panel = panels_by_title(dashboard)["Redis requests per second by status"]
    assert panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert panel["targets"][0]["expr"].startswith("sum by (status) (")


def test_timed_out_traces_come_from_tempo(dashboard: dict[str, Any]) -> None:
    """The traces table runs a TraceQL search for timed-out spans on Tempo."""
    target = panels_by_title(dashboard)["Recent timed-out traces"]["targets"][0]
    assert target["datasource"] == {"type": "tempo", "uid": "tempo"}
    assert target["queryType"] == "traceql"
    assert target["query"] == '{status=error && span.autobot.outcome="timeout"}'


def test_template_variables_filter_database_and_operation(dashboard: dict[str, Any]) -> None:
    """database and operation_type are multi-value variables used by the panels."""
    variables = {item["name"]: item for item in dashboard["templating"]["list"]}

    assert set(variables) == {"database", "operation_type"}
    for variable in variables.values():
        assert variable["multi"] is True
        assert variable["allValue"] == ".*"
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel["targets"]
        if "expr" in target
    ]
    assert sum('database=~"$database"' in expr for expr in exprs) == 12
    assert sum('operation_type=~"$operation_type"' in expr for expr in exprs) == 5


def test_expand_grafana_variables_replaces_all_forms() -> None:
    """$name, ${name} and ${name:format} expand; built-ins take fixed values."""
    expr = 'rate(x{database=~"$database", op=~"${operation_type:regex}"}[$__rate_interval])'
    expanded = expand_grafana_variables(expr, frozenset({"database", "operation_type"}))
    assert expanded == 'rate(x{database=~".*", op=~".*"}[1m])'


def test_expand_grafana_variables_rejects_unknown_names() -> None:
    """An undefined variable is an error, not a silent empty string."""
    with pytest.raises(ValueError, match=r"unknown Grafana variable \$tenant"):
        expand_grafana_variables('x{tenant="$tenant"}', frozenset({"database"}))


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{le="0.5", job=~"x|y"}[5m]))', {"a_bucket"}),
        ("a > on (database) group_left (state) 0.8 * max by (database) (b)", {"a", "b"}),
        ("a offset 30m or 0 * a unless absent(c) and bool 1e-9", {"a", "c"}),
        (
            'histogram_quantile(0.99, d) > bool inf or label_replace(e, "f", "$1", "g", "(.*)")',
            {"d", "e"},
        ),
    ],
)
def test_promql_metric_names_skips_labels_and_functions(expr: str, names: set[str]) -> None:
    """Only selected metric names come out: no labels, functions, keywords or numbers."""
    assert promql_metric_names(expr) == names
