"""Measure what autobot-otel costs: per call, per Redis GET, in memory and in timer lateness.

Run it from the repository root with the project's virtual environment::

    .venv/bin/python benchmarks/overhead.py           # full mode, a few minutes on 2 cores
    .venv/bin/python benchmarks/overhead.py --quick   # about 15 s, to check that it runs

Each comparison runs its variants in this one process, interleaved: every round runs each
variant once, in an order that rotates from round to round, so that a change in CPU speed
during the run affects all variants alike. A time or a rate is the median over the rounds,
and a ratio is the median of the per-round ratios. The table at the end lists every
measurement with its target and whether this run met it. The exit status is 0 whatever
the figures are, because they depend on the machine. A non-zero status means that the
benchmark itself failed.

Telemetry is set up as a service sets it up, with SDK providers and the Prometheus reader
behind ``/monitoring/metrics``, except that spans go to a processor that drops them. The
figures therefore include creating spans but not exporting them. OTLP export is off.
docs/performance.md records the figures of full runs and what limits them.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run as a script, Python puts benchmarks/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind

from autobot_otel import (
    AsyncRedisManager,
    CircuitBreaker,
    OperationTimeoutError,
    _telemetry,
    remaining_time,
    setup_telemetry,
    timed,
    timed_operation,
)
from autobot_otel.demo.redis_server import RedisServer, RedisServerError

SECTIONS = (
    "1. per-call overhead",
    "2. Redis GET throughput",
    "3. configuration cost",
    "4. memory",
    "5. timeout precision",
)


@dataclass(frozen=True)
class Mode:
    """Sizes of one benchmark run."""

    rounds: int  # rounds of the interleaved comparisons in sections 1 and 3
    calls: int  # calls per variant and round in sections 1 and 3
    redis_rounds: int  # rounds of section 2, for each number of clients
    redis_gets: int  # GETs per variant and round in section 2, split over the clients
    memory_calls: int  # decorated calls between the two memory readings
    precision_rounds: int  # rounds of the timeout bursts in section 5


FULL = Mode(
    rounds=11,
    calls=10_000,
    redis_rounds=7,
    redis_gets=5_000,
    memory_calls=1_000_000,
    precision_rounds=10,
)
QUICK = Mode(
    rounds=3,
    calls=2_000,
    redis_rounds=3,
    redis_gets=400,
    memory_calls=100_000,
    precision_rounds=2,
)

CONCURRENT_TIMEOUTS = 1_000
SMALL_BURST = 100  # operations in flight in section 5's comparison burst
SHORT_TIMEOUT = 0.05  # seconds, the timeout of each operation in section 5
DISTINCT_NAMES = 1_000  # undeclared operation names created in section 4
# A coroutine that returns without awaiting never lets the event loop run, and the loop
# drops cancelled timers only when it runs. Until then, each cancelled asyncio.timeout()
# timer keeps a copy of the context alive, span included. Real operations do I/O and let
# the loop run between calls. So every variant yields to the event loop once every
# YIELD_EVERY calls, at the cost of one loop iteration shared by those calls.
YIELD_EVERY = 100


@dataclass
class Row:
    """One line of the result table."""

    section: str
    measurement: str
    value: str
    ratio: str = ""
    target: str = ""
    met: bool | None = None  # None: the row has no target


class DropSpans(SpanProcessor):
    """Span processor that ignores every span, so that no export cost is measured."""


# --------------------------------------------------------------------------- helpers


async def interleave(
    variants: dict[str, Callable[[], Awaitable[float]]], rounds: int
) -> dict[str, list[float]]:
    """Run each variant once per round, rotating the order, and collect their results."""
    names = list(variants)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            # A full collection before each batch starts every variant with the same
            # garbage collector state. The batch itself runs with the collector on.
            gc.collect()
            results[name].append(await variants[name]())
    return results


def per_call(func: Callable[[], Awaitable[Any]], calls: int) -> Callable[[], Awaitable[float]]:
    """Return a batch that awaits ``func()`` ``calls`` times and returns seconds per call.

    The time is the CPU time of this thread, so that other processes on a busy machine do
    not inflate it. Time spent waiting for I/O is not counted either.
    """

    async def batch() -> float:
        start = time.thread_time()
        for _ in range(calls // YIELD_EVERY):
            for _ in range(YIELD_EVERY):
                await func()
            await asyncio.sleep(0)
        return (time.thread_time() - start) / (calls // YIELD_EVERY * YIELD_EVERY)

    return batch


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Return the median of the per-round ratios."""
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


