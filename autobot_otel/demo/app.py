"""The demo service: a small FastAPI app whose handlers use timed Redis and LLM calls."""

from __future__ import annotations

import asyncio
import random

from fastapi import FastAPI, HTTPException
from redis.exceptions import RedisError

from .._errors import CircuitOpenError, OperationTimeoutError, PoolExhaustedError
from .._operation import timed_operation
from ..fastapi import instrument_app
from ..redis import AsyncRedisManager

__all__ = ["create_app"]


@timed_operation("llm.fast")
async def summarize(text: str) -> str:
    """Stand in for a fast LLM call: a short, variable wait."""
    await asyncio.sleep(random.uniform(0.002, 0.02))
    return text[:40]


def create_app(manager: AsyncRedisManager, *, expose_monitoring: bool = True) -> FastAPI:
    """Return the demo app, serving items from ``main`` and profiles from ``cache``."""
    app = FastAPI(title="autobot-otel demo")
    main = manager.database("main")
    cache = manager.database("cache")

    def unavailable(exc: Exception) -> HTTPException:
        status = 504 if isinstance(exc, OperationTimeoutError) else 503
        return HTTPException(status_code=status, detail=f"{type(exc).__name__}: {exc}")

    failures = (
        OperationTimeoutError,
        CircuitOpenError,
        PoolExhaustedError,
        ConnectionError,
        RedisError,
    )

    @app.get("/items/{key}")
    async def read_item(key: str) -> dict[str, object]:
        try:
            value = await main.get(f"item:{key}")
        except failures as exc:
            raise unavailable(exc) from exc
        return {"key": key, "value": value.decode() if value else None}

    @app.put("/items/{key}")
    async def write_item(key: str, value: str = "x") -> dict[str, object]:
        try:
            await main.set(f"item:{key}", value, ex=300)
        except failures as exc:
            raise unavailable(exc) from exc
        return {"key": key, "stored": True}

    @app.get("/profiles/{user}")
    async def read_profile(user: str) -> dict[str, object]:
        try:
            async with cache.pipeline(transaction=False) as pipe:
                pipe.hset(f"profile:{user}", mapping={"name": user, "visits": 1})
                pipe.hincrby(f"profile:{user}", "visits", 1)
                await pipe.execute()
            profile = await cache.hgetall(f"profile:{user}")
        except failures as exc:
            raise unavailable(exc) from exc
        return {key.decode(): value.decode() for key, value in profile.items()}

    @app.get("/summaries/{key}")
    async def summary(key: str) -> dict[str, object]:
        return {"key": key, "summary": await summarize(f"document {key} " * 4)}

    @app.get("/keys")
    async def list_keys(prefix: str = "item:") -> dict[str, object]:
        keys = []
        try:
            async for key in main.scan_iter(match=f"{prefix}*", count=100):
                keys.append(key.decode())
                if len(keys) >= 20:
                    break
        except failures as exc:
            raise unavailable(exc) from exc
        return {"keys": keys}

    return instrument_app(app, expose_monitoring=expose_monitoring)
