"""wrap(): a client object behind a transparent proxy whose public methods run through policies.

The client is SDK-shaped (httpx's shape): ``async def get/create`` against a small
in-process backend that refuses requests on demand, a sync ``ping``, pagination both
ways (an async generator, and an ``async def`` that opens a page iterator), ``close``/
``aclose``, ``with``/``async with``, properties, a classmethod and a staticmethod, in a
plain and a ``__slots__`` variant. Every async scenario runs on asyncio and trio. The
last tests wrap a real ``httpx.AsyncClient`` talking to a loopback server.
"""

from __future__ import annotations

import inspect
import socket
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import resilient
from resilient import (
    CircuitBreaker,
    CircuitOpenError,
    ConfigError,
    Fallback,
    Pipeline,
    Retry,
    State,
    Timeout,
    wrap,
)
from resilient._wrap import GuardedProxy
from resilient.testing import ManualClock

BACKENDS = ["asyncio", "trio"]
#: How long one event loop, thread crowd or loopback exchange may take before failing.
JOIN = 60.0


# -- the SDK ---------------------------------------------------------------------------


class Backend:
    """The service the SDK talks to: records each request, refuses the next ``refuse``."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.refuse = 0
        #: Refuse the first of each distinct request (each call's first attempt).
        self.refuse_new = False
        self._lock = threading.Lock()  # the thread hammer counts exactly

    def handle(self, request: str, answer: Any = None) -> Any:
        with self._lock:
            new = self.refuse_new and request not in self.requests
            self.requests.append(request)
            if self.refuse or new:
                self.refuse -= not new
                raise ConnectionError(f"{request}: connection refused")
        return answer


class Page:
    """One page of items and the cursor of the next (None on the last)."""

    def __init__(self, items: list[int], next_cursor: int | None) -> None:
        self.items = items
        self.next_cursor = next_cursor


class Pages:
    """What ``open_pages`` returns: the first page fetched, the rest fetched as iterated."""

    def __init__(self, client: SDKMethods, first: Page) -> None:
        self._client = client
        self._page: Page | None = first

    def __aiter__(self) -> Pages:
        return self

    async def __anext__(self) -> list[int]:
        page = self._page
        if page is None:
            raise StopAsyncIteration
        self._page = (
            None
            if page.next_cursor is None
            else await self._client._fetch_page(page.next_cursor)  # the client's own call
        )
        return page.items


class SDKMethods:
    """The methods, shared by a plain and a slotted client."""

    __slots__ = ()
    _backend: Backend
    base_url: str
    closed: bool

    PAGES = 3

    @classmethod
    def from_backend(cls, backend: Backend) -> SDKMethods:
        return cls(backend)  # type: ignore[call-arg]

    @staticmethod
    def version() -> str:
        return "1.0"

    @property
    def is_closed(self) -> bool:
        return self.closed

    async def get(self, key: str) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        return self._backend.handle(f"GET /items/{key}", {"key": key})  # type: ignore[no-any-return]

    async def create(self, key: str) -> dict[str, Any]:
        await anyio.lowlevel.checkpoint()
        return self._backend.handle(f"POST /items/{key}", {"key": key, "created": True})  # type: ignore[no-any-return]

    def ping(self) -> str:
        return self._backend.handle("GET /ping", "pong")  # type: ignore[no-any-return]

    def fetch(self, key: str) -> str:
        return self._backend.handle(f"GET /items/{key}", key)  # type: ignore[no-any-return]

    def url(self, path: str) -> str:
        return self.base_url + path

    async def iter_items(self) -> AsyncIterator[int]:
        """Every item, page after page: an async generator."""
        cursor: int | None = 0
        while cursor is not None:
            page = await self._fetch_page(cursor)
            for item in page.items:
                yield item
            cursor = page.next_cursor

    async def open_pages(self) -> Pages:
        """Fetches the first page, and returns an iterator that fetches the others."""
        return Pages(self, await self._fetch_page(0))

    async def _fetch_page(self, cursor: int) -> Page:
        await anyio.lowlevel.checkpoint()
        following = cursor + 1 if cursor + 1 < self.PAGES else None
        return self._backend.handle(f"GET /items?page={cursor}", Page([cursor], following))  # type: ignore[no-any-return]

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()
        self.closed = True

    def __enter__(self) -> SDKMethods:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> SDKMethods:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"


class SDK(SDKMethods):
    """A plain client: its attributes live in its ``__dict__``."""

    def __init__(self, backend: Backend, base_url: str = "https://api.test") -> None:
        self._backend = backend
        self.base_url = base_url
        self.closed = False


class SlottedSDK(SDKMethods):
    """The same client with ``__slots__``: no ``__dict__``."""

    __slots__ = ("_backend", "base_url", "closed")

    def __init__(self, backend: Backend, base_url: str = "https://api.test") -> None:
        self._backend = backend
        self.base_url = base_url
        self.closed = False


@pytest.fixture(params=[SDK, SlottedSDK], ids=["dict", "slots"])
def client(request: pytest.FixtureRequest) -> SDKMethods:
    return request.param(Backend())  # type: ignore[no-any-return]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def run(backend: str, main: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        with anyio.fail_after(JOIN):
            return await main()

    return anyio.run(bounded, backend=backend)


def breaker(**options: Any) -> CircuitBreaker:
    """A breaker that opens on two failures in two calls, for 10 s of a manual clock."""
    settings: dict[str, Any] = {"min_calls": 2, "window_size": 2, "open_for": 10.0}
    settings.update(options)
    settings.setdefault("clock", ManualClock())
    return CircuitBreaker(**settings)


# -- guarded methods -------------------------------------------------------------------


def test_async_methods_are_guarded_and_stay_coroutine_functions(
    client: SDKMethods, backend: str
) -> None:
    proxy = wrap(client, Retry(3))
    assert inspect.iscoroutinefunction(proxy.get)
    assert inspect.iscoroutinefunction(proxy.create)
    client._backend.refuse = 2

    assert run(backend, lambda: proxy.get("a")) == {"key": "a"}
    assert client._backend.requests == ["GET /items/a"] * 3

    client._backend.refuse = 1  # the client itself is not guarded
    with pytest.raises(ConnectionError):
        run(backend, lambda: client.get("b"))


def test_sync_methods_are_guarded(client: SDKMethods) -> None:
    proxy = wrap(client, Retry(3))
    client._backend.refuse = 2
    assert proxy.ping() == "pong"
    assert client._backend.requests == ["GET /ping"] * 3
    assert not inspect.iscoroutinefunction(proxy.ping)


def test_a_breaker_opens_on_the_clients_failures_and_then_spares_it(
    client: SDKMethods, backend: str
) -> None:
    clock = ManualClock()
    guard = breaker(clock=clock)
    proxy = wrap(client, guard)
    client._backend.refuse = 2

    async def main() -> None:
        for key in "ab":
            with pytest.raises(ConnectionError):
                await proxy.get(key)
        assert guard.state is State.OPEN
        with pytest.raises(CircuitOpenError):
            await proxy.create("c")
        with pytest.raises(CircuitOpenError):
            proxy.ping()
        assert len(client._backend.requests) == 2  # rejected calls never reach it
        clock.advance(10.0)
        assert await proxy.get("d") == {"key": "d"}  # a probe

    run(backend, main)
    assert guard.metrics.rejected == 2


def test_a_pipeline_guards_each_method(client: SDKMethods, backend: str) -> None:
    guard = breaker(min_calls=4, window_size=4)
    proxy = wrap(client, Pipeline(Timeout(JOIN), Retry(3), guard))
    client._backend.refuse = 2
    assert run(backend, lambda: proxy.create("a")) == {"key": "a", "created": True}
    assert guard.metrics.calls == 3  # one per attempt: the breaker is inside the Retry
    assert guard.metrics.failures == 2


def test_the_guarded_method_is_the_policy_around_the_bound_method(client: SDKMethods) -> None:
    proxy = wrap(client, Retry(3))
    assert proxy.get is proxy.get  # decorated once, then cached
    assert proxy.get.__wrapped__ == client.get  # type: ignore[attr-defined]
    assert inspect.signature(proxy.get) == inspect.signature(client.get)
    assert proxy.get.__name__ == "get"


# -- which methods -----------------------------------------------------------------------


def test_a_mapping_gives_methods_their_own_policy_and_the_others_keep_policy(
    client: SDKMethods, backend: str
) -> None:
    """Retries for get, none for create (not idempotent); ping keeps the default."""
    guard = breaker(min_calls=10, window_size=10)
    proxy = wrap(client, guard, methods={"get": Pipeline(Retry(3), guard)})
    requests = client._backend.requests

    client._backend.refuse = 1
    assert run(backend, lambda: proxy.get("a")) == {"key": "a"}
    assert len(requests) == 2

    client._backend.refuse = 1
    with pytest.raises(ConnectionError):
        run(backend, lambda: proxy.create("b"))
    assert len(requests) == 3  # not retried

    client._backend.refuse = 1
    with pytest.raises(ConnectionError):
        proxy.ping()
    assert guard.metrics.calls == 4  # get's two attempts, create, ping: all counted
    assert guard.metrics.failures == 3


def test_names_guard_only_those_methods(client: SDKMethods, backend: str) -> None:
    proxy = wrap(client, Retry(3), methods=["get"])
    client._backend.refuse = 1
    assert run(backend, lambda: proxy.get("a")) == {"key": "a"}
    client._backend.refuse = 1
    with pytest.raises(ConnectionError):
        run(backend, lambda: proxy.create("b"))
    assert proxy.create == client.create  # the bound method, as it is


def test_exclude_leaves_methods_unguarded(client: SDKMethods, backend: str) -> None:
    proxy = wrap(client, Retry(3), exclude=["create"])
    client._backend.refuse = 1
    with pytest.raises(ConnectionError):
        run(backend, lambda: proxy.create("b"))
    client._backend.refuse = 1
    assert run(backend, lambda: proxy.get("a")) == {"key": "a"}
    assert proxy.create == client.create


def test_private_methods_and_dunders_are_never_guarded(client: SDKMethods, backend: str) -> None:
    proxy = wrap(client, Retry(3))
    assert proxy._fetch_page == client._fetch_page
    client._backend.refuse = 1
    with pytest.raises(ConnectionError):
        run(backend, lambda: proxy._fetch_page(0))
    assert proxy.__aenter__.__func__ is GuardedProxy.__aenter__  # type: ignore[attr-defined]
    assert proxy.__repr__() == repr(client)


def test_close_and_aclose_pass_through_unless_named(client: SDKMethods, backend: str) -> None:
    proxy = wrap(client, Retry(3))
    assert proxy.close == client.close
    assert proxy.aclose == client.aclose
    run(backend, proxy.aclose)
    assert client.closed

    timed = wrap(client, Retry(3), methods={"aclose": Timeout(JOIN)})
    assert timed.aclose != client.aclose
    assert timed.aclose.__wrapped__ == client.aclose  # type: ignore[attr-defined]


def test_classmethods_staticmethods_and_callable_attributes_pass_through_unless_named(
    client: SDKMethods,
) -> None:
    proxy = wrap(client, Retry(3))
    assert proxy.from_backend == client.from_backend
    assert proxy.version is client.version
    assert proxy.version() == "1.0"

    named = wrap(client, Retry(3), methods=["from_backend", "version"])
    assert named.version is not client.version
    assert named.version.__wrapped__ is client.version  # type: ignore[attr-defined]
    assert isinstance(named.from_backend(Backend()), type(client))

    if isinstance(client, SDK):  # a callable in the instance's __dict__: data, not a method
        hook = lambda request: None  # noqa: E731
        client.on_request = hook  # type: ignore[attr-defined]
        assert wrap(client, Retry(3)).on_request is hook
        assert wrap(client, Retry(3), methods=["on_request"]).on_request is not hook


def test_a_method_patched_after_wrapping_is_guarded_afresh(
    client: SDKMethods, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the proxy, on the client, or on its class: the next read sees the patch."""
    proxy = wrap(client, Retry(3))
    client._backend.refuse = 2
    assert proxy.ping() == "pong"
    calls: list[str] = []

    def flaky(where: str) -> Callable[[], str]:
        def ping() -> str:
            calls.append(where)
            if len(calls) % 2:
                raise ConnectionError(where)
            return where

        return ping

    monkeypatch.setattr(type(client), "ping", lambda self: flaky("class")())
    assert proxy.ping() == "class"
    if isinstance(client, SDK):
        proxy.ping = flaky("proxy")  # assignment reaches the client's __dict__
        assert "ping" in vars(client)
        assert proxy.ping() == "proxy"
        client.ping = flaky("client")  # type: ignore[method-assign]
        assert proxy.ping() == "client"
        del proxy.ping
        assert "ping" not in vars(client)
    assert calls == ["class", "class"] + (
        ["proxy", "proxy", "client", "client"] if isinstance(client, SDK) else []
    )
    monkeypatch.undo()
    client._backend.refuse = 1
    assert proxy.ping() == "pong"  # the class's own method again, guarded