def percentile(values: list[float], fraction: float) -> float:
    """Return the ``fraction`` quantile of ``values`` by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def microseconds(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} us"


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def load_average() -> str:
    """Return the 1-minute load average, which shows whether other work shared the CPUs."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def resident_bytes() -> int | None:
    """Return the resident set size of this process, or None where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def series_count(handle: Any, sample_name: str) -> int:
    """Return how many series named ``sample_name`` a Prometheus scrape shows now."""
    return sum(
        1
        for metric in handle.prometheus_registry.collect()
        for sample in metric.samples
        if sample.name == sample_name
    )


async def trivial() -> int:
    return 1


# --------------------------------------------------------------------------- sections


async def per_call_overhead(mode: Mode, handle: Any) -> list[Row]:
    """Section 1: full instrumentation against the same work written by hand with the SDK."""
    section = SECTIONS[0]
    decorated = timed_operation("redis.get", breaker=CircuitBreaker("bench"))(trivial)
    operation = decorated.__autobot_operation__  # type: ignore[attr-defined]

    # The hand-written variant uses SDK instruments of its own on the same providers, with
    # the same span attributes and metric labels. It has no breaker and sets no span
    # attributes at the end, so it does a little less than the decorator, and the ratio
    # does not flatter the decorator.
    meter = handle.meter_provider.get_meter("bench.hand_written")
    tracer = handle.tracer_provider.get_tracer("bench.hand_written")
    histogram = meter.create_histogram(
        "bench.hand_written.duration",
        unit="s",
        explicit_bucket_boundaries_advisory=list(_telemetry.DURATION_BUCKETS),
    )
    counter = meter.create_counter("bench.hand_written.requests", unit="{request}")
    span_attributes = dict(operation.span_attributes)
    metric_attributes = dict(operation.metric_attributes)
    counter_attributes = dict(operation.redis_attributes["success"])
    timeout = operation.timeout

    async def hand_written() -> int:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with tracer.start_as_current_span(
            "redis.get", kind=SpanKind.INTERNAL, attributes=span_attributes
        ):
            async with asyncio.timeout(timeout):
                result = await trivial()
            histogram.record(loop.time() - start, metric_attributes)
            counter.add(1, counter_attributes)
        return result

    results = await interleave(
        {
            "bare": per_call(trivial, mode.calls),
            "hand": per_call(hand_written, mode.calls),
            "ours": per_call(decorated, mode.calls),
        },
        mode.rounds,
    )
    bare = statistics.median(results["bare"])
    hand = statistics.median(results["hand"])
    ours = statistics.median(results["ours"])
    ratio = median_ratio(results["ours"], results["hand"])
    return [
        Row(section, "bare call of `async def f(): return 1`", microseconds(bare)),
        Row(
            section,
            "hand-written SDK span + histogram + counter + asyncio.timeout",
            microseconds(hand),
        ),
        Row(
            section,
            "@timed_operation: timeout, breaker, span, metrics",
            microseconds(ours),
            f"{ratio:.2f} of hand-written",
            "<= 0.80",
            ratio <= 0.80,
        ),
        Row(section, "@timed_operation cost over the bare call", microseconds(ours - bare)),
    ]


async def redis_throughput(
    mode: Mode,
    handle: Any,
    instruments: _telemetry.Instruments,
    metrics_only: _telemetry.Instruments,
) -> list[Row]:
    """Section 2: loopback GETs per second, bare and with each kind of instrumentation."""
    section = SECTIONS[1]
    try:
        server = RedisServer().start()
    except RedisServerError as exc:
        return [Row(section, "skipped", str(exc))]

    # Every variant uses a pool built by AsyncRedisManager, with the same socket timeouts,
    # so that the rows differ only in instrumentation.
    plain = AsyncRedisManager(server.url, {"main": 0}, instrument=False)
    everything = AsyncRedisManager(server.url, {"main": 0})
    bare_client = plain.database("main").client
    otel_manager = AsyncRedisManager(server.url, {"main": 0}, instrument=False, breakers=False)
    otel_client = otel_manager.database("main").client
    RedisInstrumentor().instrument_client(otel_client, tracer_provider=handle.tracer_provider)
    key = "bench:key"
    rows: list[Row] = []
    try:
        await bare_client.set(key, b"x" * 100)

        variants: dict[str, tuple[_telemetry.Instruments, Callable[[str], Awaitable[Any]]]] = {
            "bare": (instruments, bare_client.get),
            "otel": (instruments, otel_client.get),
            "all": (instruments, everything.database("main").get),
            "own": (instruments, plain.database("main").get),
            "metrics": (metrics_only, plain.database("main").get),
        }

        for clients in (1, 10):
            batches = {
                name: throughput_batch(chosen, get, key, mode.redis_gets, clients)
                for name, (chosen, get) in variants.items()
            }
            results = await interleave(batches, mode.redis_rounds)
            rates = {name: statistics.median(values) for name, values in results.items()}
            rows.extend(redis_rows(section, clients, rates, results))
    finally:
        _telemetry._install(instruments)
        for manager in (plain, everything, otel_manager):
            await manager.close()
        server.stop()
    return rows


def throughput_batch(
    chosen: _telemetry.Instruments,
    get: Callable[[str], Awaitable[Any]],
    key: str,
    total: int,
    clients: int,
) -> Callable[[], Awaitable[float]]:
    """Return a batch of ``total`` GETs by ``clients`` tasks that returns GETs per second."""
    per_client = total // clients

    async def client() -> None:
        for _ in range(per_client):
            await get(key)

    async def batch() -> float:
        # The package reads the active instruments at each call. Installing them here,
        # outside the timed part, is how a variant runs with tracing sampled off.
        _telemetry._install(chosen)
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return per_client * clients / (time.perf_counter() - start)

    return batch


def redis_rows(
    section: str, clients: int, rates: dict[str, float], results: dict[str, list[float]]
) -> list[Row]:
    def rate(name: str) -> str:
        return f"{rates[name]:,.0f} GET/s"

    def ratio(name: str, base: str) -> float:
        return median_ratio(results[name], results[base])

    suffix = f", {clients} client{'s' if clients > 1 else ''}"
    all_ratio = ratio("all", "otel")
    own_ratio = ratio("own", "otel")
    metrics_ratio = ratio("metrics", "bare")
    return [
        Row(section, "bare redis-py" + suffix, rate("bare")),
        Row(
            section,
            "RedisInstrumentor alone" + suffix,
            rate("otel"),
            f"{ratio('otel', 'bare'):.2f} of bare",
        ),
        Row(
            section,
            "AsyncRedisManager, all on, RedisInstrumentor too" + suffix,
            rate("all"),
            f"{all_ratio:.2f} of RedisInstrumentor",
            ">= 1.00",
            all_ratio >= 1.0,
        ),
        Row(
            section,
            "AsyncRedisManager, all on, instrument=False" + suffix,
            rate("own"),
            f"{own_ratio:.2f} of RedisInstrumentor",
            ">= 1.00",
            own_ratio >= 1.0,
        ),
        Row(
            section,
            "AsyncRedisManager, metrics only (sampler off)" + suffix,
            rate("metrics"),
            f"{metrics_ratio:.2f} of bare",
            ">= 0.85",
            metrics_ratio >= 0.85,
        ),
    ]


async def configuration_cost(mode: Mode) -> list[Row]:
    """Section 3: a timeout from the configuration layers against a fixed ``default=``."""
    section = SECTIONS[2]
    # Both operations are LLM ones, so they record the same instruments and only the
    # source of the timeout differs: llm.fast is declared in defaults.yaml, and
    # llm.bench_fixed is not, so its timeout is the constant passed as default.
    configured = timed_operation("llm.fast")(trivial)
    fixed = timed_operation("llm.bench_fixed", default=30.0)(trivial)
    results = await interleave(
        {"configured": per_call(configured, mode.calls), "fixed": per_call(fixed, mode.calls)},
        mode.rounds,
    )
    ratio = median_ratio(results["configured"], results["fixed"])
    return [
        Row(
            section,
            "timeout from configuration (llm.fast)",
            microseconds(statistics.median(results["configured"])),
        ),
        Row(
            section,
            "fixed timeout (default=30.0)",
            microseconds(statistics.median(results["fixed"])),
        ),
        Row(
            section,
            "configured / fixed",
            "",
            f"{ratio:.3f}",
            "<= 1.02",
            ratio <= 1.02,
        ),
    ]


async def memory(mode: Mode, handle: Any) -> list[Row]:
    """Section 4: resident memory growth over many calls, and metric series per argument."""
    section = SECTIONS[3]

    @timed_operation("redis.get", breaker=CircuitBreaker("bench-memory"))
    async def lookup(key: int) -> int:
        return key

    # Warm up first, so that one-time allocations (the first series, caches) are not
    # counted as growth.
    for key in range(20_000):
        await lookup(key)
    await asyncio.sleep(0)
    gc.collect()
    series_before = series_count(handle, "autobot_operation_duration_seconds_count")
    before = resident_bytes()
    for key in range(mode.memory_calls):
        await lookup(key)
        if key % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    await asyncio.sleep(0)
    gc.collect()
    after = resident_bytes()

    # Names built at run time are not declared in the configuration, so they all share
    # the label value "other" and add at most one series.
    for index in range(DISTINCT_NAMES):
        async with timed(f"bench.dynamic_{index}", default=1.0):
            pass
    series_after = series_count(handle, "autobot_operation_duration_seconds_count")

    # Calls that never suspend keep the event loop from dropping their cancelled timers,
    # so whatever a timer handle references stays alive until the loop runs again.
    unyielding_calls = mode.memory_calls // 10
    await asyncio.sleep(0)
    gc.collect()
    unyielding_before = resident_bytes()
    for key in range(unyielding_calls):
        await lookup(key)
    gc.collect()
    unyielding_after = resident_bytes()
    await asyncio.sleep(0)

    growth = memory_row(
        section,
        f"resident growth over {mode.memory_calls:,} calls with distinct arguments",
        before,
        after,
    )
    growth.target = "< 5 MB"
    growth.met = before is not None and after is not None and after - before < 5 * 2**20
    return [
        growth,
        Row(
            section,
            f"duration series after those calls and {DISTINCT_NAMES:,} run-time names",
            f"{series_before} -> {series_after}",
            f"+{series_after - series_before}",
            "<= +1",
            series_after - series_before <= 1,
        ),
        memory_row(
            section,
            f"resident growth over {unyielding_calls:,} calls that never let the loop run",
            unyielding_before,
            unyielding_after,
        ),
    ]


def memory_row(section: str, measurement: str, before: int | None, after: int | None) -> Row:
    if before is None or after is None:
        return Row(section, measurement, "n/a: no /proc/self/statm")
    return Row(section, measurement, f"{(after - before) / 2**20:.2f} MB")


async def timeout_precision(mode: Mode) -> list[Row]:
    """Section 5: how late a timeout reaches its caller with many operations in flight.

    All operations of a round start together and time out together. The event loop
    handles one timeout after another, so the last ones wait for the work of all those
    before them. The smaller burst and asyncio.timeout_at alone show how much of the
    lateness is that queue and how much is the timer itself.
    """
    section = SECTIONS[4]
    loop = asyncio.get_running_loop()

    # Each operation appends (deadline, time its caller got the timeout).
    Events = list[tuple[float, float]]

    async def timed_sleep(events: Events) -> None:
        try:
            async with timed("bench.precision", default=SHORT_TIMEOUT):
                deadline = loop.time() + (remaining_time() or 0.0)
                await asyncio.sleep(10)
        except OperationTimeoutError:
            events.append((deadline, loop.time()))

    async def plain_sleep(events: Events) -> None:
        deadline = loop.time() + SHORT_TIMEOUT
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.sleep(10)
        except TimeoutError:
            events.append((deadline, loop.time()))

    bursts = {
        "timed": (timed_sleep, CONCURRENT_TIMEOUTS),
        "plain": (plain_sleep, CONCURRENT_TIMEOUTS),
        "timed_small": (timed_sleep, SMALL_BURST),
    }
    collected: dict[str, list[Events]] = {name: [] for name in bursts}

    def burst(name: str) -> Callable[[], Awaitable[float]]:
        one, count = bursts[name]

        async def batch() -> float:
            events: Events = []
            await asyncio.gather(*(one(events) for _ in range(count)))
            if len(events) != count:
                raise RuntimeError(f"{name}: only {len(events)} of {count} operations timed out")
            collected[name].append(events)
            return 0.0

        return batch

    await interleave({name: burst(name) for name in bursts}, mode.precision_rounds)

    def lateness(events: Events) -> list[float]:
        return [finished - deadline for deadline, finished in events]

    def lateness_row(name: str, label: str, fraction: float, *, target: bool = False) -> Row:
        # The median over rounds of each round's quantile, like the other sections. A
        # round in which the process was preempted or collected garbage shows in "max".
        value = statistics.median(
            percentile(lateness(events), fraction) for events in collected[name]
        )
        measurement = f"{label}, p{round(fraction * 100)}"
        if not target:
            return Row(section, measurement, milliseconds(value))
        return Row(section, measurement, milliseconds(value), "", "<= 2 ms", value <= 0.002)

    def spacing(events: Events, index: int) -> float:
        # Deadlines are as far apart as the loop took to start one operation, and
        # timeouts reach their callers as far apart as it took to finish one.
        times = [event[index] for event in events]
        return (max(times) - min(times)) / (len(times) - 1)

    many = f"{CONCURRENT_TIMEOUTS:,} in flight"
    started = statistics.median(spacing(events, 0) for events in collected["timed"])
    finished = statistics.median(spacing(events, 1) for events in collected["timed"])
    worst = max(max(lateness(events)) for events in collected["timed"])
    return [
        lateness_row("plain", f"asyncio.timeout_at alone, {many}", 0.50),
        lateness_row("plain", f"asyncio.timeout_at alone, {many}", 0.99),
        lateness_row("timed_small", f"timed(), {SMALL_BURST} in flight", 0.50),
        lateness_row("timed_small", f"timed(), {SMALL_BURST} in flight", 0.99),
        lateness_row("timed", f"timed(), {many}", 0.50),
        lateness_row("timed", f"timed(), {many}", 0.99, target=True),
        Row(section, f"timed(), {many}, max over all rounds", milliseconds(worst)),
        Row(section, f"timed(), {many}: loop time to start one", microseconds(started)),
        Row(section, f"timed(), {many}: loop time to time out one", microseconds(finished)),
    ]


# --------------------------------------------------------------------------- report


def print_table(rows: list[Row], mode_name: str, seconds: float, load: str) -> None:
    headers = ("measurement", "value", "ratio", "target", "result")
    verdicts = {None: "", True: "met", False: "NOT MET"}
    cells = [(row.measurement, row.value, row.ratio, row.target, verdicts[row.met]) for row in rows]
    widths = [
        max(len(header), *(len(cell[i]) for cell in cells)) for i, header in enumerate(headers)
    ]

    def line(values: tuple[str, ...]) -> str:
        return "  ".join(
            value.ljust(width) for value, width in zip(values, widths, strict=True)
        ).rstrip()

    print(
        f"autobot-otel overhead benchmark, {mode_name} mode: Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}, {seconds:.1f} s, {load}"
    )
    section = None
    for row, cell in zip(rows, cells, strict=True):
        if row.section != section:
            section = row.section
            print()
            print(f"== {section}")
            print(line(headers))
        print(line(cell))
    targets = [row for row in rows if row.met is not None]
    met = sum(1 for row in targets if row.met)
    print()
    print(f"targets met: {met} of {len(targets)}")


async def run(mode: Mode, sections: set[int]) -> list[Row]:
    # The Prometheus reader is the one metric reader, as behind /monitoring/metrics.
    handle = setup_telemetry(
        "autobot-bench",
        prometheus=True,
        span_processors=[DropSpans()],
        set_global=False,
    )
    try:
        instruments = _telemetry.instruments()
        # Same meters, but a tracer whose sampler records nothing: metrics only.
        metrics_only = copy.copy(instruments)
        metrics_only.tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer(_telemetry.SCOPE_NAME)

        rows: list[Row] = []
        if 1 in sections:
            rows += await per_call_overhead(mode, handle)
        if 2 in sections:
            rows += await redis_throughput(mode, handle, instruments, metrics_only)
        if 3 in sections:
            rows += await configuration_cost(mode)
        if 4 in sections:
            rows += await memory(mode, handle)
        if 5 in sections:
            rows += await timeout_precision(mode)
        return rows
    finally:
        handle.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="run each section briefly (about 15 s on 2 cores), with rough figures",
    )
    parser.add_argument(
        "--section",
        type=int,
        action="append",
        choices=range(1, len(SECTIONS) + 1),
        metavar="N",
        help="run only section N (1 to 5); repeat the option for several (default: all)",
    )
    args = parser.parse_args(argv)
    sections = set(args.section or range(1, len(SECTIONS) + 1))
    mode = QUICK if args.quick else FULL

    # The benchmark measures in-process cost: no export to a Collector, even if the
    # environment names one.
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    # Sections 3 to 5 use undeclared operation names on purpose, and their warnings would
    # only clutter the table.
    logging.getLogger("autobot_otel").setLevel(logging.ERROR)

    start = time.perf_counter()
    load_before = load_average()
    rows = asyncio.run(run(mode, sections))
    load = f"load average {load_before} before, {load_average()} after"
    print_table(rows, "quick" if args.quick else "full", time.perf_counter() - start, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
