"""The ``autobot-otel`` command: inspect and validate configuration, run the demo."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._config import load_config
from ._errors import ConfigurationError, mask_secret

__all__ = ["main"]


def _flatten(tree: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        path = f"{prefix}.{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, path)
        else:
            yield path, value


@click.group()
@click.version_option(package_name="autobot-otel")
def main() -> None:
    """Layered timeouts and OpenTelemetry telemetry for async services."""


@main.group()
def config() -> None:
    """Inspect and validate the layered configuration."""


def _load(env: str | None) -> Any:
    try:
        return load_config(env, strict=False)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc


@config.command("show")
@click.option(
    "--env",
    "env",
    default=None,
    help="Environment to show (default: AUTOBOT_ENV, else development).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def config_show(env: str | None, as_json: bool) -> None:
    """Print the effective settings and where each value came from."""
    loaded = _load(env)
    rows: list[dict[str, Any]] = []
    for key, value in sorted(loaded.timeouts.items()):
        rows.append(
            {
                "key": f"timeouts.{key}",
                "value": value,
                "source": loaded.source_of(f"timeouts.{key}"),
            }
        )
    for key, value in _flatten(loaded.circuit_breaker, "circuit_breaker"):
        rows.append({"key": key, "value": mask_secret(key, value), "source": loaded.source_of(key)})
    for problem in loaded.problems:
        rows.append(
            {
                "key": problem.key,
                "value": mask_secret(problem.key, problem.value),
                "source": problem.source,
                "problem": problem.reason,
            }
        )
    rows.sort(key=lambda row: row["key"])

    if as_json:
        click.echo(
            json.dumps(
                {
                    "environment": loaded.environment,
                    "config_hash": loaded.config_hash,
                    "settings": rows,
                },
                indent=2,
                default=str,
            )
        )
        return
    table = Table(
        title=f"environment {loaded.environment} (config hash {loaded.config_hash})",
        title_justify="left",
    )
    table.add_column("key")
    table.add_column("value", justify="right")
    table.add_column("source")
    for row in rows:
        value = (
            f"{row['value']!r} (invalid: {row['problem']})"
            if "problem" in row
            else str(row["value"])
        )
        table.add_row(escape(row["key"]), escape(value), escape(row["source"]))
    Console(width=max(120, Console().width)).print(table)
    if loaded.problems:
        sys.exit(1)


def _redis_socket_notes(timeouts: Mapping[str, float]) -> list[str]:
    """Explain Redis operation timeouts that the socket timeout cuts short."""
    socket_timeout = timeouts.get("redis.connection.socket_timeout")
    if socket_timeout is None:
        return []
    return [
        f"timeouts.redis.operations.{key.rsplit('.', 1)[-1]} ({value:g} s) is longer than "
        f"timeouts.redis.connection.socket_timeout ({socket_timeout:g} s): a stalled Redis "
        f"fails the call after {socket_timeout:g} s with redis.exceptions.TimeoutError "
        "(status error), before the operation's own timeout can fire"
        for key, value in sorted(timeouts.items())
        if key.startswith("redis.operations.") and value > socket_timeout
    ]


@config.command("validate")
@click.option(
    "--env",
    "env",
    default=None,
    help="Environment to validate (default: AUTOBOT_ENV, else development).",
)
def config_validate(env: str | None) -> None:
    """Exit 0 when every setting is valid; otherwise list every problem and exit 1."""
    loaded = _load(env)
    for note in _redis_socket_notes(loaded.timeouts):
        click.echo(f"note: {note}")
    if not loaded.problems:
        click.echo(
            f"configuration for environment {loaded.environment!r} is valid "
            f"({len(loaded.timeouts)} timeouts, config hash {loaded.config_hash})"
        )
        return
    click.echo(
        f"configuration for environment {loaded.environment!r} has "
        f"{len(loaded.problems)} problem(s):",
        err=True,
    )
    for problem in loaded.problems:
        click.echo(
            f"  - {problem.key} = {mask_secret(problem.key, problem.value)!r} "
            f"(from {problem.source}): {problem.reason}",
            err=True,
        )
    sys.exit(1)


@main.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds to run; 0 runs until Ctrl-C.",
)
@click.option(
    "--fault",
    type=click.Choice(["none", "stall", "outage"]),
    default="none",
    show_default=True,
    help="stall: CLIENT PAUSE Redis now and then; outage: stop and restart it.",
)
@click.option(
    "--redis-url",
    default=None,
    help="Redis to use (default: REDIS_URL, else a private redis-server).",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address the demo service listens on."
)
@click.option(
    "--port",
    type=click.IntRange(min=0, max=65535),
    default=0,
    help="Port of the demo service; 0 picks a free one.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1, max=1000),
    default=16,
    show_default=True,
    help="Concurrent clients of the load driver.",
)
@click.option(
    "--live/--no-live", default=None, help="Live terminal view (default: when on a terminal)."
)
def demo(
    duration: float,
    fault: str,
    redis_url: str | None,
    host: str,
    port: int,
    concurrency: int,
    live: bool | None,
) -> None:
    """Run an instrumented FastAPI service and a load driver against Redis."""
    from .demo.redis_server import RedisServerError

    try:
        # Importing the demo resolves its decorated operations against the settings.
        from .demo.runner import DemoError, DemoOptions, run_demo
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc

    redis_url = redis_url or os.environ.get("REDIS_URL")
    if redis_url and fault != "none":
        raise click.UsageError(
            "--fault needs the private redis-server; leave out --redis-url and REDIS_URL"
        )
    options = DemoOptions(
        duration=duration,
        fault=fault,
        redis_url=redis_url,
        host=host,
        port=port,
        concurrency=concurrency,
        live=live,
    )
    try:
        run_demo(options)
    except (RedisServerError, ConfigurationError, DemoError) as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":
    main()
