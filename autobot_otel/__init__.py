"""Layered timeouts, circuit breakers and OpenTelemetry telemetry for async services.

Decorate an ``async def`` with ``@timed_operation("redis.get")``: the timeout comes from
layered configuration, ``asyncio.timeout`` enforces it, and every call is recorded as a
span and as Prometheus-ready metrics. See the README for the configuration schema.
"""

from ._breaker import BreakerSettings, BreakerState, CircuitBreaker
from ._breaker_registry import all_breakers, get_breaker
from ._config import (
    Config,
    ConfigWatcher,
    Timeouts,
    configure,
    get_config,
    load_config,
    reload_config,
    watch_config,
)
from ._errors import (
    AutobotError,
    CircuitOpenError,
    ConfigProblem,
    ConfigurationError,
    OperationTimeoutError,
    PoolExhaustedError,
    UnknownOperationError,
)
from ._operation import deadline_budget, remaining_time, timed, timed_operation
from ._telemetry import TelemetryHandle, setup_telemetry
from .redis import AsyncRedisManager

timeouts = Timeouts()
"""Timeouts of the process-wide configuration: ``timeouts.get("redis.operations.get")``."""

__all__ = [
    "AsyncRedisManager",
    "AutobotError",
    "BreakerSettings",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "Config",
    "ConfigProblem",
    "ConfigWatcher",
    "ConfigurationError",
    "OperationTimeoutError",
    "PoolExhaustedError",
    "TelemetryHandle",
    "Timeouts",
    "UnknownOperationError",
    "all_breakers",
    "configure",
    "deadline_budget",
    "get_breaker",
    "get_config",
    "load_config",
    "reload_config",
    "remaining_time",
    "setup_telemetry",
    "timed",
    "timed_operation",
    "timeouts",
    "watch_config",
]

__version__ = "0.1.0"
