"""Resilient httpx transports: ``httpx.AsyncClient(transport=AsyncResilientTransport())``.

Each request goes through, outermost first: an optional bulkhead, the total timeout, the
retry, a circuit breaker of its own host, and the attempt timeout (the shape of .NET's
standard HTTP resilience handler), then the wrapped transport. The rules that decide are
HTTP's (``resilient._http``): which answers are failures, and which requests may be sent
again, judged by how far a failed one got (its commit point), not by its method alone.

Install with ``pip install "resilient-toolkit[httpx]"``; docs/clients.md has the tables.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextvars import Token
from types import EllipsisType
from typing import Any, Generic, TypeVar

import httpx

import resilient
from resilient import _http
from resilient._breaker import CircuitBreaker, State
from resilient._bulkhead import Bulkhead
from resilient._core.configuration import config
from resilient._core.configuration import options as opt
from resilient._core.configuration.config import Settings
from resilient._core.configuration.events import Listeners
from resilient._core.configuration.registry import registry
from resilient._core.execution.deadline import Ends, limit, remaining, scoped, unscoped
from resilient._core.state import forking
from resilient._errors import ConfigError, RejectedError, note, remade
from resilient._retry import Retry, _Call
from resilient._retry import _Plan as _RetryPlan
from resilient._timeout import Timeout

__all__ = [
    "AsyncResilientTransport",
    "BulkheadFullError",
    "CircuitOpenError",
    "ResilientTransport",
    "TimeoutExpired",
    "retry_after",
]


# -- errors an httpx caller already catches ----------------------------------------------


class CircuitOpenError(resilient.CircuitOpenError, httpx.TransportError):
    """The host's circuit breaker refused the request: nothing was sent. Also an
    ``httpx.TransportError``, so ``except httpx.HTTPError`` handlers see it."""

    _request: httpx.Request | None = None


class BulkheadFullError(resilient.BulkheadFullError, httpx.TransportError):
    """The transport's bulkhead had no free slot in time: nothing was sent."""

    _request: httpx.Request | None = None


class TimeoutExpired(resilient.TimeoutExpired, httpx.TimeoutException):
    """The request's time (its total timeout, or an enclosing ``resilient.deadline``)
    was spent before it could be sent."""

    _request: httpx.Request | None = None


_AS_HTTPX: dict[type[BaseException], type[RejectedError]] = {
    resilient.CircuitOpenError: CircuitOpenError,
    resilient.BulkheadFullError: BulkheadFullError,
}


def _as_httpx(exc: RejectedError, request: httpx.Request) -> BaseException:
    """The same rejection, as the class that is also an httpx error."""
    kind = _AS_HTTPX.get(type(exc))
    again = remade(kind, exc.args) if kind is not None else None
    if again is None:
        return exc
    again._request = request  # type: ignore[attr-defined]
    notes = getattr(exc, "__notes__", None)
    if notes:
        again.__notes__ = list(notes)  # type: ignore[attr-defined]
    return again.with_traceback(exc.__traceback__)


# -- what is a failure, and what may be sent again -----------------------------------------

#: Failures of the exchange itself, counted by the breaker and weighed by the retry:
#: timeouts, broken connections, a server that breaks the protocol (a reset mid-answer).
#: Not a bad URL, an unsupported scheme or a proxy's refusal: no retry mends those.
EXCHANGE_FAILURES: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


def _not_the_hosts(exc: BaseException) -> bool:
    """An error that says nothing about the host (a bad URL, an unsupported scheme, a
    proxy's refusal, a bug in a transport): counted neither as its failure nor success."""
    return not isinstance(exc, EXCHANGE_FAILURES)


#: Failures before any byte of the request left: safe to send again, whatever the method.
NEVER_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    RejectedError,
    TimeoutExpired,
)


def retry_after(outcome: object) -> float | None:
    """Seconds a 429 or 503 answer asks the caller to wait (``retry-after-ms``, or
    ``Retry-After`` as seconds or an HTTP-date), from a response or an
    ``httpx.HTTPStatusError``; None when it asks nothing readable. For
    ``Retry(retry_after=resilient.httpx.retry_after)`` around your own httpx calls."""
    response = outcome.response if isinstance(outcome, httpx.HTTPStatusError) else outcome
    if not isinstance(response, httpx.Response):
        return None
    if response.status_code not in _http.HINTED_STATUSES:
        return None
    return _http.hint_seconds(response.headers, time.time())


