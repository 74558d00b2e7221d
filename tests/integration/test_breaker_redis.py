"""The circuit breaker of a Redis database against a real redis-server.

Outages are made by killing the server and starting it again on the same port, stalls
with CLIENT PAUSE. Probe counts are read from the server's own INFO commandstats, so they
show what reached Redis rather than what the client believes it sent.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import exceptions as redis_exceptions

from autobot_otel import (
    AsyncRedisManager,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    OperationTimeoutError,
    configure,
)
from autobot_otel.demo.redis_server import RedisServer
from tests.conftest import Telemetry

pytestmark = pytest.mark.integration


def use_settings(tmp_path: Path, text: str) -> None:
    """Write ``text`` as a settings file and make it the active configuration."""
    path = tmp_path / "settings.yaml"
    path.write_text(textwrap.dedent(text))
    configure(settings_files=[path])


def breaker_settings(**main: object) -> str:
    """Return settings with 0.2 s Redis timeouts and ``main`` as circuit_breaker.main."""
    lines = "\n".join(f"      {key}: {value}" for key, value in main.items())
    return (
        "default:\n"
        "  timeouts:\n"
        "    redis:\n"
        "      operations:\n"
        "        get: 0.2\n"
        "  circuit_breaker:\n"
        "    main:\n"
        "      open_duration_jitter: 0.0\n"
        f"{lines}\n"
    )


def start_again(server: RedisServer) -> None:
    """Start the killed ``server`` again on its port."""
    server.start()


@pytest.fixture
def restart_after(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's redis-server, started again after the test if the test killed it."""
    yield redis_server
    if not redis_server.ping():
        start_again(redis_server)


async def wait_for_half_open(breaker: CircuitBreaker) -> None:
    """Sleep until the open ``breaker`` admits probes."""
    retry_after = breaker.snapshot()["retry_after"]
    assert isinstance(retry_after, float)
    await asyncio.sleep(retry_after + 0.02)


def server_calls(server: RedisServer, command: str) -> int:
    """Return how many times the server ran ``command`` since its stats were reset."""
    stats = server.info("commandstats").get(f"cmdstat_{command}")
    if stats is None:
        return 0
    fields = dict(item.split("=", 1) for item in stats.split(","))
    return int(fields["calls"])


def events(telemetry: Telemetry, event: str, reason: str) -> float:
    """Return ``autobot_circuit_breaker_events_total`` of breaker ``main``."""
    return telemetry.value(
        "autobot.circuit_breaker.events", database="main", event=event, reason=reason
    )


def state_gauge(telemetry: Telemetry) -> float:
    return telemetry.value("autobot.circuit_breaker.state", database="main")


def requests(telemetry: Telemetry, status: str) -> float:
    """Return ``autobot_redis_requests_total`` of ``get`` on ``main`` with ``status``."""
    return telemetry.value(
        "autobot.redis.requests", database="main", operation="get", status=status
    )


