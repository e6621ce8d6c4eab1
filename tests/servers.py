"""Real broker processes for tests: started on free loopback ports, killable, restartable.

Tests never talk to a shared Redis or NATS: each fixture starts its own
``redis-server`` / ``nats-server -js`` from PATH in a temp dir, so fault tests can
kill -9 and restart it with the same data. ``CATGA_REDIS_URL`` / ``CATGA_NATS_URL``
point the non-fault tests at an existing server instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["NatsServer", "RedisServer", "free_port"]

_START_TIMEOUT = 10.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"server did not listen on {port} within {_START_TIMEOUT}s")


class _Server:
    binary = ""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if shutil.which(self.binary) is None:
            raise RuntimeError(
                f"{self.binary} is not on PATH: apt-get install -y redis-server nats-server "
                "(make test does this)"
            )
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "server.log"

    def args(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Start the server (again, with the same data dir and port)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args(), stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        _wait_port(self.port, self.proc, self.log)

    def kill(self) -> None:
        """SIGKILL the server and reap it (a crash: nothing is flushed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """kill -9, then start again with the same data."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Terminate gracefully (SIGTERM), then SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


class RedisServer(_Server):
    """``redis-server`` with AOF (appendfsync everysec) and ``noeviction``, on loopback."""

    binary = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        return [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
        ]  # fmt: skip


class NatsServer(_Server):
    """``nats-server -js`` with a file store in the work dir, on loopback."""

    binary = "nats-server"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        return [
            self.binary,
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-js",
            "-sd", str(self.workdir / "jetstream"),
        ]  # fmt: skip


def env_url(name: str) -> str | None:
    """Return a server URL from the environment, if the user pointed tests at one."""
    return os.environ.get(name) or None