class _Rules:
    """One transport's classification, read by its retry's plan and its breakers."""

    __slots__ = ("failure_statuses", "hosts", "max_replay_bytes", "owner")

    def __init__(self, failure_statuses: frozenset[int], max_replay_bytes: int, owner: str):
        self.failure_statuses = failure_statuses
        self.max_replay_bytes = max_replay_bytes
        self.owner = owner
        #: the transport's per-host breakers (None: it has none)
        self.hosts: _Hosts[Any] | None = None

    def shut(self, request: httpx.Request, exc: BaseException | None) -> str:
        """Why the host is not to be asked again now ("" when it may be): its breaker
        refused, or is open now (this very failure may have opened it). An open breaker
        fails fast: the caller hears at once, with the rejection's retry_after, instead
        of being held until a probe may go in."""
        if isinstance(exc, RejectedError):
            return f"{exc._what()}: the caller is told at once (retry_after: when to come back)"
        hosts = self.hosts
        if hosts is not None:
            state = hosts.state_of(request.url)
            if state is State.OPEN or state is State.FORCED_OPEN:
                return f"the host's circuit breaker is {state.value} now"
        return ""

    def failed(self, response: object) -> bool:
        """A breaker's ``failure_result``: an answer that says the host is in trouble."""
        return (
            isinstance(response, httpx.Response) and response.status_code in self.failure_statuses
        )

    def unsafe(self, request: httpx.Request, exc: BaseException | None, result: object) -> str:
        """Why this failed request must not be sent again ("" when it may)."""
        if exc is not None and isinstance(exc, NEVER_SENT):
            return ""  # not a byte left: even a streamed body is still whole
        try:
            size = len(request.content)
        except httpx.RequestNotRead:
            if not isinstance(request.stream, httpx.ByteStream):
                return "its body is streamed, so it is sent once"
            size = len(request.read())  # bytes in memory (a redirect's request): rereadable
        if size > self.max_replay_bytes:
            return (
                f"its body ({size} bytes) is larger than max_replay_bytes"
                f" ({self.max_replay_bytes}), so it is sent once"
            )
        if exc is not None:
            what = type(exc).__name__
        else:
            status = result.status_code  # type: ignore[attr-defined]
            if status in _http.UNPROCESSED_STATUSES:
                return ""
            what = f"a {status} answer"
        method = request.method
        if method in _http.IDEMPOTENT_METHODS or "idempotency-key" in request.headers:
            return ""
        return (
            f"{method} may have reached the server ({what}) and is not idempotent;"
            " an Idempotency-Key header lets it be retried"
        )


class _Sending(_RetryPlan):
    """The transport's retry plan: the given Retry's decisions, after HTTP's own."""

    rules: _Rules

    def __init__(self, settings: Settings, policy: Retry, rules: _Rules) -> None:
        super().__init__(settings, policy)
        self.rules = rules
        self.checks_results = self._enabled  # answers are judged, by status
        self._user_results = self._on_result is not None or self._on_judges_results
        self.calls = self._exchange  # type: ignore[method-assign]

    def decides(self, exc: Exception) -> bool:
        return isinstance(exc, (*EXCHANGE_FAILURES, RejectedError)) and super().decides(exc)

    def result_fails(self, calls: Any, result: object) -> bool:
        if result.status_code in self.rules.failure_statuses:  # type: ignore[attr-defined]
            return True
        return self._user_results and super().result_fails(calls, result)

    def _exchange(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], started: float
    ) -> _Exchange:
        return _Exchange(self, fn, args, kwargs, started)


class _Exchange(_Call):
    """One request's attempts: HTTP's rules first, then the Retry's own decision."""

    __slots__ = ()
    releases = True  # a retried answer is closed: its connection goes back to the pool

    def next_wait(self, exc: BaseException | None, result: object) -> float | None:
        plan: _Sending = self.retry  # type: ignore[assignment]
        request = self.args[0]
        why = plan.rules.shut(request, exc) or plan.rules.unsafe(request, exc, result)
        if why:
            if exc is not None:
                note(exc, f"{plan.owner}: not retried: {why}")
            return None
        return super().next_wait(exc, result)

    def release(self, result: object) -> None:
        response: httpx.Response = result  # type: ignore[assignment]
        try:
            until = _drain_until(response, self.args[0])
            if until is not None:
                read = 0
                for chunk in response.iter_raw():
                    read += len(chunk)
                    if read > DRAIN_BYTES or time.monotonic() > until:
                        break
        except (httpx.HTTPError, httpx.StreamError):
            pass  # the connection is closed instead: the retry goes on
        finally:
            response.close()

    async def release_async(self, result: object) -> None:
        response: httpx.Response = result  # type: ignore[assignment]
        try:
            # Read whole, or cut short by a cancellation that unwinds httpx's async
            # generators: leaving them midway (a break) has trio warn of each one.
            until = _drain_until(response, self.args[0], declared=True)
            if until is not None:
                import anyio

                with anyio.move_on_after(until - time.monotonic()):
                    await response.aread()
        except (httpx.HTTPError, httpx.StreamError):
            pass
        finally:
            await response.aclose()


