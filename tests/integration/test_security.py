"""Security: no Redis data or password in telemetry, logs or CLI output; /monitoring access.

The Redis tests run a private, password-protected redis-server, and use keys, values and
a password made of unique markers, so that a marker found anywhere is a leak.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi import FastAPI

from autobot_otel import (
    AsyncRedisManager,
    OperationTimeoutError,
    get_breaker,
    reload_config,
)
from autobot_otel.cli import main
from autobot_otel.demo.redis_server import RedisServer
from autobot_otel.fastapi import instrument_app, monitoring_app
from tests.conftest import Telemetry
from tests.tools import require_tool

pytestmark = pytest.mark.integration

PASSWORD = "pw-Zq81xKv"
KEY = "key-Hs93Ld"
VALUE = "value-Rt05Mw"
HASH_KEY = "hash-Yb27Nc"
FIELD = "field-Pe64Qa"
FIELD_VALUE = "fieldvalue-Uj38Fz"
PIPELINE_KEY = "pipekey-Wg71Ds"
PIPELINE_VALUE = "pipevalue-Kc52Tn"
SCAN_PREFIX = "scanprefix-Ax19Vb"
MARKERS = (
    PASSWORD,
    KEY,
    VALUE,
    HASH_KEY,
    FIELD,
    FIELD_VALUE,
    PIPELINE_KEY,
    PIPELINE_VALUE,
    SCAN_PREFIX,
)
TOKEN = "monitoring-token-Lq47Ze"


@pytest.fixture(scope="module")
def password_redis() -> Iterator[RedisServer]:
    """A private redis-server that requires PASSWORD."""
    require_tool("redis-server", "apt-get install redis-server")
    server = RedisServer().start()
    try:
        reply = server.command("CONFIG", "SET", "requirepass", PASSWORD)
        assert reply.startswith(b"+OK"), reply
        yield server
    finally:
        server.stop()


def password_url(server: RedisServer) -> str:
    return f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def span_texts(telemetry: Telemetry) -> list[str]:
    """Return every string a span carries: name, attributes, events, status, resource."""
    texts: list[str] = []
    for span in telemetry.spans():
        texts.append(span.name)
        texts.extend(f"{key}={value}" for key, value in (span.attributes or {}).items())
        for event in span.events:
            texts.append(event.name)
            texts.extend(f"{key}={value}" for key, value in (event.attributes or {}).items())
        texts.append(str(span.status.description))
        texts.extend(f"{key}={value}" for key, value in span.resource.attributes.items())
    return texts


def metric_label_texts(telemetry: Telemetry) -> list[str]:
    """Return every metric name and label of the in-memory reader and the scrape."""
    texts = [telemetry.scrape()]
    data = telemetry.reader.get_metrics_data()
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                texts.append(metric.name)
                for point in metric.data.data_points:
                    texts.extend(f"{key}={value}" for key, value in point.attributes.items())
    return texts


def leaks(texts: list[str], markers: tuple[str, ...] = MARKERS) -> list[tuple[str, str]]:
    """Return (marker, text) for every marker found, so a failure shows where it leaked."""
    return [(marker, text[:300]) for text in texts for marker in markers if marker in text]


async def exercise_redis(manager: AsyncRedisManager) -> list[str]:
    """Run every timed Redis operation with marker data, plus an error and a timeout."""
    database = manager.database("main")
    outcomes: list[str] = []
    assert await database.set(KEY, VALUE) is True
    assert await database.get(KEY) == VALUE.encode()
    await database.client.hset(HASH_KEY, mapping={FIELD: FIELD_VALUE})
    assert await database.hgetall(HASH_KEY) == {FIELD.encode(): FIELD_VALUE.encode()}
    async with database.pipeline(transaction=True) as pipe:
        pipe.set(PIPELINE_KEY, PIPELINE_VALUE)
        pipe.get(PIPELINE_KEY)
        assert await pipe.execute() == [True, PIPELINE_VALUE.encode()]
    await database.set(f"{SCAN_PREFIX}:1", VALUE)
    assert [key async for key in database.scan_iter(match=f"{SCAN_PREFIX}*")] == [
        f"{SCAN_PREFIX}:1".encode()
    ]

    # HGETALL on a string key fails with WRONGTYPE; the error is recorded on the spans.
    try:
        await database.hgetall(KEY)
    except Exception as exc:
        outcomes.append(type(exc).__name__)

    # A paused server makes GET time out; the timeout is recorded on the span. The pause
    # goes through the manager's client, because this server requires the password.
    database.operations["get"].timeout = 0.1
    await database.client.execute_command("CLIENT", "PAUSE", 400, "ALL")
    try:
        await database.get(KEY)
    except OperationTimeoutError as exc:
        outcomes.append(type(exc).__name__)
    return outcomes


async def test_redis_secrets_not_in_telemetry(
    password_redis: RedisServer, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """Keys, values, patterns and the URL password appear in no span, metric or log."""
    caplog.set_level(logging.DEBUG)
    manager = AsyncRedisManager(password_url(password_redis), {"main": 0})
    try:
        outcomes = await exercise_redis(manager)
    finally:
        await manager.close()

    assert outcomes == ["ResponseError", "OperationTimeoutError"]
    names = {span.name for span in telemetry.spans()}
    assert {"redis.get", "redis.set", "redis.hgetall", "redis.pipeline", "redis.scan_iter"} <= names
    # RedisInstrumentor's own spans are there too, with their arguments replaced by "?".
    assert {"GET", "SET", "HGETALL", "SCAN"} <= names
    assert leaks(span_texts(telemetry)) == []
    assert leaks(metric_label_texts(telemetry)) == []
    log_texts = [record.getMessage() for record in caplog.records] + [caplog.text]
    assert leaks(log_texts) == []


async def test_monitoring_responses_hide_password(
    password_redis: RedisServer, telemetry: Telemetry
) -> None:
    """/monitoring/metrics and /monitoring/breakers never show the Redis password."""
    manager = AsyncRedisManager(password_url(password_redis), {"main": 0, "cache": 1})
    app = monitoring_app(token=TOKEN)
    headers = {"authorization": f"Bearer {TOKEN}"}
    try:
        await manager.database("main").set(KEY, VALUE)
        async with client_for(app) as client:
            metrics = await client.get("/monitoring/metrics", headers=headers)
            breakers = await client.get("/monitoring/breakers", headers=headers)
    finally:
        await manager.close()

    assert metrics.status_code == 200
    assert breakers.status_code == 200
    assert sorted(breakers.json()) == ["cache", "main"]
    assert (
        'autobot_redis_requests_total{database="main",operation="set",status="success"} 1.0'
        in metrics.text
    )
    assert leaks([metrics.text, breakers.text]) == []


# --------------------------------------------------------------------------- configuration

@pytest.mark.parametrize(
    "variable",
    [
        "AUTOBOT_REDIS__URL",
        "AUTOBOT_CIRCUIT_BREAKER__MAIN__REDIS_URL",
        "AUTOBOT_TIMEOUTS__REDIS__URL",
    ],
)
@pytest.mark.parametrize(
    "command", [["config", "show"], ["config", "show", "--json"], ["config", "validate"]]
)
def test_cli_hides_redis_url_password(
    variable: str, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis URL in any settings layer is shown, if at all, without its password."""
    monkeypatch.setenv("COLUMNS", "400")  # A wide table, so no value is wrapped apart.
    monkeypatch.setenv(variable, f"redis://:{PASSWORD}@127.0.0.1:6379/0")
    result = CliRunner().invoke(main, command)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert PASSWORD not in result.output


