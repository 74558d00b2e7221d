"""Write the Alertmanager configuration for autobot-otel from environment variables.

Alertmanager does not expand environment variables in its configuration file, so this
script builds the file from them: compose runs it in a one-shot container before
Alertmanager starts, and ``alertmanager.yml`` beside it is its output with no variable set.

Routing: alerts with ``severity="critical"`` go to the ``critical`` receiver, those with
``severity="warning"`` to ``warning``, anything else to ``webhook``. The webhook is always
on. Slack, when turned on, receives critical and warning alerts; e-mail, when turned on,
receives critical alerts only.

Variables (all optional, and an empty value counts as unset):

    AUTOBOT_ALERT_WEBHOOK_URL            webhook URL, default http://127.0.0.1:5001/
    AUTOBOT_ALERT_RUNBOOK_BASE_URL       prefix for the runbook paths in Slack messages,
                                         e.g. https://github.com/ORG/REPO/blob/main/
    AUTOBOT_ALERT_SLACK_API_URL          Slack incoming-webhook URL, which turns Slack on
    AUTOBOT_ALERT_SLACK_API_URL_FILE     or: path of a file inside the Alertmanager
                                         container that contains that URL
    AUTOBOT_ALERT_SLACK_CHANNEL          channel, default: the webhook's own channel
    AUTOBOT_ALERT_EMAIL_TO               recipient address(es), which turns e-mail on
    AUTOBOT_ALERT_EMAIL_FROM             sender address (required with EMAIL_TO)
    AUTOBOT_ALERT_EMAIL_SMARTHOST        SMTP server as host:port (required with EMAIL_TO)
    AUTOBOT_ALERT_EMAIL_AUTH_USERNAME    SMTP user name
    AUTOBOT_ALERT_EMAIL_AUTH_PASSWORD    SMTP password
    AUTOBOT_ALERT_EMAIL_AUTH_PASSWORD_FILE  or: path of a file that contains it
    AUTOBOT_ALERT_EMAIL_REQUIRE_TLS      true or false, default true

A secret given directly (not as *_FILE) ends up in the written file, so keep that file
private. Run ``python render_config.py --help`` for the options. Standard library only,
so it runs in a stock Python image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_WEBHOOK_URL = "http://127.0.0.1:5001/"

# Every variable this script reads; compose.yml passes each of them to the script.
VARIABLES = (
    "AUTOBOT_ALERT_WEBHOOK_URL",
    "AUTOBOT_ALERT_RUNBOOK_BASE_URL",
    "AUTOBOT_ALERT_SLACK_API_URL",
    "AUTOBOT_ALERT_SLACK_API_URL_FILE",
    "AUTOBOT_ALERT_SLACK_CHANNEL",
    "AUTOBOT_ALERT_EMAIL_TO",
    "AUTOBOT_ALERT_EMAIL_FROM",
    "AUTOBOT_ALERT_EMAIL_SMARTHOST",
    "AUTOBOT_ALERT_EMAIL_AUTH_USERNAME",
    "AUTOBOT_ALERT_EMAIL_AUTH_PASSWORD",
    "AUTOBOT_ALERT_EMAIL_AUTH_PASSWORD_FILE",
    "AUTOBOT_ALERT_EMAIL_REQUIRE_TLS",
)

# Message for Slack, in Alertmanager's Go template language. RUNBOOK_BASE is replaced by
# AUTOBOT_ALERT_RUNBOOK_BASE_URL, because alert rules carry repository-relative paths.
SLACK_TITLE = (
    '[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}]'
    " {{ .CommonLabels.alertname }}"
)
SLACK_TEXT = (
    "{{ range .Alerts }}*{{ .Annotations.summary }}*\n"
    "{{ .Annotations.description }}\n"
    "Runbook: RUNBOOK_BASE{{ .Annotations.runbook_url }}\n"
    "{{ end }}"
)


class ConfigError(ValueError):
    """An environment variable is missing, invalid or conflicts with another."""


def _get(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def _require_http_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(
            f"{name}={value!r} is not an http:// or https:// URL. Set a full URL such as "
            "https://alerts.example/hook."
        )
    # The value is pasted into Alertmanager's Go templates or YAML as is.
    if "{{" in value or "}}" in value:
        raise ConfigError(
            f"{name}={value!r} contains '{{{{' or '}}}}', which Alertmanager reads as a "
            "template. Remove them."
        )
    return value


def _one_of(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """Return (key, value) for variable ``name`` or ``name``_FILE, and reject both."""
    direct, from_file = _get(env, name), _get(env, f"{name}_FILE")
    if direct and from_file:
        raise ConfigError(f"both {name} and {name}_FILE are set. Set only one of them.")
    if direct:
        return name, direct
    if from_file:
        return f"{name}_FILE", from_file
    return None


def _webhook_config(env: Mapping[str, str]) -> dict[str, Any]:
    url = _get(env, "AUTOBOT_ALERT_WEBHOOK_URL") or DEFAULT_WEBHOOK_URL
    _require_http_url("AUTOBOT_ALERT_WEBHOOK_URL", url)
    return {"url": url, "send_resolved": True}


def _slack_config(env: Mapping[str, str]) -> dict[str, Any] | None:
    source = _one_of(env, "AUTOBOT_ALERT_SLACK_API_URL")
    if source is None:
        return None

    name, value = source
    config: dict[str, Any] = {"send_resolved": True}
    if name.endswith("_FILE"):
        config["api_url_file"] = value
    else:
        config["api_url"] = _require_http_url(name, value)

    channel = _get(env, "AUTOBOT_ALERT_SLACK_CHANNEL")
    if channel:
        config["channel"] = channel

    base = _get(env, "AUTOBOT_ALERT_RUNBOOK_BASE_URL")
    if base:
        base = _require_http_url("AUTOBOT_ALERT_RUNBOOK_BASE_URL", base).rstrip("/") + "/"
    config["title"] = SLACK_TITLE
    config["text"] = SLACK_TEXT.replace("RUNBOOK_BASE", base)
    return config


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean. Set true or false.")


def _email_config(env: Mapping[str, str]) -> dict[str, Any] | None:
    to = _get(env, "AUTOBOT_ALERT_EMAIL_TO")
    if not to:
        return None

    config: dict[str, Any] = {"to": to, "send_resolved": True}
    for key, name in (
        ("from", "AUTOBOT_ALERT_EMAIL_FROM"),
        ("smarthost", "AUTOBOT_ALERT_EMAIL_SMARTHOST"),
    ):
        value = _get(env, name)
        if not value:
            raise ConfigError(
                f"{name} is missing, but AUTOBOT_ALERT_EMAIL_TO turns e-mail on. Set {name}."
            )
        config[key] = value

    host, _, port = config["smarthost"].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"AUTOBOT_ALERT_EMAIL_SMARTHOST={config['smarthost']!r} is not host:port. "
            "Set e.g. smtp.example.com:587."
        )

    username = _get(env, "AUTOBOT_ALERT_EMAIL_AUTH_USERNAME")
    if username:
        config["auth_username"] = username
    password = _one_of(env, "AUTOBOT_ALERT_EMAIL_AUTH_PASSWORD")
    if password is not None:
        name, value = password
        config["auth_password_file" if name.endswith("_FILE") else "auth_password"] = value

    require_tls = _get(env, "AUTOBOT_ALERT_EMAIL_REQUIRE_TLS")
    if require_tls:
        config["require_tls"] = _parse_bool("AUTOBOT_ALERT_EMAIL_REQUIRE_TLS", require_tls)
    return config


def _receiver(
    name: str, webhook: dict[str, Any], slack: dict[str, Any] | None, email: dict[str, Any] | None
) -> dict[str, Any]:
    receiver: dict[str, Any] = {"name": name, "webhook_configs": [webhook]}
    if slack is not None:
        receiver["slack_configs"] = [slack]
    if email is not None:
        receiver["email_configs"] = [email]
    return receiver


def _inhibit(source: str, target: str, equal: list[str]) -> dict[str, Any]:
    rule: dict[str, Any] = {"source_matchers": [source], "target_matchers": [target]}
    if equal:
        rule["equal"] = equal
    return rule


def build_config(env: Mapping[str, str]) -> dict[str, Any]:
    """Build the Alertmanager configuration as a dict, or raise ConfigError."""
    webhook = _webhook_config(env)
    slack = _slack_config(env)
    email = _email_config(env)

    route = {
        "receiver": "webhook",
        "group_by": ["alertname", "job", "database", "operation_type"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
        "routes": [
            {"receiver": "critical", "matchers": ['severity="critical"'], "repeat_interval": "1h"},
            {"receiver": "warning", "matchers": ['severity="warning"']},
        ],
    }
    inhibit_rules = [
        # AutobotTimeoutRateHigh has a warning and a critical rule, so send only the critical.
        _inhibit(
            'severity="critical"', 'severity="warning"', ["alertname", "database", "operation_type"]
        ),
        # Without the collector no metrics arrive, so the absence is a consequence.
        _inhibit('alertname="AutobotCollectorDown"', 'alertname="AutobotTelemetryAbsent"', []),
        # An open breaker rejects requests, which lowers the success rate.
        _inhibit(
            'alertname="AutobotCircuitBreakerOpen"',
            'alertname=~"AutobotRedisSuccessRateLow|AutobotCircuitBreakerFlapping"',
            ["database"],
        ),
        # Timeouts already firing make the early warning redundant.
        _inhibit(
            'alertname="AutobotTimeoutRateHigh"',
            'alertname="AutobotLatencyNearTimeout"',
            ["operation_type", "database"],
        ),
    ]
    return {
        "route": route,
        "inhibit_rules": inhibit_rules,
        "receivers": [
            _receiver("webhook", webhook, None, None),
            _receiver("critical", webhook, slack, email),
            _receiver("warning", webhook, slack, None),
        ],
    }


def to_yaml(value: Any, indent: int = 0) -> str:
    """Format dicts, lists, strings, booleans and numbers as block-style YAML.

    Strings are written as JSON strings, which YAML reads as double-quoted scalars.
    """
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(item, indent + 2))
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                # The first key goes on the dash line, the rest align under it.
                body = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {body[indent + 2 :]}")
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if value == [] or value == {}:
        return json.dumps(value)
    raise TypeError(f"cannot write {value!r} of type {type(value).__name__} as YAML")


def render(env: Mapping[str, str]) -> str:
    """Return the text of the Alertmanager configuration file for ``env``."""
    header = (
        "# Generated from AUTOBOT_ALERT_* environment variables by\n"
        "# config/alertmanager/render_config.py; edit that script, not this file.\n"
    )
    return header + to_yaml(build_config(env)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="file to write (default: standard output)",
    )
    args = parser.parse_args(argv)
    try:
        text = render(os.environ)
    except ConfigError as exc:
        print(f"render_config: invalid alerting settings: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
