"""AsyncRedisManager against a real redis-server: replies, metrics, stalls, cancellation,
pool limits and what spans must never contain.

Stalls are made with CLIENT PAUSE, which delays every command of every client until the
pause ends. On redis-server 7.0 CLIENT UNPAUSE waits for the pause as well, so each test
waits for its own pause to end instead of trying to cut it short.
"""

from __future__ import annotations

import asyncio
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families
from redis import exceptions as redis_exceptions

from autobot_otel import (
    AsyncRedisManager,
    BreakerState,
    OperationTimeoutError,
    PoolExhaustedError,
    configure,
)
from autobot_otel.demo.redis_server import RedisServer, free_port
from autobot_otel.redis import RedisDatabase
from tests.conftest import Telemetry
from tests.tools import require_tool

pytestmark = pytest.mark.integration

OPERATIONS = ("get", "set", "hgetall", "pipeline", "scan_iter")
DURATION_BUCKETS = ("0.001", "0.01", "0.1", "0.5", "1.0", "2.0", "5.0", "10.0", "30.0", "+Inf")

# The operations that tests stall get 0.2 s, so that a stall turns into a timeout
# quickly. set and scan_iter keep their defaults.
SHORT_TIMEOUTS = """
default:
  timeouts:
    redis:
      operations:
        get: 0.2
        hgetall: 0.2
        pipeline: 0.2
"""


def use_settings(tmp_path: Path, text: str) -> None:
    """Write ``text`` as a settings file and make it the active configuration."""
    path = tmp_path / "settings.yaml"
    path.write_text(textwrap.dedent(text))
    configure(settings_files=[path])


async def stall(server: RedisServer, seconds: float) -> float:
    """Pause every client of ``server`` for ``seconds`` and return the loop time it ends."""
    server.pause(int(seconds * 1000))
    return asyncio.get_running_loop().time() + seconds


async def wait_until(end: float) -> None:
    """Sleep until loop time ``end`` has passed, with a margin for the server's clock."""
    await asyncio.sleep(max(0.0, end - asyncio.get_running_loop().time()) + 0.05)


def requests(telemetry: Telemetry, operation: str, status: str) -> float:
    """Return ``autobot_redis_requests_total`` of database ``main`` for one operation."""
    return telemetry.value(
        "autobot.redis.requests", database="main", operation=operation, status=status
    )


def calls(telemetry: Telemetry, operation: str) -> float:
    """Return the duration histogram count of ``redis.<operation>`` on ``main``."""
    return telemetry.value(
        "autobot.operation.duration", operation_type=f"redis.{operation}", database="main"
    )


def server_calls(server: RedisServer, command: str) -> int:
    """Return how many times the server ran ``command`` since the last CONFIG RESETSTAT."""
    stats = server.info("commandstats").get(f"cmdstat_{command}")
    if stats is None:
        return 0
    fields = dict(item.split("=", 1) for item in stats.split(","))
    return int(fields["calls"])


# --------------------------------------------------------------------------- replies and metrics


async def test_operations_return_server_values(
    redis_server: RedisServer, telemetry: Telemetry
) -> None:
    """get, set, hgetall, pipeline and scan_iter return what the server contains."""
    async with AsyncRedisManager(redis_server.url, {"main": 0, "cache": 1}) as manager:
        main = manager.database("main")
        cache = manager.database("cache")

        for number in (1, 2, 3):
            assert await main.set(f"user:{number}", f"name-{number}") is True
        assert await cache.set("user:1", "cached") is True
        assert await main.get("user:1") == b"name-1"
        assert await main.get("missing") is None
        assert await cache.get("user:1") == b"cached"

        async with main.pipeline() as pipe:
            pipe.hset("profile:1", mapping={"name": "alice", "role": "admin"})
            pipe.set("counter", 5)
            pipe.incr("counter")
            assert await pipe.execute() == [2, True, 6]
        assert await main.hgetall("profile:1") == {b"name": b"alice", b"role": b"admin"}

        keys = [key async for key in main.scan_iter(match="user:*", count=2)]
        assert sorted(keys) == [b"user:1", b"user:2", b"user:3"]

    assert requests(telemetry, "set", "success") == 3
    assert requests(telemetry, "get", "success") == 2
    assert requests(telemetry, "pipeline", "success") == 1
    assert requests(telemetry, "hgetall", "success") == 1
    # One SCAN round trip is one timed call, so the server's count is the expected one.
    scans = server_calls(redis_server, "scan")
    assert scans >= 1
    assert requests(telemetry, "scan_iter", "success") == scans
    assert calls(telemetry, "scan_iter") == scans
    for operation, count in (("set", 3), ("get", 2), ("pipeline", 1), ("hgetall", 1)):
        assert calls(telemetry, operation) == count
    for status in ("error", "timeout", "cancelled", "rejected", "pool_exhausted"):
        for operation in OPERATIONS:
            assert requests(telemetry, operation, status) == 0
    assert (
        telemetry.value(
            "autobot.redis.requests", database="cache", operation="get", status="success"
        )
        == 1
    )