def test_cli_masks_password_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting named like a password is masked in every column of config show."""
    monkeypatch.setenv("AUTOBOT_TIMEOUTS__REDIS__PASSWORD", PASSWORD)
    result = CliRunner().invoke(main, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output


def test_rejected_reload_log_hides_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload rejected because of a misplaced secret does not log the secret."""
    monkeypatch.setenv("AUTOBOT_TIMEOUTS__REDIS__PASSWORD", PASSWORD)
    assert reload_config() is False
    assert "config.reload_rejected" in caplog.text
    assert PASSWORD not in caplog.text


# --------------------------------------------------------------------------- /monitoring access


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Bearer ", 401),
        ("Bearer wrong-token", 401),
        (f"Bearer {TOKEN[:-1]}", 401),
        (f"Bearer {TOKEN}x", 401),
        (f"Bearer {TOKEN} ", 401),
        (f"Basic {TOKEN}", 401),
        (f"Token {TOKEN}", 401),
        (TOKEN, 401),
        (f"Bearer {TOKEN.upper()}", 401),
        (f"Bearer {TOKEN}", 200),
        (f"bearer {TOKEN}", 200),
    ],
)
@pytest.mark.parametrize("path", ["/monitoring/metrics", "/monitoring/breakers"])
async def test_monitoring_token_checked(
    telemetry: Telemetry, path: str, header: str | None, status: int
) -> None:
    """Only 'Bearer <token>' opens /monitoring; a rejection does not echo what was sent."""
    app = monitoring_app(token=TOKEN)
    headers = {} if header is None else {"authorization": header}
    async with client_for(app) as client:
        response = await client.get(path, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert TOKEN[:-1] not in response.text


async def test_monitoring_empty_token_rejected(telemetry: Telemetry) -> None:
    """An empty token (an unset variable, say) never opens /monitoring."""
    try:
        app = monitoring_app(token="")
    except ValueError:
        return
    async with client_for(app) as client:
        response = await client.get("/monitoring/metrics", headers={"authorization": "Bearer "})
    assert response.status_code == 401


# --------------------------------------------------------------------------- scraping


def http_points(telemetry: Telemetry) -> list[Any]:
    """Return every data point of the HTTP server metrics."""
    data = telemetry.reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
        if metric.name.startswith("http.server")
        for point in metric.data.data_points
    ]


