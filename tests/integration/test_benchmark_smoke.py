"""benchmarks/overhead.py --quick runs end to end. Its figures are not checked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools import require_tool

pytestmark = pytest.mark.integration

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "overhead.py"
SECTIONS = (
    "1. per-call overhead",
    "2. Redis GET throughput",
    "3. configuration cost",
    "4. memory",
    "5. timeout precision",
)
# One row of each section that carries a target, as the table names it.
TARGET_ROWS = (
    "@timed_operation: timeout, breaker, span, metrics",
    "AsyncRedisManager, all on, RedisInstrumentor too, 10 clients",
    "AsyncRedisManager, metrics only (sampler off), 1 client",
    "configured / fixed",
    "resident growth over 100,000 calls with distinct arguments",
    "timed(), 1,000 in flight, p99",
)
TARGET_COUNT = 11


def run_quick_benchmark() -> str:
    """Run the benchmark in quick mode, with at most 60 seconds, and return its output."""
    environment = dict(os.environ)
    environment.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    completed = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def test_quick_benchmark_prints_every_section() -> None:
    """The quick run exits 0 and prints every section, target row and verdict."""
    require_tool("redis-server", "apt-get install redis-server")

    output = run_quick_benchmark()

    for section in SECTIONS:
        assert f"== {section}\n" in output, section
    for measurement in TARGET_ROWS:
        row = re.search(rf"^{re.escape(measurement)}\s.*\s(met|NOT MET)$", output, re.MULTILINE)
        assert row is not None, measurement
    assert "skipped" not in output
    assert re.search(rf"^targets met: \d+ of {TARGET_COUNT}$", output, re.MULTILINE)