async def test_scrape_uses_contract_names(redis_server: RedisServer, telemetry: Telemetry) -> None:
    """The Prometheus text has the contract's names, labels and histogram buckets."""
    async with AsyncRedisManager(redis_server.url, {"main": 0}, max_connections=4) as manager:
        main = manager.database("main")
        await main.set("key", "value")
        assert await main.get("key") == b"value"
        text = telemetry.scrape()

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    request = (
        "autobot_redis_requests_total",
        (("database", "main"), ("operation", "get"), ("status", "success")),
    )
    assert samples[request] == 1.0
    count = (
        "autobot_operation_duration_seconds_count",
        (("database", "main"), ("operation_type", "redis.get")),
    )
    assert samples[count] == 1.0
    buckets = [
        dict(labels)["le"]
        for name, labels in samples
        if name == "autobot_operation_duration_seconds_bucket"
        and dict(labels)["operation_type"] == "redis.get"
    ]
    assert sorted(buckets, key=float) == list(DURATION_BUCKETS)
    assert (
        samples[("autobot_redis_pool_connections", (("database", "main"), ("state", "idle")))]
        == 1.0
    )
    assert (
        samples[("autobot_redis_pool_connections", (("database", "main"), ("state", "in_use")))]
        == 0.0
    )
    assert samples[("autobot_redis_pool_saturation_ratio", (("database", "main"),))] == 0.0
    timeout = (
        "autobot_operation_timeout_seconds",
        (("database", "main"), ("operation_type", "redis.get")),
    )
    assert samples[timeout] == 1.0


# --------------------------------------------------------------------------- stalls


async def test_stalled_get_times_out(
    tmp_path: Path, redis_server: RedisServer, telemetry: Telemetry
) -> None:
    """A get stalled by CLIENT PAUSE raises OperationTimeoutError after its 0.2 s."""
    use_settings(tmp_path, SHORT_TIMEOUTS)
    async with AsyncRedisManager(redis_server.url, {"main": 0}) as manager:
        main = manager.database("main")
        await main.set("key", "value")
        end = await stall(redis_server, 0.6)
        started = time.monotonic()
        with pytest.raises(OperationTimeoutError) as caught:
            await main.get("key")
        elapsed = time.monotonic() - started
        await wait_until(end)

    assert caught.value.operation == "redis.get"
    assert caught.value.timeout == 0.2
    assert isinstance(caught.value, TimeoutError)
    assert 0.19 <= elapsed < 0.4
    assert requests(telemetry, "get", "timeout") == 1
    assert requests(telemetry, "get", "success") == 0
    assert calls(telemetry, "get") == 1
    assert (
        telemetry.value(
            "autobot.timeout", operation_type="redis.get", database="main", status="timeout"
        )
        == 1
    )
    (span,) = telemetry.spans("redis.get")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["autobot.outcome"] == "timeout"
    assert span.attributes["error.type"] == "timeout"
    assert span.attributes["autobot.timeout_seconds"] == 0.2
    assert span.attributes["autobot.operation"] == "redis.get"
    assert span.attributes["db.system.name"] == "redis"
    assert span.attributes["db.operation.name"] == "GET"


# --------------------------------------------------------------------------- cancellation


