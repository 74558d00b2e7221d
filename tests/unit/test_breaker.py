"""Unit tests of the circuit breaker state machine, with a fake clock and fixed jitter."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
import redis.exceptions
from dynaconf import Dynaconf

from autobot_otel._breaker import (
    BREAKER_EVENTS,
    BREAKER_REASONS,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    Permit,
    breaker_settings_from_mapping,
)
from autobot_otel._errors import CircuitOpenError, ConfigurationError, OperationTimeoutError

DEFAULTS_FILE = Path(__file__).resolve().parents[2] / "autobot_otel" / "defaults.yaml"


class FakeClock:
    """Monotonic clock that moves only when a test advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """Breaker listener that keeps every (event, reason) pair in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, breaker: CircuitBreaker, event: str, reason: str) -> None:
        self.events.append((event, reason))


def make_breaker(
    random_value: float = 0.5, **overrides: object
) -> tuple[CircuitBreaker, FakeClock, Recorder]:
    """Build breaker ``main`` with test settings. Random 0.5 makes the jitter zero."""
    values: dict[str, object] = {
        "sliding_window_size": 10,
        "minimum_calls": 4,
        "open_duration": 30.0,
        "open_duration_max": 300.0,
    }
    values.update(overrides)
    clock = FakeClock()
    settings = BreakerSettings(**values)  # type: ignore[arg-type]
    breaker = CircuitBreaker("main", settings, clock=clock, random=lambda: random_value)
    recorder = Recorder()
    breaker.add_listener(recorder)
    return breaker, clock, recorder


def succeed(breaker: CircuitBreaker, times: int = 1, duration: float = 0.01) -> None:
    for _ in range(times):
        breaker.on_success(breaker.acquire(), duration)


def fail(
    breaker: CircuitBreaker,
    times: int = 1,
    exc: BaseException | None = None,
    duration: float = 0.01,
) -> None:
    for _ in range(times):
        error = exc if exc is not None else ConnectionError("connection refused")
        breaker.on_failure(breaker.acquire(), duration, error)


def trip(breaker: CircuitBreaker) -> None:
    """Open a breaker built with consecutive_failures=1."""
    fail(breaker)
    assert breaker.state is BreakerState.OPEN


# --- vocabulary ---------------------------------------------------------------------------


def test_state_codes_match_gauge_contract() -> None:
    """The state gauge values are closed 0, open 1, half_open 2."""
    assert BreakerState.CLOSED.code == 0
    assert BreakerState.OPEN.code == 1
    assert BreakerState.HALF_OPEN.code == 2
    assert [state.value for state in BreakerState] == ["closed", "open", "half_open"]


def test_event_and_reason_vocabulary() -> None:
    """Event and reason names are exactly the metric label values of the contract."""
    assert BREAKER_EVENTS == (
        "opened",
        "closed",
        "half_opened",
        "rejected",
        "probe_succeeded",
        "probe_failed",
        "forced_open",
        "forced_closed",
        "disabled",
        "reset",
    )
    assert BREAKER_REASONS == (
        "failure_rate",
        "slow_call_rate",
        "consecutive_failures",
        "probe_failure",
        "probe_success",
        "open_duration_elapsed",
        "manual",
        "breaker_open",
        "half_open_full",
        "none",
    )


def test_settings_defaults_match_packaged_defaults() -> None:
    """BreakerSettings() equals circuit_breaker.default in defaults.yaml."""
    loaded = Dynaconf(
        settings_files=[str(DEFAULTS_FILE)],
        environments=True,
        envvar_prefix="AUTOBOT_BREAKER_TEST_UNUSED",
    )
    values = loaded.circuit_breaker.default
    settings, problems = breaker_settings_from_mapping(
        values, key_prefix="circuit_breaker.default", source_of=lambda key: str(DEFAULTS_FILE)
    )
    assert problems == []
    assert settings == BreakerSettings()


# --- sliding window -----------------------------------------------------------------------


def test_failure_rate_opens_at_threshold() -> None:
    """The breaker opens when failures / calls reaches failure_rate_threshold."""
    breaker, _, recorder = make_breaker(sliding_window_size=20, minimum_calls=10)
    succeed(breaker, 5)
    fail(breaker, 4)
    assert breaker.state is BreakerState.CLOSED

    fail(breaker)

    assert breaker.state is BreakerState.OPEN
    assert recorder.events == [("opened", "failure_rate")]
    assert breaker.snapshot()["failure_rate"] == 0.5


def test_failure_rate_below_threshold_stays_closed() -> None:
    """Four failures in ten calls (0.4) keep a 0.5 breaker closed."""
    breaker, _, recorder = make_breaker(sliding_window_size=20, minimum_calls=10)
    succeed(breaker, 6)
    fail(breaker, 4)

    snapshot = breaker.snapshot()
    assert snapshot["state"] == "closed"
    assert snapshot["failure_rate"] == 0.4
    assert snapshot["window_calls"] == 10
    assert snapshot["window_failures"] == 4
    assert recorder.events == []


def test_failure_rate_threshold_exact_for_decimals() -> None:
    """Three failures in ten calls reach a threshold of 0.3 exactly."""
    breaker, _, _ = make_breaker(failure_rate_threshold=0.3, minimum_calls=10)
    succeed(breaker, 7)
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED

    fail(breaker)

    assert breaker.state is BreakerState.OPEN


def test_window_evicts_oldest_outcome() -> None:
    """A full window drops its oldest outcome for each new one."""
    breaker, _, _ = make_breaker(
        sliding_window_size=4, minimum_calls=4, failure_rate_threshold=0.75
    )
    fail(breaker, 2)
    succeed(breaker, 2)
    assert breaker.snapshot()["failure_rate"] == 0.5

    succeed(breaker)
    assert breaker.snapshot()["window_failures"] == 1
    succeed(breaker)
    assert breaker.snapshot()["window_failures"] == 0
    assert breaker.snapshot()["window_calls"] == 4

    fail(breaker, 2)
    assert breaker.snapshot()["failure_rate"] == 0.5
    assert breaker.state is BreakerState.CLOSED
    fail(breaker)
    assert breaker.snapshot()["failure_rate"] == 0.75
    assert breaker.state is BreakerState.OPEN


def test_minimum_calls_delays_rate_decision() -> None:
    """Nine failures in a row do not open a breaker that needs ten calls."""
    breaker, _, recorder = make_breaker(sliding_window_size=20, minimum_calls=10)
    fail(breaker, 9)

    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["failure_rate"] == 1.0
    assert breaker.snapshot()["consecutive_failures"] == 9

    fail(breaker)

    assert recorder.events == [("opened", "failure_rate")]


def test_minimum_calls_capped_at_window_size() -> None:
    """minimum_calls above sliding_window_size waits only for a full window."""
    breaker, _, recorder = make_breaker(sliding_window_size=5, minimum_calls=10)
    assert breaker.snapshot()["minimum_calls"] == 5
    fail(breaker, 4)
    assert breaker.state is BreakerState.CLOSED

    fail(breaker)

    assert recorder.events == [("opened", "failure_rate")]


def test_consecutive_failures_open_below_minimum() -> None:
    """N failures in a row open the breaker before minimum_calls is reached."""
    breaker, _, recorder = make_breaker(consecutive_failures=3, minimum_calls=10)
    fail(breaker, 2)
    succeed(breaker)
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["consecutive_failures"] == 2

    fail(breaker)

    assert recorder.events == [("opened", "consecutive_failures")]
    assert breaker.snapshot()["window_calls"] == 6


def test_slow_calls_open_on_slow_call_rate() -> None:
    """Successes slower than slow_call_duration open the breaker at the slow-call rate."""
    breaker, _, recorder = make_breaker(
        slow_call_duration=0.2, slow_call_rate_threshold=0.5, failure_rate_threshold=1.0
    )
    succeed(breaker, duration=0.1)
    succeed(breaker, duration=0.2)  # Exactly the limit is not slower than it.
    succeed(breaker, duration=0.3)
    assert breaker.snapshot()["window_slow_calls"] == 1
    assert breaker.state is BreakerState.CLOSED

    succeed(breaker, duration=0.25)

    assert recorder.events == [("opened", "slow_call_rate")]
    assert breaker.snapshot()["slow_call_rate"] == 0.5


def test_slow_failure_counts_as_failure_only() -> None:
    """A failed call is a failure however long it took, never a slow call."""
    breaker, _, _ = make_breaker(slow_call_duration=0.2)
    fail(breaker, duration=5.0)

    assert breaker.snapshot()["window_failures"] == 1
    assert breaker.snapshot()["window_slow_calls"] == 0


def test_slow_call_tracking_off_by_default() -> None:
    """With slow_call_duration 0, long calls are ordinary successes."""
    breaker, _, _ = make_breaker()
    succeed(breaker, 10, duration=100.0)

    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["window_slow_calls"] == 0


# --- open and half-open -------------------------------------------------------------------


def test_open_breaker_rejects_with_retry_after() -> None:
    """An open breaker raises CircuitOpenError with the seconds left in the open period."""
    breaker, clock, recorder = make_breaker(consecutive_failures=1)
    trip(breaker)
    clock.advance(10.0)

    with pytest.raises(CircuitOpenError) as raised:
        breaker.acquire()

    assert raised.value.breaker == "main"
    assert raised.value.retry_after == 20.0
    assert recorder.events[-1] == ("rejected", "breaker_open")
    assert breaker.snapshot()["retry_after"] == 20.0
    assert breaker.snapshot()["events"]["rejected"] == 1  # type: ignore[index]


def test_open_turns_half_open_after_duration() -> None:
    """Reading the state after open_duration turns OPEN into HALF_OPEN once."""
    breaker, clock, recorder = make_breaker(consecutive_failures=1)
    trip(breaker)
    clock.advance(29.5)
    assert breaker.state is BreakerState.OPEN

    clock.advance(0.5)

    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.state is BreakerState.HALF_OPEN
    assert recorder.events == [
        ("opened", "consecutive_failures"),
        ("half_opened", "open_duration_elapsed"),
    ]


def test_peek_state_changes_nothing() -> None:
    """peek_state() and snapshot() report half_open without emitting half_opened."""
    breaker, clock, recorder = make_breaker(consecutive_failures=1)
    trip(breaker)
    clock.advance(30.0)

    assert breaker.peek_state() is BreakerState.HALF_OPEN
    snapshot = breaker.snapshot()
    assert snapshot["state"] == "half_open"
    assert snapshot["retry_after"] is None
    assert recorder.events == [("opened", "consecutive_failures")]

    breaker.acquire()
    assert recorder.events[-1] == ("half_opened", "open_duration_elapsed")


def test_probe_success_closes_with_empty_window() -> None:
    """A successful probe closes the breaker and starts a fresh window."""
    breaker, clock, recorder = make_breaker(consecutive_failures=1)
    trip(breaker)
    clock.advance(30.0)

    succeed(breaker)

    assert breaker.state is BreakerState.CLOSED
    assert recorder.events[-2:] == [("probe_succeeded", "none"), ("closed", "probe_success")]
    snapshot = breaker.snapshot()
    assert snapshot["window_calls"] == 0
    assert snapshot["consecutive_failures"] == 0
    assert snapshot["open_streak"] == 0


def test_probe_failure_reopens_for_longer() -> None:
    """A failed probe reopens the breaker for open_duration times the multiplier."""
    breaker, clock, recorder = make_breaker(consecutive_failures=1)
    trip(breaker)
    clock.advance(30.0)

    fail(breaker)

    assert recorder.events == [
        ("opened", "consecutive_failures"),
        ("half_opened", "open_duration_elapsed"),
        ("probe_failed", "probe_failure"),
        ("opened", "probe_failure"),
    ]
    snapshot = breaker.snapshot()
    assert snapshot["state"] == "open"
    assert snapshot["open_duration_current"] == 60.0
    assert snapshot["retry_after"] == 60.0
    assert snapshot["open_streak"] == 2


def test_slow_probe_reopens_breaker() -> None:
    """A probe slower than slow_call_duration fails with reason slow_call_rate."""
    breaker, clock, recorder = make_breaker(consecutive_failures=1, slow_call_duration=0.5)
    trip(breaker)
    clock.advance(30.0)

    succeed(breaker, duration=0.75)

    assert recorder.events[-2:] == [
        ("probe_failed", "slow_call_rate"),
        ("opened", "probe_failure"),
    ]


def test_open_duration_grows_to_max() -> None:
    """Each re-open without a close doubles the open duration up to open_duration_max."""
    breaker, clock, _ = make_breaker(consecutive_failures=1)
    trip(breaker)
    durations = [breaker.snapshot()["open_duration_current"]]
    for _ in range(5):
        clock.advance(1000.0)
        fail(breaker)
        durations.append(breaker.snapshot()["open_duration_current"])

    assert durations == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0]


def test_open_duration_growth_resets_after_close() -> None:
    """After a successful close, the next open lasts open_duration again."""
    breaker, clock, _ = make_breaker(consecutive_failures=1)
    trip(breaker)
    clock.advance(30.0)
    fail(breaker)
    assert breaker.snapshot()["open_duration_current"] == 60.0
    clock.advance(60.0)
    succeed(breaker)

    trip(breaker)

    assert breaker.snapshot()["open_duration_current"] == 30.0


@pytest.mark.parametrize(
    ("random_value", "expected"),
    [(0.0, 22.5), (0.5, 30.0), (0.75, 33.75), (1.0, 37.5)],
)
def test_open_duration_jitter_bounds(random_value: float, expected: float) -> None:
    """Jitter 0.25 scales the open duration by a factor from 0.75 to 1.25."""
    breaker, _, _ = make_breaker(random_value, consecutive_failures=1, open_duration_jitter=0.25)
    trip(breaker)

    assert breaker.snapshot()["open_duration_current"] == expected


def test_open_duration_jitter_never_exceeds_max() -> None:
    """Upward jitter at the cap is cut to open_duration_max, but downward jitter stays."""
    high, clock, _ = make_breaker(
        1.0, consecutive_failures=1, open_duration=200.0, open_duration_jitter=0.25
    )
    trip(high)
    assert high.snapshot()["open_duration_current"] == 250.0
    clock.advance(250.0)
    fail(high)
    assert high.snapshot()["open_duration_current"] == 300.0

    low, clock, _ = make_breaker(
        0.0, consecutive_failures=1, open_duration=200.0, open_duration_jitter=0.25
    )
    trip(low)
    clock.advance(150.0)
    fail(low)
    assert low.snapshot()["open_duration_current"] == 225.0


# --- half-open concurrency ----------------------------------------------------------------


def test_half_open_admits_exactly_max_probes() -> None:
    """Of ten concurrent acquire() calls in half-open, exactly half_open_max_calls pass."""
    breaker, clock, recorder = make_breaker(consecutive_failures=1, half_open_max_calls=3)
    trip(breaker)
    clock.advance(30.0)

    permits: list[Permit] = []
    rejections: list[CircuitOpenError] = []
    for _ in range(10):
        try:
            permits.append(breaker.acquire())
        except CircuitOpenError as exc:
            rejections.append(exc)

    assert len(permits) == 3
    assert all(permit.probe for permit in permits)
    assert len(rejections) == 7
    assert {exc.retry_after for exc in rejections} == {0.0}
    assert recorder.events.count(("rejected", "half_open_full")) == 7
    assert breaker.snapshot()["half_open_in_flight"] == 3


def test_half_open_closes_after_all_probes_succeed() -> None:
    """The breaker closes only when half_open_max_calls probes have succeeded."""
    breaker, clock, recorder = make_breaker(consecutive_failures=1, half_open_max_calls=3)
    trip(breaker)
    clock.advance(30.0)
    first, second, third = (breaker.acquire() for _ in range(3))

    breaker.on_success(first, 0.01)
    breaker.on_success(second, 0.01)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot()["half_open_succeeded"] == 2
    with pytest.raises(CircuitOpenError):
        breaker.acquire()  # A succeeded probe does not free its slot.

    breaker.on_success(third, 0.01)

    assert breaker.state is BreakerState.CLOSED
    assert recorder.events[-5:] == [
        ("probe_succeeded", "none"),
        ("probe_succeeded", "none"),
        ("rejected", "half_open_full"),
        ("probe_succeeded", "none"),
        ("closed", "probe_success"),
    ]


def test_any_probe_failure_reopens() -> None:
    """One failed probe reopens the breaker even after other probes succeeded."""
    breaker, clock, _ = make_breaker(consecutive_failures=1, half_open_max_calls=3)
    trip(breaker)
    clock.advance(30.0)
    first, second, third = (breaker.acquire() for _ in range(3))

    breaker.on_success(first, 0.01)
    breaker.on_failure(second, 0.01, ConnectionError("reset by peer"))
    breaker.on_success(third, 0.01)

    assert breaker.state is BreakerState.OPEN
    assert breaker.snapshot()["events"]["probe_succeeded"] == 1  # type: ignore[index]


def test_released_probe_frees_slot_without_counting() -> None:
    """A cancelled probe frees its slot and neither closes nor reopens the breaker."""
    breaker, clock, recorder = make_breaker(consecutive_failures=1)
    trip(breaker)
    clock.advance(30.0)
    probe = breaker.acquire()
    with pytest.raises(CircuitOpenError):
        breaker.acquire()

    breaker.release(probe)

    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot()["half_open_in_flight"] == 0
    assert breaker.snapshot()["half_open_succeeded"] == 0
    assert ("probe_succeeded", "none") not in recorder.events
    succeed(breaker)
    assert breaker.state is BreakerState.CLOSED


# --- stale permits ------------------------------------------------------------------------


def test_stale_permit_does_not_count() -> None:
    """A call admitted before the breaker opened cannot change the new state."""
    breaker, clock, recorder = make_breaker(consecutive_failures=2)
    old = breaker.acquire()
    fail(breaker, 2)
    before = breaker.snapshot()
    events_before = list(recorder.events)

    breaker.on_failure(old, 0.01, ConnectionError("refused"))
    breaker.on_success(old, 0.01)
    breaker.release(old)

    assert breaker.snapshot() == before
    assert recorder.events == events_before

    clock.advance(30.0)
    succeed(breaker)
    assert breaker.state is BreakerState.CLOSED
    breaker.on_failure(old, 0.01, ConnectionError("refused"))
    assert breaker.snapshot()["window_calls"] == 0


def test_stale_probe_does_not_flip_state() -> None:
    """A probe from an earlier half-open period neither closes nor frees a new slot."""
    breaker, clock, recorder = make_breaker(consecutive_failures=1, half_open_max_calls=2)
    trip(breaker)
    clock.advance(30.0)
    slow_probe = breaker.acquire()
    failed_probe = breaker.acquire()
    breaker.on_failure(failed_probe, 0.01, ConnectionError("refused"))

    breaker.on_success(slow_probe, 0.01)
    assert breaker.state is BreakerState.OPEN
    assert recorder.events.count(("probe_succeeded", "none")) == 0

    clock.advance(60.0)
    breaker.acquire()
    breaker.release(slow_probe)
    breaker.on_failure(slow_probe, 0.01, ConnectionError("refused"))
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot()["half_open_in_flight"] == 1


def test_manual_change_makes_permits_stale() -> None:
    """Outcomes of calls admitted before force_closed() are not recorded."""
    breaker, _, _ = make_breaker()
    old = breaker.acquire()
    breaker.force_closed()

    breaker.on_failure(old, 0.01, ConnectionError("refused"))

    assert breaker.snapshot()["window_calls"] == 0


# --- exception classification -------------------------------------------------------------


def test_ignored_exception_counts_nothing() -> None:
    """An exception in ignore_exceptions is neither a success nor a failure."""
    breaker, _, _ = make_breaker(ignore_exceptions=(KeyError,), consecutive_failures=1)
    fail(breaker, 20, exc=KeyError("missing"))

    snapshot = breaker.snapshot()
    assert snapshot["state"] == "closed"
    assert snapshot["window_calls"] == 0
    assert snapshot["consecutive_failures"] == 0


def test_ignored_exception_frees_probe_slot() -> None:
    """An ignored exception in half-open frees the probe slot like release()."""
    breaker, clock, _ = make_breaker(ignore_exceptions=(KeyError,), consecutive_failures=1)
    trip(breaker)
    clock.advance(30.0)

    fail(breaker, exc=KeyError("missing"))

    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot()["half_open_in_flight"] == 0


def test_record_exceptions_limit_failures() -> None:
    """With record_exceptions set, only listed exceptions are failures, others successes."""
    breaker, _, _ = make_breaker(record_exceptions=(ConnectionError,))
    fail(breaker, exc=ValueError("bad key"))
    assert breaker.snapshot()["window_calls"] == 1
    assert breaker.snapshot()["window_failures"] == 0

    fail(breaker, exc=ConnectionResetError("reset"))
    assert breaker.snapshot()["window_failures"] == 1


def test_ignore_wins_over_record() -> None:
    """An exception matching both lists is ignored."""
    breaker, _, _ = make_breaker(
        record_exceptions=(OSError,), ignore_exceptions=(ConnectionRefusedError,)
    )
    fail(breaker, exc=ConnectionRefusedError("refused"))
    assert breaker.snapshot()["window_calls"] == 0

    fail(breaker, exc=ConnectionResetError("reset"))
    assert breaker.snapshot()["window_failures"] == 1


def test_timeouts_always_count_as_failures() -> None:
    """Timeouts are failures even when record_exceptions omits them and OSError is ignored."""
    breaker, _, _ = make_breaker(record_exceptions=(ValueError,), ignore_exceptions=(OSError,))
    fail(breaker, exc=TimeoutError())
    fail(breaker, exc=OperationTimeoutError("redis.get", 1.0))
    fail(breaker, exc=redis.exceptions.TimeoutError("read timed out"))

    # redis.exceptions.TimeoutError is not a builtin TimeoutError, so only two count.
    assert breaker.snapshot()["window_failures"] == 2
    assert breaker.snapshot()["window_calls"] == 3


def test_cancellation_counts_nothing() -> None:
    """CancelledError and KeyboardInterrupt reported as failures count nothing."""
    breaker, clock, _ = make_breaker(consecutive_failures=1)
    fail(breaker, exc=asyncio.CancelledError())
    fail(breaker, exc=KeyboardInterrupt())
    assert breaker.snapshot()["window_calls"] == 0

    trip(breaker)
    clock.advance(30.0)
    fail(breaker, exc=asyncio.CancelledError())
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot()["half_open_in_flight"] == 0


# --- manual control -----------------------------------------------------------------------


def test_force_open_rejects_without_retry_after() -> None:
    """A forced-open breaker rejects every call with retry_after None, however long."""
    breaker, clock, recorder = make_breaker()
    breaker.force_open()
    clock.advance(10_000.0)

    with pytest.raises(CircuitOpenError) as raised:
        breaker.acquire()

    assert raised.value.retry_after is None
    assert breaker.state is BreakerState.OPEN
    assert recorder.events == [("forced_open", "manual"), ("rejected", "manual")]
    snapshot = breaker.snapshot()
    assert snapshot["forced_open"] is True
    assert snapshot["retry_after"] is None


def test_force_closed_records_but_never_opens() -> None:
    """A forced-closed breaker admits every call and keeps counting outcomes."""
    breaker, _, recorder = make_breaker(consecutive_failures=1)
    breaker.force_closed()
    fail(breaker, 20)

    snapshot = breaker.snapshot()
    assert snapshot["state"] == "closed"
    assert snapshot["forced_closed"] is True
    assert snapshot["window_calls"] == 10
    assert snapshot["window_failures"] == 10
    assert snapshot["consecutive_failures"] == 20
    assert recorder.events == [("forced_closed", "manual")]


def test_disable_records_nothing() -> None:
    """A disabled breaker admits every call and leaves the window untouched."""
    breaker, _, recorder = make_breaker(consecutive_failures=1)
    succeed(breaker, 3)
    breaker.disable()
    fail(breaker, 20)

    snapshot = breaker.snapshot()
    assert snapshot["state"] == "closed"
    assert snapshot["disabled"] is True
    assert snapshot["window_calls"] == 3
    assert snapshot["window_failures"] == 0
    assert recorder.events == [("disabled", "manual")]


def test_reset_restores_closed_and_base_duration() -> None:
    """reset() leaves any mode for CLOSED with an empty window and the base open duration."""
    breaker, clock, recorder = make_breaker(consecutive_failures=1)
    trip(breaker)
    clock.advance(30.0)
    fail(breaker)
    assert breaker.snapshot()["open_duration_current"] == 60.0
    breaker.force_open()

    breaker.reset()

    assert recorder.events[-1] == ("reset", "manual")
    snapshot = breaker.snapshot()
    assert snapshot["state"] == "closed"
    assert snapshot["forced_open"] is False
    assert snapshot["window_calls"] == 0
    assert snapshot["open_streak"] == 0
    trip(breaker)
    assert breaker.snapshot()["open_duration_current"] == 30.0


# --- live reload --------------------------------------------------------------------------


def test_update_settings_keeps_open_period() -> None:
    """New settings leave an open breaker open until its original end time."""
    breaker, clock, _ = make_breaker(consecutive_failures=1)
    trip(breaker)
    clock.advance(10.0)

    breaker.update_settings(BreakerSettings(open_duration=5.0, consecutive_failures=1))

    assert breaker.state is BreakerState.OPEN
    assert breaker.snapshot()["retry_after"] == 20.0
    assert breaker.settings.open_duration == 5.0


def test_update_settings_resizes_window() -> None:
    """Shrinking the window keeps the newest outcomes, and growing it keeps them all."""
    breaker, _, _ = make_breaker(failure_rate_threshold=1.0)
    fail(breaker, 2)
    succeed(breaker, 4)

    breaker.update_settings(BreakerSettings(sliding_window_size=4, minimum_calls=4))
    snapshot = breaker.snapshot()
    assert snapshot["window_size"] == 4
    assert snapshot["window_calls"] == 4
    assert snapshot["window_failures"] == 0

    breaker.update_settings(BreakerSettings(sliding_window_size=8, minimum_calls=8))
    fail(breaker)
    snapshot = breaker.snapshot()
    assert snapshot["window_size"] == 8
    assert snapshot["window_calls"] == 5
    assert snapshot["window_failures"] == 1
    assert snapshot["state"] == "closed"


def test_update_settings_thresholds_apply_next_call() -> None:
    """A lowered threshold opens the breaker with the next outcome, not at reload."""
    breaker, _, recorder = make_breaker(sliding_window_size=20, minimum_calls=10)
    succeed(breaker, 6)
    fail(breaker, 4)

    breaker.update_settings(
        BreakerSettings(sliding_window_size=20, minimum_calls=10, failure_rate_threshold=0.35)
    )
    assert breaker.state is BreakerState.CLOSED
    assert recorder.events == []

    succeed(breaker)
    assert recorder.events == [("opened", "failure_rate")]


def test_update_settings_closes_when_probes_suffice() -> None:
    """Lowering half_open_max_calls to the probes already succeeded closes the breaker."""
    breaker, clock, recorder = make_breaker(consecutive_failures=1, half_open_max_calls=3)
    trip(breaker)
    clock.advance(30.0)
    succeed(breaker, 2)

    breaker.update_settings(BreakerSettings(consecutive_failures=1, half_open_max_calls=2))

    assert breaker.state is BreakerState.CLOSED
    assert recorder.events[-1] == ("closed", "probe_success")


def test_update_settings_rejects_other_types() -> None:
    """update_settings() raises TypeError naming the breaker for a non-settings value."""
    breaker, _, _ = make_breaker()

    with pytest.raises(TypeError) as raised:
        breaker.update_settings({"open_duration": 5.0})  # type: ignore[arg-type]

    assert str(raised.value) == (
        "update_settings() of circuit breaker 'main' expects BreakerSettings, got dict"
    )


# --- listeners and snapshot ---------------------------------------------------------------


def test_listener_error_logged_once_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """A failing listener is logged once with its traceback, and others still run."""

    def broken(breaker: CircuitBreaker, event: str, reason: str) -> None:
        raise RuntimeError("metrics backend gone")

    breaker, _, recorder = make_breaker(consecutive_failures=1)
    breaker.add_listener(broken)
    caplog.set_level(logging.WARNING, logger="autobot_otel")

    trip(breaker)
    for _ in range(2):
        with pytest.raises(CircuitOpenError):
            breaker.acquire()

    listener_logs = [r for r in caplog.records if "listener" in r.getMessage()]
    assert len(listener_logs) == 1
    assert listener_logs[0].name == "autobot_otel"
    assert listener_logs[0].exc_info is not None
    assert listener_logs[0].exc_info[0] is RuntimeError
    assert breaker.snapshot()["listener_errors"] == 3
    assert recorder.events == [
        ("opened", "consecutive_failures"),
        ("rejected", "breaker_open"),
        ("rejected", "breaker_open"),
    ]


def test_snapshot_is_json_ready() -> None:
    """snapshot() returns plain JSON values with the window and event counts."""
    breaker, clock, _ = make_breaker(consecutive_failures=3, failure_rate_threshold=1.0)
    succeed(breaker, 2)
    fail(breaker, 3)
    clock.advance(5.0)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()

    snapshot = breaker.snapshot()

    assert json.loads(json.dumps(snapshot)) == snapshot
    assert snapshot == {
        "name": "main",
        "state": "open",
        "state_code": 1,
        "forced_open": False,
        "forced_closed": False,
        "disabled": False,
        "window_size": 10,
        "window_calls": 5,
        "window_failures": 3,
        "window_slow_calls": 0,
        "failure_rate": 0.6,
        "slow_call_rate": 0.0,
        "minimum_calls": 4,
        "consecutive_failures": 3,
        "retry_after": 25.0,
        "open_duration_current": 30.0,
        "open_streak": 1,
        "half_open_in_flight": 0,
        "half_open_succeeded": 0,
        "half_open_max_calls": 1,
        "events": {
            "opened": 1,
            "closed": 0,
            "half_opened": 0,
            "rejected": 1,
            "probe_succeeded": 0,
            "probe_failed": 0,
            "forced_open": 0,
            "forced_closed": 0,
            "disabled": 0,
            "reset": 0,
        },
        "listener_errors": 0,
    }


# --- settings validation ------------------------------------------------------------------


def source_of(key: str) -> str:
    return f"AUTOBOT_{key.upper().replace('.', '__')}"


def test_settings_from_mapping_accepts_valid_values() -> None:
    """Valid values parse, ints become floats, and class names resolve to classes."""
    settings, problems = breaker_settings_from_mapping(
        {
            "OPEN_DURATION": 5,
            "sliding_window_size": 50,
            "record_exceptions": ["redis.exceptions.ConnectionError", "OSError"],
            "ignore_exceptions": ["builtins.KeyError"],
        },
        key_prefix="circuit_breaker.main",
        source_of=source_of,
    )

    assert problems == []
    assert settings == BreakerSettings(
        open_duration=5.0,
        sliding_window_size=50,
        record_exceptions=(redis.exceptions.ConnectionError, OSError),
        ignore_exceptions=(KeyError,),
    )
    assert settings is not None
    assert type(settings.open_duration) is float


FRACTION = "expected a fraction greater than 0 and at most 1, such as 0.5"
KNOWN_KEYS = (
    "consecutive_failures, failure_rate_threshold, half_open_max_calls, ignore_exceptions, "
    "minimum_calls, open_duration, open_duration_jitter, open_duration_max, "
    "open_duration_multiplier, record_exceptions, sliding_window_size, slow_call_duration, "
    "slow_call_rate_threshold"
)
BAD_SETTINGS = [
    ("failure_rate_threshold", 0, 0, FRACTION),
    ("failure_rate_threshold", -1, -1, FRACTION),
    ("failure_rate_threshold", 1.5, 1.5, FRACTION),
    ("slow_call_rate_threshold", 0.0, 0.0, FRACTION),
    ("failure_rate_threshold", "abc", "abc", f"{FRACTION}, not str 'abc'"),
    ("minimum_calls", True, True, "expected an integer of at least 1; a boolean is not a number"),
    (
        "failure_rate_threshold",
        False,
        False,
        f"{FRACTION}; a boolean is not a number",
    ),
    (
        "sliding_window_size",
        1.5,
        1.5,
        "expected an integer from 1 to 1000000, not float 1.5",
    ),
    ("sliding_window_size", 0, 0, "expected an integer from 1 to 1000000"),
    ("sliding_window_size", 10**7, 10**7, "expected an integer from 1 to 1000000"),
    ("half_open_max_calls", 0, 0, "expected an integer of at least 1"),
    (
        "consecutive_failures",
        -1,
        -1,
        "expected an integer of at least 0 (0 turns the rule off)",
    ),
    (
        "open_duration",
        float("inf"),
        float("inf"),
        "expected seconds, greater than 0; the value must be finite",
    ),
    ("open_duration", -1, -1, "expected seconds, greater than 0"),
    (
        "slow_call_duration",
        -0.1,
        -0.1,
        "expected seconds, at least 0 (0 turns slow-call tracking off)",
    ),
    (
        "open_duration_jitter",
        1.0,
        1.0,
        "expected a fraction of at least 0 and less than 1, such as 0.1",
    ),
    (
        "open_duration_multiplier",
        0.5,
        0.5,
        "expected a factor of at least 1 (1 keeps the open duration fixed)",
    ),
    ("retry_budget", 3, 3, f"unknown setting; expected one of: {KNOWN_KEYS}"),
    (
        "record_exceptions",
        ["no_such_module.Error"],
        "no_such_module.Error",
        "cannot import 'no_such_module.Error': no module named 'no_such_module'; "
        "check the spelling and the installed packages",
    ),
    (
        "record_exceptions",
        ["builtins.NoSuchError"],
        "builtins.NoSuchError",
        "module 'builtins' has no attribute 'NoSuchError'; check the spelling",
    ),
    (
        "record_exceptions",
        ["not a name"],
        "not a name",
        "'not a name' is not a dotted name such as redis.exceptions.ConnectionError",
    ),
    (
        "record_exceptions",
        ["builtins.dict"],
        "builtins.dict",
        "builtins.dict is not a subclass of Exception",
    ),
    (
        "ignore_exceptions",
        ["asyncio.CancelledError"],
        "asyncio.CancelledError",
        "asyncio.exceptions.CancelledError is not a subclass of Exception",
    ),
    (
        "ignore_exceptions",
        ["asyncio.get_event_loop"],
        "asyncio.get_event_loop",
        "'asyncio.get_event_loop' is not a class; name a subclass of Exception",
    ),
    (
        "record_exceptions",
        "KeyError",
        "KeyError",
        "expected a list of dotted exception class names, such as [builtins.KeyError]",
    ),
    (
        "ignore_exceptions",
        ["TimeoutError"],
        "builtins.TimeoutError",
        "timeouts always count as failures and cannot be ignored; remove it",
    ),
    (
        "open_duration_max",
        10.0,
        10.0,
        "must be at least open_duration (30.0); raise it or lower open_duration",
    ),
]


@pytest.mark.parametrize(("key", "value", "reported", "reason"), BAD_SETTINGS)
def test_settings_validation_reports_bad_value(
    key: str, value: object, reported: object, reason: str
) -> None:
    """Each invalid setting yields one problem with its full key, value, source and fix."""
    settings, problems = breaker_settings_from_mapping(
        {key: value}, key_prefix="circuit_breaker.main", source_of=source_of
    )

    assert settings is None
    assert len(problems) == 1
    problem = problems[0]
    assert problem.key == f"circuit_breaker.main.{key}"
    assert problem.value == reported
    assert problem.source == f"AUTOBOT_CIRCUIT_BREAKER__MAIN__{key.upper()}"
    assert problem.reason == reason


def test_settings_validation_reports_nan() -> None:
    """NaN is reported as not finite, with the NaN object itself as the value."""
    nan = float("nan")
    _, problems = breaker_settings_from_mapping(
        {"failure_rate_threshold": nan}, key_prefix="circuit_breaker.main", source_of=source_of
    )

    assert len(problems) == 1
    assert problems[0].value is nan
    assert problems[0].reason == f"{FRACTION}; the value must be finite"


def test_settings_validation_reports_every_bad_key() -> None:
    """All invalid keys are reported together, in input order, and no settings are built."""
    settings, problems = breaker_settings_from_mapping(
        {
            "open_duration": 0,
            "minimum_calls": 5,
            "half_open_max_calls": "two",
            "typo_key": 1,
        },
        key_prefix="circuit_breaker.cache",
        source_of=lambda key: "settings.yaml",
    )

    assert settings is None
    assert [problem.key for problem in problems] == [
        "circuit_breaker.cache.typo_key",
        "circuit_breaker.cache.open_duration",
        "circuit_breaker.cache.half_open_max_calls",
    ]
    assert {problem.source for problem in problems} == {"settings.yaml"}


def test_settings_case_variant_later_wins() -> None:
    """Of two keys that differ only in case, the later one wins, as in a dict merge."""
    settings, problems = breaker_settings_from_mapping(
        {"open_duration": 5, "OPEN_DURATION": 6},
        key_prefix="circuit_breaker.main",
        source_of=source_of,
    )

    assert problems == []
    assert settings is not None
    assert settings.open_duration == 6.0


def test_settings_validation_rejects_non_mapping() -> None:
    """A scalar where the breaker's settings belong is one problem at the prefix."""
    settings, problems = breaker_settings_from_mapping(
        5,  # type: ignore[arg-type]
        key_prefix="circuit_breaker.main",
        source_of=source_of,
    )

    assert settings is None
    assert [(problem.key, problem.value, problem.reason) for problem in problems] == [
        ("circuit_breaker.main", 5, "expected a mapping of circuit breaker settings")
    ]


def test_settings_constructor_validates() -> None:
    """BreakerSettings() raises ConfigurationError listing every invalid field."""
    with pytest.raises(ConfigurationError) as raised:
        BreakerSettings(sliding_window_size=0, open_duration_jitter=-0.1)

    assert [(problem.key, problem.value) for problem in raised.value.problems] == [
        ("sliding_window_size", 0),
        ("open_duration_jitter", -0.1),
    ]
    assert {problem.source for problem in raised.value.problems} == {"BreakerSettings()"}