def test_a_client_swapped_under_the_proxy_is_guarded() -> None:
    first, second = SDK(Backend()), SlottedSDK(Backend())
    proxy = wrap(first, Retry(3))
    assert proxy.ping() == "pong"
    proxy.__wrapped__ = second
    second._backend.refuse = 1
    assert proxy.ping() == "pong"
    assert (first._backend.requests, second._backend.requests) == (
        ["GET /ping"],
        ["GET /ping"] * 2,
    )
    assert isinstance(proxy, SlottedSDK)


# -- what passes through -----------------------------------------------------------------


def test_attributes_and_their_assignment_pass_through(client: SDKMethods) -> None:
    proxy = wrap(client, Retry(3))
    assert proxy.base_url == "https://api.test"
    proxy.base_url = "https://other.test"
    assert client.base_url == "https://other.test"
    assert proxy.url("/x") == "https://other.test/x"
    assert proxy._backend is client._backend
    with pytest.raises(AttributeError, match="no_such"):
        proxy.no_such  # type: ignore[attr-defined]  # noqa: B018
    if isinstance(client, SlottedSDK):
        with pytest.raises(AttributeError):
            proxy.extra = 1  # type: ignore[attr-defined]
    else:
        proxy.extra = 1  # type: ignore[attr-defined]
        assert client.extra == 1  # type: ignore[attr-defined]
        del proxy.extra  # type: ignore[attr-defined]
        assert not hasattr(client, "extra")


