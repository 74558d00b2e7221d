"""Redis integration: pooled asyncio clients whose operations are timed and guarded.

``AsyncRedisManager`` builds one redis-py asyncio client per logical database. Socket
timeouts come from ``timeouts.redis.connection``. Every operation of
``manager.database(name)`` is the timed operation ``redis.<op>``, labelled with that
database name and guarded by the database's own circuit breaker.

The pool is non-blocking by default: when all ``max_connections`` are in use, a command
fails at once with PoolExhaustedError (status ``pool_exhausted``) instead of queueing.
With ``blocking_pool=True`` a command waits for a free connection, and that wait counts
inside the operation's timeout.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions
from redis.asyncio.connection import parse_url

from . import _telemetry
from ._breaker import CircuitBreaker
from ._breaker_registry import get_breaker
from ._config import get_config
from ._errors import PoolExhaustedError
from ._operation import _Call, declare_database, get_operation

if TYPE_CHECKING:
    from ._operation import _Operation

__all__ = ["AsyncRedisManager", "RedisDatabase", "RedisPipeline"]

logger = logging.getLogger("autobot_otel")

_OPERATIONS = ("get", "set", "hgetall", "pipeline", "scan_iter")
_MaxConnectionsError: type[Exception] | None = getattr(
    redis_exceptions, "MaxConnectionsError", None
)


def _is_pool_exhausted(exc: BaseException) -> bool:
    if _MaxConnectionsError is not None and isinstance(exc, _MaxConnectionsError):
        return True
    text = str(exc)
    return isinstance(exc, redis_exceptions.ConnectionError) and (
        "Too many connections" in text or "No connection available" in text
    )


class RedisPipeline:
    """A redis-py pipeline whose ``execute()`` is the timed operation ``redis.pipeline``.

    Queue commands on ``pipe`` (they do no I/O), then ``await execute()``.
    """

    def __init__(self, database: RedisDatabase, transaction: bool) -> None:
        self._database = database
        self.pipe = database.client.pipeline(transaction=transaction)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    async def execute(self) -> list[Any]:
        """Send the queued commands in one round trip and return their replies."""
        database = self._database
        async with _Call(database.operations["pipeline"]):
            replies: list[Any] = await database._guard(self.pipe.execute())
            return replies

    async def __aenter__(self) -> RedisPipeline:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.pipe.reset()  # type: ignore[no-untyped-call]


class RedisDatabase:
    """One logical Redis database with timed ``get``, ``set``, ``hgetall``, ``pipeline``
    and ``scan_iter``; ``client`` is the underlying redis-py client for anything else."""

    def __init__(
        self,
        name: str,
        client: aioredis.Redis,
        max_connections: int,
        breaker: CircuitBreaker | None,
    ) -> None:
        self.name = name
        self.client = client
        self.max_connections = max_connections
        self.breaker = breaker
        self.closed = False
        self.operations: dict[str, _Operation] = {
            op: get_operation(f"redis.{op}", database=name, breaker=breaker) for op in _OPERATIONS
        }

    async def _guard(self, awaitable: Any) -> Any:
        """Await one redis-py call, turning pool exhaustion into PoolExhaustedError.

        A cancellation lost inside redis-py is delivered by the enclosing timed call:
        redis-py (checked with 8.2) sends each command under ``asyncio.wait_for``, which
        on Python 3.11 can return the result although the task was cancelled.
        """
        if self.closed:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise RuntimeError(
                f"Redis database {self.name!r} belongs to a closed AsyncRedisManager; "
                "create a new manager"
            )
        try:
            return await awaitable
        except redis_exceptions.ConnectionError as exc:
            if _is_pool_exhausted(exc):
                raise PoolExhaustedError(self.name, self.max_connections) from exc
            raise

    async def get(self, key: str | bytes) -> Any:
        """Return the value at ``key``, or None."""
        async with _Call(self.operations["get"]):
            return await self._guard(self.client.get(key))

    async def set(self, key: str | bytes, value: Any, **options: Any) -> Any:
        """Set ``key`` to ``value``; ``options`` are redis-py's (``ex``, ``nx``, ...)."""
        async with _Call(self.operations["set"]):
            return await self._guard(self.client.set(key, value, **options))

    async def hgetall(self, key: str | bytes) -> dict[Any, Any]:
        """Return every field and value of the hash at ``key``."""
        async with _Call(self.operations["hgetall"]):
            result: dict[Any, Any] = await self._guard(self.client.hgetall(key))
            return result

    def pipeline(self, transaction: bool = True) -> RedisPipeline:
        """Return a pipeline whose ``execute()`` is timed as ``redis.pipeline``."""
        return RedisPipeline(self, transaction)

    async def scan_iter(
        self, match: str | None = None, count: int | None = None
    ) -> AsyncIterator[Any]:
        """Yield the keys matching ``match``.

        Each SCAN round trip is one timed ``redis.scan_iter`` call; the time the caller
        spends between keys is not counted against the timeout.
        """
        cursor: int = 0
        operation = self.operations["scan_iter"]
        while True:
            async with _Call(operation):
                cursor, keys = await self._guard(self.client.scan(cursor, match=match, count=count))
            for key in keys:
                yield key
            if cursor == 0:
                return

    def pool_usage(self) -> tuple[int, int]:
        """Return (in_use, idle) connection counts without blocking or awaiting.

        ``idle`` counts only open connections. The pool keeps the objects of connections
        that were closed (after an error, a timeout or an outage) and reconnects them on
        the next use, and those are not idle connections to the server.
        """
        pool = self.client.connection_pool
        in_use = len(getattr(pool, "_in_use_connections", ()))
        available = getattr(pool, "_available_connections", ())
        idle = sum(1 for connection in available if getattr(connection, "is_connected", True))
        return in_use, idle


