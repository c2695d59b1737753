"""A real HTTP/1.1 server on 127.0.0.1 that misbehaves on cue, for testing HTTP clients.

Client tests talk to a real socket, never to a mocked transport: a reset, a hang or a slow
body only looks real to httpx if the kernel delivers it. So this is a small server written
on the standard library alone (sockets, ``selectors``, ``threading``), with every fault in
our hands::

    with FaultServer() as server:
        server.script(Reply(503, headers=(("Retry-After", "0.5"),)), Reply(action="reset"))
        ...  # the first request gets a 503, the second a reset, the rest 200 "ok"
        assert server.count() == 3

One thread accepts; each connection gets a thread that serves its requests in turn
(keep-alive: httpx reuses connections). Sockets are non-blocking and every wait goes
through a selector that also watches a stop pipe, so ``close()`` ends every thread at once
(a hang, a delay, an idle keep-alive connection, a blocked send) and then joins them,
bounded. No wait on a connection lasts longer than ``LIMIT`` seconds, so even in a server
nobody closes, a connection ends.

Also here: ``refused_url()`` (nothing listens), ``Blackhole`` (connects, never answers),
``live_threads()`` and ``no_leaks()`` (what a test leaves running).
"""

from __future__ import annotations

import atexit
import contextlib
import http
import math
import selectors
import socket
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import NamedTuple

__all__ = [
    "ACTIONS",
    "LIMIT",
    "Blackhole",
    "FaultServer",
    "Reply",
    "Seen",
    "live_threads",
    "no_leaks",
    "refused_url",
]

#: The longest any single wait of the server lasts (a hang, an idle keep-alive connection,
#: one delay, a send to a client that does not read): a server left open still ends.
LIMIT = 60.0
#: The most a request head may take, and what a connection may buffer: a runaway client
#: ends its connection instead of filling the memory.
MAX_HEAD = 64 * 1024
MAX_BUFFER = 64 * 1024 * 1024
ACTIONS = ("answer", "reset", "close", "hang", "drip")

# poll(2) takes no descriptor of its own (epoll would cost one per connection).
_Selector: type[selectors.BaseSelector] = getattr(
    selectors, "PollSelector", selectors.SelectSelector
)
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
# Every thread a server here started, so live_threads() can leave them out.
_server_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