def test_properties_isinstance_repr_and_equality_pass_through(client: SDKMethods) -> None:
    proxy = wrap(client, Retry(3))
    assert proxy.is_closed is False
    client.close()
    assert proxy.is_closed is True
    assert isinstance(proxy, type(client))
    assert isinstance(proxy, SDKMethods)
    assert repr(proxy) == repr(client) == "<" + type(client).__name__ + " https://api.test>"
    assert proxy == client
    assert proxy.__class__ is type(client)
    assert proxy.__doc__ == client.__doc__


def test_with_gives_the_proxy_when_the_clients_enter_gives_the_client(client: SDKMethods) -> None:
    proxy = wrap(client, Retry(3))
    with proxy as entered:
        assert entered is proxy
        client._backend.refuse = 1
        assert entered.ping() == "pong"  # guarded
    assert client.closed


def test_async_with_gives_the_proxy_when_the_clients_aenter_gives_the_client(
    client: SDKMethods, backend: str
) -> None:
    async def main() -> None:
        async with wrap(client, Retry(3)) as entered:
            assert isinstance(entered, GuardedProxy)
            client._backend.refuse = 1
            assert await entered.get("a") == {"key": "a"}
        assert client.closed

    run(backend, main)


class Session:
    """Its ``with`` gives a session object, not itself."""

    def __init__(self) -> None:
        self.token = object()

    def __enter__(self) -> object:
        return self.token

    def __exit__(self, *exc_info: object) -> None:
        pass

    async def __aenter__(self) -> object:
        return self.token

    async def __aexit__(self, *exc_info: object) -> None:
        pass


