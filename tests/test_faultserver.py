"""The fault server does what its Reply says, as httpx, urllib and a bare socket see it.

Waits for something to happen are generous (5 to 10 s, never reached when all is well);
only a timeout that is the point of a test is short (0.2 s), and no assertion is timed.
"""

from __future__ import annotations

import socket
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

from tests.faultserver import (
    Blackhole,
    FaultServer,
    Reply,
    Seen,
    live_threads,
    no_leaks,
    refused_url,
)

WAIT = 10.0  # for what must happen: only a failing test waits this long
SHORT = httpx.Timeout(WAIT, read=0.2)  # a read timeout that is the point of the test


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with no_leaks(), FaultServer() as server:
        yield server
    assert not any(t.is_alive() for t in server._threads)


def client(server: FaultServer | Blackhole, timeout: httpx.Timeout | float = WAIT) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=timeout, trust_env=False)


def urlopen(url: str, data: bytes | None = None) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(url, data=data, timeout=WAIT)


class InThread:
    """Runs a call on a thread; ``result()`` joins it (bounded) and returns or raises."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.outcome: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.outcome = call()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self) -> Any:
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.outcome


def raw_exchange(server: FaultServer, data: bytes) -> bytes:
    """Send bytes on a fresh connection; everything received until the server closes."""
    with socket.create_connection((server.host, server.port), timeout=WAIT) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):  # ends at the server's close: bounded by WAIT
            received += chunk
        return received


# Answer


@pytest.mark.parametrize(
    "retry_after",
    [
        ("Retry-After", "2"),
        ("Retry-After", "0.5"),
        ("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ("retry-after-ms", "1500"),
    ],
)
def test_answer_sends_the_status_headers_and_body(
    server: FaultServer, retry_after: tuple[str, str]
) -> None:
    server.script(Reply(503, headers=(retry_after, ("X-Test", "1")), body=b"busy"))
    with client(server) as http:
        response = http.get("/a")
    assert response.status_code == 503
    assert response.headers[retry_after[0]] == retry_after[1]
    assert response.headers["x-test"] == "1"
    assert response.headers["content-length"] == "4"
    assert response.headers["connection"] == "keep-alive"
    assert response.content == b"busy"


def test_an_empty_script_answers_200_ok(server: FaultServer) -> None:
    with client(server) as http:
        response = http.get("/")
    assert (response.status_code, response.content) == (200, b"ok")


def test_urllib_gets_answers_and_errors(server: FaultServer) -> None:
    server.script(Reply(body=b"hello"), Reply(429, headers=(("Retry-After", "3"),)))
    with urlopen(server.url + "/u?q=1") as response:
        assert (response.status, response.read()) == (200, b"hello")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urlopen(server.url + "/u", data=b"payload")
    assert caught.value.code == 429
    assert caught.value.headers["Retry-After"] == "3"
    caught.value.close()
    first, second = server.seen()
    assert (first.method, first.path, first.target, first.body) == ("GET", "/u", "/u?q=1", b"")
    assert (second.method, second.body) == ("POST", b"payload")
    # urllib asks for Connection: close, so each request had a connection of its own.
    assert first.connection != second.connection


def test_scripts_by_path_come_before_the_any_path_queue(server: FaultServer) -> None:
    server.script(Reply(201), Reply(202), path="/a")
    server.script(Reply(500))
    with client(server) as http:
        codes = [http.get(path).status_code for path in ("/b", "/a", "/a?x=1", "/a", "/b")]
    assert codes == [500, 201, 202, 200, 200]
    assert server.count() == 5
    assert server.count("/a") == 3
    assert [s.target for s in server.seen("/a")] == ["/a", "/a?x=1", "/a"]


def test_seen_records_method_headers_and_connection(server: FaultServer) -> None:
    with client(server) as http:
        http.put("/p", content=b"data", headers={"X-Key": "v"})
    (seen,) = server.seen()
    assert isinstance(seen, Seen)
    assert (seen.method, seen.path, seen.body, seen.connection) == ("PUT", "/p", b"data", 1)
    assert seen.headers["x-key"] == "v"
    assert seen.headers["content-length"] == "4"


def test_script_rejects_a_bad_reply_naming_it(server: FaultServer) -> None:
    with pytest.raises(ValueError, match=r"action='explode'.*'answer'"):
        server.script(Reply(action="explode"))
    with pytest.raises(ValueError, match=r"delay=-1"):
        server.script(Reply(delay=-1))
    with pytest.raises(ValueError, match=r"status=99"):
        server.script(Reply(99))
    with pytest.raises(ValueError, match=r"headers item"):
        server.script(Reply(headers=(("X", "a\r\nInjected: 1"),)))
    with pytest.raises(TypeError, match="Reply objects"):
        server.script((200,))  # type: ignore[arg-type]
    assert server._scripts == {}  # nothing queued by a failed call


def test_a_chunked_reply_is_framed_by_the_server(server: FaultServer) -> None:
    server.script(Reply(headers=(("Transfer-Encoding", "chunked"),), body=b"x" * 1000))
    with client(server) as http:
        response = http.get("/")
        assert response.content == b"x" * 1000
        assert "content-length" not in response.headers
        http.get("/")  # the connection is still in step
    assert {s.connection for s in server.seen()} == {1}


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_statuses_send_no_body_and_keep_the_connection(
    server: FaultServer, status: int
) -> None:
    server.script(Reply(status, body=b"ignored"))
    with client(server) as http:
        response = http.get("/")
        assert (response.status_code, response.content) == (status, b"")
        assert "content-length" not in response.headers
        assert http.get("/").content == b"ok"
    assert {s.connection for s in server.seen()} == {1}


def test_head_gets_the_length_but_no_body(server: FaultServer) -> None:
    server.script(Reply(body=b"12345"))
    with client(server) as http:
        response = http.head("/")
        assert response.headers["content-length"] == "5"
        assert response.content == b""
        assert http.get("/").content == b"ok"


# Keep-alive and request bodies


def test_keep_alive_reuses_one_connection(server: FaultServer) -> None:
    with client(server) as http:
        http.get("/1")
        http.get("/2")
        assert server.connections() == 1
    assert [s.connection for s in server.seen()] == [1, 1]
    assert server.accepted == 1
    server.wait_connections(0)  # the client closed it, and the server noticed


def test_a_connection_close_reply_ends_the_connection(server: FaultServer) -> None:
    server.script(Reply(headers=(("Connection", "close"),)))
    with client(server) as http:
        assert http.get("/").headers["connection"] == "close"
        http.get("/")
    assert [s.connection for s in server.seen()] == [1, 2]


def test_a_chunked_request_body_arrives_whole(server: FaultServer) -> None:
    def parts() -> Iterator[bytes]:
        yield b"first,"
        yield b""
        yield b"second," * 1000
        yield b"end"

    with client(server) as http:
        http.post("/up", content=parts())
        http.post("/up", content=b"after")  # still in step on the same connection
    chunked, after = server.seen()
    assert chunked.headers["transfer-encoding"] == "chunked"
    assert chunked.body == b"first," + b"second," * 1000 + b"end"
    assert after.body == b"after"
    assert chunked.connection == after.connection


def test_a_large_content_length_body_arrives_whole(server: FaultServer) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: many reads on the server's side
    with client(server) as http:
        http.post("/big", content=body)
    assert server.seen()[0].body == body


def test_pipelined_requests_are_answered_in_order(server: FaultServer) -> None:
    server.script(Reply(body=b"one"), Reply(body=b"two"))
    received = raw_exchange(
        server,
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert received.index(b"\r\n\r\none") < received.index(b"\r\n\r\ntwo")
    assert received.endswith(b"Connection: close\r\n\r\nok")
    assert [(s.path, s.body) for s in server.seen()] == [("/1", b""), ("/2", b"abc"), ("/3", b"")]


def test_an_expect_100_continue_request_gets_its_interim_answer(server: FaultServer) -> None:
    received = raw_exchange(
        server,
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\nhi",
    )
    assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert server.seen()[0].body == b"hi"


def test_garbage_gets_400_and_a_close(server: FaultServer) -> None:
    received = raw_exchange(server, b"NOT HTTP AT ALL\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert server.count() == 0


@pytest.mark.parametrize(
    "partial",
    [
        b"GET / HTTP/1.1\r\nHost: x",  # mid-head
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",  # mid-body
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",  # mid-chunk
    ],
)
@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_client_leaving_mid_request_harms_nothing(
    server: FaultServer, partial: bytes, how: str
) -> None:
    with socket.create_connection((server.host, server.port), timeout=WAIT) as sock:
        sock.sendall(partial)
        server.wait_for(lambda: server.accepted == 1)
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.wait_connections(0)
    assert server.count() == 0
    with client(server) as http:
        assert http.get("/").content == b"ok"
    assert not server._errors


# Faults


def test_reset_cuts_the_head_then_resets_httpx(server: FaultServer) -> None:
    server.script(Reply(action="reset"))
    with client(server) as http:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            http.get("/")
        assert http.get("/").content == b"ok"  # on a new connection
    assert [s.connection for s in server.seen()] == [1, 2]


def test_reset_is_a_tcp_reset_after_part_of_the_head(server: FaultServer) -> None:
    server.script(Reply(503, headers=(("Retry-After", "1"),), action="reset"))
    received = b""
    with socket.create_connection((server.host, server.port), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        error = None
        try:
            while chunk := sock.recv(65536):  # bounded: the reset ends it
                received += chunk
        except ConnectionResetError as exc:
            error = exc
    assert error is not None  # a reset, not an orderly close
    # What arrived, if the reset did not overtake it: a head cut off before its end.
    head = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
    assert head.startswith(received) or received.startswith(head)
    assert b"\r\n\r\n" not in received


def test_close_disconnects_without_a_response(server: FaultServer) -> None:
    server.script(Reply(action="close"), Reply(action="close"))
    with client(server) as http, pytest.raises(httpx.RemoteProtocolError):
        http.get("/")
    assert raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    assert server.count() == 2


def test_hang_ends_on_the_clients_read_timeout(server: FaultServer) -> None:
    server.script(Reply(action="hang"))
    with client(server, SHORT) as http, pytest.raises(httpx.ReadTimeout):
        http.get("/")
    server.wait_connections(0)  # the client left, so the hang ended
    assert server.count() == 1


def test_release_frees_every_hanging_request(server: FaultServer) -> None:
    server.script(*[Reply(action="hang")] * 3)
    calls = [InThread(lambda: httpx.get(server.url, timeout=WAIT, trust_env=False))]
    calls += [InThread(lambda: urlopen(server.url)) for _ in range(2)]
    server.wait_seen(3)
    assert server.connections() == 3
    server.release()
    with pytest.raises(httpx.RemoteProtocolError):
        calls[0].result()
    for call in calls[1:]:
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            call.result()
    server.wait_connections(0)
    with client(server) as http:
        assert http.get("/").content == b"ok"  # the next request is answered


def test_a_hang_after_release_hangs_again(server: FaultServer) -> None:
    server.release()  # nothing hangs: nothing happens
    server.script(Reply(action="hang"))
    with client(server, SHORT) as http, pytest.raises(httpx.ReadTimeout):
        http.get("/")


def test_close_ends_a_hanging_request() -> None:
    with FaultServer() as other:
        other.script(Reply(action="hang"))
        call = InThread(lambda: httpx.get(other.url, timeout=WAIT, trust_env=False))
        other.wait_seen(1)
    with pytest.raises(httpx.RemoteProtocolError):
        call.result()
    assert not any(t.is_alive() for t in other._threads)


def test_delay_holds_the_status_line(server: FaultServer) -> None:
    server.script(Reply(delay=WAIT * 3, action="answer"), Reply(delay=0.01, body=b"late"))
    with client(server, SHORT) as http, pytest.raises(httpx.ReadTimeout):
        http.get("/")
    with client(server) as http:
        assert http.get("/").content == b"late"


def test_drip_sends_the_head_then_the_body_slowly(server: FaultServer) -> None:
    server.script(Reply(body=b"abc", delay=WAIT * 3, action="drip"))
    with client(server, SHORT) as http, http.stream("GET", "/") as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == "3"
        with pytest.raises(httpx.ReadTimeout):
            response.read()


@pytest.mark.parametrize("chunked", [False, True])
def test_drip_delivers_the_whole_body(server: FaultServer, chunked: bool) -> None:
    headers = (("Transfer-Encoding", "chunked"),) if chunked else ()
    server.script(Reply(headers=headers, body=b"abcdef", delay=0.01, action="drip"))
    with client(server) as http:
        with http.stream("GET", "/") as response:
            parts = list(response.iter_raw())
        assert b"".join(parts) == b"abcdef"
        assert http.get("/").content == b"ok"  # and the connection is in step


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_clients_reuse_connections_and_time_out(server: FaultServer, backend: str) -> None:
    server.script(Reply(body=b"a"), Reply(body=b"b"), Reply(action="hang"))

    async def main() -> list[bytes]:
        async with httpx.AsyncClient(base_url=server.url, timeout=SHORT, trust_env=False) as http:
            bodies = [(await http.get("/")).content, (await http.get("/")).content]
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/")
            return bodies

    assert anyio.run(main, backend=backend) == [b"a", b"b"]
    assert [s.connection for s in server.seen()] == [1, 1, 1]


# Refused and blackholed


def test_refused_url_refuses() -> None:
    url = refused_url()
    assert url == refused_url()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=WAIT, trust_env=False)
    with pytest.raises(urllib.error.URLError) as caught:
        urlopen(url)
    assert isinstance(caught.value.reason, ConnectionRefusedError)


def test_blackhole_connects_then_never_answers() -> None:
    with no_leaks(), Blackhole() as hole:
        with client(hole, SHORT) as http, pytest.raises(httpx.ReadTimeout):
            http.get("/")
        hole.wait_for(lambda: hole.accepted == 1)
    assert not any(t.is_alive() for t in hole._threads)
    assert hole._held == []


# Threads and closing


def test_close_leaves_no_thread() -> None:
    with no_leaks():
        other = FaultServer()
        other.script(Reply(action="hang"), Reply(action="drip", delay=WAIT * 3))
        sockets = [socket.create_connection((other.host, other.port), WAIT) for _ in range(3)]
        sockets[0].sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        other.wait_seen(1)
        sockets[1].sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        other.wait_seen(2)
        other.wait_connections(3)  # the third is idle
        threads = list(other._threads)
        assert len(threads) == 4
        assert live_threads().isdisjoint(threads)  # the server's own are left out
        other.close()
        assert not any(t.is_alive() for t in threads)
        drip_head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
        received = []
        for sock in sockets:
            data = b""
            while chunk := sock.recv(65536):  # the server closed them all: bounded
                data += chunk
            received.append(data)
            sock.close()
        assert received == [b"", drip_head, b""]  # the hang, the drip's head, the idle one
        other.close()  # again: nothing to do


def test_close_raises_when_a_thread_does_not_end() -> None:
    gate = threading.Event()

    class Stuck(FaultServer):
        join_timeout = 0.2  # the point of the test: a thread that will not end

        def _handle(self, sock: socket.socket, number: int) -> None:
            sock.close()
            self._start(lambda: gate.wait(WAIT), "FaultServer-stuck")

    stuck = Stuck()
    try:
        socket.create_connection((stuck.host, stuck.port), WAIT).close()
        stuck.wait_for(lambda: stuck.accepted == 1)
        with pytest.raises(RuntimeError, match=r"still alive.*FaultServer-stuck"):
            stuck.close()
    finally:
        gate.set()
        stuck.close()  # now it ends, and the sockets close


def test_close_raises_what_failed_in_a_server_thread() -> None:
    class Broken(FaultServer):
        def _handle(self, sock: socket.socket, number: int) -> None:
            sock.close()
            raise ZeroDivisionError("a bug in the server")

    broken = Broken()
    socket.create_connection((broken.host, broken.port), WAIT).close()
    broken.wait_for(lambda: bool(broken._errors))
    with pytest.raises(RuntimeError, match="thread failed") as caught:
        broken.close()
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_no_leaks_names_a_thread_left_running() -> None:
    gate = threading.Event()
    try:
        with pytest.raises(AssertionError, match="leaky"), no_leaks(timeout=0.1):
            threading.Thread(target=gate.wait, args=(WAIT,), name="leaky", daemon=True).start()
    finally:
        gate.set()


def test_wait_for_raises_when_the_time_is_up(server: FaultServer) -> None:
    with pytest.raises(TimeoutError, match="not true after"):
        server.wait_for(lambda: False, timeout=0.05)