async def test_timed_out_commands_leave_no_reply(
    tmp_path: Path, redis_server: RedisServer, telemetry: Telemetry
) -> None:
    """After get, hgetall and pipeline time out mid-flight, later commands get their replies."""
    use_settings(tmp_path, SHORT_TIMEOUTS)
    manager = AsyncRedisManager(redis_server.url, {"main": 0}, max_connections=1, breakers=False)
    async with manager:
        main = manager.database("main")
        await main.set("stale", "stale-value")
        await main.client.hset("stale-hash", mapping={"field": "stale"})

        end = await stall(redis_server, 0.9)
        with pytest.raises(OperationTimeoutError):
            await main.get("stale")
        with pytest.raises(OperationTimeoutError):
            await main.hgetall("stale-hash")
        pipe = main.pipeline()
        pipe.get("stale")
        with pytest.raises(OperationTimeoutError):
            await pipe.execute()
        await wait_until(end)

        # A reply left on the connection would be returned as the reply to these commands.
        for number in range(10):
            assert await main.set(f"key-{number}", f"value-{number}") is True
            assert await main.get(f"key-{number}") == f"value-{number}".encode()
        await main.client.hset("fresh-hash", mapping={"field": "fresh"})
        assert await main.hgetall("fresh-hash") == {b"field": b"fresh"}
        async with main.pipeline() as pipe:
            pipe.get("key-3")
            pipe.get("key-7")
            assert await pipe.execute() == [b"value-3", b"value-7"]
        assert main.pool_usage() == (0, 1)

    assert requests(telemetry, "get", "timeout") == 1
    assert requests(telemetry, "hgetall", "timeout") == 1
    assert requests(telemetry, "pipeline", "timeout") == 1


async def test_concurrent_replies_after_stall(
    tmp_path: Path, redis_server: RedisServer, telemetry: Telemetry
) -> None:
    """Thirty concurrent set-then-get pairs on two reused connections each get their value."""
    use_settings(tmp_path, SHORT_TIMEOUTS)
    manager = AsyncRedisManager(
        redis_server.url, {"main": 0}, max_connections=2, blocking_pool=True, breakers=False
    )
    async with manager:
        main = manager.database("main")
        for number in range(6):
            await main.set(f"stale-{number}", f"stale-{number}")

        end = await stall(redis_server, 0.6)
        stalled = await asyncio.gather(
            *(main.get(f"stale-{number}") for number in range(6)), return_exceptions=True
        )
        assert [type(result) for result in stalled] == [OperationTimeoutError] * 6
        await wait_until(end)
        # Back to the packaged 1 s timeouts: thirty calls queue for two connections, and
        # on a busy machine the last ones could wait longer than 0.2 s.
        configure()

        async def set_then_get(number: int) -> bytes | None:
            await main.set(f"key-{number}", f"value-{number}")
            value: bytes | None = await main.get(f"key-{number}")
            return value

        values = await asyncio.gather(*(set_then_get(number) for number in range(30)))
        assert values == [f"value-{number}".encode() for number in range(30)]
        in_use, idle = main.pool_usage()
        assert in_use == 0
        assert 1 <= idle <= 2

    assert requests(telemetry, "get", "timeout") == 6
    assert requests(telemetry, "get", "success") == 30


async def test_cancel_at_each_await_point(redis_server: RedisServer, telemetry: Telemetry) -> None:
    """A call cancelled at any await point raises CancelledError and leaves no reply behind."""
    async with AsyncRedisManager(redis_server.url, {"main": 0}, max_connections=1) as manager:
        main = manager.database("main")
        for number in range(3):
            await main.set(f"key-{number}", f"value-{number}")
        await main.client.hset("hash", mapping={"field": "value"})

        def start(operation: str) -> asyncio.Task[Any]:
            if operation == "get":
                return asyncio.create_task(main.get("key-0"))
            if operation == "hgetall":
                return asyncio.create_task(main.hgetall("hash"))
            pipe = main.pipeline()
            pipe.get("key-0")
            return asyncio.create_task(pipe.execute())

        expected = {"get": b"value-0", "hgetall": {b"field": b"value"}, "pipeline": [b"value-0"]}
        cancelled_in_flight = dict.fromkeys(expected, 0)
        for yields in range(16):
            for operation, reply in expected.items():
                task = start(operation)
                # Each sleep(0) lets the call run to its next await, so as the count
                # grows the cancellation lands in connect, send, read and release.
                for _ in range(yields):
                    await asyncio.sleep(0)
                if task.cancel():
                    with pytest.raises(asyncio.CancelledError):
                        await task
                    if yields > 0:
                        cancelled_in_flight[operation] += 1
                else:
                    assert await task == reply
                assert await main.get("key-1") == b"value-1"
                assert await main.get("key-2") == b"value-2"

    # After one sleep(0) every call waits for the server, so each kind was cancelled
    # in flight at least once.
    for operation, count in cancelled_in_flight.items():
        assert count >= 1, f"no {operation} call was cancelled in flight"
        assert requests(telemetry, operation, "cancelled") == count
    assert requests(telemetry, "get", "timeout") == 0