def test_with_gives_the_clients_own_value_when_its_enter_gives_another(backend: str) -> None:
    session = Session()
    with wrap(session, Retry(3)) as entered:
        assert entered is session.token

    async def main() -> None:
        async with wrap(session, Retry(3)) as entered:
            assert entered is session.token

    run(backend, main)


def test_a_callable_client_stays_callable() -> None:
    class Adder:
        def __call__(self, n: int) -> int:
            return n + 1

    assert wrap(Adder(), Retry(3))(1) == 2
    assert not callable(wrap(SDK(Backend()), Retry(3)))


# -- pagination ----------------------------------------------------------------------------


def test_the_call_that_opens_pages_is_guarded_not_the_iteration(
    client: SDKMethods, backend: str
) -> None:
    proxy = wrap(client, Retry(3))
    requests = client._backend.requests

    async def main() -> None:
        client._backend.refuse = 1
        pages = await proxy.open_pages()  # the first page: retried
        assert requests == ["GET /items?page=0"] * 2
        assert await pages.__anext__() == [0]
        client._backend.refuse = 1
        with pytest.raises(ConnectionError):  # a later page: the client's own call
            await pages.__anext__()

    run(backend, main)


def test_an_async_generator_method_passes_through(client: SDKMethods, backend: str) -> None:
    """Calling it only creates the generator: nothing to guard, so it is left as is."""
    proxy = wrap(client, Retry(3))
    assert inspect.isasyncgenfunction(proxy.iter_items)
    assert proxy.iter_items == client.iter_items

    async def main() -> list[int]:
        return [item async for item in proxy.iter_items()]

    assert run(backend, main) == [0, 1, 2]
    client._backend.refuse = 1
    with pytest.raises(ConnectionError):
        run(backend, main)


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "option", "expected"),
    [
        ({"policy": Retry}, "policy", "resilient policy"),
        ({"policy": "retry"}, "policy", "resilient policy"),
        ({"methods": "get"}, "methods", "list of method names"),
        ({"methods": []}, "methods", "at least one method name"),
        ({"methods": [1]}, "methods", "a method name, as a str"),
        ({"methods": ["fetsh"]}, "methods", "SDK has no attribute of that name"),
        ({"methods": ["base_url"]}, "methods", "SDK has a str of that name"),
        ({"methods": ["is_closed"]}, "methods", "properties pass through"),
        ({"methods": ["_fetch_page"]}, "methods", "_private methods are never guarded"),
        ({"methods": ["iter_items"]}, "methods", "nothing to guard"),
        ({"methods": {"get": None}}, "methods['get']", "name it in exclude"),
        ({"methods": {"get": 3}}, "methods['get']", "resilient policy"),
        ({"methods": {"nope": Retry(2)}}, "methods", "no attribute"),
        ({"methods": {1: Retry(2)}}, "methods", "a method name, as a str"),
        ({"exclude": "create"}, "exclude", "list of method names"),
        ({"exclude": ["creat"]}, "exclude", "no attribute"),
        ({"exclude": ["__aenter__"]}, "exclude", "_private methods are never guarded"),
        ({"methods": ["get"], "exclude": ["get"]}, "exclude", "either guarded or excluded"),
    ],
)
def test_bad_input_is_refused_at_once_naming_the_option(
    kwargs: dict[str, Any], option: str, expected: str
) -> None:
    arguments: dict[str, Any] = {"policy": Retry(2), **kwargs}
    with pytest.raises(ConfigError, match=r"^wrap: ") as caught:
        wrap(SDK(Backend()), **arguments)
    assert caught.value.option == option
    assert caught.value.owner == "wrap"
    assert expected in caught.value.expected