#: How much of a retried answer's body is read, and for how long at most, to keep its
#: connection for the next attempt (an error page is small and comes at once); a longer
#: or slower one closes the connection instead: a new one costs less than the wait.
DRAIN_BYTES = 64 * 1024
DRAIN_SECONDS = 0.1


def _drain_until(
    response: httpx.Response, request: httpx.Request, *, declared: bool = False
) -> float | None:
    """When reading the rest of a retried answer must stop (monotonic), or None when it
    is not worth reading: read already (made in memory), declared too long, or (with
    ``declared``) of no declared length. Each read of the drain waits at most what is
    left of it (httpx reads the attempt's timeouts, a dict of ours, at every read)."""
    if response.is_stream_consumed:
        return None
    if request.method != "HEAD" and response.status_code not in (204, 304):
        length = response.headers.get("content-length")
        if length is None:
            if declared:
                return None
        elif not (length.isascii() and length.isdigit() and int(length) <= DRAIN_BYTES):
            return None
    budget = DRAIN_SECONDS
    left = remaining()
    if left is not None:
        budget = min(budget, left)
    timeouts = request.extensions.get("timeout")
    if isinstance(timeouts, dict) and _OWN_TIMEOUTS in request.extensions:
        timeouts["read"] = budget  # (ours: made for this attempt by _capped)
    return time.monotonic() + budget


class _Retrying(Retry):
    """The transport's own Retry: the options of the one given, the plan of HTTP."""

    _rules: _Rules

    def _owner(self) -> str:
        return f"Retry({self.name!r})"  # as users know it (its name is never None)

    def _compile(self, settings: Settings) -> _Sending:
        return _Sending(settings, self, self._rules)


def _code_given(policy: Any) -> dict[str, Any]:
    """The options a policy was given in code (not its defaults, not the environment's)."""
    sources = policy.settings.sources
    return {k: v for k, v in policy._given.items() if sources.get(k) == "code"}


# -- one circuit breaker per host ----------------------------------------------------------

S = TypeVar("S", bound=Callable[..., Any])

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _origin(url: httpx.URL) -> str:
    """``host:port`` of a URL, as its variables can spell it: the host in ASCII (an
    internationalised name in punycode), the scheme's default port filled in."""
    host = url.raw_host.decode("ascii").lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    port = url.port or _DEFAULT_PORTS.get(url.scheme, 0)
    return f"{host}:{port}"


_Key = tuple[str, bytes, "int | None"]


class _Host:
    """One host's breaker, the send it guards, the URL keys that lead to it, and when it
    was last used (a tick of its table's counter)."""

    __slots__ = ("breaker", "keys", "send", "used")

    def __init__(self, breaker: CircuitBreaker, send: Any) -> None:
        self.breaker = breaker
        self.send = send
        self.keys: list[_Key] = []
        self.used = 0


