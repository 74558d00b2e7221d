"""Generate the Grafana dashboard "AutoBot Timeout & Performance".

    python config/grafana/generate_dashboard.py           # rewrite the JSON file
    python config/grafana/generate_dashboard.py --check   # exit 1 if the file is stale

The JSON in config/grafana/dashboards/ is this script's output; edit the script, run it,
and commit both. Grafana provisions the file read-only (see provisioning/dashboards/).
Metric names are those of the metrics contract, and the autobot_* series without an
instrument behind them are recording rules from config/prometheus/rules/recording.yml.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DASHBOARD_PATH = Path(__file__).resolve().parent / "dashboards" / "autobot-timeouts.json"

PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
TEMPO = {"type": "tempo", "uid": "tempo"}

# Label matchers for the two template variables. Both are multi-value with an "All"
# value of ".*", so they are always matched as regular expressions.
DATABASE = 'database=~"$database"'
OPERATION = 'operation_type=~"$operation_type"'

GRID_WIDTH = 24

# Alert thresholds from config/prometheus/rules/alerts.yml, drawn as threshold lines.
TIMEOUT_RATE_WARNING = 0.05
TIMEOUT_RATE_CRITICAL = 0.2
POOL_SATURATION_WARNING = 0.9
SUCCESS_RATE_WARNING = 0.95

# Colours for the Redis request statuses, so "error" is red in every panel and legend.
STATUS_COLORS = {
    "success": "green",
    "error": "red",
    "timeout": "orange",
    "cancelled": "text",
    "rejected": "purple",
    "pool_exhausted": "yellow",
}


def prometheus_target(
    ref_id: str, expr: str, legend: str, *, exemplar: bool = False, fmt: str = "time_series"
) -> dict[str, Any]:
    return {
        "refId": ref_id,
        "datasource": PROMETHEUS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": True,
        "exemplar": exemplar,
        "format": fmt,
    }


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for color, value in steps],
    }


def timeseries(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    *,
    unit: str,
    stacked: bool = False,
    threshold_steps: tuple[tuple[str, float | None], ...] = (("green", None),),
    minimum: float | None = None,
    maximum: float | None = None,
    log_scale: bool = False,
    overrides: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 60 if stacked else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
        # A single threshold step means "no threshold": draw no line for it.
        "thresholdsStyle": {"mode": "line" if len(threshold_steps) > 1 else "off"},
    }
    if log_scale:
        custom["scaleDistribution"] = {"type": "log", "log": 10}
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": custom,
        "thresholds": thresholds(*threshold_steps),
    }
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
    }


def timeout_rate_panel() -> dict[str, Any]:
    return timeseries(
        "Timeout rate",
        "Share of calls per operation that hit a deadline (own timeout or exhausted budget) "
        "over 5 minutes. Lines: AutobotTimeoutRateHigh thresholds, 5 % warning and 20 % critical.",
        [
            prometheus_target(
                "A",
                f'autobot_timeout_rate{{time_window="5m", {DATABASE}, {OPERATION}}}',
                "{{operation_type}} on {{database}}",
            )
        ],
        unit="percentunit",
        minimum=0,
        threshold_steps=(
            ("green", None),
            ("orange", TIMEOUT_RATE_WARNING),
            ("red", TIMEOUT_RATE_CRITICAL),
        ),
    )


def timeouts_by_status_panel() -> dict[str, Any]:
    return timeseries(
        "Timeouts per second by status",
        'status="timeout": the operation\'s own timeout fired. status="budget_exhausted": '
        "a deadline budget set by an enclosing scope fired.",
        [
            prometheus_target(
                "A",
                "sum by (operation_type, status) ("
                f'autobot_timeouts_per_second{{time_window="5m", {DATABASE}, {OPERATION}}})',
                "{{operation_type}} {{status}}",
            )
        ],
        unit="ops",
        minimum=0,
    )


def latency_heatmap_panel() -> dict[str, Any]:
    expr = (
        "sum by (le) (rate(autobot_operation_duration_seconds_bucket"
        f"{{{DATABASE}, {OPERATION}}}[$__rate_interval]))"
    )
    return {
        "type": "heatmap",
        "title": "Latency distribution",
        "description": "Calls per second in each histogram bucket of "
        "autobot_operation_duration_seconds. Dots are exemplars; click one to open its trace.",
        "datasource": PROMETHEUS,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {
            # The buckets come from the histogram, so Grafana must not re-bucket them.
            "calculate": False,
            "yAxis": {"unit": "s", "axisPlacement": "left"},
            "rowsFrame": {"layout": "auto"},
            "color": {
                "mode": "scheme",
                "scheme": "Oranges",
                "scale": "exponential",
                "exponent": 0.5,
                "steps": 64,
                "reverse": False,
            },
            "cellGap": 1,
            "filterValues": {"le": 1e-9},
            "tooltip": {"mode": "single", "yHistogram": True, "showColorScale": False},
            "legend": {"show": True},
            "exemplars": {"color": "rgba(31, 120, 193, 0.9)"},
        },
        "targets": [prometheus_target("A", expr, "{{le}}", exemplar=True, fmt="heatmap")],
    }


def p99_against_timeout_panel() -> dict[str, Any]:
    p99 = (
        "histogram_quantile(0.99, sum by (operation_type, database, le) ("
        "rate(autobot_operation_duration_seconds_bucket"
        f"{{{DATABASE}, {OPERATION}}}[$__rate_interval])))"
    )
    timeout = (
        "max by (operation_type, database) ("
        f"autobot_operation_timeout_seconds{{{DATABASE}, {OPERATION}}})"
    )
    dashed_timeouts = {
        "matcher": {"id": "byFrameRefID", "options": "B"},
        "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.fillOpacity", "value": 0},
        ],
    }
    return timeseries(
        "p99 latency against configured timeout",
        "Solid: p99 latency from the histogram buckets (interpolated inside a bucket). "
        "Dashed: the configured timeout of the operation. AutobotLatencyNearTimeout fires "
        "when p99 stays above 80 % of the timeout for 10 minutes.",
        [
            prometheus_target("A", p99, "{{operation_type}} on {{database}} p99", exemplar=True),
            prometheus_target("B", timeout, "{{operation_type}} on {{database}} timeout"),
        ],
        unit="s",
        log_scale=True,
        overrides=[dashed_timeouts],
    )


def breaker_state_panel() -> dict[str, Any]:
    mappings = [
        {
            "type": "value",
            "options": {
                "0": {"text": "closed", "color": "green", "index": 0},
                "1": {"text": "open", "color": "red", "index": 1},
                "2": {"text": "half_open", "color": "orange", "index": 2},
            },
        }
    ]
    return {
        "type": "state-timeline",
        "title": "Circuit breaker state",
        "description": "autobot_circuit_breaker_state per database: "
        "closed = 0, open = 1, half_open = 2.",
        "datasource": PROMETHEUS,
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "mappings": mappings,
                "thresholds": thresholds(("green", None)),
            },
            "overrides": [],
        },
        "options": {
            "mergeValues": True,
            "showValue": "auto",
            "alignValue": "left",
            "rowHeight": 0.9,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "single", "sort": "none"},
        },
        "targets": [
            prometheus_target(
                "A",
                f"max by (database) (autobot_circuit_breaker_state{{{DATABASE}}})",
                "{{database}}",
            )
        ],
    }


def breaker_events_panel() -> dict[str, Any]:
    panel = timeseries(
        "Circuit breaker events",
        "Breaker transitions and rejections per interval. The first event of each kind "
        "after a restart creates its series and is not counted by increase().",
        [
            prometheus_target(
                "A",
                "sum by (database, event) (increase(autobot_circuit_breaker_events_total"
                f"{{{DATABASE}}}[$__rate_interval]))",
                "{{database}} {{event}}",
            )
        ],
        unit="short",
        minimum=0,
    )
    panel["fieldConfig"]["defaults"]["custom"]["drawStyle"] = "bars"
    return panel


def pool_utilisation_panel() -> dict[str, Any]:
    return timeseries(
        "Redis pool utilisation",
        "Connections in use / max_connections of the busiest pool per database. Line: "
        "AutobotRedisPoolSaturationHigh threshold (90 % for 5 minutes).",
        [
            prometheus_target(
                "A",
                f"max by (database) (autobot_redis_pool_saturation_ratio{{{DATABASE}}})",
                "{{database}}",
            )
        ],
        unit="percentunit",
        minimum=0,
        maximum=1,
        threshold_steps=(("green", None), ("red", POOL_SATURATION_WARNING)),
    )


def pool_connections_panel() -> dict[str, Any]:
    return timeseries(
        "Redis pool connections",
        "Connections per database and state (in_use, idle), summed over all instances.",
        [
            prometheus_target(
                "A",
                f"sum by (database, state) (autobot_redis_pool_connections{{{DATABASE}}})",
                "{{database}} {{state}}",
            )
        ],
        unit="short",
        minimum=0,
    )


def requests_by_status_panel() -> dict[str, Any]:
    overrides = [
        {
            "matcher": {"id": "byName", "options": status},
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}],
        }
        for status, color in STATUS_COLORS.items()
    ]
    return timeseries(
        "Redis requests per second by status",
        "Redis requests over 1 minute, stacked by outcome. rejected: the circuit breaker "
        "was open; pool_exhausted: no free connection in the pool.",
        [
            prometheus_target(
                "A",
                "sum by (status) ("
                f'autobot_redis_requests_per_second{{time_window="1m", {DATABASE}}})',
                "{{status}}",
            )
        ],
        unit="reqps",
        stacked=True,
        minimum=0,
        overrides=overrides,
    )


def success_rate_panel() -> dict[str, Any]:
    return timeseries(
        "Redis success rate",
        "Successful Redis requests / all Redis requests. Line: AutobotRedisSuccessRateLow "
        "threshold (95 % over 5 minutes).",
        [
            prometheus_target(
                "A",
                f'autobot_redis_success_rate{{time_window="5m", {DATABASE}}}',
                "{{database}} (5m)",
            ),
            prometheus_target(
                "B",
                f'autobot_redis_success_rate{{time_window="1m", {DATABASE}}}',
                "{{database}} (1m)",
            ),
        ],
        unit="percentunit",
        maximum=1,
        threshold_steps=(("red", None), ("green", SUCCESS_RATE_WARNING)),
    )


def timed_out_traces_panel() -> dict[str, Any]:
    return {
        "type": "table",
        "title": "Recent timed-out traces",
        "description": "Traces with a span that ended in a timeout, newest first, from Tempo. "
        "Click a trace id to open the trace. Not filtered by the dashboard variables.",
        "datasource": TEMPO,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "targets": [
            {
                "refId": "A",
                "datasource": TEMPO,
                "queryType": "traceql",
                "query": '{status=error && span.autobot.outcome="timeout"}',
                "limit": 20,
                "tableType": "traces",
            }
        ],
    }


# (panel builder, width, height), placed left to right and wrapped at GRID_WIDTH.
LAYOUT = (
    (timeout_rate_panel, 12, 8),
    (timeouts_by_status_panel, 12, 8),
    (latency_heatmap_panel, 12, 9),
    (p99_against_timeout_panel, 12, 9),
    (breaker_state_panel, 12, 7),
    (breaker_events_panel, 12, 7),
    (requests_by_status_panel, 12, 8),
    (success_rate_panel, 12, 8),
    (pool_utilisation_panel, 12, 8),
    (pool_connections_panel, 12, 8),
    (timed_out_traces_panel, 24, 10),
)


def place_panels() -> list[dict[str, Any]]:
    panels = []
    x = y = row_height = 0
    for panel_id, (build, width, height) in enumerate(LAYOUT, start=1):
        if x + width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        panel = {"id": panel_id, "gridPos": {"h": height, "w": width, "x": x, "y": y}}
        panel.update(build())
        panels.append(panel)
        x += width
        row_height = max(row_height, height)
    return panels


def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": PROMETHEUS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable"},
        # 2 = refresh when the time range changes, so new label values show up.
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def build_dashboard() -> dict[str, Any]:
    """Return the dashboard as Grafana's JSON model."""
    variables = [
        query_variable(
            "database",
            "Database",
            "label_values(autobot_operation_duration_seconds_count, database)",
        ),
        query_variable(
            "operation_type",
            "Operation",
            "label_values("
            'autobot_operation_duration_seconds_count{database=~"$database"}, operation_type)',
        ),
    ]
    return {
        "uid": "autobot-timeouts",
        "title": "AutoBot Timeout & Performance",
        "description": "Timeouts, latency, circuit breakers and Redis pools of autobot-otel "
        "services. Generated by config/grafana/generate_dashboard.py.",
        "tags": ["autobot", "timeouts", "redis"],
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": variables},
        "panels": place_panels(),
    }


def render() -> str:
    """Return the dashboard JSON text exactly as it is written to the file."""
    return json.dumps(build_dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the AutoBot Grafana dashboard JSON.")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing, and exit 1 if the file differs from the generated JSON",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DASHBOARD_PATH,
        help=f"file to write (default: {DASHBOARD_PATH})",
    )
    args = parser.parse_args(argv)

    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        if current != text:
            print(
                f"{args.output} is missing or differs from the generated dashboard; "
                "run python config/grafana/generate_dashboard.py to rewrite it",
                file=sys.stderr,
            )
            return 1
        return 0

    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