def test_a_class_is_no_client() -> None:
    with pytest.raises(ConfigError, match="not a class") as caught:
        wrap(SDK, Retry(2))
    assert caught.value.option == "client"


def test_any_resilient_policy_protocol_object_is_a_policy(client: SDKMethods) -> None:
    class Counting:
        """A third-party policy: the three methods of resilient.Policy."""

        def __init__(self) -> None:
            self.calls = 0

        def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls += 1
                return fn(*args, **kwargs)

            return counted

        def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            return self(fn)(*args, **kwargs)

        async def call_async(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            return await self(fn)(*args, **kwargs)

    counting = Counting()
    assert wrap(client, counting).ping() == "pong"
    assert counting.calls == 1
    assert wrap(client, Fallback("offline")).url("/") == "https://api.test/"


# -- threads -------------------------------------------------------------------------------


def test_threads_share_one_proxy_with_exact_counts(switch_often: None) -> None:
    """16 threads call the proxy's method at once, each call's first attempt refused,
    while the class's method is patched back and forth under them: every call is
    guarded (retried once), every attempt reaches the backend, none is lost."""
    threads, calls, flips = 16, 200, 400
    client = SDK(Backend())
    client._backend.refuse_new = True
    proxy = wrap(client, Retry(2))
    start = threading.Barrier(threads + 1, timeout=JOIN)
    errors: list[BaseException] = []
    results: list[list[str]] = [[] for _ in range(threads)]
    original = SDK.fetch

    def patched(self: SDK, key: str) -> str:
        return original(self, key)

    def worker(index: int) -> None:
        try:
            start.wait()
            for n in range(calls):
                results[index].append(proxy.fetch(f"{index}.{n}"))
        except BaseException as exc:
            errors.append(exc)

    crowd = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in crowd:
        thread.start()
    try:
        start.wait()
        for flip in range(flips):  # bounded; the crowd runs meanwhile
            SDK.fetch = patched if flip % 2 else original  # type: ignore[method-assign]
    finally:
        SDK.fetch = original  # type: ignore[method-assign]
        for thread in crowd:
            thread.join(JOIN)
    assert not [thread for thread in crowd if thread.is_alive()]
    assert errors == []
    assert results == [[f"{i}.{n}" for n in range(calls)] for i in range(threads)]
    requests = client._backend.requests
    assert len(requests) == 2 * threads * calls
    assert len(set(requests)) == threads * calls


def test_event_loops_on_threads_share_one_proxy_with_exact_counts(
    switch_often: None, backend: str
) -> None:
    """8 threads each run an event loop of 8 tasks awaiting the proxy's async method, each
    call's first attempt refused: every call retried once, every attempt counted."""
    threads, tasks, calls = 8, 8, 25
    client = SlottedSDK(Backend())
    client._backend.refuse_new = True
    proxy = wrap(client, Pipeline(Timeout(JOIN), Retry(2)))
    start = threading.Barrier(threads, timeout=JOIN)
    errors: list[BaseException] = []
    answered: list[int] = []

    async def crowd(index: int) -> None:
        async def task(number: int) -> None:
            for n in range(calls):
                key = f"{index}.{number}.{n}"
                assert await proxy.get(key) == {"key": key}
                answered.append(1)

        async with anyio.create_task_group() as group:
            for number in range(tasks):
                group.start_soon(task, number)

    def worker(index: int) -> None:
        try:
            start.wait()
            run(backend, lambda: crowd(index))
        except BaseException as exc:
            errors.append(exc)

    crowd_threads = [
        threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)
    ]
    for thread in crowd_threads:
        thread.start()
    for thread in crowd_threads:
        thread.join(JOIN)
    assert not [thread for thread in crowd_threads if thread.is_alive()]
    assert errors == []
    assert len(answered) == threads * tasks * calls
    assert len(client._backend.requests) == 2 * threads * tasks * calls