class _Hosts(Generic[S]):
    """The per-host breakers of one transport, made from a template when a host is first
    seen; past ``limit`` hosts, one not used for the longest is dropped (its state goes
    with it).

    A request finds its host by a plain dict read, without a lock, and stamps it with
    the next tick of a counter (``next()`` on an ``itertools.count``, one C call): no
    reordering on every request. The eviction, under the lock and only when a new host
    comes past the limit, drops the host with the oldest stamp (a scan of at most
    ``limit`` hosts, in the rare case of more hosts than the limit)."""

    def __init__(
        self,
        template: CircuitBreaker,
        family: str,
        limit: int,
        rules: _Rules,
        guard: Callable[[CircuitBreaker], S],
    ) -> None:
        given = _code_given(template)
        given.pop("name", None)
        if "record" not in given and "ignore" not in given:
            given["record"] = EXCHANGE_FAILURES  # the host's trouble, and nothing else:
            given["ignore"] = _not_the_hosts  # a bad URL or a proxy's refusal is neither
        if "failure_result" not in given:
            given["failure_result"] = rules.failed
        self._kind = type(template)
        self._given = given
        self._template = template
        # The transport's variables, then a named template's, configure every host.
        names = (family,) if template.name in (None, family) else (family, template.name)
        self._family = family
        self._families = names
        self._limit = limit
        self._guard = guard
        # The family's own member, unnamed, guarding nothing: it reads the family's and
        # the default variables now (a bad one fails here, not at a first request), and
        # again at each reload, which then knows RESILIENT_<FAMILY>_BREAKER_* is read.
        self._prototype = self._kind._made({"_family": names}, **given)
        self._lock = threading.Lock()  # for making and dropping, never for a hit
        self._listeners: Listeners[Any] = Listeners()  # the transport's, for every host
        self._ticks = itertools.count(1)
        #: origin -> its host, oldest first
        self._made: OrderedDict[str, _Host] = OrderedDict()
        #: a URL's (scheme, host, port) as httpx keeps them -> its host, read lock-free
        self._hits: dict[_Key, _Host] = {}
        _ALL_HOSTS.add(self)

    def send_for(self, url: httpx.URL) -> S:
        key = (url.scheme, url.raw_host, url.port)
        host = self._hits.get(key)
        if host is None:
            origin = _origin(url)
            host = self._host(origin)
            with self._lock:
                if self._made.get(origin) is host:  # (not dropped meanwhile)
                    self._hits[key] = host
                    host.keys.append(key)
        host.used = next(self._ticks)
        return host.send  # type: ignore[no-any-return]

    def breaker(self, origin: str) -> CircuitBreaker:
        host = self._host(origin.lower())
        host.used = next(self._ticks)
        return host.breaker

    def state_of(self, url: httpx.URL) -> State | None:
        """The state of the breaker of ``url``'s host, if it has one yet."""
        host = self._hits.get((url.scheme, url.raw_host, url.port))
        return None if host is None else host.breaker.state

    def all(self) -> dict[str, CircuitBreaker]:
        with self._lock:
            return {origin: host.breaker for origin, host in self._made.items()}

    def listen(self, fn: Callable[[Any], object], kinds: tuple[type, ...]) -> None:
        """``fn`` hears every host's breaker, those made later too."""
        with self._lock:
            self._listeners.add(fn, kinds)
            for host in self._made.values():
                host.breaker._listeners.add(fn, kinds)

    def unlisten(self, fn: Callable[[Any], object]) -> None:
        with self._lock:
            self._listeners.remove(fn)
            for host in self._made.values():
                with contextlib.suppress(ValueError):
                    host.breaker._listeners.remove(fn)

    def _host(self, origin: str) -> _Host:
        with self._lock:
            host = self._made.get(origin)
        if host is not None:
            return host
        # Made outside the lock (it reads the environment); two threads seeing a new
        # host at once may each make one: the first stored wins, the other is dropped.
        breaker: CircuitBreaker = self._kind._made(
            {"_family": self._families}, name=f"{self._family}.{origin}", **self._given
        )
        for entry in self._template._listeners._entries:
            breaker._listeners.add(entry.fn, entry.kinds)
        made = _Host(breaker, self._guard(breaker))
        with self._lock:
            host = self._made.setdefault(origin, made)
            if host is made:
                for entry in self._listeners._entries:  # (under the lock: see listen)
                    breaker._listeners.add(entry.fn, entry.kinds)
                self._evict(origin)
        if host is not made:
            registry._discard(breaker)  # the loser: never found by name, even before GC
        return host

    def _evict(self, kept: str) -> None:
        """Past the limit, drop the least recently used host, never the one just made."""
        made = self._made
        while len(made) > self._limit:
            origin = min((o for o in made if o != kept), key=lambda o: made[o].used)
            for key in made.pop(origin).keys:
                self._hits.pop(key, None)


#: Every transport's hosts, for a forked child to give each a fresh lock.
_ALL_HOSTS: weakref.WeakSet[_Hosts[Any]] = weakref.WeakSet()


@forking.after_fork_in_child
def _after_fork() -> None:
    """A lock another parent thread held at the fork is never released in the child."""
    for hosts in list(_ALL_HOSTS):
        hosts._lock = threading.Lock()


