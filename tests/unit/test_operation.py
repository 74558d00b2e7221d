"""timed_operation and timed: timeouts, outcomes, spans, metrics and deadline budgets."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from opentelemetry.trace import StatusCode

from autobot_otel import (
    CircuitBreaker,
    CircuitOpenError,
    OperationTimeoutError,
    UnknownOperationError,
    configure,
    deadline_budget,
    remaining_time,
    timed,
    timed_operation,
)
from autobot_otel._breaker import BreakerSettings
from tests.conftest import Telemetry


def write_settings(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(body)
    return path


async def test_success_records_span_and_histogram(telemetry: Telemetry) -> None:
    """A successful call records one span and one histogram sample with both labels."""

    @timed_operation("llm.fast")
    async def answer() -> int:
        return 42

    assert await answer() == 42
    (span,) = telemetry.spans("llm.fast")
    assert span.attributes is not None
    assert span.attributes["autobot.outcome"] == "success"
    assert span.attributes["autobot.timeout_seconds"] == 30.0
    assert span.status.status_code is StatusCode.UNSET
    assert (
        telemetry.value("autobot.operation.duration", operation_type="llm.fast", database="llm")
        == 1
    )


async def test_timeout_raises_operation_timeout(telemetry: Telemetry) -> None:
    """A call past its timeout raises OperationTimeoutError, also a TimeoutError."""

    @timed_operation("llm.fast", default=None)
    async def slow() -> None:
        await asyncio.sleep(10)

    configure()
    from autobot_otel import _operation

    _operation.get_operation("llm.fast").timeout = 0.05
    with pytest.raises(OperationTimeoutError) as caught:
        await slow()
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.operation == "llm.fast"
    assert caught.value.timeout == 0.05
    assert (
        telemetry.value(
            "autobot.timeout", operation_type="llm.fast", database="llm", status="timeout"
        )
        == 1
    )
    (span,) = telemetry.spans("llm.fast")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "timeout"
    assert span.attributes["autobot.outcome"] == "timeout"


async def test_timeout_from_settings_file(tmp_path: Path, telemetry: Telemetry) -> None:
    """The timeout comes from the configuration layers and a reload changes it."""
    configure(
        settings_files=[
            write_settings(tmp_path, "default:\n  timeouts:\n    llm:\n      fast: 0.05\n")
        ]
    )

    @timed_operation("llm.fast")
    async def slow() -> None:
        await asyncio.sleep(0.2)

    with pytest.raises(OperationTimeoutError):
        await slow()
    configure(
        settings_files=[
            write_settings(tmp_path, "default:\n  timeouts:\n    llm:\n      fast: 1.0\n")
        ]
    )
    await slow()
    assert (
        telemetry.value(
            "autobot.timeout", operation_type="llm.fast", database="llm", status="timeout"
        )
        == 1
    )


async def test_error_is_recorded_and_reraised(telemetry: Telemetry) -> None:
    """An exception passes through unchanged and marks the span as an error."""

    @timed_operation("redis.get", database="redis")
    async def broken() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError):
        await broken()
    (span,) = telemetry.spans("redis.get")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "KeyError"
    assert span.attributes["db.system.name"] == "redis"
    assert span.attributes["db.operation.name"] == "GET"
    assert (
        telemetry.value("autobot.redis.requests", database="redis", operation="get", status="error")
        == 1
    )


async def test_external_cancellation_passes_through(telemetry: Telemetry) -> None:
    """Cancelling from outside raises CancelledError and counts no timeout."""
    started = asyncio.Event()

    @timed_operation("llm.fast")
    async def waits() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(waits())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert telemetry.counted("autobot.timeout") == []
    (span,) = telemetry.spans("llm.fast")
    assert span.attributes is not None
    assert span.attributes["autobot.outcome"] == "cancelled"
    assert span.end_time is not None


async def test_cancellation_before_call_counts_nothing(telemetry: Telemetry) -> None:
    """A task cancelled before its first step never starts the operation."""

    @timed_operation("llm.fast")
    async def never() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(never())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert telemetry.spans("llm.fast") == []
    assert telemetry.counted("autobot.timeout") == []


async def test_nested_budget_limits_inner_call(telemetry: Telemetry) -> None:
    """An inner operation gets what is left of the outer deadline, counted once."""
    from autobot_otel import _operation

    seen: list[float | None] = []

    @timed_operation("llm.fast")
    async def inner() -> None:
        seen.append(remaining_time())
        await asyncio.sleep(10)

    @timed_operation("llm.reasoning")
    async def outer() -> None:
        await asyncio.sleep(0.05)
        await inner()

    _operation.get_operation("llm.reasoning").timeout = 0.2
    with pytest.raises(OperationTimeoutError) as caught:
        await outer()
    assert caught.value.operation == "llm.reasoning"
    assert seen[0] is not None
    assert 0.1 < seen[0] < 0.16
    assert (
        telemetry.value(
            "autobot.timeout", operation_type="llm.reasoning", database="llm", status="timeout"
        )
        == 1
    )
    assert (
        telemetry.value(
            "autobot.timeout", operation_type="llm.fast", database="llm", status="timeout"
        )
        == 0
    )
    (inner_span,) = telemetry.spans("llm.fast")
    assert inner_span.attributes is not None
    assert inner_span.attributes["autobot.outcome"] == "timeout"
    assert inner_span.attributes["autobot.timeout.source"] == "budget"
    assert inner_span.attributes["autobot.timeout.origin"] == "llm.reasoning"


async def test_inner_own_timeout_fires_first(telemetry: Telemetry) -> None:
    """When the inner timeout is shorter, the inner operation times out on its own."""
    from autobot_otel import _operation

    @timed_operation("llm.fast")
    async def inner() -> None:
        await asyncio.sleep(10)

    @timed_operation("llm.reasoning")
    async def outer() -> None:
        await inner()

    _operation.get_operation("llm.fast").timeout = 0.05
    with pytest.raises(OperationTimeoutError) as caught:
        await outer()
    assert caught.value.operation == "llm.fast"
    assert (
        telemetry.value(
            "autobot.timeout", operation_type="llm.fast", database="llm", status="timeout"
        )
        == 1
    )
    (outer_span,) = telemetry.spans("llm.reasoning")
    assert outer_span.attributes is not None
    assert outer_span.attributes["autobot.outcome"] == "error"


async def test_remaining_time_outside_is_none() -> None:
    """remaining_time() is None outside any timed operation."""
    assert remaining_time() is None


async def test_timed_block(telemetry: Telemetry) -> None:
    """async with timed(...) bounds a block like the decorator bounds a call."""
    from autobot_otel import _operation

    _operation.get_operation("llm.fast").timeout = 0.05
    with pytest.raises(OperationTimeoutError):
        async with timed("llm.fast"):
            await asyncio.sleep(1)
    async with timed("llm.default"):
        await asyncio.sleep(0)
    assert [span.name for span in telemetry.spans()] == ["llm.fast", "llm.default"]


def test_plain_function_rejected() -> None:
    """Decorating a plain function raises TypeError naming it and the alternative."""

    def blocking() -> None:
        return None

    with pytest.raises(TypeError, match=r"blocking is not one.*asyncio.to_thread"):
        timed_operation("llm.fast")(blocking)  # type: ignore[arg-type]


def test_unknown_operation_names_closest() -> None:
    """An unknown name fails at decoration time and suggests the closest names."""
    with pytest.raises(UnknownOperationError, match=r"'redis.gett'.*did you mean 'redis.get'"):
        timed_operation("redis.gett")


def test_default_for_undeclared_operation(caplog: pytest.LogCaptureFixture) -> None:
    """default= gives a timeout to an undeclared name, labelled 'other' with one warning."""
    from autobot_otel import _operation

    with caplog.at_level(logging.WARNING, logger="autobot_otel"):
        timed_operation("payments.charge", default=2.5)
        timed_operation("payments.charge", default=2.5)
    operation = _operation.get_operation("payments.charge", default=2.5)
    assert operation.timeout == 2.5
    assert operation.label == "other"
    assert operation.database_label == "other"
    warnings = [record for record in caplog.records if "undeclared_label" in record.getMessage()]
    assert len(warnings) == 2  # one for the operation name, one for the database


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1"])
def test_invalid_default_rejected(bad: object) -> None:
    """default= must be a valid timeout too."""
    with pytest.raises((ValueError, TypeError), match="default timeout"):
        timed_operation("payments.charge", default=bad)  # type: ignore[arg-type]


async def test_swallowed_cancellation_still_times_out(telemetry: Telemetry) -> None:
    """A function that swallows its timeout's cancellation still raises a timeout."""
    from autobot_otel import _operation

    @timed_operation("llm.fast")
    async def stubborn() -> str:
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            return "ignored"
        return "finished"

    _operation.get_operation("llm.fast").timeout = 0.05
    with pytest.raises(OperationTimeoutError):
        await stubborn()
    assert (
        telemetry.value(
            "autobot.timeout", operation_type="llm.fast", database="llm", status="timeout"
        )
        == 1
    )