def test_unittest_mock_patches_through_the_proxy_or_on_the_class(backend: str) -> None:
    from unittest import mock

    client = SDK(Backend())
    proxy = wrap(client, Retry(3))
    with mock.patch.object(proxy, "get", new_callable=mock.AsyncMock) as patched:
        patched.side_effect = [ConnectionError("reset"), {"key": "mocked"}]
        assert inspect.iscoroutinefunction(proxy.get)
        assert run(backend, lambda: proxy.get("a")) == {"key": "mocked"}  # retried
        assert patched.await_count == 2
    assert "get" not in vars(client)
    with mock.patch.object(SDK, "get", new_callable=mock.AsyncMock) as patched:
        patched.side_effect = [ConnectionError("reset"), {"key": "class"}]
        assert run(backend, lambda: proxy.get("a")) == {"key": "class"}
    assert run(backend, lambda: proxy.get("a")) == {"key": "a"}
    assert client._backend.requests == ["GET /items/a"]


# -- a real httpx.AsyncClient over loopback ------------------------------------------------


class LoopbackServer:
    """Answers HTTP/1.1 on 127.0.0.1: drops the first ``drop`` connections unanswered,
    then answers ``ok``. At most ``limit`` connections; stops when closed."""

    def __init__(self, drop: int, limit: int = 20) -> None:
        self.drop = drop
        self.limit = limit
        self.connections = 0
        self._stopping = False
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(JOIN)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        for _ in range(self.limit):
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed, or no client within JOIN
                return
            with connection:
                if self._stopping:
                    return
                self.connections += 1
                connection.settimeout(JOIN)
                request = connection.recv(65536)
                if self.connections <= self.drop or not request:
                    continue
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                )

    def close(self) -> None:
        """Wake the accept() with a last connection of our own: closing the listening
        socket from another thread would not."""
        self._stopping = True
        if self._thread.is_alive():
            socket.create_connection(self._socket.getsockname(), timeout=JOIN).close()
        self._thread.join(JOIN)
        self._socket.close()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    server = LoopbackServer(drop=2)
    yield server
    server.close()


