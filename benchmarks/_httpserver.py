"""A fast HTTP/1.1 server on 127.0.0.1 in a child process, for the transport benchmarks.

The benchmarks time a client, so the server must cost the client nothing: it runs in its
own process (it does not take the client's GIL, and its own work runs on the other core),
on asyncio's C-level socket handling, and answers every request with the same prepared
bytes: ``200``, a two-byte body, keep-alive. It reads request heads only (GET, no body:
a request that says it has a body closes its connection) and pipelined requests are
answered in order.

Run as a script it prints its port, then serves until its stdin closes (the parent has
gone, or said so) or ``LIMIT`` seconds have passed. :class:`LocalServer` starts one.
Standard library only: the child imports nothing of the project.
"""

from __future__ import annotations

import asyncio
import selectors
import subprocess
import sys
from pathlib import Path
from types import TracebackType

BODY = b"ok"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
#: The longest a server lives, even if nobody closes it.
LIMIT = 900.0
#: The most a connection may buffer before a full request head: a runaway client ends.
MAX_HEAD = 64 * 1024
#: How long the parent waits for the child to say its port, and then to exit.
START_TIMEOUT = STOP_TIMEOUT = 10.0


class _Answer(asyncio.Protocol):
    """One connection: every complete request head gets :data:`RESPONSE`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        heads = buffer.count(b"\r\n\r\n")
        if heads:
            end = buffer.rfind(b"\r\n\r\n") + 4
            lowered = buffer[:end].lower()
            if b"\r\ncontent-length:" in lowered or b"\r\ntransfer-encoding:" in lowered:
                self._transport.close()  # a body: not what this server is for
                return
            self._transport.write(RESPONSE * heads)
            buffer = buffer[end:]
        if len(buffer) > MAX_HEAD:
            self._transport.close()
            return
        self._buffer = buffer


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def stdin_ready() -> None:
        if not sys.stdin.buffer.read1(1) and not stop.done():  # EOF: the parent is done
            stop.set_result(None)

    loop.add_reader(sys.stdin.fileno(), stdin_ready)
    server = await loop.create_server(_Answer, "127.0.0.1", 0)  # TCP_NODELAY is set
    print(server.sockets[0].getsockname()[1], flush=True)
    try:
        await asyncio.wait_for(stop, LIMIT)
    except asyncio.TimeoutError:
        pass
    server.close()


class LocalServer:
    """The server above in a child process: ``with LocalServer() as server: server.url``."""

    def __init__(self) -> None:
        self.url = ""
        self._child: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalServer:
        child = subprocess.Popen(
            # -I: nothing from the environment or this directory shadows the standard library
            [sys.executable, "-I", str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._child = child
        assert child.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            ready = selector.select(START_TIMEOUT)
        line = child.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"the benchmark server did not start (it said {line!r})")
        self.url = f"http://127.0.0.1:{int(line)}/"
        return self

    def close(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.close()  # the child's cue to stop
        try:
            child.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(STOP_TIMEOUT)
        child.stdout.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


if __name__ == "__main__":
    asyncio.run(_serve())
