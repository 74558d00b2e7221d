"""Checks of the monitoring configuration: Prometheus, Alertmanager and compose.yml.

The external programs (promtool, amtool, prometheus, check-jsonschema) come from
tests.tools.require_tool: missing, they skip a test on a developer machine and fail it
under CI.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.monitoring_exprs import (
    ALERTMANAGER_DIR,
    ALERTMANAGER_RENDER_SCRIPT,
    CONTRACT_METRIC_NAMES,
    PROMETHEUS_CONFIG,
    PROMETHEUS_SERIES_NAMES,
    REPO_ROOT,
    RUNBOOKS_DIR,
    alert_rules,
    all_expressions,
    describe_recording_rule,
    load_script,
    load_yaml,
    promql_metric_names,
    promtool_test_files,
    recording_rule_names,
    recording_rules,
    rule_expressions,
    rule_files,
    write_prometheus_config,
)
from tests.tools import require_tool

pytestmark = pytest.mark.integration

PROMTOOL_HINT = "apt-get install prometheus"
AMTOOL_HINT = "apt-get install prometheus-alertmanager"
COMPOSE_FILE = REPO_ROOT / "compose.yml"

# Alertmanager combinations that amtool must accept: webhook only, then Slack and e-mail
# in each form the render script supports.
SLACK_URL = {"AUTOBOT_ALERT_SLACK_API_URL": "https://hooks.slack.example/services/T0/B0/X0"}
SLACK_FILE = {
    "AUTOBOT_ALERT_SLACK_API_URL_FILE": "/run/secrets/slack_api_url",
    "AUTOBOT_ALERT_SLACK_CHANNEL": "#autobot-alerts",
    "AUTOBOT_ALERT_RUNBOOK_BASE_URL": "https://git.example/autobot-otel/blob/main",
}
EMAIL = {
    "AUTOBOT_ALERT_EMAIL_TO": "oncall@example.com",
    "AUTOBOT_ALERT_EMAIL_FROM": "alertmanager@example.com",
    "AUTOBOT_ALERT_EMAIL_SMARTHOST": "smtp.example.com:587",
    "AUTOBOT_ALERT_EMAIL_AUTH_USERNAME": "alertmanager",
    "AUTOBOT_ALERT_EMAIL_AUTH_PASSWORD_FILE": "/run/secrets/smtp_password",
    "AUTOBOT_ALERT_EMAIL_REQUIRE_TLS": "false",
}
EMAIL_WITH_PASSWORD = {
    **{key: value for key, value in EMAIL.items() if not key.endswith("_PASSWORD_FILE")},
    "AUTOBOT_ALERT_EMAIL_AUTH_PASSWORD": "example-password",
}
ALERTMANAGER_COMBINATIONS = {
    "webhook": {},
    "webhook-custom-url": {"AUTOBOT_ALERT_WEBHOOK_URL": "https://alerts.example/hook"},
    "slack-url": SLACK_URL,
    "slack-file": SLACK_FILE,
    "email-password-file": EMAIL,
    "email-password": EMAIL_WITH_PASSWORD,
    "slack-and-email": {**SLACK_URL, **EMAIL},
}


def run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def assert_succeeds(command: list[str], cwd: Path | None = None) -> str:
    result = run(command, cwd)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} exited with {result.returncode}:\n{output}"
    return output


def load_render_module() -> Any:
    return load_script(ALERTMANAGER_RENDER_SCRIPT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- Prometheus ------------------------------------------------------------------------


def test_prometheus_config_passes_promtool() -> None:
    """promtool accepts prometheus.yml as checked in, with its rule files."""
    promtool = require_tool("promtool", PROMTOOL_HINT)
    output = assert_succeeds([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert "SUCCESS: 2 rule files found" in output


def test_prometheus_config_scrapes_collector_and_itself() -> None:
    """prometheus.yml scrapes collector:8889 and itself every 15 s and alerts to Alertmanager."""
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["rules/*.yml"]
    assert jobs["autobot-collector"]["static_configs"] == [{"targets": ["collector:8889"]}]
    assert jobs["autobot-collector"]["honor_labels"] is True
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["localhost:9090"]}]
    assert config["alerting"]["alertmanagers"] == [
        {"static_configs": [{"targets": ["alertmanager:9093"]}]}
    ]


def test_rewritten_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """The test copy of prometheus.yml has 127.0.0.1 targets and still passes promtool."""
    promtool = require_tool("promtool", PROMTOOL_HINT)
    path = write_prometheus_config(
        tmp_path,
        collector="127.0.0.1:18889",
        prometheus="127.0.0.1:19090",
        alertmanager="127.0.0.1:19093",
        scrape_interval="1s",
    )
    config = load_yaml(path)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    assert jobs["autobot-collector"]["static_configs"] == [{"targets": ["127.0.0.1:18889"]}]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["127.0.0.1:19090"]}]
    assert config["alerting"]["alertmanagers"] == [
        {"static_configs": [{"targets": ["127.0.0.1:19093"]}]}
    ]
    assert config["global"]["scrape_interval"] == "1s"
    output = assert_succeeds([promtool, "check", "config", str(path)])
    assert "SUCCESS: 2 rule files found" in output


def test_rule_files_pass_promtool_check() -> None:
    """promtool check rules accepts every rule file."""
    promtool = require_tool("promtool", PROMTOOL_HINT)
    assert_succeeds([promtool, "check", "rules", *map(str, rule_files())])


@pytest.mark.parametrize("test_file", promtool_test_files(), ids=lambda path: path.name)
def test_promtool_rule_unit_tests_pass(test_file: Path) -> None:
    """Every promtool unit test file under config/prometheus/tests passes."""
    promtool = require_tool("promtool", PROMTOOL_HINT)
    output = assert_succeeds([promtool, "test", "rules", str(test_file)])
    assert "SUCCESS" in output


def test_every_alert_has_severity_annotations_and_runbook() -> None:
    """Each alert has for:, a severity, a summary, a description and an existing runbook."""
    for rule in alert_rules():
        name = rule["alert"]
        assert rule.get("for"), f"{name} has no for: duration"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
        assert rule["annotations"]["runbook_url"] == f"docs/runbooks/{name}.md"
        assert (REPO_ROOT / rule["annotations"]["runbook_url"]).is_file(), f"{name}: no runbook"


def test_required_alerts_exist() -> None:
    """The four alerts every deployment relies on are defined."""
    names = {rule["alert"] for rule in alert_rules()}
    required = {
        "AutobotTimeoutRateHigh",
        "AutobotCircuitBreakerOpen",
        "AutobotRedisPoolSaturationHigh",
        "AutobotTelemetryAbsent",
    }
    assert required <= names


def test_every_runbook_belongs_to_an_alert() -> None:
    """No runbook is left behind for an alert that no longer exists."""
    names = {rule["alert"] for rule in alert_rules()}
    runbooks = {path.stem for path in RUNBOOKS_DIR.glob("*.md")} - {"README"}
    assert runbooks == names


def promtool_tests() -> Iterator[dict[str, Any]]:
    for path in promtool_test_files():
        yield from load_yaml(path)["tests"]


def test_every_alert_has_firing_and_quiet_promtool_tests() -> None:
    """Each alert and severity fires in some promtool test, and each alert is tested quiet."""
    fired: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for test in promtool_tests():
        for case in test.get("alert_rule_test", []):
            if not case.get("exp_alerts"):
                quiet.add(case["alertname"])
            for alert in case.get("exp_alerts") or []:
                fired.add((case["alertname"], alert["exp_labels"]["severity"]))

    expected = {(rule["alert"], rule["labels"]["severity"]) for rule in alert_rules()}
    assert expected - fired == set()
    assert {name for name, _ in expected} - quiet == set()


def parse_series(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition("{")
    labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
    return name.strip(), labels


def test_every_recording_rule_has_a_promtool_test() -> None:
    """Each recording rule, with its static labels, has an exact-value promtool test."""
    tested: list[tuple[str, dict[str, str]]] = []
    for test in promtool_tests():
        for case in test.get("promql_expr_test", []):
            tested += [parse_series(sample["labels"]) for sample in case.get("exp_samples", [])]

    for rule in recording_rules():
        static = {key: str(value) for key, value in rule.get("labels", {}).items()}
        matches = [
            labels
            for name, labels in tested
            if name == rule["record"] and static.items() <= labels.items()
        ]
        assert matches, f"no promtool test has a sample of {describe_recording_rule(rule)}"


def test_rule_expressions_use_only_contract_metrics() -> None:
    """Rules select only contract metrics, recording rules and Prometheus's own up."""
    known = CONTRACT_METRIC_NAMES | recording_rule_names() | PROMETHEUS_SERIES_NAMES
    for item in rule_expressions():
        unknown = promql_metric_names(item.expr) - known
        assert unknown == frozenset(), f"{item.source} selects unknown metrics {sorted(unknown)}"