def test_a_real_httpx_async_client_is_guarded_and_async_with_gives_the_proxy(
    server: LoopbackServer, backend: str
) -> None:
    httpx = pytest.importorskip("httpx")
    policy = Retry(3, on=httpx.TransportError)

    async def main() -> None:
        async with wrap(httpx.AsyncClient(base_url=server.url), policy) as client:
            assert isinstance(client, httpx.AsyncClient)
            assert isinstance(client, GuardedProxy)  # not the unguarded client
            assert inspect.iscoroutinefunction(client.get)
            assert str(client.base_url) == server.url  # a property
            client.headers["x-test"] = "1"  # an attribute, changed in place
            response = await client.get("/")
            assert response.text == "ok"
            assert response.request.headers["x-test"] == "1"
        assert client.is_closed

    run(backend, main)
    assert server.connections == 3  # two dropped, retried; the third answered


def test_import_resilient_does_not_import_wrapt_until_wrap_is_called() -> None:
    import subprocess

    code = (
        "import sys, resilient\n"
        "assert 'wrapt' not in sys.modules\n"
        "resilient.wrap(object(), resilient.Retry(2))\n"
        "assert 'wrapt' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=JOIN)
    assert done.returncode == 0, done.stderr.decode()
    assert resilient.wrap.__module__ == "resilient"


class Commands:
    """redis.asyncio's shape: plain methods that return coroutines."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[tuple[str, ...]] = []
        self.made = 0

    async def execute(self, *args: str) -> str:
        await anyio.lowlevel.checkpoint()
        self.sent.append(args)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("reset")
        return " ".join(args)

    def get(self, key: str) -> Any:
        self.made += 1  # a side effect of the def body: it must run once a call
        return self.execute("GET", key)

    def ping(self) -> str:
        return "PONG"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_plain_def_that_returns_a_coroutine_is_guarded_as_async_from_its_first_call(
    backend: str,
) -> None:
    commands = Commands(failures=2)
    proxy = wrap(commands, Retry(3, wait=0))
    assert not inspect.iscoroutinefunction(proxy.get)  # nothing tells, before a call

    async def main() -> None:
        assert await proxy.get("k") == "GET k"  # the first call: retried twice
        assert inspect.iscoroutinefunction(proxy.get)
        commands.failures = 1
        assert await proxy.get("j") == "GET j"

    anyio.run(main, backend=backend)
    assert commands.sent == [("GET", "k")] * 3 + [("GET", "j")] * 2
    assert commands.made == 5  # one coroutine an attempt: none made and thrown away
    assert proxy.ping() == "PONG"  # a plain def that returns a value stays sync
    assert proxy.ping is proxy.ping  # (its plain guard, cached after the first call)
    assert not inspect.iscoroutinefunction(proxy.ping)


class _HedgedClient:
    """An async SDK's shape: a plain builder, an async sender, a def that returns a
    coroutine (redis.asyncio's commands)."""

    def __init__(self) -> None:
        self.sent = 0

    def build(self, path: str) -> str:
        return f"GET {path}"

    async def send(self, request: str) -> str:
        self.sent += 1
        if self.sent == 1:
            await anyio.sleep_forever()  # the first attempt hangs: the hedge answers
        return f"200 for {request}"

    def fetch(self, request: str) -> Awaitable[str]:
        return self.send(request)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("pipelined", [False, True], ids=["hedge", "pipeline"])
def test_an_async_only_policy_leaves_a_wrapped_clients_plain_methods_alone(
    backend: str, pipelined: bool
) -> None:
    """A Hedge (or a Pipeline holding one) cannot guard sync code: wrap() applies it to
    the async methods, and to a def whose first call returns a coroutine; a plain method
    passes through rather than raising UsageError when called."""
    hedge = resilient.Hedge(1.0, clock=ManualClock())
    policy: Any = resilient.Pipeline(resilient.Retry(2), hedge) if pipelined else hedge
    for method in ("send", "fetch"):
        client = resilient.wrap(_HedgedClient(), policy)

        async def main(method: str = method, client: Any = client) -> str:
            request = client.build("/items")  # plain: straight through
            return await getattr(client, method)(request)  # type: ignore[no-any-return]

        assert anyio.run(main, backend=backend) == "200 for GET /items"
        assert client.build("/x") == "GET /x"
