"""``timed_operation`` and ``timed``: bounded, measured, traced async operations.

Each operation name is resolved against the configuration once, when the decorator is
applied. The resolved timeout lives on an ``_Operation`` object that a configuration
reload updates in place, so a call reads one attribute instead of looking anything up.

Deadlines nest. A timed operation started inside another one in the same task gets
``min(its own timeout, the time the outer one has left)``. When the outer deadline is the
shorter one, the inner operation sets no timer of its own: the outer timer fires, the
outer operation counts the timeout once, and the inner operation records that an outer
budget ran out. ``remaining_time()`` returns how much of the budget is left.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from . import _telemetry
from ._breaker import CircuitBreaker
from ._config import Config, add_config_listener, add_config_validator, get_config, timeout_problem
from ._errors import (
    CircuitOpenError,
    ConfigProblem,
    OperationTimeoutError,
    PoolExhaustedError,
    UnknownOperationError,
)

__all__ = ["deadline_budget", "remaining_time", "timed", "timed_operation"]

logger = logging.getLogger("autobot_otel")

P = ParamSpec("P")
R = TypeVar("R")

OTHER_LABEL = "other"

# Outcome vocabulary, shared by span attributes and the Redis request counter.
SUCCESS = "success"
ERROR = "error"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
REJECTED = "rejected"
POOL_EXHAUSTED = "pool_exhausted"
OUTCOMES = (SUCCESS, ERROR, TIMEOUT, CANCELLED, REJECTED, POOL_EXHAUSTED)

# Values of ``status`` on ``autobot_timeout_total``.
TIMEOUT_OWN = "timeout"
TIMEOUT_BUDGET = "budget_exhausted"
TIMEOUT_OVERRUN = "overrun"

_DB_SYSTEMS = {"redis": "redis"}


class _Operation:
    """One operation name with its resolved timeout, labels and prebuilt attributes."""

    __slots__ = (
        "breaker",
        "config_key",
        "database",
        "database_label",
        "default",
        "is_budget",
        "label",
        "metric_attributes",
        "name",
        "redis_attributes",
        "span_attributes",
        "system",
        "timeout",
        "timeout_attributes",
        "warned",
    )

    def __init__(
        self,
        name: str,
        database: str | None,
        default: float | None,
        breaker: CircuitBreaker | None,
        is_budget: bool = False,
    ) -> None:
        self.name = name
        self.is_budget = is_budget
        self.system = name.split(".", 1)[0].lower()
        self.database = database or self.system
        self.default = default
        self.breaker = breaker
        self.warned: set[str] = set()
        self.config_key: str | None = None
        self.timeout = 0.0
        self.label = OTHER_LABEL
        self.database_label = OTHER_LABEL
        self.metric_attributes: dict[str, str] = {}
        self.timeout_attributes: dict[str, dict[str, str]] = {}
        self.redis_attributes: dict[str, dict[str, str]] | None = None
        self.span_attributes: dict[str, str | float] = {}

    def apply(self, config: Config) -> None:
        """Resolve the timeout and labels against ``config``."""
        try:
            self.config_key = config.resolve_operation(self.name)
        except UnknownOperationError:
            if self.default is None:
                raise
            self.config_key = None
        self.timeout = (
            config.timeouts[self.config_key] if self.config_key else float(self.default or 0)
        )
        self.label = self.name if self.config_key else self._undeclared("operation", self.name)
        if self.database in _declared_databases(config):
            self.database_label = self.database
        else:
            self.database_label = self._undeclared("database", self.database)
        self._build_attributes()
        # Without active instruments there is nothing to seed yet; the instruments
        # listener seeds every operation when they are installed.
        instruments = _telemetry._instruments
        if instruments is not None:
            self.seed_series(instruments)

    def seed_series(self, instruments: _telemetry.Instruments) -> None:
        """Create this operation's main counter series at 0.

        rate() and increase() need a sample before the first event to see that event,
        so a series that first appears at 1 would hide the first timeout of each label set.
        """
        status = TIMEOUT_BUDGET if self.is_budget else TIMEOUT_OWN
        instruments.timeouts.add(0, self.timeout_attributes[status])
        if self.redis_attributes is not None:
            for outcome in (SUCCESS, ERROR, TIMEOUT):
                instruments.redis_requests.add(0, self.redis_attributes[outcome])

    def _undeclared(self, kind: str, value: str) -> str:
        # Label values come only from the configuration, so that a typo or a name built
        # at run time cannot create an unbounded number of series.
        if kind not in self.warned:
            self.warned.add(kind)
            logger.warning(
                "telemetry.undeclared_label: %s %r is not declared in the configuration; "
                "its metrics use the label value 'other'",
                kind,
                value,
                extra={"autobot.operation": self.name, "autobot.label_kind": kind},
            )
        return OTHER_LABEL

    def _build_attributes(self) -> None:
        labels = {"operation_type": self.label, "database": self.database_label}
        self.metric_attributes = labels
        self.timeout_attributes = {
            status: {**labels, "status": status}
            for status in (TIMEOUT_OWN, TIMEOUT_BUDGET, TIMEOUT_OVERRUN)
        }
        operation = self.name.rsplit(".", 1)[-1].lower()
        span: dict[str, str | float] = {
            "autobot.operation": self.name,
            "autobot.database": self.database,
        }
        db_system = _DB_SYSTEMS.get(self.system)
        if db_system is not None:
            span["db.system.name"] = db_system
            span["db.operation.name"] = operation.upper()
            # The Redis operation label follows the cardinality guard too: an undeclared
            # name's last part must not become a label value of its own.
            redis_operation = operation if self.label != OTHER_LABEL else OTHER_LABEL
            self.redis_attributes = {
                outcome: {
                    "database": self.database_label,
                    "operation": redis_operation,
                    "status": outcome,
                }
                for outcome in OUTCOMES
            }
        else:
            self.redis_attributes = None
        self.span_attributes = span


# Registry of every operation created, so that a reload can update them in place.
_registry_lock = threading.Lock()
_operations: dict[tuple[str, str | None, float | None, int, bool], _Operation] = {}
_extra_databases: set[str] = set()


def _declared_databases(config: Config) -> set[str]:
    systems = {key.split(".", 1)[0] for key in config.timeouts}
    return systems | _extra_databases


def declare_database(name: str) -> None:
    """Allow ``name`` as a ``database`` label value (used by the Redis integration)."""
    with _registry_lock:
        if name in _extra_databases:
            return
        _extra_databases.add(name)
        operations = list(_operations.values())
    config = get_config()
    for operation in operations:
        if operation.database == name:
            operation.apply(config)


def get_operation(
    name: str,
    *,
    database: str | None = None,
    default: float | None = None,
    breaker: CircuitBreaker | None = None,
    is_budget: bool = False,
) -> _Operation:
    """Return the shared ``_Operation`` for these arguments, resolving it on first use."""
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"operation name must be a non-empty string, not {name!r}")
    if default is not None:
        reason = timeout_problem(default)
        if reason is not None:
            raise ValueError(f"default timeout {default!r} for operation {name!r} {reason}")
    key = (name, database, default, id(breaker), is_budget)
    operation = _operations.get(key)
    if operation is not None:
        return operation
    operation = _Operation(name, database, default, breaker, is_budget)
    operation.apply(get_config())
    with _registry_lock:
        return _operations.setdefault(key, operation)


def _apply_config(config: Config) -> None:
    with _registry_lock:
        operations = list(_operations.values())
    for operation in operations:
        operation.apply(config)


def _check_operations(config: Config) -> list[ConfigProblem]:
    """List operations in use that the new configuration would leave without a timeout."""
    problems = []
    with _registry_lock:
        operations = list(_operations.values())
    for operation in operations:
        if operation.default is not None:
            continue
        try:
            config.resolve_operation(operation.name)
        except UnknownOperationError as exc:
            problems.append(
                ConfigProblem(
                    f"timeouts ({operation.name})",
                    None,
                    "the new settings",
                    f"operation {operation.name!r} is in use but would have no timeout: {exc}",
                )
            )
    return problems


def _timeout_gauge() -> list[tuple[float, dict[str, str]]]:
    seen: dict[tuple[str, str], float] = {}
    with _registry_lock:
        operations = list(_operations.values())
    for operation in operations:
        seen[(operation.label, operation.database_label)] = operation.timeout
    return [
        (timeout, {"operation_type": label, "database": database})
        for (label, database), timeout in seen.items()
    ]


def _seed_all() -> None:
    instruments = _telemetry._instruments
    if instruments is None:
        return
    with _registry_lock:
        operations = list(_operations.values())
    for operation in operations:
        operation.seed_series(instruments)


add_config_listener(_apply_config)
_telemetry.add_instruments_listener(_seed_all)
add_config_validator(_check_operations)
_telemetry.add_gauge_source("operation_timeout", _timeout_gauge)


# --------------------------------------------------------------------------- scopes

_current_scope: ContextVar[_Call | None] = ContextVar("autobot_otel_scope", default=None)


def remaining_time() -> float | None:
    """Return the seconds left before the innermost deadline, or None outside any.

    Pass it on to calls that take their own timeout, such as an HTTP request or an LLM
    client, so that they give up when the caller would.
    """
    scope = _current_scope.get()
    if scope is None:
        return None
    left: float = scope.deadline - asyncio.get_running_loop().time()
    return max(0.0, left)


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class _Call:
    """One execution of an operation: breaker permit, deadline, span and metrics."""

    __slots__ = (
        "active",
        "allowed",
        "cancel_requests",
        "closed",
        "context",
        "deadline",
        "deadline_scope",
        "instruments",
        "operation",
        "origin",
        "permit",
        "scope_token",
        "span",
        "start",
        "task",
        "timer",
        "timer_scope",
        "token",
    )

    context: otel_context.Context
    deadline: float
    allowed: float  # seconds this call may take: its own timeout or what is left of a budget
    instruments: _telemetry.Instruments
    origin: str
    scope_token: Token[_Call | None]
    span: Span
    start: float
    task: asyncio.Task[Any] | None
    cancel_requests: int
    timer_scope: _Call
    deadline_scope: _Call  # the scope whose timeout set this call's deadline
    token: Token[otel_context.Context]

    def __init__(self, operation: _Operation) -> None:
        self.operation = operation
        self.permit: Any = None
        self.timer: asyncio.Timeout | None = None
        self.active = False
        self.closed = False

    async def __aenter__(self) -> _Call:
        operation = self.operation
        if self.active or self.closed:
            # All per-call state lives on this object, so entering it twice would
            # overwrite the first entry's scope and leave the task without deadlines.
            raise RuntimeError(
                f"timed({operation.name!r}) was entered already; use a new timed(...) "
                "for each 'async with'"
            )
        self.active = True
        # Looked up once per call, and kept for __aexit__, so that both halves of a call
        # report to the same providers even if setup_telemetry() runs in between.
        instruments = _telemetry._instruments or _telemetry.instruments()
        self.instruments = instruments
        breaker = operation.breaker
        if breaker is not None:
            try:
                self.permit = breaker.acquire()
            except CircuitOpenError as exc:
                _record_rejection(operation, instruments, exc)
                raise

        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        now = loop.time()
        own_deadline = now + operation.timeout
        parent = _current_scope.get()
        # A task started inside a scope keeps a reference to it after the scope ends; an
        # ended scope bounds nothing.
        if parent is not None and parent.closed:
            parent = None
        if parent is not None and parent.deadline <= own_deadline:
            # An enclosing deadline is shorter: this call only has what is left of it.
            self.deadline = parent.deadline
            self.origin = parent.origin
            self.deadline_scope = parent.deadline_scope
            self.allowed = max(0.0, parent.deadline - now)
            if parent.task is task:
                self.timer_scope = parent.timer_scope
            else:
                # A child task is not cancelled by its parent's timer; it needs its own.
                self.timer = asyncio.timeout_at(parent.deadline)
                self.timer_scope = self
        else:
            self.deadline = own_deadline
            self.origin = operation.name
            self.deadline_scope = self
            self.allowed = operation.timeout
            self.timer = asyncio.timeout_at(own_deadline)
            self.timer_scope = self
        self.task = task
        self.cancel_requests = task.cancelling() if task is not None else 0

        span = _start_span(instruments, operation)
        self.span = span
        self.context = trace.set_span_in_context(span)
        self.token = otel_context.attach(self.context)
        self.scope_token = _current_scope.set(self)
        self.start = now
        if self.timer is not None:
            try:
                await self.timer.__aenter__()
            except BaseException as exc:
                self._finish(instruments, ERROR, exc, loop.time() - now)
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        operation = self.operation
        instruments = self.instruments
        timer = self.timer
        fired: TimeoutError | None = None
        if timer is not None:
            try:
                await timer.__aexit__(exc_type, exc, traceback)
            except TimeoutError as timeout_exc:
                fired = timeout_exc
        duration = asyncio.get_running_loop().time() - self.start

        if fired is not None or (
            timer is not None and timer.expired() and exc_type is not asyncio.CancelledError
        ):
            # Our own timer fired. The function may also have swallowed the cancellation
            # and returned, or turned it into another error. The caller still gets a
            # timeout, because the deadline is the contract.
            if fired is None:
                self._warn_once(
                    "swallowed",
                    "operation.cancellation_swallowed: the function caught the cancellation "
                    "its timeout sent and %s; the call is reported as timed out",
                    "returned" if exc is None else f"raised {type(exc).__name__}",
                )
            own = self.origin == operation.name and not operation.is_budget
            status = TIMEOUT_OWN if own else TIMEOUT_BUDGET
            if self._counts_its_deadline():
                instruments.timeouts.add(1, operation.timeout_attributes[status])
            error = OperationTimeoutError(operation.name, self.allowed, self.origin)
            self._finish(instruments, TIMEOUT, error, duration)
            raise error from (fired or exc)

        if exc_type is asyncio.CancelledError:
            scope = self.timer_scope
            if timer is None and scope.timer is not None and scope.timer.expired():
                # An enclosing operation's deadline fired; it counts the timeout.
                self._finish(instruments, TIMEOUT, exc, duration, budget=True)
            else:
                self._finish(instruments, CANCELLED, exc, duration)
            return None

        if exc is not None:
            outcome = POOL_EXHAUSTED if isinstance(exc, PoolExhaustedError) else ERROR
            self._finish(instruments, outcome, exc, duration)
            return None

        task = self.task
        if task is not None and task.cancelling() > self.cancel_requests:
            # A cancellation was requested during the call but never delivered: on Python
            # 3.11, asyncio.wait_for can return a result instead of raising one. Deliver it
            # now, so that a cancellation from outside is never lost.
            scope = self.timer_scope
            budget = timer is None and scope.timer is not None and scope.timer.expired()
            self._finish(
                instruments, TIMEOUT if budget else CANCELLED, None, duration, budget=budget
            )
            raise asyncio.CancelledError()

        if timer is not None and duration > self.allowed + max(0.02, 0.1 * self.allowed):
            # The timer could not interrupt the call: it blocked the event loop. A reply
            # that lands in the same loop iteration as the deadline finishes a little
            # late without any blocking, hence the margin.
            instruments.timeouts.add(1, operation.timeout_attributes[TIMEOUT_OVERRUN])
            self._warn_once(
                "overrun",
                "operation.overrun: the call took %.3f s, past its %.3f s timeout, without "
                "being interrupted; it probably blocked the event loop",
                duration,
                self.allowed,
            )
        self._finish(instruments, SUCCESS, None, duration)
        return None

    def _counts_its_deadline(self) -> bool:
        """Return whether this call counts the deadline that just fired on its timer.

        A deadline is counted once, by the scope that set it. A child task's timer at an
        inherited deadline fires at the same moment as the owner's timer, so the child
        counts only when the owner ended before its deadline and so cannot count it.
        """
        owner = self.deadline_scope
        if owner is self:
            return True
        return owner.timer is None or not owner.timer.expired()

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        operation = self.operation
        if kind in operation.warned:
            return
        operation.warned.add(kind)
        logger.warning(message, *args, extra={"autobot.operation": operation.name})

    def _finish(
        self,
        instruments: _telemetry.Instruments,
        outcome: str,
        exc: BaseException | None,
        duration: float,
        *,
        budget: bool = False,
    ) -> None:
        operation = self.operation
        span = self.span
        try:
            self._settle_breaker(outcome, exc, duration, budget)
            # Recorded with the span's context, so the SDK can attach it as an exemplar
            # with this trace's id. Passing the context saves the SDK looking it up.
            instruments.duration.record(duration, operation.metric_attributes, self.context)
            if operation.redis_attributes is not None:
                instruments.redis_requests.add(1, operation.redis_attributes[outcome])
            if span.is_recording():
                _annotate_span(span, self, outcome, exc, budget)
        finally:
            self.closed = True
            self.active = False
            _end_span(span)
            try:
                _current_scope.reset(self.scope_token)
            finally:
                otel_context.detach(self.token)

    def _settle_breaker(
        self, outcome: str, exc: BaseException | None, duration: float, budget: bool
    ) -> None:
        breaker = self.operation.breaker
        if breaker is None:
            return
        if outcome == SUCCESS:
            breaker.on_success(self.permit, duration)
        elif (
            outcome in (CANCELLED, POOL_EXHAUSTED)
            or budget
            or exc is None
            or isinstance(exc, CircuitOpenError)
        ):
            # A CircuitOpenError here comes from a breaker of a nested call; counting it
            # would let one breaker's rejections trip another, or keep it open forever.
            # Cancellation, an enclosing budget running out and a full local pool tell
            # nothing about the health of the backend, so they neither trip nor heal it.
            breaker.release(self.permit)
        else:
            breaker.on_failure(self.permit, duration, exc)


def _annotate_span(
    span: Span, call: _Call, outcome: str, exc: BaseException | None, budget: bool
) -> None:
    # One set_attributes() call, so that the SDK takes the span's lock once, not once per
    # attribute.
    attributes: dict[str, str | float] = {
        "autobot.outcome": outcome,
        "autobot.timeout_seconds": call.allowed,
    }
    if outcome == TIMEOUT:
        attributes["error.type"] = "timeout"
        attributes["autobot.timeout.origin"] = call.origin
        attributes["autobot.timeout.source"] = "budget" if budget else "own"
        span.set_status(StatusCode.ERROR, f"deadline of {call.origin!r} expired")
    elif outcome in (ERROR, POOL_EXHAUSTED) and exc is not None:
        attributes["error.type"] = _error_type(exc)
        span.record_exception(exc)
        span.set_status(StatusCode.ERROR, type(exc).__name__)
    breaker = call.operation.breaker
    if breaker is not None:
        attributes["autobot.circuit_breaker.state"] = breaker.state.value
    span.set_attributes(attributes)


def _record_rejection(
    operation: _Operation, instruments: _telemetry.Instruments, exc: CircuitOpenError
) -> None:
    # A rejected call is not timed: its near-zero duration would make latency look
    # better exactly while the backend is failing.
    if operation.redis_attributes is not None:
        instruments.redis_requests.add(1, operation.redis_attributes[REJECTED])
    span = _start_span(instruments, operation)
    if span.is_recording():
        span.set_attribute("autobot.outcome", REJECTED)
        span.set_attribute("error.type", _error_type(exc))
        span.set_attribute("autobot.circuit_breaker.state", "open")
        span.set_status(StatusCode.ERROR, "circuit breaker open")
    _end_span(span)


_span_failures: set[str] = set()


def _log_span_failure(stage: str) -> None:
    # Telemetry must never break the user's call, and a broken span processor would
    # fail on every call, so each stage is logged once with its traceback.
    if stage not in _span_failures:
        _span_failures.add(stage)
        logger.exception("telemetry.span_%s_failed; the call goes on without it", stage)


def _start_span(instruments: _telemetry.Instruments, operation: _Operation) -> Span:
    try:
        return instruments.tracer.start_span(
            operation.name, kind=SpanKind.INTERNAL, attributes=operation.span_attributes
        )
    except Exception:
        _log_span_failure("start")
        return trace.INVALID_SPAN


def _end_span(span: Span) -> None:
    try:
        span.end()
    except Exception:
        _log_span_failure("end")


# --------------------------------------------------------------------------- public API


def _check_coroutine_function(name: str, func: Callable[..., Any]) -> None:
    if inspect.iscoroutinefunction(func):
        return
    label = getattr(func, "__qualname__", repr(func))
    if isinstance(func, classmethod | staticmethod):
        raise TypeError(
            f"timed_operation({name!r}) must be placed below @classmethod or @staticmethod, "
            "so that it decorates the async function itself"
        )
    if callable(func) and inspect.iscoroutinefunction(type(func).__call__):
        raise TypeError(
            f"timed_operation({name!r}) cannot decorate the callable object {label}; "
            "decorate its 'async def __call__' method instead"
        )
    if inspect.isasyncgenfunction(func):
        raise TypeError(
            f"timed_operation({name!r}) cannot decorate async generator {label}; "
            f"time each step with 'async with timed({name!r})' inside it instead"
        )
    raise TypeError(
        f"timed_operation({name!r}) decorates 'async def' functions only, and {label} is "
        "not one. asyncio cannot interrupt a blocking call: run it in a thread with "
        f"'async with timed({name!r}): await asyncio.to_thread({label}, ...)', knowing that "
        "the thread keeps running after a timeout"
    )


def timed_operation(
    name: str,
    *,
    database: str | None = None,
    default: float | None = None,
    breaker: CircuitBreaker | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Bound an ``async def`` by the configured timeout of ``name`` and record it.

    ``name`` is resolved when the decorator is applied: an unknown name raises
    UnknownOperationError naming the closest known ones, unless ``default`` gives a
    timeout in seconds. ``database`` sets the ``database`` label (default: the part of
    the name before the first dot). With ``breaker`` every call goes through that
    circuit breaker first. A call that runs out of time raises OperationTimeoutError,
    which is also a TimeoutError; a cancellation from outside passes through unchanged.
    """
    operation = get_operation(name, database=database, default=default, breaker=breaker)

    def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        _check_coroutine_function(name, func)

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            async with _Call(operation):
                return await func(*args, **kwargs)

        wrapper.__autobot_operation__ = operation  # type: ignore[attr-defined]
        return wrapper

    return decorate


def timed(
    name: str,
    *,
    database: str | None = None,
    default: float | None = None,
    breaker: CircuitBreaker | None = None,
) -> _Call:
    """Return an async context manager that bounds and records a block as ``name``.

    It takes the same arguments as ``timed_operation``; use one ``timed(...)`` per
    ``async with``.
    """
    return _Call(get_operation(name, database=database, default=default, breaker=breaker))


def _reset_for_tests() -> None:
    """Forget every operation and declared database, so tests start from nothing."""
    with _registry_lock:
        _operations.clear()
        _extra_databases.clear()


def deadline_budget(name: str, seconds: float | None = None) -> _Call:
    """Return an async context manager that gives the block a deadline budget.

    Timed operations inside get at most what is left of it. When the budget runs out,
    the block raises OperationTimeoutError and ``autobot_timeout_total`` counts it once,
    labelled with ``name`` and ``status="budget_exhausted"``. The budget is the
    configured timeout of ``name``, else ``seconds``. Typical use: one budget per HTTP
    request, shared by every call the handler makes.
    """
    return _Call(get_operation(name, default=seconds, is_budget=True))
