"""Exceptions raised by autobot-otel.

The hierarchy::

    AutobotError
    ├── ConfigurationError (also ValueError)
    │   └── UnknownOperationError (also LookupError)
    ├── OperationTimeoutError (also TimeoutError)
    ├── CircuitOpenError
    └── PoolExhaustedError (also ConnectionError)

Cancellation is never wrapped: ``asyncio.CancelledError`` passes through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AutobotError",
    "CircuitOpenError",
    "ConfigProblem",
    "ConfigurationError",
    "OperationTimeoutError",
    "PoolExhaustedError",
    "UnknownOperationError",
]


_SECRET_KEY = re.compile(r"pass(word)?|secret|token|api_?key|credential", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^@/\s]+)@", re.IGNORECASE
)


def mask_secret(key: str, value: object) -> object:
    """Hide values that look like secrets: keys named like passwords, URL credentials."""
    if _SECRET_KEY.search(key) and value not in (None, ""):
        return "****"
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(lambda match: f"{match['scheme']}****@", value)
    return value


class AutobotError(Exception):
    """Base class of every exception that autobot-otel raises itself."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One invalid setting: its dotted key, the value found and the layer it came from."""

    key: str
    value: object
    source: str
    reason: str

    def __str__(self) -> str:
        masked = mask_secret(self.key, self.value)
        return f"{self.key} = {masked!r} (from {self.source}): {self.reason}"


class ConfigurationError(AutobotError, ValueError):
    """Raised when settings are invalid; ``problems`` lists every bad key found."""

    def __init__(self, message: str, problems: Sequence[ConfigProblem] = ()) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        if self.problems:
            lines = "\n".join(f"  - {problem}" for problem in self.problems)
            message = f"{message}\n{lines}"
        super().__init__(message)


class UnknownOperationError(ConfigurationError, LookupError):
    """Raised when an operation name matches no configured timeout."""

    def __init__(self, operation: str, message: str) -> None:
        self.operation = operation
        super().__init__(message)


class OperationTimeoutError(AutobotError, TimeoutError):
    """Raised when an operation's deadline passes before it finishes.

    ``timeout`` is the time the operation was given, in seconds. ``budget_owner`` is the
    operation whose deadline fired: the operation itself unless an enclosing deadline
    budget was shorter than its own timeout.
    """

    def __init__(self, operation: str, timeout: float, budget_owner: str | None = None) -> None:
        self.operation = operation
        self.timeout = timeout
        self.budget_owner = budget_owner or operation
        if self.budget_owner == operation:
            message = f"operation {operation!r} timed out after {timeout:g} s"
        else:
            message = (
                f"operation {operation!r} ran out of the deadline budget set by "
                f"{self.budget_owner!r} ({timeout:g} s)"
            )
        super().__init__(message)


class CircuitOpenError(AutobotError):
    """Raised instead of calling a backend whose circuit breaker is open.

    ``retry_after`` is the number of seconds until the breaker lets a probe call through,
    or ``None`` when the breaker was forced open and stays open until it is reset.
    """

    def __init__(self, breaker: str, retry_after: float | None) -> None:
        self.breaker = breaker
        self.retry_after = retry_after
        if retry_after is None:
            message = f"circuit breaker {breaker!r} is forced open; call reset() to close it"
        elif retry_after == 0:
            message = (
                f"circuit breaker {breaker!r} is half-open and every probe slot is taken; "
                "retry once the probes in flight finish"
            )
        else:
            message = (
                f"circuit breaker {breaker!r} is open; the next probe is allowed "
                f"in {retry_after:.3f} s"
            )
        super().__init__(message)


class PoolExhaustedError(AutobotError, ConnectionError):
    """Raised when a connection pool has no free connection for an operation."""

    def __init__(self, database: str, max_connections: int) -> None:
        self.database = database
        self.max_connections = max_connections
        super().__init__(
            f"connection pool of database {database!r} is exhausted "
            f"({max_connections} connections in use); raise max_connections or lower concurrency"
        )
