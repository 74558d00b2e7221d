"""The demo, run as a user runs it: real redis-server, real HTTP, a real stall."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx
import pytest

from autobot_otel.demo.redis_server import free_port
from tests.tools import require_tool

pytestmark = pytest.mark.integration

# A Redis timeout counted at least once; every series also exists at 0 from the start.
TIMEOUT_LINE = re.compile(
    r'autobot_timeout_total\{database="main",operation_type="redis\.\w+",status="timeout"\} [1-9]'
)


def test_demo_with_stall_shows_timeouts() -> None:
    """A stalled demo run exposes the three metrics and ends with timeouts counted."""
    require_tool("redis-server", "apt-get install redis-server")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autobot_otel.cli",
            "demo",
            "--duration",
            "14",
            "--fault",
            "stall",
            "--no-live",
            "--port",
            str(port),
            "--concurrency",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        scrape = ""
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                scrape = httpx.get(f"http://127.0.0.1:{port}/monitoring/metrics", timeout=5).text
            except httpx.HTTPError:
                continue
            if TIMEOUT_LINE.search(scrape):
                break
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, output
    assert TIMEOUT_LINE.search(scrape), scrape
    assert (
        'autobot_redis_requests_total{database="main",operation="get",status="success"}' in scrape
    )
    buckets = re.findall(
        r'autobot_operation_duration_seconds_bucket\{database="main",le="([^"]+)",operation_type="redis.get"\}',
        scrape,
    )
    assert buckets == ["0.001", "0.01", "0.1", "0.5", "1.0", "2.0", "5.0", "10.0", "30.0", "+Inf"]
    summary = re.search(r"operation timeouts: (\d+)", output)
    assert summary is not None, output
    assert int(summary.group(1)) > 0
    assert "stopped the private redis-server" in output