async def test_blocking_call_counted_as_overrun(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """A call that blocks the loop past its timeout is counted as an overrun and logged."""
    from autobot_otel import _operation

    @timed_operation("llm.fast")
    async def blocks() -> str:
        time.sleep(0.08)
        return "done"

    _operation.get_operation("llm.fast").timeout = 0.02
    with caplog.at_level(logging.WARNING, logger="autobot_otel"):
        assert await blocks() == "done"
    assert (
        telemetry.value(
            "autobot.timeout", operation_type="llm.fast", database="llm", status="overrun"
        )
        == 1
    )
    assert any("operation.overrun" in record.getMessage() for record in caplog.records)


async def test_breaker_rejects_without_calling(telemetry: Telemetry) -> None:
    """An open breaker fails fast with CircuitOpenError and the function never runs."""
    breaker = CircuitBreaker("main", BreakerSettings())
    calls = 0

    @timed_operation("redis.get", database="redis", breaker=breaker)
    async def get() -> None:
        nonlocal calls
        calls += 1

    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        await get()
    assert calls == 0
    assert (
        telemetry.value(
            "autobot.redis.requests", database="redis", operation="get", status="rejected"
        )
        == 1
    )
    assert (
        telemetry.value("autobot.operation.duration", operation_type="redis.get", database="redis")
        == 0
    )


async def test_timeouts_trip_breaker(telemetry: Telemetry) -> None:
    """Timeouts count as breaker failures; cancellations do not."""
    from autobot_otel import _operation

    breaker = CircuitBreaker("main", BreakerSettings(consecutive_failures=2))

    @timed_operation("llm.fast", breaker=breaker)
    async def slow() -> None:
        await asyncio.sleep(1)

    _operation.get_operation("llm.fast", breaker=breaker).timeout = 0.02
    for _ in range(2):
        with pytest.raises(OperationTimeoutError):
            await slow()
    assert breaker.state.value == "open"


def test_scrape_shows_exact_names(telemetry: Telemetry) -> None:
    """The Prometheus exposition has the contract's names, labels and buckets."""

    @timed_operation("redis.get", database="redis")
    async def get() -> None:
        await asyncio.sleep(0)

    from autobot_otel import _operation

    async def run() -> None:
        await get()
        _operation.get_operation("redis.get", database="redis").timeout = 0.001

        @timed_operation("redis.set", database="redis")
        async def slow_set() -> None:
            await asyncio.sleep(1)

        _operation.get_operation("redis.set", database="redis").timeout = 0.01
        with pytest.raises(OperationTimeoutError):
            await slow_set()

    asyncio.run(run())
    text = telemetry.scrape()
    assert (
        'autobot_timeout_total{database="redis",operation_type="redis.set",status="timeout"} 1.0'
        in text
    )
    assert (
        'autobot_redis_requests_total{database="redis",operation="get",status="success"} 1.0'
        in text
    )
    assert (
        'autobot_redis_requests_total{database="redis",operation="set",status="timeout"} 1.0'
        in text
    )
    buckets = [
        line.split('le="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith('autobot_operation_duration_seconds_bucket{database="redis",le=')
        and 'operation_type="redis.get"' in line
    ]
    assert buckets == ["0.001", "0.01", "0.1", "0.5", "1.0", "2.0", "5.0", "10.0", "30.0", "+Inf"]
    assert "_total_total" not in text
    assert "seconds_seconds" not in text
    assert "otel_scope_name" not in text


async def test_deadline_budget_counted_once(tmp_path: Path, telemetry: Telemetry) -> None:
    """A budget that runs out is counted once, as budget_exhausted, where it was set."""
    configure(
        settings_files=[
            write_settings(tmp_path, "default:\n  timeouts:\n    http:\n      request: 0.05\n")
        ]
    )

    @timed_operation("llm.fast")
    async def inner() -> None:
        await asyncio.sleep(10)

    with pytest.raises(OperationTimeoutError) as caught:
        async with deadline_budget("http.request"):
            await inner()
    assert caught.value.operation == "http.request"
    assert (
        telemetry.value(
            "autobot.timeout",
            operation_type="http.request",
            database="http",
            status="budget_exhausted",
        )
        == 1
    )
    assert len(telemetry.counted("autobot.timeout")) == 1
    (inner_span,) = telemetry.spans("llm.fast")
    assert inner_span.attributes is not None
    assert inner_span.attributes["autobot.timeout.source"] == "budget"


async def test_child_task_inherits_budget(telemetry: Telemetry) -> None:
    """A task started inside an operation keeps its deadline; it is counted once."""
    from autobot_otel import _operation

    @timed_operation("llm.fast")
    async def child() -> None:
        await asyncio.sleep(10)

    @timed_operation("llm.reasoning")
    async def parent() -> asyncio.Task[None]:
        task = asyncio.create_task(child())
        await asyncio.sleep(0.01)  # The child enters while the parent still runs.
        return task

    _operation.get_operation("llm.reasoning").timeout = 0.05
    task = await parent()
    with pytest.raises(OperationTimeoutError) as caught:
        await asyncio.wait_for(task, timeout=2)
    assert caught.value.budget_owner == "llm.reasoning"
    # The parent ended before its deadline, so only the child can count it.
    assert (
        telemetry.value(
            "autobot.timeout", operation_type="llm.fast", database="llm", status="budget_exhausted"
        )
        == 1
    )
    assert len(telemetry.counted("autobot.timeout")) == 1


async def test_shared_deadline_counted_once(telemetry: Telemetry) -> None:
    """When parent and child time out together, only the parent counts the deadline."""
    from autobot_otel import _operation

    @timed_operation("llm.fast")
    async def child() -> None:
        await asyncio.sleep(10)

    @timed_operation("llm.reasoning")
    async def parent() -> None:
        await asyncio.shield(asyncio.create_task(child()))

    _operation.get_operation("llm.reasoning").timeout = 0.05
    with pytest.raises(OperationTimeoutError):
        await parent()
    await asyncio.sleep(0.05)
    assert (
        telemetry.value(
            "autobot.timeout", operation_type="llm.reasoning", database="llm", status="timeout"
        )
        == 1
    )
    assert len(telemetry.counted("autobot.timeout")) == 1


async def test_task_started_after_scope_ended_is_free(telemetry: Telemetry) -> None:
    """A task that first runs after its creator's scope ended is not bound by it."""
    seen: list[float | None] = []

    @timed_operation("llm.fast")
    async def child() -> None:
        seen.append(remaining_time())

    async with deadline_budget("llm.default", seconds=None):
        task = asyncio.create_task(child())
    await task
    assert seen[0] is not None
    assert seen[0] > 29.0  # llm.fast's own 30 s, not what was left of the budget


async def test_timed_object_entered_twice_rejected(telemetry: Telemetry) -> None:
    """Entering one timed() twice raises and leaves later deadlines intact."""
    from autobot_otel import _operation

    block = timed("llm.fast")
    with pytest.raises(RuntimeError, match="entered already"):
        async with block:
            async with block:
                pass
    assert remaining_time() is None

    @timed_operation("llm.default")
    async def slow() -> None:
        await asyncio.sleep(1)

    _operation.get_operation("llm.default").timeout = 0.05
    with pytest.raises(OperationTimeoutError):
        await slow()


async def test_nested_breaker_rejection_not_counted(telemetry: Telemetry) -> None:
    """A nested call's CircuitOpenError does not count against the outer breaker."""
    inner_breaker = CircuitBreaker("inner", BreakerSettings(consecutive_failures=1))
    outer_breaker = CircuitBreaker("outer", BreakerSettings(consecutive_failures=1))

    @timed_operation("llm.fast", breaker=inner_breaker)
    async def inner() -> None:
        return None

    @timed_operation("llm.default", breaker=outer_breaker)
    async def outer() -> None:
        await inner()

    inner_breaker.force_open()
    with pytest.raises(CircuitOpenError):
        await outer()
    assert outer_breaker.state.value == "closed"


async def test_cancel_right_after_deadline_is_cancellation(telemetry: Telemetry) -> None:
    """An outside cancel that lands just after the deadline fired stays a cancellation."""
    from autobot_otel import _operation

    @timed_operation("llm.fast")
    async def victim() -> None:
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            # The timeout's cancel arrived; now a second, outside cancel lands too.
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            raise

    _operation.get_operation("llm.fast").timeout = 0.02
    task = asyncio.create_task(victim())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert telemetry.counted("autobot.timeout") == []
    (span,) = telemetry.spans("llm.fast")
    assert span.attributes is not None
    assert span.attributes["autobot.outcome"] == "cancelled"


async def test_swallowed_outside_cancel_is_delivered(telemetry: Telemetry) -> None:
    """A cancellation swallowed below the call, without uncancel(), still cancels."""

    @timed_operation("llm.fast")
    async def loses_cancel() -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass  # As asyncio.wait_for on Python 3.11 can, when a result is ready too.
        return "result"

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(loses_cancel())
    assert telemetry.counted("autobot.timeout") == []
    (span,) = telemetry.spans("llm.fast")
    assert span.attributes is not None
    assert span.attributes["autobot.outcome"] == "cancelled"


async def test_undeclared_redis_names_bounded(telemetry: Telemetry) -> None:
    """Made-up redis.* names share one 'other' series instead of one each."""
    for number in range(20):
        async with timed(f"redis.made_up_{number}", default=1.0):
            pass
    operations = {
        point.attributes["operation"]
        for point in telemetry.points("autobot.redis.requests")
        if point.attributes is not None
    }
    assert operations == {"other"}
    types = {
        point.attributes["operation_type"]
        for point in telemetry.points("autobot.operation.duration")
    }
    assert types == {"other"}


def test_classmethod_order_explained() -> None:
    """@timed_operation above @classmethod raises, naming the right order."""
    with pytest.raises(TypeError, match="below @classmethod"):

        class Client:
            @timed_operation("llm.fast")  # type: ignore[arg-type]
            @classmethod
            async def ask(cls) -> None:
                return None


def test_async_callable_object_explained() -> None:
    """An object with async __call__ is pointed at its method."""

    class Caller:
        async def __call__(self) -> None:
            return None

    with pytest.raises(TypeError, match="decorate its 'async def __call__'"):
        timed_operation("llm.fast")(Caller())