class AsyncRedisManager:
    """Pooled redis-py asyncio clients, one per logical database.

    ``databases`` maps names to Redis database indexes, for example
    ``{"main": 0, "cache": 1}``. The mapping chooses the index, so a database in ``url``
    is ignored. Each database gets a circuit breaker named after it (settings
    ``circuit_breaker.<name>`` over ``circuit_breaker.default``) unless ``breakers=False``.
    """

    def __init__(
        self,
        url: str,
        databases: Mapping[str, int] | None = None,
        *,
        max_connections: int = 50,
        blocking_pool: bool = False,
        breakers: bool = True,
        instrument: bool = True,
    ) -> None:
        if not databases:
            databases = {"main": 0}
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections!r}")
        connection = get_config().timeouts
        self.url = url
        # The mapping, not the URL, chooses each database. redis-py's from_url() lets a
        # database in the URL ("/0" or "?db=0") override its db argument, which put every
        # name on that one database. So the URL is parsed here and its db replaced.
        url_options = parse_url(url)
        pool_class = aioredis.BlockingConnectionPool if blocking_pool else aioredis.ConnectionPool
        pool_options: dict[str, Any] = {
            "max_connections": max_connections,
            "socket_connect_timeout": connection["redis.connection.socket_connect"],
            "socket_timeout": connection["redis.connection.socket_timeout"],
            "health_check_interval": connection["redis.connection.health_check"],
        }
        if blocking_pool:
            # The operation's own timeout bounds the wait for a free connection.
            pool_options["timeout"] = None
        self._databases: dict[str, RedisDatabase] = {}
        for name, index in databases.items():
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise ValueError(
                    f"database {name!r} must map to a Redis database index (0, 1, ...), "
                    f"not {index!r}"
                )
            declare_database(name)
            options: dict[str, Any] = {**pool_options, **url_options, "db": index}
            pool = pool_class(**options)
            client = aioredis.Redis(connection_pool=pool)
            if instrument:
                _instrument_client(client)
            breaker = get_breaker(name) if breakers else None
            self._databases[name] = RedisDatabase(name, client, max_connections, breaker)

        reference = weakref.ref(self)
        self._gauges: list[tuple[str, Callable[[], Iterable[tuple[float, dict[str, str]]]]]] = [
            ("pool_connections", lambda: _pool_connections(reference)),
            ("pool_saturation", lambda: _pool_saturation(reference)),
        ]
        for gauge, source in self._gauges:
            _telemetry.add_gauge_source(gauge, source)

    @property
    def databases(self) -> dict[str, RedisDatabase]:
        """The databases by name."""
        return dict(self._databases)

    def database(self, name: str) -> RedisDatabase:
        """Return the database called ``name``."""
        try:
            return self._databases[name]
        except KeyError:
            known = ", ".join(sorted(self._databases))
            raise KeyError(f"no Redis database named {name!r}; configured: {known}") from None

    async def close(self) -> None:
        """Close every client and its pool, and stop reporting pool gauges."""
        for gauge, source in self._gauges:
            _telemetry.remove_gauge_source(gauge, source)
        for database in self._databases.values():
            # Marked first, because a call after close() would open a connection that stays open.
            database.closed = True
            await database.client.aclose()
            await database.client.connection_pool.disconnect()

    async def __aenter__(self) -> AsyncRedisManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _pool_connections(
    reference: weakref.ref[AsyncRedisManager],
) -> Iterable[tuple[float, dict[str, str]]]:
    manager = reference()
    if manager is None:
        return []
    observations: list[tuple[float, dict[str, str]]] = []
    for name, database in manager._databases.items():
        in_use, idle = database.pool_usage()
        observations.append((in_use, {"database": name, "state": "in_use"}))
        observations.append((idle, {"database": name, "state": "idle"}))
    return observations


def _pool_saturation(
    reference: weakref.ref[AsyncRedisManager],
) -> Iterable[tuple[float, dict[str, str]]]:
    manager = reference()
    if manager is None:
        return []
    return [
        (database.pool_usage()[0] / database.max_connections, {"database": name})
        for name, database in manager._databases.items()
    ]


_instrumentor: Any = None


def _instrument_client(client: aioredis.Redis) -> None:
    """Add OpenTelemetry's Redis spans to ``client``; command arguments appear as ``?``."""
    global _instrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    if _instrumentor is None:
        _instrumentor = RedisInstrumentor()
    handle = _telemetry.current_handle()
    tracer_provider = handle.tracer_provider if handle is not None else None
    _instrumentor.instrument_client(client, tracer_provider=tracer_provider)
