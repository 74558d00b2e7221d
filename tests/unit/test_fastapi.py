"""FastAPI integration: /monitoring routes, exclusion from traces, token protection."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from autobot_otel import timed_operation
from autobot_otel.fastapi import instrument_app, monitoring_app
from tests.conftest import Telemetry


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_metrics_route_serves_exposition(telemetry: Telemetry) -> None:
    """GET /monitoring/metrics returns 200 with the Prometheus text format."""

    @timed_operation("llm.fast")
    async def work() -> str:
        return "ok"

    app = FastAPI()

    @app.get("/work")
    async def handler() -> dict[str, str]:
        return {"result": await work()}

    instrument_app(app)
    async with client_for(app) as client:
        assert (await client.get("/work")).status_code == 200
        response = await client.get("/monitoring/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert (
        'autobot_operation_duration_seconds_count{database="llm",operation_type="llm.fast"} 1.0'
        in response.text
    )


async def test_openmetrics_on_request(telemetry: Telemetry) -> None:
    """An OpenMetrics Accept header gets the OpenMetrics format."""
    app = instrument_app(FastAPI())
    async with client_for(app) as client:
        response = await client.get(
            "/monitoring/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


async def test_monitoring_routes_not_traced(telemetry: Telemetry) -> None:
    """Scraping /monitoring creates no span and no HTTP metric point."""
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    instrument_app(app)
    async with client_for(app) as client:
        for _ in range(5):
            assert (await client.get("/monitoring/metrics")).status_code == 200
            assert (await client.get("/monitoring/breakers")).status_code == 200
        assert (await client.get("/hello")).status_code == 200

    routes = {
        span.attributes.get("http.route")
        for span in telemetry.spans()
        if span.attributes is not None and "http.route" in span.attributes
    }
    assert routes == {"/hello"}
    text = telemetry.scrape()
    http_lines = [
        line for line in text.splitlines() if line.startswith("http_server") and "{" in line
    ]
    assert http_lines, "the HTTP metrics of /hello are missing"
    assert not [line for line in http_lines if "/monitoring" in line]


async def test_breakers_route_lists_breakers(telemetry: Telemetry) -> None:
    """GET /monitoring/breakers returns each named breaker's snapshot."""
    from autobot_otel import get_breaker

    get_breaker("main").force_open()
    app = instrument_app(FastAPI())
    async with client_for(app) as client:
        body = (await client.get("/monitoring/breakers")).json()
    assert list(body) == ["main"]
    assert body["main"]["state"] == "open"


async def test_monitoring_app_requires_token(telemetry: Telemetry) -> None:
    """The separate monitoring app rejects requests without the bearer token."""
    app = monitoring_app(token="s3cret")
    async with client_for(app) as client:
        missing = await client.get("/monitoring/metrics")
        wrong = await client.get("/monitoring/metrics", headers={"authorization": "Bearer nope"})
        right = await client.get("/monitoring/metrics", headers={"authorization": "Bearer s3cret"})
        breakers = await client.get(
            "/monitoring/breakers", headers={"authorization": "Bearer s3cret"}
        )
    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert breakers.status_code == 200
    assert "s3cret" not in missing.text


async def test_metrics_without_telemetry_is_503() -> None:
    """Without setup_telemetry() the route returns 503 with what to do."""
    app = monitoring_app()
    async with client_for(app) as client:
        response = await client.get("/monitoring/metrics")
    assert response.status_code == 503
    assert "setup_telemetry" in response.text


async def test_monitoring_server_on_own_port(telemetry: Telemetry) -> None:
    """start_monitoring_server serves the routes on a separate port behind a token."""
    from autobot_otel.demo.redis_server import free_port
    from autobot_otel.fastapi import start_monitoring_server

    server = await start_monitoring_server("127.0.0.1", free_port(), token="t0ken")
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            denied = await client.get("/monitoring/metrics")
            allowed = await client.get(
                "/monitoring/metrics", headers={"authorization": "Bearer t0ken"}
            )
    finally:
        await server.stop()
    assert denied.status_code == 401
    assert allowed.status_code == 200
    assert "autobot_config_info" in allowed.text


async def test_monitoring_server_busy_port(telemetry: Telemetry) -> None:
    """A busy port raises RuntimeError instead of exiting the application."""
    import socket

    from autobot_otel.fastapi import start_monitoring_server

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match="could not listen"):
            await start_monitoring_server("127.0.0.1", port)