# --------------------------------------------------------------------------- pool limits


def saturation(telemetry: Telemetry) -> float:
    return telemetry.value("autobot.redis.pool.saturation_ratio", database="main")


async def test_exhausted_pool_raises_pool_exhausted(
    tmp_path: Path, redis_server: RedisServer, telemetry: Telemetry
) -> None:
    """With two connections stalled, eight more calls fail at once with PoolExhaustedError."""
    # Pool exhaustion is a client-side limit, so the breaker does not count it. With
    # minimum_calls 2, the eight exhaustions would open the breaker if they counted.
    use_settings(
        tmp_path,
        """
        default:
          circuit_breaker:
            main:
              minimum_calls: 2
        """,
    )
    async with AsyncRedisManager(redis_server.url, {"main": 0}, max_connections=2) as manager:
        main = manager.database("main")
        await asyncio.gather(main.set("a", "1"), main.set("b", "2"))
        assert saturation(telemetry) == 0.0

        end = await stall(redis_server, 0.5)
        stalled = [asyncio.create_task(main.get(key)) for key in ("a", "b")]
        await asyncio.sleep(0.1)
        assert saturation(telemetry) == 1.0
        assert (
            telemetry.value("autobot.redis.pool.connections", database="main", state="in_use") == 2
        )

        started = time.monotonic()
        exhausted = await asyncio.gather(*(main.get("a") for _ in range(8)), return_exceptions=True)
        elapsed = time.monotonic() - started
        assert [type(result) for result in exhausted] == [PoolExhaustedError] * 8
        assert isinstance(exhausted[0], ConnectionError)
        assert exhausted[0].database == "main"
        assert exhausted[0].max_connections == 2
        assert elapsed < 0.1

        assert await asyncio.gather(*stalled) == [b"1", b"2"]
        await wait_until(end)
        assert saturation(telemetry) == 0.0
        assert (
            telemetry.value("autobot.redis.pool.connections", database="main", state="in_use") == 0
        )
        assert main.breaker is not None
        assert main.breaker.state is BreakerState.CLOSED

    assert requests(telemetry, "get", "pool_exhausted") == 8
    assert requests(telemetry, "get", "success") == 2
    assert requests(telemetry, "get", "timeout") == 0
    assert telemetry.counted("autobot.timeout") == []


async def test_blocking_pool_wait_counts_in_timeout(
    tmp_path: Path, redis_server: RedisServer, telemetry: Telemetry
) -> None:
    """With blocking_pool=True a call waiting for a connection times out, not hangs."""
    use_settings(tmp_path, SHORT_TIMEOUTS)
    manager = AsyncRedisManager(
        redis_server.url, {"main": 0}, max_connections=2, blocking_pool=True, breakers=False
    )
    async with manager:
        main = manager.database("main")
        await asyncio.gather(main.set("a", "1"), main.set("b", "2"))

        end = await stall(redis_server, 0.8)
        started = time.monotonic()
        results = await asyncio.gather(*(main.get("a") for _ in range(6)), return_exceptions=True)
        elapsed = time.monotonic() - started
        await wait_until(end)
        assert await main.get("b") == b"2"

    assert [type(result) for result in results] == [OperationTimeoutError] * 6
    # Two calls held the connections and four waited for one, and all six had 0.2 s.
    assert 0.19 <= elapsed < 0.5
    assert requests(telemetry, "get", "timeout") == 6
    assert requests(telemetry, "get", "pool_exhausted") == 0
    assert (
        telemetry.value(
            "autobot.timeout", operation_type="redis.get", database="main", status="timeout"
        )
        == 6
    )


