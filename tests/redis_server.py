"""A real ``redis-server`` of our own on 127.0.0.1, for the fleet tests, and faults around it.

Fleet state is tested against Redis itself, never a fake: a Lua script, the server's
``TIME``, ``NOSCRIPT`` after a restart and a socket timeout only look real if a server
delivers them. So the tests start their own server (the Debian package ``redis-server``)
on a free port, with nothing saved to disk, and stop it after::

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        server.kill()  # mid-test: connections refused
        server.start()  # the same port again, empty (no script cached, no keys)

Without the binary the tests are skipped, saying how to install it; with
``CI_REQUIRE_REDIS=1`` (CI sets it) they fail instead, so CI always runs them.

Also here: ``DelayProxy`` (a TCP proxy that holds each reply back a while: a slow Redis)
and, from tests/faultserver.py, ``Blackhole`` (a port that accepts and never answers).
Every wait is bounded, every thread is joined on close.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from tests.faultserver import Blackhole

__all__ = [
    "REQUIRE",
    "Blackhole",
    "DelayProxy",
    "RedisServer",
    "redis_binary",
    "redis_flushed",
    "redis_server",
]

#: Set to 1 (CI does) to fail, not skip, where redis-server is missing.
REQUIRE = "CI_REQUIRE_REDIS"
#: Read as this module is imported (not a RESILIENT_* name: resilient's pytest plugin
#: hides those from each test, and resilient would warn of an unknown one).
REQUIRED = os.environ.get(REQUIRE) == "1"
INSTALL = "apt-get install -y redis-server"
#: How long a server may take to answer PING after it starts, and to exit after SIGTERM.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def redis_binary() -> str:
    """The redis-server to run; a skip (or with CI_REQUIRE_REDIS=1, a failure)
    saying how to install it where there is none."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if found is None:
        why = f"redis-server is not installed (install it with: {INSTALL})"
        if REQUIRED or os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{why}; {REQUIRE}=1 requires it", pytrace=False)
        pytest.skip(why)
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(port: int, *words: str, timeout: float = 1.0) -> bytes:
    """One command in RESP on a fresh connection, and the first reply line (raw)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        parts = [f"*{len(words)}\r\n".encode()]
        for word in words:
            data = word.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        sock.sendall(b"".join(parts))
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply


class RedisServer:
    """A redis-server process of our own on 127.0.0.1: ``start()``, ``stop()``, ``kill()``
    (SIGKILL: what a crash looks like to clients), ``flushall()``, ``command()``."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = redis_binary()
        self.port = port or _free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="resilient-redis-")
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} {'running' if self.running else 'stopped'}>"

    def start(self) -> None:
        """Start the server on its port (again, after stop or kill: empty) and wait,
        bounded, until it answers PING."""
        assert not self.running, "already running"
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "local",
            "--dir",
            self._dir.name,
            "--logfile",
            "",
        ]
        self._process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                error = self._process.stderr.read() if self._process.stderr else b""
                self._process = None
                raise RuntimeError(f"redis-server exited on start: {error!r}")
            with contextlib.suppress(OSError):
                if _command(self.port, "PING").startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on {self.port}: no PONG in {START_TIMEOUT}s")
            time.sleep(0.01)

    def _end(self, how: str) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            getattr(process, how)()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        if process.stderr is not None:
            process.stderr.close()

    def stop(self) -> None:
        """SIGTERM and wait (bounded; SIGKILL after)."""
        self._end("terminate")

    def kill(self) -> None:
        """SIGKILL and wait: the server gone at once, as in a crash."""
        self._end("kill")

    def restart(self) -> None:
        """Killed and started again on the same port: no keys, no scripts cached."""
        self.kill()
        self.start()

    def command(self, *words: str) -> bytes:
        """One command on a fresh connection; the first line of its reply (raw RESP)."""
        return _command(self.port, *words)

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        assert reply.startswith(b"+OK"), reply

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


class DelayProxy:
    """A TCP proxy on 127.0.0.1 to ``127.0.0.1:target``: what the server sends back is
    held ``delay`` seconds first (a slow Redis); requests go through at once.

    One thread accepts; each connection gets two pumps. Every socket wait is at most
    0.05 s between checks of the stop flag, so ``close()`` ends them all and joins them,
    bounded."""

    join_timeout = 5.0

    def __init__(self, target: int, delay: float) -> None:
        self.target, self.delay = target, delay
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._spawn(self._accept, "accept")

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _spawn(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(
            target=target,  # type: ignore[arg-type]
            args=args,
            name=f"DelayProxy-{self.port}-{name}",
            daemon=True,
        )
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=1.0)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(0.05)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, "up", client, upstream, 0.0)
            self._spawn(self._pump, "down", upstream, client, self.delay)

    def _pump(self, source: socket.socket, sink: socket.socket, delay: float) -> None:
        while not self._stop.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if delay and self._stop.wait(delay):
                break
            try:
                sink.sendall(data)
            except OSError:
                break
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        deadline = time.monotonic() + self.join_timeout
        while True:
            with self._lock:
                alive = [t for t in self._threads if t.is_alive()]
            if not alive:
                break
            alive[0].join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                break
        with self._lock:
            for sock in self._sockets:
                sock.close()
            left = [t.name for t in self._threads if t.is_alive()]
        assert not left, f"proxy threads left running: {left}"


# -- fixtures (tests/conftest.py makes them available to every test) ------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session (restarted by a test that killed it)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_flushed(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's server, running and empty (FLUSHALL) for this test."""
    if not redis_server.running:
        redis_server.start()
    redis_server.flushall()
    yield redis_server
    if not redis_server.running:  # a test that killed it leaves the next one a server
        redis_server.start()