@pytest.fixture
def prometheus_url(tmp_path: Path) -> Iterator[str]:
    """Start a real Prometheus with the rule files on a free 127.0.0.1 port."""
    binary = require_tool("prometheus", PROMTOOL_HINT)
    port = free_port()
    # The collector target is a closed port: this Prometheus only has to parse and run.
    config = write_prometheus_config(
        tmp_path,
        collector=f"127.0.0.1:{free_port()}",
        prometheus=f"127.0.0.1:{port}",
        scrape_interval="1s",
    )
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, tmp_path / "prometheus.log")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"prometheus at {url} was not ready after 30 s:\n{log_path.read_text()}")


def query_prometheus(url: str, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = f"{url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_prometheus_loads_every_rule(prometheus_url: str) -> None:
    """A real Prometheus loads all rule groups from the test copy of its configuration."""
    status, body = query_prometheus(prometheus_url, "/api/v1/rules", {})
    loaded = [rule["name"] for group in body["data"]["groups"] for rule in group["rules"]]
    defined = [rule["alert"] for rule in alert_rules()]
    defined += [rule["record"] for rule in recording_rules()]

    assert status == 200
    assert sorted(loaded) == sorted(defined)


def test_every_expression_runs_in_prometheus(prometheus_url: str) -> None:
    """Prometheus parses and evaluates every rule and dashboard expression."""
    failures = []
    for item in all_expressions():
        status, body = query_prometheus(prometheus_url, "/api/v1/query", {"query": item.expr})
        if status != 200 or body["status"] != "success":
            failures.append(f"{item.source}: {body.get('error')}")
    assert failures == []


# --- Alertmanager ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "variables", ALERTMANAGER_COMBINATIONS.values(), ids=ALERTMANAGER_COMBINATIONS.keys()
)
def test_rendered_alertmanager_config_passes_amtool(
    tmp_path: Path, variables: dict[str, str]
) -> None:
    """amtool check-config accepts the rendered configuration for each receiver combination."""
    amtool = require_tool("amtool", AMTOOL_HINT)
    render_config = load_render_module()
    path = tmp_path / "alertmanager.yml"
    path.write_text(render_config.render(variables), encoding="utf-8")

    output = assert_succeeds([amtool, "check-config", str(path)])
    assert "3 receivers" in output
    assert "4 inhibit rules" in output