class Reply(NamedTuple):
    """What the server does with one request.

    ``delay`` seconds pass before the status line (for ``drip``: before each body byte
    instead). Actions:

    - ``answer``: status, headers, body. ``Content-Length`` is added unless the headers
      set it or ``Transfer-Encoding``; ``Transfer-Encoding: chunked`` has the server frame
      the body in chunks. ``Connection: keep-alive`` is added unless the headers set
      ``Connection`` (``close`` ends the connection after this reply).
    - ``reset``: the status line and part of the headers, then a TCP RST (``SO_LINGER`` 0):
      a connection reset mid-response (httpx: ``ReadError`` or ``RemoteProtocolError``).
    - ``close``: close the connection, sending nothing (httpx: ``RemoteProtocolError``).
    - ``hang``: never answer, until ``release()``, ``close()``, the client leaving or
      ``LIMIT``; then the connection closes.
    - ``drip``: the head at once, then the body one byte per ``delay`` seconds.
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b"ok"
    delay: float = 0.0
    action: str = "answer"


class Seen(NamedTuple):
    """What the server received: one request, its body read whole (chunked or not)."""

    method: str
    path: str  #: the target without its query: what ``script(path=...)`` matches
    headers: dict[str, str]  #: lower-cased names; repeated headers joined by ", "
    body: bytes
    connection: int  #: which TCP connection: 1 for the first the server accepted, ...
    target: str = ""  #: the request target as sent, query included


def _check(reply: Reply) -> Reply:
    """A Reply the server can carry out, or a clear error now rather than a dead thread."""
    if not isinstance(reply, Reply):
        raise TypeError(f"script() takes Reply objects, got {reply!r}")
    if reply.action not in ACTIONS:
        raise ValueError(f"Reply action={reply.action!r}: expected one of {ACTIONS}")
    if not isinstance(reply.status, int) or not 200 <= reply.status <= 999:
        raise ValueError(f"Reply status={reply.status!r}: expected an int in 200..999")
    if not isinstance(reply.body, bytes):
        raise ValueError(f"Reply body={reply.body!r}: expected bytes")
    delay = reply.delay
    if not isinstance(delay, (int, float)) or not (math.isfinite(delay) and delay >= 0):
        raise ValueError(f"Reply delay={delay!r}: expected a finite number of seconds >= 0")
    for pair in reply.headers:
        ok = isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(s, str) for s in pair)
        if not ok or any(c in s for s in pair for c in "\r\n"):
            raise ValueError(
                f"Reply headers item {pair!r}: expected a (name, value) pair of str "
                "without CR or LF"
            )
    return reply


class _Gone(Exception):
    """The connection ends: the client left, the server stops, or a hang was released."""


class _BadRequest(Exception):
    """The client sent something that is not HTTP/1.x: answered 400, then closed."""


class _Request(NamedTuple):
    method: str
    target: str
    version: str
    headers: dict[str, str]


class _Listener:
    """A listening socket on 127.0.0.1 and the thread that accepts on it; stoppable."""

    #: close() waits this long, in all, for the threads to end.
    join_timeout = 5.0

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = False
        self._closed = False
        self._accepted = 0
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        # Readable for good once close() writes to it: every selector watches it.
        self._stop_r, self._stop_w = socket.socketpair()
        self._stop_r.setblocking(False)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.bind(("127.0.0.1", 0))
            self._listener.listen(128)
            self._listener.setblocking(False)
        except BaseException:
            self._listener.close()
            self._stop_r.close()
            self._stop_w.close()
            raise
        self.host: str = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self.url: str = f"http://{self.host}:{self.port}"
        self._start(self._accept_loop, f"{type(self).__name__}-{self.port}-accept")

    def __enter__(self) -> _Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.url} {state}, {self._accepted} accepted>"

    @property
    def accepted(self) -> int:
        """Connections accepted in all."""
        return self._accepted

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until ``predicate()`` holds (checked at every change the server makes),
        or raise TimeoutError after ``timeout`` seconds: for what happens on the server's
        threads, such as a connection closing after the client closed it."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise TimeoutError(f"{self!r}: not true after {timeout} s: {predicate}")

    def _start(self, target: Callable[[], object], name: str) -> None:
        thread = threading.Thread(target=self._guarded, args=(target,), name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        _server_threads.add(thread)
        thread.start()

    def _guarded(self, target: Callable[[], object]) -> None:
        try:
            target()
        except Exception as exc:  # a bug here: close() raises it, rather than hiding it
            with self._changed:
                self._errors.append(exc)
                self._changed.notify_all()

    def _accept_loop(self) -> None:
        with _Selector() as selector:
            selector.register(self._listener, _READ)
            selector.register(self._stop_r, _READ)
            while True:  # until close(): the stop pipe wakes the selector
                ready = selector.select()
                if any(key.fileobj is self._stop_r for key, _ in ready):
                    return
                try:
                    sock, _ = self._listener.accept()
                except (BlockingIOError, ConnectionAbortedError):
                    continue  # the client left between select and accept
                with self._changed:
                    if self._stopping:
                        sock.close()
                        return
                    self._accepted += 1
                    number = self._accepted
                    self._changed.notify_all()
                self._handle(sock, number)

    def _handle(self, sock: socket.socket, number: int) -> None:
        raise NotImplementedError

    def _shut(self) -> None:
        """Close what the threads left behind, once they have ended."""

    def close(self) -> None:
        """Stop: end every connection and thread, join them (bounded), close the sockets.

        Raises RuntimeError if a thread is still alive after ``join_timeout`` seconds (then
        the sockets stay open, and close() may be called again), or if a server thread
        failed (a bug in the server, not a fault it was told to make). Closing a closed
        server does nothing.
        """
        with self._changed:
            if self._closed:
                return
            if not self._stopping:
                self._stopping = True
                self._stop_w.send(b"x")
            self._changed.notify_all()
        deadline = time.monotonic() + self.join_timeout
        with self._lock:
            threads = list(self._threads)
        # The accept thread first: once it has ended, no new thread starts.
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            raise RuntimeError(
                f"{type(self).__name__} threads still alive {self.join_timeout} s after "
                f"close(): {alive}"
            )
        with self._lock:
            self._closed = True
        self._listener.close()
        self._stop_r.close()
        self._stop_w.close()
        self._shut()
        if self._errors:
            raise RuntimeError(f"{type(self).__name__} thread failed") from self._errors[0]


class FaultServer(_Listener):
    """An HTTP/1.1 server on 127.0.0.1 that answers as scripted.

    ``with FaultServer() as server:`` then ``server.url`` is ``http://127.0.0.1:PORT``.
    It starts at once and serves until ``close()`` (the with-statement calls it).
    """

    def __init__(self) -> None:
        self._scripts: dict[str | None, deque[Reply]] = {}
        self._seen: list[Seen] = []
        self._open: set[_Connection] = set()
        self._hanging: set[_Connection] = set()
        super().__init__()

    def __enter__(self) -> FaultServer:
        return self

    def script(self, *replies: Reply, path: str | None = None) -> None:
        """Queue replies: each request to ``path`` (the target without its query), or to
        any path when None, takes the next one. A request takes from its path's queue
        first, then from the any-path queue; with both empty it gets ``Reply()``."""
        checked = [_check(reply) for reply in replies]
        with self._lock:
            self._scripts.setdefault(path, deque()).extend(checked)

    def seen(self, path: str | None = None) -> list[Seen]:
        """The requests received so far (to ``path``, or all), oldest first."""
        with self._lock:
            return [s for s in self._seen if path is None or s.path == path]

    def count(self, path: str | None = None) -> int:
        """How many requests were received (to ``path``, or all)."""
        return len(self.seen(path))

    def wait_seen(self, n: int, path: str | None = None, timeout: float = 5.0) -> list[Seen]:
        """Block until ``n`` requests (to ``path``) have been received; return them.

        A request counts as received before its reply starts: once a hanging request is
        seen, ``release()`` frees it."""
        self.wait_for(lambda: self.count(path) >= n, timeout)
        return self.seen(path)

    def release(self) -> None:
        """End every request hanging now: their connections close (the client sees the
        server disconnect). Requests that hang later hang until the next release()."""
        with self._changed:
            for connection in self._hanging:
                connection.kick()
            self._hanging.clear()

    def connections(self) -> int:
        """Connections open on the server side now (closed once the server notices)."""
        with self._lock:
            return len(self._open)

    def wait_connections(self, n: int, timeout: float = 5.0) -> None:
        """Block until exactly ``n`` connections are open on the server side."""
        self.wait_for(lambda: self.connections() == n, timeout)

    def _handle(self, sock: socket.socket, number: int) -> None:
        connection = _Connection(self, sock, number)
        with self._changed:
            self._open.add(connection)
            self._changed.notify_all()
        self._start(connection.run, f"FaultServer-{self.port}-conn-{number}")

    def _take(self, request: _Request, body: bytes, connection: _Connection) -> Reply:
        """The reply for a request, with the request recorded; a hang is listed in the
        same step, so a test that has seen the request can release it."""
        path = request.target.split("?", 1)[0]
        seen = Seen(request.method, path, request.headers, body, connection.number, request.target)
        with self._changed:
            for key in (path, None):
                queue = self._scripts.get(key)
                if queue:
                    reply = queue.popleft()
                    break
            else:
                reply = Reply()
            if reply.action == "hang":
                connection.arm()
                self._hanging.add(connection)
            self._seen.append(seen)
            self._changed.notify_all()
        return reply

    def _ended(self, connection: _Connection) -> None:
        with self._changed:
            self._open.discard(connection)
            self._hanging.discard(connection)
            self._changed.notify_all()


class _Connection:
    """One accepted connection and the requests on it, served in turn by one thread."""

    def __init__(self, server: FaultServer, sock: socket.socket, number: int) -> None:
        self.server = server
        self.sock = sock
        self.number = number
        self.buffer = bytearray()
        self.reset = False
        self._kick: tuple[socket.socket, socket.socket] | None = None
        self._selector = _Selector()

    def run(self) -> None:
        try:
            self.sock.setblocking(False)
            # Drip bytes leave one by one, not coalesced while an ACK is awaited.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._selector.register(self.sock, _READ)
            self._selector.register(self.server._stop_r, _READ)
            while self._serve_one():  # one request each: ends when the connection does
                pass
        except (_Gone, OSError):
            pass  # the client left, the server stops, a hang was released
        except _BadRequest:
            with contextlib.suppress(_Gone, OSError):
                self._send(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
        finally:
            self._selector.close()
            if self.reset:
                with contextlib.suppress(OSError):
                    self.sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
            self.sock.close()
            self.server._ended(self)  # out of the hanging set: nobody kicks it any more
            if self._kick is not None:
                for end in self._kick:
                    end.close()

    def arm(self) -> None:
        """Make the pipe that release() kicks to end this connection's hang."""
        kick = socket.socketpair()
        self._kick = kick
        kick[0].setblocking(False)
        self._selector.register(kick[0], _READ)

    def kick(self) -> None:
        """End this connection's hang (called by release(), under the server's lock)."""
        if self._kick is not None:
            with contextlib.suppress(OSError):
                self._kick[1].send(b"x")

    # Waiting: every wait also watches the stop pipe and (while hanging) the kick pipe,
    # and reads what the client sends meanwhile, so its leaving is noticed.

    def _wait(self, until: float, write: bool = False) -> str:
        """Wait until ``until`` ("time"), data arrived ("read") or, with ``write``, the
        socket takes more ("write"). Raises _Gone on stop, kick, or the client's EOF."""
        self._selector.modify(self.sock, _READ | (_WRITE if write else 0))
        remaining = until - time.monotonic()
        if remaining <= 0:
            return "time"
        ready = self._selector.select(remaining)
        if any(key.fileobj is not self.sock for key, _ in ready):
            raise _Gone("stopped or released")
        for _, mask in ready:
            if mask & _WRITE:
                return "write"
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return "read"  # a spurious wake-up: the caller looks again
            if not data:
                raise _Gone("the client closed the connection")
            self.buffer += data
            if len(self.buffer) > MAX_BUFFER:
                raise _Gone("the client sent too much")
            return "read"
        return "time" if time.monotonic() >= until else "read"

    def _fill(self) -> None:
        """Wait for more data from the client (at most LIMIT seconds)."""
        if self._wait(time.monotonic() + LIMIT) == "time":
            raise _Gone("idle too long")

    def _pause(self, seconds: float) -> None:
        until = time.monotonic() + min(seconds, LIMIT)
        while self._wait(until) != "time":  # each turn reads data: bounded by `until`
            pass

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        until = time.monotonic() + LIMIT
        while view:  # each turn sends bytes or waits, bounded by `until`
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                if self._wait(until, write=True) == "time":
                    raise _Gone("the client reads nothing") from None

    # Reading a request.

    def _read_line(self, limit: int) -> bytes:
        while True:  # each turn reads data, bounded by the limit
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if len(self.buffer) > limit:
                raise _BadRequest("line too long")
            self._fill()

    def _read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def _read_head(self) -> _Request:
        while True:  # a blank line before a request is allowed (RFC 9112, 2.2)
            while self.buffer.startswith(b"\r\n"):
                del self.buffer[:2]
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buffer) > MAX_HEAD:
                raise _BadRequest("head too long")
            self._fill()
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        request_line, *lines = head.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(f"bad request line {request_line!r}")
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise _BadRequest(f"bad header line {line!r}")
            name, value = name.lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return _Request(parts[0], parts[1], parts[2], headers)

    def _read_body(self, request: _Request) -> bytes:
        headers = request.headers
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._read_chunked()
        length = headers.get("content-length")
        if length is None:
            return b""
        if not length.isdigit():
            raise _BadRequest(f"bad Content-Length {length!r}")
        return self._read_exact(int(length))

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:  # each turn reads a chunk: bounded by what the client sends
            size_field = self._read_line(MAX_HEAD).split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                raise _BadRequest(f"bad chunk size {size_field!r}") from None
            if size == 0:
                while self._read_line(MAX_HEAD):  # trailer fields, up to a blank line
                    pass
                return bytes(body)
            body += self._read_exact(size)
            if self._read_exact(2) != b"\r\n":
                raise _BadRequest("chunk not followed by CRLF")
            if len(body) > MAX_BUFFER:
                raise _Gone("the client sent too much")

    # Replying.

    def _serve_one(self) -> bool:
        """Read one request and carry out its reply; True to keep the connection open."""
        request = self._read_head()
        if request.headers.get("expect", "").lower() == "100-continue":
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self._read_body(request)
        reply = self.server._take(request, body, self)
        if reply.action == "hang":
            self._pause(LIMIT)  # ends early (raising _Gone) on release, close, or the client
            return False
        if reply.delay and reply.action != "drip":
            self._pause(reply.delay)
        if reply.action == "close":
            return False
        head, keep_alive = self._head(request, reply)
        if reply.action == "reset":
            # The status line and half of the rest: a head cut off mid-way.
            status_end = head.index(b"\r\n") + 2
            self._send(head[: status_end + (len(head) - status_end) // 2])
            self.reset = True
            return False
        self._send(head)
        if self._bodyless(request, reply):
            return keep_alive
        chunked = self._chunked(reply)
        if reply.action == "drip":
            for i in range(len(reply.body)):
                self._pause(reply.delay)
                byte = reply.body[i : i + 1]
                self._send(b"1\r\n" + byte + b"\r\n" if chunked else byte)
            if chunked:
                self._send(b"0\r\n\r\n")
        elif chunked:
            chunk = b"%x\r\n%s\r\n" % (len(reply.body), reply.body) if reply.body else b""
            self._send(chunk + b"0\r\n\r\n")
        else:
            self._send(reply.body)
        return keep_alive

    @staticmethod
    def _bodyless(request: _Request, reply: Reply) -> bool:
        return request.method == "HEAD" or reply.status in (204, 304)

    @staticmethod
    def _chunked(reply: Reply) -> bool:
        return any(
            name.lower() == "transfer-encoding" and "chunked" in value.lower()
            for name, value in reply.headers
        )

    def _head(self, request: _Request, reply: Reply) -> tuple[bytes, bool]:
        """The status line and headers, and whether the connection stays open after."""
        names = {name.lower(): value.lower() for name, value in reply.headers}
        asked = request.headers.get("connection", "").lower()
        if request.version == "HTTP/1.0":
            keep_alive = "keep-alive" in asked
        else:
            keep_alive = "close" not in asked
        if "close" in names.get("connection", ""):
            keep_alive = False
        framed = "content-length" in names or self._chunked(reply)
        if "transfer-encoding" in names and not self._chunked(reply):
            keep_alive = False  # a framing the server does not know: the close ends it
        try:
            reason = http.HTTPStatus(reply.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {reply.status} {reason}"]
        lines += [f"{name}: {value}" for name, value in reply.headers]
        if not framed and "transfer-encoding" not in names and reply.status not in (204, 304):
            lines.append(f"Content-Length: {len(reply.body)}")
        if "connection" not in names:
            lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), keep_alive


class Blackhole(_Listener):
    """Accepts TCP connections and never reads from them or answers: a connect that
    succeeds, then silence (a read timeout). ``with Blackhole() as hole: hole.url``."""

    def __init__(self) -> None:
        self._held: list[socket.socket] = []
        super().__init__()

    def __enter__(self) -> Blackhole:
        return self

    def _handle(self, sock: socket.socket, number: int) -> None:
        self._held.append(sock)  # only the accept thread touches it until close()

    def _shut(self) -> None:
        for sock in self._held:
            sock.close()
        self._held.clear()


_refusing: socket.socket | None = None
_refusing_lock = threading.Lock()


def refused_url() -> str:
    """``http://127.0.0.1:PORT`` where a connect is refused.

    Binding a port and closing it leaves a race: another program may bind it before the
    test connects. So the port stays bound, never listening, for the rest of the process:
    the kernel refuses connections to it (RST) and nobody else can take it. The same URL
    every time; the socket closes at exit.
    """
    global _refusing
    with _refusing_lock:
        if _refusing is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            _refusing = sock
            atexit.register(sock.close)
        return f"http://127.0.0.1:{_refusing.getsockname()[1]}"


def live_threads() -> set[threading.Thread]:
    """The threads alive in this process (daemon or not), but for the servers' own."""
    return {t for t in threading.enumerate() if t not in _server_threads}


@contextlib.contextmanager
def no_leaks(timeout: float = 5.0) -> Iterator[None]:
    """Assert that the block leaves no thread behind (the servers' own aside).

    Threads started in the block may finish after it: each is joined, all within
    ``timeout`` seconds, before those still alive are named in an AssertionError.
    """
    before = live_threads()
    yield
    deadline = time.monotonic() + timeout
    for thread in live_threads() - before:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = sorted(t.name for t in live_threads() - before if t.is_alive())
    assert not left, f"threads left running: {left}"
