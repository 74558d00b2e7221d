"""Named circuit breakers: settings from configuration, telemetry, live reload.

``get_breaker(name)`` returns the process-wide breaker of that name, built from
``circuit_breaker.default`` merged with ``circuit_breaker.<name>``. A configuration reload
updates each breaker's settings in place, so its state survives. Every breaker reports
``autobot_circuit_breaker_state{database}`` and
``autobot_circuit_breaker_events_total{database, event, reason}``, where ``database`` is
the breaker's name.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from . import _telemetry
from ._breaker import BreakerSettings, CircuitBreaker, breaker_settings_from_mapping
from ._config import Config, add_config_listener, get_config

__all__ = ["all_breakers", "get_breaker"]

_lock = threading.Lock()
_breakers: dict[str, CircuitBreaker] = {}
_event_attributes: dict[tuple[str, str, str], dict[str, str]] = {}


def _settings_for(name: str, config: Config) -> BreakerSettings:
    section: Mapping[str, Any] = config.circuit_breaker
    merged = {**section.get("default", {}), **section.get(name, {})}
    settings, problems = breaker_settings_from_mapping(
        merged, key_prefix=f"circuit_breaker.{name}", source_of=config.source_of
    )
    if settings is None:
        # load_config validated every named section already; only a name that has no
        # section of its own reaches here, and the default section was valid.
        raise ValueError("; ".join(str(problem) for problem in problems))
    return settings


def _record_event(breaker: CircuitBreaker, event: str, reason: str) -> None:
    key = (breaker.name, event, reason)
    attributes = _event_attributes.get(key)
    if attributes is None:
        attributes = {"database": breaker.name, "event": event, "reason": reason}
        _event_attributes[key] = attributes
    _telemetry.instruments().breaker_events.add(1, attributes)


def get_breaker(name: str) -> CircuitBreaker:
    """Return the breaker called ``name``, creating it from the configuration on first use."""
    breaker = _breakers.get(name)
    if breaker is not None:
        return breaker
    with _lock:
        breaker = _breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(name, _settings_for(name, get_config()))
            breaker.add_listener(_record_event)
            _breakers[name] = breaker
    return breaker


def all_breakers() -> dict[str, CircuitBreaker]:
    """Return every named breaker created so far."""
    return dict(_breakers)


def _apply_config(config: Config) -> None:
    for name, breaker in all_breakers().items():
        breaker.update_settings(_settings_for(name, config))


def _state_gauge() -> list[tuple[float, dict[str, str]]]:
    return [
        (breaker.peek_state().code, {"database": name}) for name, breaker in all_breakers().items()
    ]


def _reset_for_tests() -> None:
    with _lock:
        _breakers.clear()


add_config_listener(_apply_config)
_telemetry.add_gauge_source("breaker_state", _state_gauge)
