"""A private, throwaway ``redis-server`` on 127.0.0.1 for the demo and the tests.

It listens on a free loopback port, keeps nothing on disk, and is stopped and removed by
``stop()``. ``pause()`` and ``restart()`` make stalls and outages for real.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["RedisServer", "RedisServerError", "free_port"]

INSTALL_HINT = (
    "install it with 'sudo apt-get install redis-server' (Debian, Ubuntu), "
    "or pass --redis-url to use a server you already run"
)


class RedisServerError(RuntimeError):
    """Raised when the private redis-server cannot be found or started."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process bound to 127.0.0.1 on a free port."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise RedisServerError(f"redis-server was not found on PATH: {INSTALL_HINT}")
        self.binary = found
        self.port = port or free_port()
        # Made by start() and removed by stop(), so an object that only sends commands
        # to a server started elsewhere leaves nothing behind.
        self._directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the server, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it replies to PING."""
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="autobot-redis-"))
        log = self._directory / "redis.log"
        self._close_pipe()
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._directory),
                "--logfile",
                str(log),
                "--enable-debug-command",
                "local",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RedisServerError(
                    f"redis-server exited with code {self._process.returncode} on port "
                    f"{self.port}: {stderr.strip() or log.read_text(errors='replace')[-500:]}"
                )
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RedisServerError(
            f"redis-server on port {self.port} did not reply to PING within {timeout} s"
        )

    def command(self, *args: str, timeout: float = 5.0) -> bytes:
        """Send one command over a fresh connection and return the raw reply."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(b"".join(parts))
            return sock.recv(65536)

    def ping(self) -> bool:
        """Return whether the server replies to PING right now."""
        try:
            return self.command("PING", timeout=0.5).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self, milliseconds: int) -> None:
        """Stall every other client for ``milliseconds`` with CLIENT PAUSE."""
        reply = self.command("CLIENT", "PAUSE", str(milliseconds), "ALL")
        if not reply.startswith(b"+OK"):
            raise RedisServerError(f"CLIENT PAUSE failed: {reply!r}")

    def info(self, section: str) -> dict[str, str]:
        """Return an INFO section as a dict of strings."""
        text = self.command("INFO", section).decode(errors="replace")
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {key: value for key, value in pairs}

    def kill(self) -> None:
        """Stop the server at once (an outage), keeping its port for ``restart()``."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self._process is not None and self._process.stderr is not None:
            self._process.stderr.close()

    def restart(self) -> None:
        """Start the server again on the same port after ``kill()``."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._close_pipe()
        if self._directory is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._directory)
            self._directory = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