#: Where a request keeps the caller's own timeouts while the transport caps them.
_OWN_TIMEOUTS = "resilient.timeout"
_UNSET: Any = object()


# -- the transports ------------------------------------------------------------------------

T = TypeVar("T")
L = TypeVar("L", bound=Callable[..., object])


def _positive_or_none(option: str, value: object, owner: str) -> float | None:
    if value is None:
        return None
    try:
        seconds: float = opt.duration(allow_zero=False)(value)
    except opt.Invalid:
        raise ConfigError(option, value, "seconds > 0 (250ms, 2s), or None", owner=owner) from None
    return seconds


def _check_host_variables(family: str) -> None:
    """A bad variable of one of the family's hosts (``RESILIENT_<FAMILY>_<HOST>_BREAKER_*``)
    fails the transport's construction, not a first request to that host."""
    prefix = f"{config.PREFIX}{config.env_name(family)}_"
    bad = [
        error
        for error in config.invalid_variables()
        if error.option.startswith(prefix)
        and (parts := config.parts_of(error.option)) is not None
        and parts.kind == "breaker"
    ]
    if bad:
        raise ConfigError.combine(bad)


class _Transport(Generic[T]):
    """What the sync and async transports share: checking the options, the rules, the
    per-host breakers, the retry and the chain of policies; each says only how it sends.

    ``retry`` and ``breaker`` default to the standard handler's (``...``); None leaves
    that layer out. ``transport`` is the one wrapped, httpx's own when None.
    """

    _ASYNC = False
    #: httpx's transport of the kind, its sending method, the drivers' wrapping method
    _DEFAULT: Callable[[], T]
    _SENDS: str
    _WRAP: str

    def __init__(
        self,
        transport: T | None = None,
        *,
        name: str = "http",
        retry: Retry | EllipsisType | None = ...,
        breaker: CircuitBreaker | EllipsisType | None = ...,
        attempt_timeout: opt.Duration | None = 10.0,
        total_timeout: opt.Duration | None = 30.0,
        max_replay_bytes: int = 1048576,
        failure_statuses: Iterable[int] | None = None,
        max_hosts: int = 1000,
        bulkhead: Bulkhead | None = None,
    ) -> None:
        if retry is ...:
            retry = _default_retry()
        if breaker is ...:
            breaker = _default_breaker()
        kind = type(self).__name__
        owner = f"{kind}({name!r})"
        if name is None or opt.check_name(name, kind) is None:
            expected = (
                "a string with at least one ASCII letter or digit (the per-host breakers"
                " and the variables are named after it)"
            )
            raise ConfigError("name", name, expected, owner=kind)
        base = httpx.AsyncBaseTransport if self._ASYNC else httpx.BaseTransport
        if transport is not None and not isinstance(transport, base):
            raise ConfigError(
                "transport",
                transport,
                f"None or an {base.__module__}.{base.__name__}",
                owner=owner,
            )
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError("retry", retry, "a resilient.Retry, or None", owner=owner)
        if breaker is not None and not isinstance(breaker, CircuitBreaker):
            expected = "a resilient.CircuitBreaker (the per-host template), or None"
            raise ConfigError("breaker", breaker, expected, owner=owner)
        if bulkhead is not None and not isinstance(bulkhead, Bulkhead):
            raise ConfigError("bulkhead", bulkhead, "a resilient.Bulkhead, or None", owner=owner)
        attempt_seconds = _positive_or_none("attempt_timeout", attempt_timeout, owner)
        total_seconds = _positive_or_none("total_timeout", total_timeout, owner)
        # Timeouts of their own, named by role as a Pipeline's are, so that
        # RESILIENT_<NAME>_TOTAL_TIMEOUT_SECONDS and ..._ATTEMPT_TIMEOUT_SECONDS retune
        # them (and RESILIENT_ENABLED=0 lifts them); the transport reads their seconds.
        self._total_limit = (
            None if total_seconds is None else Timeout(total_seconds, name=f"{name}.total")
        )
        self._attempt_limit = (
            None if attempt_seconds is None else Timeout(attempt_seconds, name=f"{name}.attempt")
        )
        if self._attempt_limit is not None and self._total_limit is not None:
            attempt_now, total_now = self._attempt_limit.seconds, self._total_limit.seconds
            if attempt_now > total_now:
                option, value = self._attempt_limit.settings.blame("seconds")
                if option == "seconds":
                    option, value = "attempt_timeout", attempt_timeout
                raise ConfigError(
                    option,
                    value,
                    f"at most total_timeout ({total_now:g}s): an attempt cannot outlast the"
                    " request",
                    owner=owner,
                )
        if (
            not isinstance(max_replay_bytes, int)
            or isinstance(max_replay_bytes, bool)
            or max_replay_bytes < 0
        ):
            expected = "a whole number of bytes >= 0 (0: never resend a body)"
            raise ConfigError("max_replay_bytes", max_replay_bytes, expected, owner=owner)
        statuses = _http.FAILURE_STATUSES if failure_statuses is None else failure_statuses
        try:
            failing = frozenset(statuses)
            ok = all(isinstance(s, int) and 100 <= s <= 599 for s in failing)
        except TypeError:
            ok = False
        if not ok:
            expected = "None (408, 429 and 5xx but 501 and 505), or HTTP status codes 100-599"
            raise ConfigError("failure_statuses", failure_statuses, expected, owner=owner)
        if (
            not isinstance(max_hosts, int)
            or isinstance(max_hosts, bool)
            or not 1 <= max_hosts <= 1_000_000
        ):
            expected = "a whole number from 1 to 1,000,000 (hosts whose breakers are kept)"
            raise ConfigError("max_hosts", max_hosts, expected, owner=owner)

        self.name = name
        self._owner = owner
        self._rules = _Rules(failing, max_replay_bytes, owner)
        self._bulkhead = bulkhead
        self._hosts: _Hosts[Any] | None = (
            None
            if breaker is None
            else _Hosts(breaker, name, max_hosts, self._rules, self._guarded)
        )
        self._rules.hosts = self._hosts
        if self._hosts is not None:
            _check_host_variables(name)
        self._retry: _Retrying | None = None
        if retry is not None:
            given = _code_given(retry)
            given["name"] = retry.name or name
            given.setdefault("retry_after", retry_after)
            self._retry = _Retrying._made({"_rules": self._rules}, **given)
        self._inner: T = type(self)._DEFAULT() if transport is None else transport
        send: Any = self._attempt
        for layer in (self._retry, self._bulkhead):  # inner first: the bulkhead outermost
            if layer is not None:
                send = getattr(layer, self._WRAP)(send)
        self._send = send

    def _guarded(self, breaker: CircuitBreaker) -> Any:
        """The wrapped transport's send, through ``breaker``."""
        return getattr(breaker, self._WRAP)(getattr(self._inner, self._SENDS))

    def _attempt(self, request: httpx.Request) -> Any:
        raise NotImplementedError

    @property
    def retry(self) -> Retry | None:
        """The transport's own Retry, made from the one given (named after the transport
        unless that one has a name): ``RESILIENT_<NAME>_RETRY_*`` retunes it."""
        return self._retry

    def add_listener(self, listener: L, *kinds: type) -> L:
        """Listen to every policy of the transport (``policy.add_listener``): its
        timeouts, its retry, the bulkhead given (other code may share it), and every
        host's breaker, those made later too. Usable as a decorator."""
        for policy in self._policies():
            policy.add_listener(listener, *kinds)
        if self._hosts is not None:
            self._hosts.listen(listener, kinds)
        return listener

    def remove_listener(self, listener: Callable[[Any], object]) -> None:
        """Stop listening to them; ValueError if ``listener`` was not added."""
        if self._hosts is not None:
            self._hosts.unlisten(listener)  # (raises first if it was never added)
        for policy in self._policies():
            policy.remove_listener(listener)

    def _policies(self) -> list[Any]:
        layers = (self._total_limit, self._bulkhead, self._retry, self._attempt_limit)
        return [policy for policy in layers if policy is not None]

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """The per-host breakers made so far, by ``host:port``."""
        return {} if self._hosts is None else self._hosts.all()

    def breaker_for(self, host: str | httpx.URL) -> CircuitBreaker:
        """The breaker of ``host`` ("api.example.com:443", or a URL), made now if this
        transport has not talked to it yet (to watch it, or force it open, ahead)."""
        if self._hosts is None:
            raise LookupError(f"{self._owner} has no circuit breaker (breaker=None)")
        if isinstance(host, str) and "://" not in host:
            if ":" not in host.rpartition("]")[2]:
                raise ValueError(f"host:port expected (as 'api.example.com:443'), not {host!r}")
            return self._hosts.breaker(host)
        return self._hosts.breaker(_origin(httpx.URL(host)))

    def _scoped(self) -> Token[Ends | None] | None:
        """The total timeout as the deadline in force, unless an enclosing one ends first."""
        total = self._total_limit
        if total is None:
            return None
        plan = total._plan
        if not plan.enabled:
            return None
        seconds, enclosing = limit(plan.seconds)
        return None if enclosing else scoped(seconds)

    def _capped(self, request: httpx.Request) -> None:
        """Cap each of httpx's timeouts (connect, read, write, pool) to the time this
        attempt may take: the attempt timeout, or what is left of the total timeout and
        of any enclosing deadline, if less. The caller's own timeouts are kept aside
        (a redirect's request carries them), so each attempt caps from them afresh."""
        limit = self._attempt_limit
        cap = None if limit is None or not limit._plan.enabled else limit._plan.seconds
        left = remaining()
        if left is not None and (cap is None or left < cap):
            if left <= 0:
                expired = TimeoutExpired(
                    self.name, None, ": the time for this request was spent before it was sent"
                )
                expired._request = request
                raise expired
            cap = left
        extensions = request.extensions
        own: Any = extensions.get(_OWN_TIMEOUTS, _UNSET)
        first = own is _UNSET  # (nothing capped yet: httpx's own dict is in place)
        if first:
            own = extensions.get("timeout") or {}
        if cap is None:
            if first:
                return
            capped = own
        elif own:
            if first:
                for seconds in own.values():
                    if seconds is None or seconds > cap:
                        break
                else:  # every timeout within the cap already (httpx's 5 s, say)
                    return
            capped = {k: cap if v is None or v > cap else v for k, v in own.items()}
        else:
            capped = {"connect": cap, "read": cap, "write": cap, "pool": cap}
        # A dict of our own each attempt: httpcore reads it while the answer streams,
        # and a retried answer's drain shortens its read timeout in place.
        request.extensions = {**extensions, "timeout": capped, _OWN_TIMEOUTS: own}

    def __repr__(self) -> str:
        return f"<{self._owner}>"