def scraped(telemetry: Telemetry, name: str, **labels: str) -> float | None:
    """Return the value of sample ``name`` with exactly ``labels`` in the scrape, if any."""
    for family in text_string_to_metric_families(telemetry.scrape()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def test_outage_opens_then_probe_closes(
    tmp_path: Path, restart_after: RedisServer, telemetry: Telemetry
) -> None:
    """A killed server opens the breaker after three failures, and one probe closes it."""
    server = restart_after
    # The breaker must stay open through the 1000 rejected calls below, even on a
    # machine busy enough to make them slow.
    use_settings(tmp_path, breaker_settings(consecutive_failures=3, open_duration=2.0))
    async with AsyncRedisManager(server.url, {"main": 0}) as manager:
        main = manager.database("main")
        breaker = main.breaker
        assert breaker is not None
        await main.set("key", "value")

        server.kill()
        for _ in range(3):
            with pytest.raises(redis_exceptions.ConnectionError):
                await main.get("key")
        assert breaker.state is BreakerState.OPEN
        # The pool keeps the closed connection's object, but it is no idle connection.
        assert main.pool_usage() == (0, 0)

        rejections = 1000
        rejected = 0
        started = time.perf_counter()
        for _ in range(rejections):
            try:
                await main.get("key")
            except CircuitOpenError:
                rejected += 1
        mean = (time.perf_counter() - started) / rejections
        assert rejected == rejections
        # Lenient on purpose, because the check shows that no network I/O happens and is
        # no benchmark.
        assert mean < 0.001, f"a rejected call took {mean * 1e6:.0f} µs on average"

        assert state_gauge(telemetry) == 1
        assert scraped(telemetry, "autobot_circuit_breaker_state", database="main") == 1.0
        assert scraped(
            telemetry,
            "autobot_circuit_breaker_events_total",
            database="main",
            event="opened",
            reason="consecutive_failures",
        ) == 1.0
        assert events(telemetry, "rejected", "breaker_open") == rejections
        assert requests(telemetry, "error") == 3
        assert requests(telemetry, "rejected") == rejections

        start_again(server)
        await wait_for_half_open(breaker)
        assert await main.get("key") is None  # the restarted server is empty
        assert breaker.state is BreakerState.CLOSED
        assert server_calls(server, "get") == 1

    assert state_gauge(telemetry) == 0
    assert events(telemetry, "half_opened", "open_duration_elapsed") == 1
    assert events(telemetry, "probe_succeeded", "none") == 1
    assert events(telemetry, "closed", "probe_success") == 1
    assert requests(telemetry, "success") == 1
    # A rejected call is not timed, so only the three failures and the probe are.
    assert telemetry.value(
        "autobot.operation.duration", operation_type="redis.get", database="main"
    ) == 4


async def test_stall_timeouts_open_breaker(
    tmp_path: Path, redis_server: RedisServer, telemetry: Telemetry
) -> None:
    """Timeouts in a stall count as failures: half of four calls failing opens the breaker."""
    use_settings(
        tmp_path,
        breaker_settings(
            sliding_window_size=4, minimum_calls=4, failure_rate_threshold=0.5, open_duration=5.0
        ),
    )
    async with AsyncRedisManager(redis_server.url, {"main": 0}) as manager:
        main = manager.database("main")
        breaker = main.breaker
        assert breaker is not None
        await main.set("key", "value")
        assert await main.get("key") == b"value"

        redis_server.pause(800)
        end = asyncio.get_running_loop().time() + 0.8
        with pytest.raises(OperationTimeoutError):
            await main.get("key")
        assert breaker.state is BreakerState.CLOSED
        with pytest.raises(OperationTimeoutError):
            await main.get("key")
        assert breaker.state is BreakerState.OPEN

        started = time.monotonic()
        with pytest.raises(CircuitOpenError) as caught:
            await main.get("key")
        assert time.monotonic() - started < 0.05
        assert caught.value.breaker == "main"
        assert caught.value.retry_after is not None
        assert 4.0 < caught.value.retry_after <= 5.0
        await asyncio.sleep(max(0.0, end - asyncio.get_running_loop().time()) + 0.05)

    assert events(telemetry, "opened", "failure_rate") == 1
    assert state_gauge(telemetry) == 1
    assert telemetry.value(
        "autobot.timeout", operation_type="redis.get", database="main", status="timeout"
    ) == 2
    assert requests(telemetry, "timeout") == 2
    assert requests(telemetry, "rejected") == 1


async def test_half_open_admits_exact_probe_count(
    tmp_path: Path, restart_after: RedisServer, telemetry: Telemetry
) -> None:
    """Of ten concurrent calls after the open period, exactly three reach Redis."""
    server = restart_after
    use_settings(
        tmp_path,
        breaker_settings(consecutive_failures=2, open_duration=0.3, half_open_max_calls=3),
    )
    async with AsyncRedisManager(server.url, {"main": 0}) as manager:
        main = manager.database("main")
        breaker = main.breaker
        assert breaker is not None

        server.kill()
        for _ in range(2):
            with pytest.raises(redis_exceptions.ConnectionError):
                await main.get("key")
        assert breaker.state is BreakerState.OPEN

        start_again(server)
        # The raw client is not guarded by the breaker and does not count as a GET.
        await main.client.set("key", "value")
        server.command("CONFIG", "RESETSTAT")
        await wait_for_half_open(breaker)

        results = await asyncio.gather(*(main.get("key") for _ in range(10)), return_exceptions=True)

        assert results[:3] == [b"value"] * 3
        assert [type(result) for result in results[3:]] == [CircuitOpenError] * 7
        assert server_calls(server, "get") == 3
        assert breaker.state is BreakerState.CLOSED

    assert events(telemetry, "rejected", "half_open_full") == 7
    assert events(telemetry, "probe_succeeded", "none") == 3
    assert events(telemetry, "closed", "probe_success") == 1
    assert state_gauge(telemetry) == 0


async def test_cancelled_probe_frees_its_slot(
    tmp_path: Path, redis_server: RedisServer, telemetry: Telemetry
) -> None:
    """A probe cancelled in flight leaves the breaker half-open, ready for the next probe."""
    use_settings(tmp_path, breaker_settings(consecutive_failures=2, open_duration=0.2))
    async with AsyncRedisManager(redis_server.url, {"main": 0}) as manager:
        main = manager.database("main")
        breaker = main.breaker
        assert breaker is not None
        await main.set("key", "value")

        redis_server.pause(1200)
        end = asyncio.get_running_loop().time() + 1.2
        for _ in range(2):
            with pytest.raises(OperationTimeoutError):
                await main.get("key")
        assert breaker.state is BreakerState.OPEN
        await wait_for_half_open(breaker)

        probe = asyncio.create_task(main.get("key"))
        await asyncio.sleep(0.05)
        assert breaker.state is BreakerState.HALF_OPEN
        assert breaker.snapshot()["half_open_in_flight"] == 1
        with pytest.raises(CircuitOpenError):
            await main.get("key")

        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert breaker.state is BreakerState.HALF_OPEN
        assert breaker.snapshot()["half_open_in_flight"] == 0

        await asyncio.sleep(max(0.0, end - asyncio.get_running_loop().time()) + 0.05)
        assert await main.get("key") == b"value"
        assert breaker.state is BreakerState.CLOSED

    assert requests(telemetry, "cancelled") == 1
    assert events(telemetry, "rejected", "half_open_full") == 1
    assert events(telemetry, "probe_failed", "probe_failure") == 0
    assert events(telemetry, "probe_succeeded", "none") == 1
    assert events(telemetry, "closed", "probe_success") == 1
