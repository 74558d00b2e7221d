"""The circuit breaker state machine.

A :class:`CircuitBreaker` sits in front of one backend (for example the Redis database
``main``). Callers ask it for a :class:`Permit` before each call and report the outcome
afterwards::

    permit = breaker.acquire()          # raises CircuitOpenError while the breaker is open
    try:
        result = await call()
    except asyncio.CancelledError:
        breaker.release(permit)          # cancellation is neither a success nor a failure
        raise
    except BaseException as exc:
        breaker.on_failure(permit, elapsed, exc)
        raise
    breaker.on_success(permit, elapsed)

States::

                      a threshold trips
      CLOSED ------------------------------------> OPEN
        ^                                          |  ^
        |                 open_duration elapsed    |  |  a probe fails
        |                                          v  |
        +--------------------------------------- HALF_OPEN
              half_open_max_calls probes succeed

``force_open()``, ``force_closed()`` and ``disable()`` pin the breaker until ``reset()``.

Threading: the breaker is not thread-safe. Every method must be called from the thread
that runs the event loop. It takes no locks and never awaits, so no other coroutine can run
between a check and the state change that follows it, which is what makes the half-open
probe count exact.
"""

from __future__ import annotations

import enum
import importlib
import logging
import math
import random as _random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Final, Literal, NoReturn, cast

from autobot_otel._errors import CircuitOpenError, ConfigProblem, ConfigurationError

__all__ = [
    "BREAKER_EVENTS",
    "BREAKER_REASONS",
    "BreakerEvent",
    "BreakerListener",
    "BreakerReason",
    "BreakerSettings",
    "BreakerState",
    "CircuitBreaker",
    "Permit",
    "breaker_settings_from_mapping",
]

_log = logging.getLogger("autobot_otel")

