"""The public surface of the package."""

from __future__ import annotations

import autobot_otel


def test_all_is_sorted_and_exact() -> None:
    """__all__ is sorted and names exactly the public objects."""
    assert autobot_otel.__all__ == sorted(autobot_otel.__all__)
    public = {name for name in vars(autobot_otel) if not name.startswith("_")}
    submodules = {"redis", "fastapi", "cli", "demo"}
    assert public - submodules == set(autobot_otel.__all__)


def test_timeout_errors_are_timeout_errors() -> None:
    """OperationTimeoutError is a TimeoutError and an AutobotError."""
    assert issubclass(autobot_otel.OperationTimeoutError, TimeoutError)
    assert issubclass(autobot_otel.OperationTimeoutError, autobot_otel.AutobotError)
    assert issubclass(autobot_otel.ConfigurationError, ValueError)
    assert issubclass(autobot_otel.PoolExhaustedError, ConnectionError)
