"""Throwaway ``redis-server`` processes on free loopback ports, for the Redis test modules."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

#: Why Redis tests are restricted to asyncio.
ASYNCIO_ONLY = "redis-py's asyncio client, hence RedisBackend, runs on asyncio only"


def free_port() -> int:
    """A loopback port nobody listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def binary(name: str = "redis-server") -> str:
    """The path of a Redis binary; skips the calling test when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"no {name} binary on PATH (apt-get install redis-server)")
    return path


class RedisProcess:
    """One ``redis-server`` without persistence on a fixed port, that a test can kill,
    restart (empty) and start again; :meth:`stop` at the end, always.
    """

    def __init__(self, port: int | None = None, *options: str) -> None:
        self.port = free_port() if port is None else port
        self.options = options
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.folder: str | None = None

    def start(self) -> RedisProcess:
        """Start it (empty) and wait until it answers."""
        argv = [binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        # Its own folder: a replica's full sync writes dump.rdb there, not in the checkout.
        self.folder = folder = tempfile.mkdtemp(prefix="redis-test-")
        argv += ["--save", "", "--appendonly", "no", "--dir", folder, *self.options]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _pong(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Kill it (SIGKILL: no goodbye to the clients) and wait for it to be gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def restart(self) -> None:
        """Kill it and start it again on the same port, with nothing in it."""
        self.stop()
        self.start()


@contextmanager
def redis_server(port: int | None = None, *options: str) -> Iterator[str]:
    """Run ``redis-server`` without persistence on ``port``; yield its URL; kill it on exit.

    Skips the calling test when no ``redis-server`` binary is installed.
    """
    server = RedisProcess(port, *options)
    try:
        yield server.start().url
    finally:
        server.stop()