# The event and reason names are label values of autobot_circuit_breaker_events_total.
# Dashboards and alerts match on them, so renaming one breaks them.
BreakerEvent = Literal[
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
]
BreakerReason = Literal[
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
]
BREAKER_EVENTS: Final[tuple[BreakerEvent, ...]] = (
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
BREAKER_REASONS: Final[tuple[BreakerReason, ...]] = (
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


class BreakerState(enum.Enum):
    """State of a circuit breaker. ``code`` is the value of the state gauge."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def code(self) -> int:
        """Value of ``autobot_circuit_breaker_state``: closed 0, open 1, half_open 2."""
        return _STATE_CODES[self]


_STATE_CODES: Final = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


# --------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------

# A sliding window is a bytearray of this many entries, so the limit keeps a typo such as
# an extra zero from allocating gigabytes.
_MAX_WINDOW_SIZE: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class _NumberRule:
    """Type and range of one numeric setting, with the expectation shown in errors."""

    kind: type[int] | type[float]
    is_valid: Callable[[float], bool]
    expected: str


_FRACTION: Final = "a fraction greater than 0 and at most 1, such as 0.5"
_NUMBER_RULES: Final[dict[str, _NumberRule]] = {
    "failure_rate_threshold": _NumberRule(float, lambda v: 0 < v <= 1, _FRACTION),
    "sliding_window_size": _NumberRule(
        int, lambda v: 1 <= v <= _MAX_WINDOW_SIZE, f"an integer from 1 to {_MAX_WINDOW_SIZE}"
    ),
    "minimum_calls": _NumberRule(int, lambda v: v >= 1, "an integer of at least 1"),
    "consecutive_failures": _NumberRule(
        int, lambda v: v >= 0, "an integer of at least 0 (0 turns the rule off)"
    ),
    "slow_call_duration": _NumberRule(
        float, lambda v: v >= 0, "seconds, at least 0 (0 turns slow-call tracking off)"
    ),
    "slow_call_rate_threshold": _NumberRule(float, lambda v: 0 < v <= 1, _FRACTION),
    "open_duration": _NumberRule(float, lambda v: v > 0, "seconds, greater than 0"),
    "open_duration_max": _NumberRule(float, lambda v: v > 0, "seconds, greater than 0"),
    "open_duration_multiplier": _NumberRule(
        float, lambda v: v >= 1, "a factor of at least 1 (1 keeps the open duration fixed)"
    ),
    "open_duration_jitter": _NumberRule(
        float, lambda v: 0 <= v < 1, "a fraction of at least 0 and less than 1, such as 0.1"
    ),
    "half_open_max_calls": _NumberRule(int, lambda v: v >= 1, "an integer of at least 1"),
}
_EXCEPTION_FIELDS: Final = ("record_exceptions", "ignore_exceptions")


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Settings of one circuit breaker. The defaults equal ``circuit_breaker.default``.

    Durations are in seconds and rates are fractions of the calls in the sliding window.
    Construction validates every field and raises :class:`ConfigurationError` listing each
    invalid one. ``minimum_calls`` larger than ``sliding_window_size`` acts as the window
    size, because the window can never hold more calls than that.
    """

    failure_rate_threshold: float = 0.5
    sliding_window_size: int = 20
    minimum_calls: int = 10
    consecutive_failures: int = 0
    slow_call_duration: float = 0.0
    slow_call_rate_threshold: float = 1.0
    open_duration: float = 30.0
    open_duration_max: float = 300.0
    open_duration_multiplier: float = 2.0
    open_duration_jitter: float = 0.1
    half_open_max_calls: int = 1
    record_exceptions: tuple[type[BaseException], ...] = ()
    ignore_exceptions: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        raw = {field.name: getattr(self, field.name) for field in fields(self)}
        parsed, problems = _validate(raw)
        if problems:
            raise ConfigurationError(
                "invalid BreakerSettings",
                [
                    ConfigProblem(key, value, "BreakerSettings()", reason)
                    for key, value, reason in problems
                ],
            )
        # Store ints given for float fields as floats, so that snapshots and comparisons
        # see one type per field.
        for name, value in parsed.items():
            object.__setattr__(self, name, value)


# With slots=True the class attributes are slot descriptors, not the defaults.
_DEFAULTS: Final[dict[str, object]] = {
    field.name: field.default for field in fields(BreakerSettings)
}


def breaker_settings_from_mapping(
    values: Mapping[str, object],
    *,
    key_prefix: str,
    source_of: Callable[[str], str],
) -> tuple[BreakerSettings | None, list[ConfigProblem]]:
    """Validate one breaker's merged settings and build them.

    ``values`` is the mapping at ``key_prefix`` (for example ``circuit_breaker.main``) after
    the per-name overrides were merged over ``circuit_breaker.default``. Keys are matched
    case-insensitively, because Dynaconf keeps the upper case of keys that only an
    environment variable sets. Of two keys that differ only in case, the later one wins,
    as the override does in a ``{**default, **override}`` merge. A missing key takes the
    :class:`BreakerSettings` default.
    ``source_of`` receives the full dotted key of each problem and returns where its value
    came from. Returns the settings and no problems, or ``None`` and every problem found.
    """
    if not isinstance(values, Mapping):
        problem = ConfigProblem(
            key_prefix,
            values,
            source_of(key_prefix),
            "expected a mapping of circuit breaker settings",
        )
        return None, [problem]

    raw: dict[str, object] = {}
    problems: list[ConfigProblem] = []
    known = {field.name for field in fields(BreakerSettings)}
    for key, value in values.items():
        name = key.lower() if isinstance(key, str) else key
        full_key = f"{key_prefix}.{key}"
        if name not in known:
            reason = f"unknown setting; expected one of: {', '.join(sorted(known))}"
            problems.append(ConfigProblem(full_key, value, source_of(full_key), reason))
        else:
            raw[name] = value

    parsed, field_problems = _validate(raw)
    for name, value, reason in field_problems:
        full_key = f"{key_prefix}.{name}"
        problems.append(ConfigProblem(full_key, value, source_of(full_key), reason))
    if problems:
        return None, problems
    return BreakerSettings(**parsed), []  # type: ignore[arg-type]


def _validate(raw: Mapping[str, object]) -> tuple[dict[str, object], list[tuple[str, object, str]]]:
    """Parse known settings and return them with ``(field, value, reason)`` problems."""
    parsed: dict[str, object] = {}
    problems: list[tuple[str, object, str]] = []
    for name, value in raw.items():
        if name in _NUMBER_RULES:
            number, reason = _parse_number(value, _NUMBER_RULES[name])
            if reason is None:
                parsed[name] = number
            else:
                problems.append((name, value, reason))
        elif name in _EXCEPTION_FIELDS:
            classes, item_problems = _parse_exception_classes(value)
            problems.extend((name, bad, reason) for bad, reason in item_problems)
            # The classes that did resolve still go through the cross-field checks, so
            # every problem in one list is reported together.
            parsed[name] = classes
    problems.extend(_cross_field_problems(parsed))
    return parsed, problems


def _parse_number(value: object, rule: _NumberRule) -> tuple[float | int, str | None]:
    """Return ``value`` as ``rule.kind`` and ``None``, or 0 and the reason it is invalid."""
    expected = f"expected {rule.expected}"
    if isinstance(value, bool):
        return 0, f"{expected}; a boolean is not a number"
    if rule.kind is int:
        if not isinstance(value, int):
            return 0, f"{expected}, not {type(value).__name__} {value!r}"
        number: float | int = value
    else:
        if not isinstance(value, int | float):
            return 0, f"{expected}, not {type(value).__name__} {value!r}"
        try:
            number = float(value)
        except OverflowError:
            return 0, f"{expected}; the value is out of range"
        if not math.isfinite(number):
            return 0, f"{expected}; the value must be finite"
    if not rule.is_valid(number):
        return 0, expected
    return number, None


def _parse_exception_classes(
    value: object,
) -> tuple[tuple[type[BaseException], ...], list[tuple[object, str]]]:
    """Resolve a list of dotted class names (or classes) to exception classes."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        reason = "expected a list of dotted exception class names, such as [builtins.KeyError]"
        return (), [(value, reason)]

    classes: list[type[BaseException]] = []
    problems: list[tuple[object, str]] = []
    for item in value:
        resolved = _resolve_exception_class(item)
        if isinstance(resolved, str):
            problems.append((item, resolved))
        else:
            classes.append(resolved)
    return tuple(classes), problems


def _resolve_exception_class(item: object) -> type[BaseException] | str:
    """Return the exception class that ``item`` names, or the reason it names none."""
    if isinstance(item, str):
        found = _import_dotted(item)
        if isinstance(found, str):
            return found
    else:
        found = item
    if not isinstance(found, type):
        return f"{item!r} is not a class; name a subclass of Exception"
    if not issubclass(found, Exception):
        # BaseException subclasses such as asyncio.CancelledError and KeyboardInterrupt
        # never count for the breaker, so listing one would have no effect.
        return f"{found.__module__}.{found.__qualname__} is not a subclass of Exception"
    return found


def _import_dotted(name: str) -> object:
    """Import ``module.attribute[.attribute...]`` and return the object.

    A bare name is looked up in builtins. On failure the reason is returned as a string.
    """
    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        return f"{name!r} is not a dotted name such as redis.exceptions.ConnectionError"
    if len(parts) == 1:
        parts = ["builtins", *parts]

    # Try the longest module path first, so that nested classes (module.Outer.Inner) work.
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            found: object = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
                continue  # This path is not a module, so try a shorter one.
            return f"importing module {module_name!r} failed: {exc}"
        except Exception as exc:
            return f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        try:
            for attribute in parts[split:]:
                found = getattr(found, attribute)
        except AttributeError:
            remainder = ".".join(parts[split:])
            return f"module {module_name!r} has no attribute {remainder!r}; check the spelling"
        return found
    return (
        f"cannot import {name!r}: no module named {parts[0]!r}; "
        "check the spelling and the installed packages"
    )


def _cross_field_problems(parsed: Mapping[str, object]) -> list[tuple[str, object, str]]:
    """Check the rules that involve two settings, using only fields that parsed."""
    problems: list[tuple[str, object, str]] = []
    base = parsed.get("open_duration", _DEFAULTS["open_duration"])
    maximum = parsed.get("open_duration_max", _DEFAULTS["open_duration_max"])
    if cast(float, maximum) < cast(float, base):
        problems.append(
            (
                "open_duration_max",
                maximum,
                f"must be at least open_duration ({base!r}); raise it or lower open_duration",
            )
        )

    ignored = cast(tuple[type[BaseException], ...], parsed.get("ignore_exceptions", ()))
    for cls in ignored:
        if issubclass(cls, TimeoutError):
            problems.append(
                (
                    "ignore_exceptions",
                    f"{cls.__module__}.{cls.__qualname__}",
                    "timeouts always count as failures and cannot be ignored; remove it",
                )
            )
    return problems


# --------------------------------------------------------------------------------------
# The breaker
# --------------------------------------------------------------------------------------

BreakerListener = Callable[["CircuitBreaker", BreakerEvent, BreakerReason], None]


class Permit:
    """Proof that a call was admitted.

    Pass it to exactly one of ``on_success``, ``on_failure`` or ``release``.

    ``epoch`` is the breaker's generation when the call was admitted. Every state change
    starts a new generation, so the breaker can ignore outcomes of calls that started
    under an earlier state. ``probe`` marks a half-open trial call.
    """

    __slots__ = ("epoch", "probe")

    def __init__(self, epoch: int, probe: bool) -> None:
        self.epoch = epoch
        self.probe = probe

    def __repr__(self) -> str:
        return f"Permit(epoch={self.epoch}, probe={self.probe})"


# Outcome codes stored in the sliding window. A slow call is a success that took longer
# than slow_call_duration, and a failure is never counted as slow.
_EMPTY: Final = 0
_SUCCESS: Final = 1
_SLOW: Final = 2
_FAILURE: Final = 3


class _OutcomeWindow:
    """Count-based sliding window over the outcomes of the last ``size`` calls.

    A ring buffer stores one outcome code per call. Adding a call adjusts the totals by the
    new outcome and by the one it overwrites, so recording and reading rates cost O(1).
    """

    __slots__ = ("_next", "_ring", "calls", "failures", "slow")

    def __init__(self, size: int, outcomes: Sequence[int] = ()) -> None:
        self._ring = bytearray(size)
        self._next = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0
        for outcome in outcomes[-size:] if outcomes else ():
            self.add(outcome)

    @property
    def size(self) -> int:
        return len(self._ring)

    def add(self, outcome: int) -> None:
        ring = self._ring
        index = self._next
        evicted = ring[index]
        ring[index] = outcome
        self._next = index + 1 if index + 1 < len(ring) else 0

        if evicted == _EMPTY:
            self.calls += 1
        elif evicted == _FAILURE:
            self.failures -= 1
        elif evicted == _SLOW:
            self.slow -= 1
        if outcome == _FAILURE:
            self.failures += 1
        elif outcome == _SLOW:
            self.slow += 1

    def outcomes(self) -> list[int]:
        """Return the recorded outcomes, oldest first."""
        ordered = self._ring[self._next :] + self._ring[: self._next]
        return [outcome for outcome in ordered if outcome != _EMPTY]

    def resized(self, size: int) -> _OutcomeWindow:
        """Return a window of ``size`` entries that keeps the most recent outcomes."""
        return _OutcomeWindow(size, self.outcomes())


class _Mode(enum.Enum):
    """Source of the state: the thresholds (AUTOMATIC) or an operator's manual action."""

    AUTOMATIC = "automatic"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"
    DISABLED = "disabled"


class _ListenerEntry:
    __slots__ = ("failures", "listener")

    def __init__(self, listener: BreakerListener) -> None:
        self.listener = listener
        self.failures = 0


class CircuitBreaker:
    """Circuit breaker for one backend, driven by the outcomes its callers report.

    ``clock`` returns seconds from a monotonic source and ``random`` returns a float in
    [0, 1) for the open-duration jitter. Tests pass fakes for both. The breaker never
    starts timers or tasks. An OPEN breaker turns HALF_OPEN when ``state``, ``acquire()``
    or ``snapshot()`` runs after its open duration has elapsed.

    Manual modes, each left only through ``reset()``:

    * ``force_open()``: every call is rejected with ``retry_after=None``; nothing is recorded.
    * ``force_closed()``: every call is admitted. Outcomes are still recorded in the window,
      so ``snapshot()`` shows the backend's failure rate, but no threshold opens the breaker.
    * ``disable()``: every call is admitted and nothing is recorded, so the window stays
      as it was when the breaker was disabled.

    Not thread-safe: call every method from the event loop thread.
    """

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.name = name
        self._settings = settings if settings is not None else BreakerSettings()
        self._clock = clock
        self._random = random
        self._listeners: list[_ListenerEntry] = []
        self._event_counts: dict[BreakerEvent, int] = dict.fromkeys(BREAKER_EVENTS, 0)

        self._state = BreakerState.CLOSED
        self._mode = _Mode.AUTOMATIC
        self._epoch = 0
        self._window = _OutcomeWindow(self._settings.sliding_window_size)
        self._consecutive_failures = 0
        # Open period: the current (jittered) length, the unjittered length the next
        # re-open grows from, and how many times the breaker opened since it last closed.
        self._open_until = 0.0
        self._open_duration_current = 0.0
        self._open_duration_base = 0.0
        self._open_streak = 0
        self._probes_in_flight = 0
        self._probes_succeeded = 0
        # Permits handed out without checks (CLOSED) or as probes (HALF_OPEN), or None.
        self._free_permit: Permit | None = None
        self._probe_permit: Permit | None = None
        self._records_outcomes = True
        self._slow_call_duration = 0.0
        self._minimum_calls = 1
        self._apply_settings_cache()
        self._enter_closed(_Mode.AUTOMATIC)

    # -- properties ----------------------------------------------------------------------

    @property
    def settings(self) -> BreakerSettings:
        """Current settings, which :meth:`update_settings` replaces."""
        return self._settings

    @property
    def state(self) -> BreakerState:
        """Current state. Reading it turns OPEN into HALF_OPEN once the open period ends.

        Read it on the event loop thread only, because the transition changes the breaker.
        Other threads use :meth:`peek_state`.
        """
        if self._state is BreakerState.OPEN and self._mode is _Mode.AUTOMATIC:
            self._half_open_if_due(self._clock())
        return self._state

    def peek_state(self) -> BreakerState:
        """Return the state that ``state`` would return, without changing the breaker.

        It only reads attributes, so metric callbacks and request handlers may call it from
        other threads. The ``half_opened`` event still waits for the next ``acquire()`` or
        ``state`` read on the event loop thread.
        """
        state = self._state
        automatic = self._mode is _Mode.AUTOMATIC
        if state is BreakerState.OPEN and automatic and self._clock() >= self._open_until:
            return BreakerState.HALF_OPEN
        return state

    # -- hot path ------------------------------------------------------------------------

    def acquire(self) -> Permit:
        """Admit a call and return its permit, or raise :class:`CircuitOpenError`.

        A rejection emits a ``rejected`` event: reason ``breaker_open`` while open,
        ``manual`` while forced open, ``half_open_full`` when every probe slot is taken.
        """
        permit = self._free_permit
        if permit is not None:
            return permit
        return self._acquire_restricted()

    def on_success(self, permit: Permit, duration: float) -> None:
        """Record a call that returned normally after ``duration`` seconds."""
        if permit.epoch != self._epoch:
            return  # The call started under an earlier state, see Permit.
        slow_after = self._slow_call_duration
        outcome = _SLOW if slow_after and duration > slow_after else _SUCCESS
        if permit.probe:
            self._finish_probe(outcome)
        elif self._records_outcomes:
            self._record(outcome)

    def on_failure(self, permit: Permit, duration: float, exc: BaseException) -> None:
        """Record a call that raised ``exc`` after ``duration`` seconds.

        Timeouts (any ``TimeoutError``) always count as failures. An exception in
        ``ignore_exceptions``, or one that is not an ``Exception`` at all (such as
        ``asyncio.CancelledError``), counts as nothing, as if :meth:`release` were called.
        When ``record_exceptions`` is set, other exceptions count as successes, because
        the backend responded and the error belongs to the caller.
        """
        if permit.epoch != self._epoch:
            return
        outcome = self._classify(exc, duration)
        if outcome is None:
            self.release(permit)
        elif permit.probe:
            self._finish_probe(outcome)
        elif self._records_outcomes:
            self._record(outcome)

    def release(self, permit: Permit) -> None:
        """Return a permit without an outcome, for a cancelled or ignored call.

        Nothing is counted. A probe of the current half-open period frees its slot, so
        another probe can be admitted.
        """
        if permit.probe and permit.epoch == self._epoch and self._probes_in_flight > 0:
            self._probes_in_flight -= 1

    # -- manual control ------------------------------------------------------------------

    def force_open(self) -> None:
        """Reject every call until :meth:`reset`, whatever the outcomes."""
        self._enter_forced_open()
        self._announce_manual("forced_open", "forced open; it rejects every call until reset()")

    def force_closed(self) -> None:
        """Admit every call until :meth:`reset`, recording outcomes that never open it."""
        self._enter_closed(_Mode.FORCED_CLOSED)
        self._announce_manual("forced_closed", "forced closed; it admits every call until reset()")

    def disable(self) -> None:
        """Admit every call and record nothing until :meth:`reset`."""
        self._enter_closed(_Mode.DISABLED)
        self._announce_manual(
            "disabled", "disabled; it admits every call and records nothing until reset()"
        )

    def _announce_manual(self, event: BreakerEvent, description: str) -> None:
        """Emit a manual-control event and log it as a warning, since it overrides the rules."""
        self._emit(event, "manual")
        _log.warning(
            "circuit breaker %r %s",
            self.name,
            description,
            extra=self._log_fields(event, "manual"),
        )

    def reset(self) -> None:
        """Return to automatic CLOSED with an empty window and the base open duration."""
        self._window = _OutcomeWindow(self._settings.sliding_window_size)
        self._consecutive_failures = 0
        self._open_streak = 0
        self._open_duration_base = 0.0
        self._enter_closed(_Mode.AUTOMATIC)
        self._emit("reset", "manual")
        _log.info(
            "circuit breaker %r reset to closed",
            self.name,
            extra=self._log_fields("reset", "manual"),
        )

    # -- configuration and observation ---------------------------------------------------

    def update_settings(self, settings: BreakerSettings) -> None:
        """Apply new settings without losing the state.

        A resized window keeps the most recent outcomes that fit. An open period keeps its
        end time, and the next re-open grows from it under the new limits. New thresholds
        take effect with the next recorded outcome. A half-open breaker that already has
        as many successful probes as the new ``half_open_max_calls`` closes at once,
        because no further probe would be admitted to close it.
        """
        if not isinstance(settings, BreakerSettings):
            raise TypeError(
                f"update_settings() of circuit breaker {self.name!r} expects BreakerSettings, "
                f"got {type(settings).__name__}"
            )
        if settings.sliding_window_size != self._window.size:
            self._window = self._window.resized(settings.sliding_window_size)
        self._settings = settings
        self._apply_settings_cache()

        probes_done = self._probes_succeeded >= settings.half_open_max_calls
        if self._state is BreakerState.HALF_OPEN and probes_done:
            self._close("probe_success")

    def add_listener(self, listener: BreakerListener) -> None:
        """Call ``listener(breaker, event, reason)`` on every event.

        Listeners run synchronously on the hot path (a ``rejected`` event fires per
        rejected call), so they must be cheap. The breaker catches any ``Exception`` that a
        listener raises. It logs the first one per listener with the traceback on the
        ``autobot_otel`` logger and only counts later ones in
        ``snapshot()["listener_errors"]``.
        """
        self._listeners.append(_ListenerEntry(listener))

    def snapshot(self) -> dict[str, object]:
        """Return the state and counters as a JSON-ready dict, for ``GET /monitoring/breakers``.

        Durations are in seconds, rounded to milliseconds. Rates are ``None`` while the
        window is empty. Like :meth:`peek_state` it changes nothing, so it may run on
        another thread. Its fields are then read a moment apart and may not match exactly.
        """
        state = self.peek_state()
        window = self._window
        calls = window.calls
        retry_after = None
        if state is BreakerState.OPEN and self._mode is _Mode.AUTOMATIC:
            retry_after = round(max(0.0, self._open_until - self._clock()), 3)
        return {
            "name": self.name,
            "state": state.value,
            "state_code": state.code,
            "forced_open": self._mode is _Mode.FORCED_OPEN,
            "forced_closed": self._mode is _Mode.FORCED_CLOSED,
            "disabled": self._mode is _Mode.DISABLED,
            "window_size": window.size,
            "window_calls": calls,
            "window_failures": window.failures,
            "window_slow_calls": window.slow,
            "failure_rate": window.failures / calls if calls else None,
            "slow_call_rate": window.slow / calls if calls else None,
            "minimum_calls": self._minimum_calls,
            "consecutive_failures": self._consecutive_failures,
            "retry_after": retry_after,
            "open_duration_current": round(self._open_duration_current, 3),
            "open_streak": self._open_streak,
            "half_open_in_flight": self._probes_in_flight,
            "half_open_succeeded": self._probes_succeeded,
            "half_open_max_calls": self._settings.half_open_max_calls,
            "events": dict(self._event_counts),
            "listener_errors": sum(entry.failures for entry in self._listeners),
        }

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value}, mode={self._mode.value})"

    # -- transitions ---------------------------------------------------------------------

    def _acquire_restricted(self) -> Permit:
        """Admit or reject a call while the breaker is not freely admitting calls."""
        if self._mode is _Mode.FORCED_OPEN:
            self._reject("manual", None)
        now = self._clock()
        self._half_open_if_due(now)
        if self._state is BreakerState.OPEN:
            self._reject("breaker_open", self._open_until - now)

        max_calls = self._settings.half_open_max_calls
        if self._probes_in_flight + self._probes_succeeded >= max_calls:
            # A slot frees up as soon as a probe ends, so the caller may retry at once.
            self._reject("half_open_full", 0.0)
        self._probes_in_flight += 1
        return cast(Permit, self._probe_permit)

    def _reject(self, reason: BreakerReason, retry_after: float | None) -> NoReturn:
        self._emit("rejected", reason)
        raise CircuitOpenError(self.name, retry_after)

    def _record(self, outcome: int) -> None:
        """Add a closed-state outcome to the window and open the breaker if a rule trips."""
        window = self._window
        window.add(outcome)
        if outcome == _FAILURE:
            self._consecutive_failures += 1
        else:
            self._consecutive_failures = 0
        if self._mode is not _Mode.AUTOMATIC:
            return
        if not window.failures and not window.slow:
            return  # Every threshold is above 0, so a window of plain successes trips none.

        reason = self._trip_reason()
        if reason is not None:
            self._open(reason)

    def _trip_reason(self) -> BreakerReason | None:
        """Return the first rule that the window breaks, checked in the documented order."""
        window = self._window
        calls = window.calls
        settings = self._settings
        if calls >= self._minimum_calls:
            # Compare quotients, not failures >= threshold * calls. The quotient 3 / 10
            # rounds to the same double as the threshold 0.3, but 0.3 * 10 is
            # 3.0000000000000004, so the product would miss the exact threshold.
            if window.failures / calls >= settings.failure_rate_threshold:
                return "failure_rate"
            if (
                self._slow_call_duration
                and window.slow / calls >= settings.slow_call_rate_threshold
            ):
                return "slow_call_rate"
        limit = settings.consecutive_failures
        if limit and self._consecutive_failures >= limit:
            return "consecutive_failures"
        return None

    def _finish_probe(self, outcome: int) -> None:
        if self._probes_in_flight > 0:
            self._probes_in_flight -= 1
        if outcome == _SUCCESS:
            self._probes_succeeded += 1
            self._emit("probe_succeeded", "none")
            if self._probes_succeeded >= self._settings.half_open_max_calls:
                self._close("probe_success")
            return

        # A slow probe fails too, because a backend that still responds too slowly has not
        # recovered.
        self._emit("probe_failed", "probe_failure" if outcome == _FAILURE else "slow_call_rate")
        self._open("probe_failure")

    def _classify(self, exc: BaseException, duration: float) -> int | None:
        """Return the outcome code for ``exc``, or ``None`` when it counts as nothing."""
        if isinstance(exc, TimeoutError):
            return _FAILURE
        if not isinstance(exc, Exception):
            # asyncio.CancelledError, KeyboardInterrupt and SystemExit come from the caller
            # or the process, not from the backend.
            return None
        settings = self._settings
        if settings.ignore_exceptions and isinstance(exc, settings.ignore_exceptions):
            return None
        if not settings.record_exceptions or isinstance(exc, settings.record_exceptions):
            return _FAILURE
        if self._slow_call_duration and duration > self._slow_call_duration:
            return _SLOW
        return _SUCCESS

    def _open(self, reason: BreakerReason) -> None:
        settings = self._settings
        self._open_streak += 1
        if self._open_streak == 1:
            base = settings.open_duration
        else:
            base = min(
                self._open_duration_base * settings.open_duration_multiplier,
                settings.open_duration_max,
            )
        self._open_duration_base = base
        # Jitter spreads the half-open probes of many processes that opened together.
        # It is applied before the cap, so the open duration never exceeds the maximum.
        jitter = settings.open_duration_jitter * (2.0 * self._random() - 1.0)
        duration = min(base * (1.0 + jitter), settings.open_duration_max)
        self._open_duration_current = duration
        self._open_until = self._clock() + duration

        self._new_epoch(BreakerState.OPEN)
        self._emit("opened", reason)
        window = self._window
        if reason == "probe_failure":
            cause = "a half-open probe failed"
        else:
            cause = (
                f"{window.failures} of {window.calls} calls failed, {window.slow} slow, "
                f"{self._consecutive_failures} consecutive failures"
            )
        _log.warning(
            "circuit breaker %r opened (%s): %s; rejecting calls for %.3f s",
            self.name,
            reason,
            cause,
            duration,
            extra=self._log_fields("opened", reason),
        )

    def _half_open_if_due(self, now: float) -> None:
        if self._state is not BreakerState.OPEN or now < self._open_until:
            return
        self._new_epoch(BreakerState.HALF_OPEN)
        self._emit("half_opened", "open_duration_elapsed")
        _log.info(
            "circuit breaker %r half-open; admitting up to %d probe calls",
            self.name,
            self._settings.half_open_max_calls,
            extra=self._log_fields("half_opened", "open_duration_elapsed"),
        )

    def _close(self, reason: BreakerReason) -> None:
        probes = self._probes_succeeded
        self._window = _OutcomeWindow(self._settings.sliding_window_size)
        self._consecutive_failures = 0
        self._open_streak = 0
        self._open_duration_base = 0.0
        self._enter_closed(_Mode.AUTOMATIC)
        self._emit("closed", reason)
        _log.info(
            "circuit breaker %r closed after %d successful probes",
            self.name,
            probes,
            extra=self._log_fields("closed", reason),
        )

    def _enter_closed(self, mode: _Mode) -> None:
        self._mode = mode
        self._records_outcomes = mode is not _Mode.DISABLED
        self._new_epoch(BreakerState.CLOSED)

    def _enter_forced_open(self) -> None:
        self._mode = _Mode.FORCED_OPEN
        self._records_outcomes = False
        self._new_epoch(BreakerState.OPEN)

    def _new_epoch(self, state: BreakerState) -> None:
        """Switch to ``state`` and start a generation, which makes older permits stale."""
        self._state = state
        self._epoch += 1
        self._probes_in_flight = 0
        self._probes_succeeded = 0
        # Every admitted call of one generation gets the same permit object, so the hot
        # path allocates nothing.
        if state is BreakerState.CLOSED:
            self._free_permit = Permit(self._epoch, probe=False)
            self._probe_permit = None
        elif state is BreakerState.HALF_OPEN:
            self._free_permit = None
            self._probe_permit = Permit(self._epoch, probe=True)
        else:
            self._free_permit = None
            self._probe_permit = None

    def _apply_settings_cache(self) -> None:
        """Copy the settings that the hot path reads into plain attributes."""
        settings = self._settings
        self._slow_call_duration = settings.slow_call_duration
        self._minimum_calls = min(settings.minimum_calls, settings.sliding_window_size)

    # -- events --------------------------------------------------------------------------

    def _emit(self, event: BreakerEvent, reason: BreakerReason) -> None:
        self._event_counts[event] += 1
        for entry in self._listeners:
            try:
                entry.listener(self, event, reason)
            except Exception:
                entry.failures += 1
                if entry.failures == 1:
                    _log.warning(
                        "circuit breaker %r: listener %r failed on event %s (%s); "
                        "its later failures are counted in snapshot()['listener_errors'] "
                        "and not logged",
                        self.name,
                        entry.listener,
                        event,
                        reason,
                        exc_info=True,
                        extra=self._log_fields(event, reason),
                    )

    def _log_fields(self, event: BreakerEvent, reason: BreakerReason) -> dict[str, object]:
        return {"autobot_breaker": self.name, "autobot_event": event, "autobot_reason": reason}
