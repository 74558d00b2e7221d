"""``autobot-otel demo``: the demo service, a load driver, faults and a live view.

The service and the driver run in one event loop. The driver sends real HTTP requests to
the service, whose handlers call Redis through ``AsyncRedisManager``. The live view reads
the finished spans of timed operations, so it shows the same data the exporters send.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .._breaker_registry import all_breakers
from .._config import SETTINGS_FILES_VARIABLE, configure
from .._telemetry import setup_telemetry
from ..fastapi import serve_without_exit
from ..redis import AsyncRedisManager
from .app import create_app
from .redis_server import RedisServer, free_port

__all__ = ["DemoError", "DemoOptions", "run_demo"]

FAULTS = ("none", "stall", "outage")
DEMO_SETTINGS = Path(__file__).with_name("settings.yaml")


class DemoError(RuntimeError):
    """Raised when the demo cannot start."""


@dataclass
class DemoOptions:
    """Options of one ``autobot-otel demo`` run."""

    duration: float = 30.0
    fault: str = "none"
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    concurrency: int = 16
    fault_interval: float = 8.0
    fault_length: float = 2.0
    live: bool | None = None


@dataclass
class _OperationStats:
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    @property
    def calls(self) -> int:
        return sum(self.outcomes.values())


class _StatsProcessor(SpanProcessor):
    """Collect duration and outcome of every timed-operation span as it ends."""

    def __init__(self) -> None:
        self.operations: dict[str, _OperationStats] = defaultdict(_OperationStats)

    def on_end(self, span: ReadableSpan) -> None:
        attributes = span.attributes or {}
        if "autobot.operation" not in attributes:
            return
        stats = self.operations[str(attributes["autobot.operation"])]
        stats.outcomes[str(attributes.get("autobot.outcome", "unknown"))] += 1
        stats.recent.append(time.monotonic())
        if span.end_time is not None and span.start_time is not None:
            stats.durations.append((span.end_time - span.start_time) / 1e9)


def _percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _table(stats: _StatsProcessor, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    # The operation column never wraps, so the short headers keep 80 columns readable.
    table.add_column("operation", no_wrap=True, min_width=15)
    for column in ("calls", "rate/s*", "p50 ms", "p99 ms", "timeout", "error", "reject", "pool"):
        table.add_column(column, justify="right")
    now = time.monotonic()
    for name, operation in sorted(stats.operations.items()):
        rate = sum(1 for moment in operation.recent if now - moment <= 5.0) / 5.0
        table.add_row(
            name,
            str(operation.calls),
            f"{rate:.0f}",
            f"{_percentile(operation.durations, 0.5) * 1000:.2f}",
            f"{_percentile(operation.durations, 0.99) * 1000:.2f}",
            str(operation.outcomes.get("timeout", 0)),
            str(operation.outcomes.get("error", 0)),
            str(operation.outcomes.get("rejected", 0)),
            str(operation.outcomes.get("pool_exhausted", 0)),
        )
    breakers = ", ".join(
        f"{name}={breaker.state.value}" for name, breaker in sorted(all_breakers().items())
    )
    table.caption = (
        f"circuit breakers: {breakers or 'none'}\n"
        "* over the last 5 s; pool: calls failed because the connection pool was full"
    )
    return table


async def _drive(base_url: str, concurrency: int, stop: asyncio.Event) -> int:
    """Send a mix of requests until ``stop`` is set; return how many were sent."""
    sent = 0
    paths = ["/items/{n}", "/items/{n}", "/profiles/user{n}", "/summaries/{n}", "/keys"]

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while not stop.is_set():
            number = random.randint(1, 200)
            try:
                if random.random() < 0.2:
                    await client.put(f"/items/{number}", params={"value": f"v{number}"})
                else:
                    await client.get(random.choice(paths).format(n=number))
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
            sent += 1
            await asyncio.sleep(random.uniform(0.001, 0.01))

    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return sent


async def _inject_faults(
    server: RedisServer | None, options: DemoOptions, stop: asyncio.Event, console: Console
) -> int:
    """Stall or stop Redis every ``fault_interval`` seconds; return how many faults ran."""
    count = 0
    if options.fault == "none" or server is None:
        return count
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=min(3.0, options.fault_interval))
    while not stop.is_set():
        count += 1
        if options.fault == "stall":
            # CLIENT PAUSE stalls every other client, so in-flight commands outlive
            # their timeouts for real.
            await asyncio.to_thread(server.pause, int(options.fault_length * 1000))
        else:
            await asyncio.to_thread(server.kill)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=options.fault_length)
            await asyncio.to_thread(server.start)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=options.fault_interval)
    return count


async def _serve(
    options: DemoOptions, redis_url: str, server: RedisServer | None, console: Console
) -> _StatsProcessor:
    stats = _StatsProcessor()
    handle = setup_telemetry("autobot-demo", span_processors=[stats])
    manager = AsyncRedisManager(redis_url, {"main": 0, "cache": 1}, max_connections=64)
    port = options.port or free_port()
    app = create_app(manager)
    config = uvicorn.Config(app, host=options.host, port=port, log_level="warning", lifespan="off")
    web = _EmbeddedServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    serving = asyncio.create_task(serve_without_exit(web))
    while not web.started:
        if serving.done():
            await manager.close()
            handle.shutdown()
            try:
                await serving
            except RuntimeError as exc:
                raise DemoError(f"the demo service {exc}") from exc
            raise DemoError(f"the demo service could not start on {options.host}:{port}")
        await asyncio.sleep(0.05)
    base_url = f"http://{options.host}:{port}"
    console.print(
        f"demo service on {base_url}; metrics at {base_url}/monitoring/metrics, "
        f"breakers at {base_url}/monitoring/breakers"
    )
    console.print(
        f"redis at {redis_url.split('@')[-1]}; fault: {options.fault}; "
        f"duration: {options.duration or 'until Ctrl-C'}"
        f"{' s' if options.duration else ''}"
    )

    driver = asyncio.create_task(_drive(base_url, options.concurrency, stop))
    faults = asyncio.create_task(_inject_faults(server, options, stop, console))
    started = time.monotonic()
    live = console.is_terminal if options.live is None else options.live
    try:
        if live:
            with Live(
                _table(stats, "autobot-otel demo"), console=console, refresh_per_second=2
            ) as view:
                while not stop.is_set() and not _expired(started, options.duration):
                    await asyncio.sleep(0.5)
                    view.update(
                        _table(stats, f"autobot-otel demo ({time.monotonic() - started:.0f} s)")
                    )
        else:
            last_print = started
            while not stop.is_set() and not _expired(started, options.duration):
                await asyncio.sleep(0.5)
                if time.monotonic() - last_print >= 5.0:
                    last_print = time.monotonic()
                    console.print(_table(stats, f"after {last_print - started:.0f} s"))
    finally:
        stop.set()
        sent = await driver
        fault_count = await faults
        web.should_exit = True
        await serving
        await manager.close()
        handle.shutdown()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    console.print(_table(stats, "summary"))
    timeouts = sum(op.outcomes.get("timeout", 0) for op in stats.operations.values())
    console.print(
        f"requests sent: {sent}; faults injected: {fault_count}; operation timeouts: {timeouts}"
    )
    return stats


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT and SIGTERM to the demo, which stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _expired(started: float, duration: float) -> bool:
    return duration > 0 and time.monotonic() - started >= duration


def run_demo(options: DemoOptions, console: Console | None = None) -> Any:
    """Run the demo until its duration passes or Ctrl-C; start Redis if no URL is given."""
    console = console or Console()
    if not console.is_terminal:
        console = Console(width=120)
    if not os.environ.get(SETTINGS_FILES_VARIABLE):
        # The demo's own layer shortens the breaker's open period so that a 30-second
        # run shows it open, probe and close again.
        configure(settings_files=[DEMO_SETTINGS])
    server: RedisServer | None = None
    redis_url = options.redis_url
    if redis_url is None:
        server = RedisServer().start()
        redis_url = server.url
        console.print(f"started a private redis-server on 127.0.0.1:{server.port}")
    try:
        return asyncio.run(_serve(options, redis_url, server, console))
    finally:
        if server is not None:
            server.stop()
            console.print("stopped the private redis-server")