async def test_scraping_not_traced_or_measured(telemetry: Telemetry) -> None:
    """200 requests to /monitoring create no span and no HTTP metric point."""
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    instrument_app(app)
    get_breaker("main")
    paths = [
        "/monitoring/metrics",
        "/monitoring/breakers",
        "/monitoring/metrics?format=x",
        "/monitoring/metrics/",
    ]
    async with client_for(app) as client:
        assert (await client.get("/hello")).status_code == 200
        before_spans = len(telemetry.spans())
        before_points = len(http_points(telemetry))
        statuses = set()
        for _ in range(50):
            for path in paths:
                statuses.add((path, (await client.get(path)).status_code))
        assert (await client.get("/hello")).status_code == 200

    assert statuses == {
        ("/monitoring/metrics", 200),
        ("/monitoring/breakers", 200),
        ("/monitoring/metrics?format=x", 200),
        ("/monitoring/metrics/", 307),
    }
    spans = telemetry.spans()
    assert len(spans) == 2 * before_spans
    assert [
        span
        for span in spans
        if "monitoring" in " ".join(map(str, (span.attributes or {}).values()))
    ] == []
    points = http_points(telemetry)
    assert len(points) == before_points
    assert [
        point for point in points if "monitoring" in " ".join(map(str, point.attributes.values()))
    ] == []
    durations = [point.count for point in points if hasattr(point, "count")]
    assert durations != []
    assert durations == [2] * len(durations)
    scraped = [line for line in telemetry.scrape().splitlines() if line.startswith("http_server")]
    assert scraped != []
    assert [line for line in scraped if "/monitoring" in line] == []