class ResilientTransport(_Transport[httpx.BaseTransport], httpx.BaseTransport):
    """A resilient httpx transport: ``httpx.Client(transport=ResilientTransport(name=...))``."""

    _DEFAULT = httpx.HTTPTransport
    _SENDS = "handle_request"
    _WRAP = "_wrap_sync"

    def _attempt(self, request: httpx.Request) -> httpx.Response:
        self._capped(request)
        if self._hosts is None:
            return self._inner.handle_request(request)
        return self._hosts.send_for(request.url)(request)  # type: ignore[no-any-return]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        token = self._scoped()
        try:
            return self._send(request)  # type: ignore[no-any-return]
        except RejectedError as exc:
            raise _as_httpx(exc, request) from exc.__cause__
        finally:
            if token is not None:
                unscoped(token)

    def close(self) -> None:
        self._inner.close()


class AsyncResilientTransport(_Transport[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport):
    """A resilient async httpx transport, on asyncio and trio:
    ``httpx.AsyncClient(transport=AsyncResilientTransport(name=...))``."""

    _ASYNC = True
    _DEFAULT = httpx.AsyncHTTPTransport
    _SENDS = "handle_async_request"
    _WRAP = "_wrap_async"

    async def _attempt(self, request: httpx.Request) -> httpx.Response:
        self._capped(request)
        if self._hosts is None:
            return await self._inner.handle_async_request(request)
        return await self._hosts.send_for(request.url)(request)  # type: ignore[no-any-return]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        token = self._scoped()
        try:
            return await self._send(request)  # type: ignore[no-any-return]
        except RejectedError as exc:
            raise _as_httpx(exc, request) from exc.__cause__
        finally:
            if token is not None:
                unscoped(token)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _default_retry() -> Retry:
    """3 attempts (the first and 2 retries), exponential backoff from 2 s with full
    jitter, at most 30 s, as the standard handler; a server's Retry-After on top."""
    from resilient.backoff import exponential

    return Retry(3, wait=exponential(2.0, cap=30.0))


def _default_breaker() -> CircuitBreaker:
    """A template for the per-host breakers: the library's defaults (half the calls of a
    window of 100 failing, at least 20 calls seen; open 30 s)."""
    return CircuitBreaker()