# --------------------------------------------------------------------------- secrets


PASSWORD = "pw-secret-789"


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[int]:
    """Start a redis-server that requires PASSWORD on a free loopback port and yield the port."""
    binary = require_tool("redis-server", "apt-get install redis-server")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probe = RedisServer(port=port)
        deadline = time.monotonic() + 10
        # Without the password the server replies to PING with -NOAUTH, which still
        # shows that it listens.
        while time.monotonic() < deadline:
            try:
                if probe.command("PING", timeout=0.5).startswith(b"-NOAUTH"):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail(f"redis-server with --requirepass did not start on port {port}")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def span_texts(telemetry: Telemetry) -> list[str]:
    """Return every span name, status description, attribute and event value as text."""
    texts: list[str] = []
    for span in telemetry.spans():
        texts.append(span.name)
        texts.append(span.status.description or "")
        texts.extend(f"{key}={value}" for key, value in (span.attributes or {}).items())
        for event in span.events:
            texts.append(event.name)
            texts.extend(f"{key}={value}" for key, value in (event.attributes or {}).items())
    return texts


async def run_every_operation(main: RedisDatabase) -> None:
    """Run every timed operation with the secret key and value."""
    await main.set("secret-key-123", "secret-value-456")
    assert await main.get("secret-key-123") == b"secret-value-456"
    await main.client.hset("secret-key-123:hash", mapping={"secret-key-123": "secret-value-456"})
    assert await main.hgetall("secret-key-123:hash") == {b"secret-key-123": b"secret-value-456"}
    async with main.pipeline() as pipe:
        pipe.set("secret-key-123:copy", "secret-value-456")
        pipe.get("secret-key-123")
        assert await pipe.execute() == [True, b"secret-value-456"]
    keys = [key async for key in main.scan_iter(match="secret-key-123*")]
    assert len(keys) == 3


async def test_spans_contain_no_secrets(password_server: int, telemetry: Telemetry) -> None:
    """No span attribute or event contains a key, a value or the URL's password."""
    url = f"redis://:{PASSWORD}@127.0.0.1:{password_server}/0"
    async with AsyncRedisManager(url, {"main": 0}) as manager:
        await run_every_operation(manager.database("main"))
        # A type error puts an exception event, with its message, on the spans.
        with pytest.raises(redis_exceptions.ResponseError, match="WRONGTYPE"):
            await manager.database("main").hgetall("secret-key-123")

    wrong_url = f"redis://:{PASSWORD}-wrong@127.0.0.1:{password_server}/0"
    async with AsyncRedisManager(wrong_url, {"main": 0}, breakers=False) as manager:
        with pytest.raises(redis_exceptions.AuthenticationError):
            await manager.database("main").get("secret-key-123")

    texts = span_texts(telemetry)
    # The check is only worth something if both our spans and redis-py's were recorded.
    names = {span.name for span in telemetry.spans()}
    assert {"redis.get", "redis.set", "redis.hgetall", "redis.pipeline", "redis.scan_iter"} <= names
    assert {"GET", "SET", "HGETALL", "SCAN"} <= names
    assert any("exception.message=WRONGTYPE" in text for text in texts)
    for secret in ("secret-key-123", "secret-value-456", PASSWORD):
        leaks = [text for text in texts if secret in text]
        assert leaks == [], f"{secret!r} appears in span data: {leaks}"


async def test_closed_manager_rejects_calls(
    redis_server: RedisServer, telemetry: Telemetry
) -> None:
    """A database of a closed manager raises instead of opening a new connection."""
    manager = AsyncRedisManager(redis_server.url, {"main": 0})
    main = manager.database("main")
    await main.set("k", "v")
    await manager.close()
    with pytest.raises(RuntimeError, match="closed AsyncRedisManager"):
        await main.get("k")
    assert main.pool_usage() == (0, 0)
