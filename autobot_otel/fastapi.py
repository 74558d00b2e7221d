"""FastAPI integration: request tracing and the ``/monitoring`` routes.

``instrument_app(app)`` applies OpenTelemetry's FastAPIInstrumentor with every path under
``/monitoring`` excluded from traces and HTTP metrics, and adds:

- ``GET /monitoring/metrics``: the Prometheus text exposition of this process;
- ``GET /monitoring/breakers``: every circuit breaker's state and recent counts, as JSON.

For deployments whose application port is public, ``monitoring_app()`` returns the same
routes as a separate app to serve on another host and port, optionally behind a bearer
token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from . import _telemetry
from ._breaker_registry import all_breakers

__all__ = [
    "MonitoringServer",
    "instrument_app",
    "monitoring_app",
    "monitoring_router",
    "start_monitoring_server",
]

logger = logging.getLogger("autobot_otel")

MONITORING_PREFIX = "/monitoring"
# FastAPIInstrumentor matches excluded URLs as regular expressions against the full URL.
EXCLUDED_URLS = r"/monitoring(/.*)?$"


def monitoring_router(token: str | None = None) -> APIRouter:
    """Return the ``/monitoring`` routes; with ``token`` they require ``Authorization: Bearer``."""

    if token is not None and not token.strip():
        # An unset variable passed as the token must not open the routes to everyone.
        raise ValueError("the /monitoring token is empty; pass None to serve without a token")

    def check(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.encode(), token.encode()
        ):
            raise HTTPException(
                status_code=401,
                detail="missing or invalid bearer token for /monitoring",
                headers={"WWW-Authenticate": "Bearer"},
            )

    router = APIRouter(prefix=MONITORING_PREFIX)

    @router.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        check(request)
        handle = _telemetry.current_handle()
        if handle is None or handle.prometheus_registry is None:
            raise HTTPException(
                status_code=503,
                detail="telemetry is not set up; call setup_telemetry() at start-up",
            )
        registry = handle.prometheus_registry
        if "application/openmetrics-text" in request.headers.get("accept", ""):
            body: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
            return Response(body, media_type=OPENMETRICS_TYPE)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/breakers", include_in_schema=False)
    def breakers(request: Request) -> dict[str, Any]:
        check(request)
        return {name: breaker.snapshot() for name, breaker in sorted(all_breakers().items())}

    return router


def instrument_app(
    app: FastAPI, *, expose_monitoring: bool = True, token: str | None = None
) -> FastAPI:
    """Trace ``app`` with OpenTelemetry and add the ``/monitoring`` routes to it.

    Requests to ``/monitoring/*`` appear in no trace and no HTTP metric, however often
    they are scraped. Pass ``expose_monitoring=False`` when the routes are served by
    ``monitoring_app()`` on a private port instead.
    """
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    handle = _telemetry.current_handle()
    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls=EXCLUDED_URLS,
        tracer_provider=handle.tracer_provider if handle else None,
        meter_provider=handle.meter_provider if handle else None,
    )
    if expose_monitoring:
        app.include_router(monitoring_router(token))
    return app


def monitoring_app(token: str | None = None) -> FastAPI:
    """Return an app serving only the ``/monitoring`` routes, for a separate port."""
    app = FastAPI(title="autobot-otel monitoring", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(monitoring_router(token))
    return app


async def serve_without_exit(server: Any) -> None:
    """Run a uvicorn server, turning its exit on a failed bind into RuntimeError.

    uvicorn calls ``sys.exit()`` when it cannot bind, and asyncio lets a SystemExit
    raised in a task escape the event loop, which would end the whole application.
    """
    try:
        await server.serve()
    except SystemExit as exc:
        config = server.config
        raise RuntimeError(
            f"could not listen on {config.host}:{config.port}: the address is in use or "
            "not permitted; choose another port"
        ) from exc


class MonitoringServer:
    """The ``/monitoring`` routes served by uvicorn on their own address, in this loop."""

    def __init__(self, host: str, port: int, token: str | None) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            # The application owns SIGINT and SIGTERM, and stop() ends this server.
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        config = uvicorn.Config(
            monitoring_app(token), host=host, port=port, log_level="warning", lifespan="off"
        )
        self.host = host
        self.port = port
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The base URL, for example ``http://127.0.0.1:9464``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> MonitoringServer:
        """Start serving and wait until the port accepts connections."""
        self._task = asyncio.create_task(serve_without_exit(self._server))
        while not self._server.started:
            if self._task.done():
                task, self._task = self._task, None
                await task
                raise RuntimeError(f"monitoring server could not listen on {self.host}:{self.port}")
            await asyncio.sleep(0.01)
        logger.info("monitoring.started", extra={"autobot.url": self.url})
        return self

    async def stop(self) -> None:
        """Stop serving and wait for the server to finish."""
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None


async def start_monitoring_server(
    host: str = "127.0.0.1", port: int = 9464, token: str | None = None
) -> MonitoringServer:
    """Serve ``/monitoring/metrics`` and ``/monitoring/breakers`` on their own port.

    Use it when the application port is public: bind this one to a private address, and
    give ``token`` to require ``Authorization: Bearer <token>``. Call it from the running
    loop (for example in a FastAPI lifespan handler) and ``await stop()`` at shutdown.
    """
    return await MonitoringServer(host, port, token).start()