def test_checked_in_alertmanager_config_is_the_default_render() -> None:
    """config/alertmanager/alertmanager.yml is the render script's output with no variables."""
    render_config = load_render_module()
    checked_in = (ALERTMANAGER_DIR / "alertmanager.yml").read_text(encoding="utf-8")
    assert checked_in == render_config.render({})


def receivers_by_name(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {receiver["name"]: receiver for receiver in config["receivers"]}


def test_alertmanager_routes_by_severity() -> None:
    """critical and warning alerts go to their own receivers; the rest to the webhook."""
    config = load_render_module().build_config({})
    routes = {route["receiver"]: route["matchers"] for route in config["route"]["routes"]}

    assert config["route"]["receiver"] == "webhook"
    assert routes == {"critical": ['severity="critical"'], "warning": ['severity="warning"']}
    for receiver in receivers_by_name(config).values():
        assert receiver["webhook_configs"] == [
            {"url": "http://127.0.0.1:5001/", "send_resolved": True}
        ]
        assert "slack_configs" not in receiver
        assert "email_configs" not in receiver


def test_alertmanager_slack_and_email_follow_variables() -> None:
    """Slack reaches critical and warning receivers, e-mail only the critical one."""
    env = {**SLACK_FILE, **EMAIL}
    receivers = receivers_by_name(load_render_module().build_config(env))
    slack = receivers["critical"]["slack_configs"][0]
    email = receivers["critical"]["email_configs"][0]

    assert slack["api_url_file"] == "/run/secrets/slack_api_url"
    assert slack["channel"] == "#autobot-alerts"
    assert (
        "Runbook: https://git.example/autobot-otel/blob/main/{{ .Annotations.runbook_url }}"
        in slack["text"]
    )
    assert receivers["warning"]["slack_configs"] == [slack]
    assert "email_configs" not in receivers["warning"]
    assert "slack_configs" not in receivers["webhook"]
    assert email == {
        "to": "oncall@example.com",
        "send_resolved": True,
        "from": "alertmanager@example.com",
        "smarthost": "smtp.example.com:587",
        "auth_username": "alertmanager",
        "auth_password_file": "/run/secrets/smtp_password",
        "require_tls": False,
    }


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"AUTOBOT_ALERT_EMAIL_TO": "oncall@example.com"},
            "AUTOBOT_ALERT_EMAIL_FROM is missing, but AUTOBOT_ALERT_EMAIL_TO turns e-mail on. "
            "Set AUTOBOT_ALERT_EMAIL_FROM.",
        ),
        (
            {**EMAIL, "AUTOBOT_ALERT_EMAIL_SMARTHOST": "smtp.example.com"},
            "AUTOBOT_ALERT_EMAIL_SMARTHOST='smtp.example.com' is not host:port. "
            "Set e.g. smtp.example.com:587.",
        ),
        (
            {**EMAIL, "AUTOBOT_ALERT_EMAIL_REQUIRE_TLS": "maybe"},
            "AUTOBOT_ALERT_EMAIL_REQUIRE_TLS='maybe' is not a boolean. Set true or false.",
        ),
        (
            {**SLACK_URL, "AUTOBOT_ALERT_SLACK_API_URL_FILE": "/run/secrets/slack"},
            "both AUTOBOT_ALERT_SLACK_API_URL and AUTOBOT_ALERT_SLACK_API_URL_FILE are set. "
            "Set only one of them.",
        ),
        (
            {"AUTOBOT_ALERT_WEBHOOK_URL": "alerts.example/hook"},
            "AUTOBOT_ALERT_WEBHOOK_URL='alerts.example/hook' is not an http:// or https:// URL. "
            "Set a full URL such as https://alerts.example/hook.",
        ),
    ],
    ids=["email-without-from", "smarthost-without-port", "bad-boolean", "slack-twice", "bad-url"],
)
def test_render_rejects_invalid_variables(variables: dict[str, str], message: str) -> None:
    """The error message names the invalid variable and the value to set."""
    render_config = load_render_module()
    with pytest.raises(render_config.ConfigError) as caught:
        render_config.render(variables)
    assert str(caught.value) == message


