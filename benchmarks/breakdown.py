"""Split the per-call cost of ``@timed_operation`` into span, histogram and the rest.

Run it from the repository root::

    .venv/bin/python benchmarks/breakdown.py [--redis] [--rounds N] [--calls N]

It times the decorated no-op call of benchmarks/overhead.py (section 1), or with
``--redis`` a loopback GET through AsyncRedisManager, with parts of the telemetry
replaced. The variants run interleaved round by round in one process, and it prints the
median CPU time per call of each. The difference between two rows is what the removed
part costs inside a real call, which can be more than the same SDK call costs alone in a
tight loop. The replacements exist only here; the package always runs the full path.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import sys
from pathlib import Path
from typing import Any

# Run as a script, Python puts benchmarks/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NoOpTracer

from autobot_otel import (
    AsyncRedisManager,
    CircuitBreaker,
    _telemetry,
    setup_telemetry,
    timed_operation,
)
from autobot_otel.demo.redis_server import RedisServer
from benchmarks.overhead import DropSpans, interleave, per_call, trivial

KEY = "bench:key"


class _NoHistogram:
    """Stand-in for the duration histogram that records nothing."""

    def record(self, *args: Any, **kwargs: Any) -> None:
        pass


def variants(instruments: _telemetry.Instruments) -> dict[str, _telemetry.Instruments]:
    """Return the instrument sets to compare, by the name printed for each."""
    sampled_off = copy.copy(instruments)
    sampled_off.tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer(_telemetry.SCOPE_NAME)
    no_span = copy.copy(instruments)
    no_span.tracer = NoOpTracer()
    no_histogram = copy.copy(instruments)
    no_histogram.duration = _NoHistogram()  # type: ignore[assignment]
    neither = copy.copy(no_span)
    neither.duration = _NoHistogram()  # type: ignore[assignment]
    return {
        "all on": instruments,
        "tracing sampled off (ALWAYS_OFF)": sampled_off,
        "no span (NoOpTracer)": no_span,
        "no histogram record": no_histogram,
        "no span, no histogram": neither,
    }


async def measure(rounds: int, calls: int, redis: bool) -> dict[str, float]:
    """Return the median CPU seconds per call of each variant."""
    handle = setup_telemetry(
        "autobot-bench", prometheus=True, span_processors=[DropSpans()], set_global=False
    )
    server: RedisServer | None = None
    manager: AsyncRedisManager | None = None
    try:
        instruments = _telemetry.instruments()
        chosen = variants(instruments)
        if redis:
            server = RedisServer().start()
            # instrument=False: RedisInstrumentor's own span is not part of this split.
            manager = AsyncRedisManager(server.url, {"main": 0}, instrument=False)
            database = manager.database("main")
            await database.client.set(KEY, b"x" * 100)
            measured = per_call(lambda: database.get(KEY), calls)
            bare = per_call(lambda: database.client.get(KEY), calls)
        else:
            decorated = timed_operation("redis.get", breaker=CircuitBreaker("bench"))(trivial)
            measured = per_call(decorated, calls)
            bare = per_call(trivial, calls)

        def batch(active: _telemetry.Instruments, run: Any) -> Any:
            async def timed_batch() -> float:
                # The package reads the active instruments at each call.
                _telemetry._install(active)
                result: float = await run()
                return result

            return timed_batch

        batches = {name: batch(item, measured) for name, item in chosen.items()}
        batches["bare call, no package code"] = batch(instruments, bare)
        results = await interleave(batches, rounds)
        return {name: statistics.median(values) for name, values in results.items()}
    finally:
        if manager is not None:
            await manager.close()
        if server is not None:
            server.stop()
        handle.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11, help="interleaved rounds (default 11)")
    parser.add_argument(
        "--calls", type=int, default=5_000, help="calls per variant and round (default 5000)"
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="time loopback Redis GETs through AsyncRedisManager instead of a no-op call",
    )
    args = parser.parse_args(argv)
    medians = asyncio.run(measure(args.rounds, args.calls, args.redis))
    full = medians["all on"]
    subject = "Redis GET" if args.redis else "no-op call"
    print(f"{'variant (' + subject + ')':36s} CPU per call   saved vs all on")
    for name, seconds in medians.items():
        print(f"{name:36s} {seconds * 1e6:8.2f} us   {(full - seconds) * 1e6:8.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
