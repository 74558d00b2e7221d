"""Locate the external programs that integration tests need.

On a developer machine a missing program skips the test with the reason. Under CI
(``CI=true``) a missing program fails the test instead, so that a CI run can never pass
by skipping its real-server tests.
"""

from __future__ import annotations

import os
import shutil

import pytest


def running_in_ci() -> bool:
    """Return whether the tests run under CI, where every tool must be present."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str, hint: str) -> str:
    """Return the path of program ``name``, or skip (fail under CI) with ``hint``."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed: {hint}"
    if running_in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