def test_render_script_exits_2_on_invalid_variables(tmp_path: Path) -> None:
    """Run as a program, the render script reports the error and writes nothing."""
    output = tmp_path / "alertmanager.yml"
    env = {"PATH": os.environ.get("PATH", ""), "AUTOBOT_ALERT_EMAIL_TO": "oncall@example.com"}
    result = subprocess.run(
        [sys.executable, str(ALERTMANAGER_RENDER_SCRIPT), "--output", str(output)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 2
    assert result.stderr.startswith(
        "render_config: invalid alerting settings: AUTOBOT_ALERT_EMAIL_FROM"
    )
    assert not output.exists()


# --- compose.yml -----------------------------------------------------------------------


def test_compose_file_matches_compose_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """compose.yml validates against the Compose specification schema."""
    # check-jsonschema is a Python package; find it in this interpreter's environment
    # even when that environment's bin directory is not on PATH.
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    checker = require_tool("check-jsonschema", "pip install check-jsonschema")
    assert_succeeds([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)])


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = load_yaml(COMPOSE_FILE)["services"]
    return services


def test_compose_images_are_pinned() -> None:
    """Every image has an explicit version tag, never latest."""
    for name, service in compose_services().items():
        if "build" in service:
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"service {name}: image {image!r} has no repository"
        assert tag, f"service {name}: image {image!r} has no version tag"
        assert tag != "latest", f"service {name}: image {image!r} is not pinned"


def test_compose_mounts_repository_files_read_only() -> None:
    """Configuration files from the repository are bind-mounted read-only."""
    for name, service in compose_services().items():
        for volume in service.get("volumes", []):
            if volume.startswith("./"):
                assert volume.endswith(":ro"), f"service {name}: {volume!r} is writable"


def test_compose_services_have_healthchecks() -> None:
    """Long-running services have health checks, except the shell-less collector image."""
    without = {
        name
        for name, service in compose_services().items()
        if "healthcheck" not in service and service.get("restart") != "no"
    }
    assert without == {"collector"}


def test_compose_wires_demo_collector_and_prometheus() -> None:
    """The demo, collector and Prometheus get the command, variables and flags they need."""
    services = compose_services()

    assert services["demo"]["build"] == "."
    assert " ".join(services["demo"]["command"]) == (
        "autobot-otel demo --host 0.0.0.0 --port 8000 --redis-url redis://redis:6379/0 --duration 0"
    )
    assert services["demo"]["environment"] == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"
    }
    # collector/config.yaml names the image release it is written for.
    collector_config = (REPO_ROOT / "collector" / "config.yaml").read_text(encoding="utf-8")
    images = set(re.findall(r"otel/opentelemetry-collector-contrib:[\w.]+", collector_config))
    assert images == {services["collector"]["image"]}
    assert services["collector"]["environment"] == {
        "AUTOBOT_COLLECTOR_OTLP_GRPC": "0.0.0.0:4317",
        "AUTOBOT_COLLECTOR_OTLP_HTTP": "0.0.0.0:4318",
        "AUTOBOT_COLLECTOR_PROMETHEUS": "0.0.0.0:8889",
        "AUTOBOT_COLLECTOR_HEALTH": "0.0.0.0:13133",
        "AUTOBOT_TEMPO_OTLP_ENDPOINT": "tempo:4317",
    }
    assert (
        "./collector/config.yaml:/etc/otelcol-contrib/config.yaml:ro"
        in services["collector"]["volumes"]
    )
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]


def test_compose_passes_alerting_variables() -> None:
    """Each AUTOBOT_ALERT_* variable of the render script is documented and passed on."""
    script = ALERTMANAGER_RENDER_SCRIPT.read_text(encoding="utf-8")
    mentioned = set(re.findall(r"AUTOBOT_ALERT_[A-Z_]*[A-Z]", script))
    passed = set(compose_services()["alertmanager-config"]["environment"])

    assert mentioned == set(load_render_module().VARIABLES)
    assert passed == set(load_render_module().VARIABLES)
