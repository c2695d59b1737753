"""Shared state for a fleet of processes, in Redis: ``RedisBackend(url)``.

A rate limit of 100/s is 100/s per process until the processes agree; Redis (or Valkey)
is where they agree. Each decision is one Lua script run on the server, atomic and on
the server's clock (``TIME``), never a process's: processes on machines whose clocks
disagree still share one schedule.

Fault behaviour comes first. A backend built from a URL makes its own clients, with
``timeout`` seconds for a connect and for each read and no retries: redis-py's defaults
(5 s socket timeouts, and retries with backoff on connection errors and timeouts) would
make an outage cost every call seconds. So a call to a Redis that is down, slow or
black-holed fails within about ``timeout`` (a connect and a read), raising redis-py's own
``redis.exceptions.ConnectionError`` or ``TimeoutError``; what to do then (local state)
is the caller's decision. A client you pass is used as it is: its timeouts and retries
are yours.

Keys are ``{prefix}:{<name>}:<what>``: the policy's name is the hash tag, so the keys of
one policy live on one Redis Cluster node and its scripts may touch them all. Every key
expires once it no longer matters, so nothing is left behind.

Install with ``pip install "resilient-toolkit[redis]"`` (redis-py 5.0.1 or later).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import NoScriptError
from redis.retry import Retry

from resilient._errors import ConfigError

__all__ = [
    "BREAKER_SCRIPT",
    "GCRA_SCRIPT",
    "REFRESH",
    "RETRY_AFTER",
    "Admission",
    "BreakerLink",
    "RedisBackend",
    "Shared",
    "backend_for",
    "check_url",
    "resolve",
]

#: Where a backend tells of an outage (one WARNING as Redis goes away, one as it answers
#: again: never one per call).
log = logging.getLogger("resilient.fleet")

#: Seconds after a failed operation during which policies do not try Redis again: they
#: use their local state at once, so an outage costs one operation timeout a second, not
#: one a call. The first call after it tries Redis again (no probe thread needed).
RETRY_AFTER = 1.0

#: The fleet's GCRA (docs/ratelimit.md has the algorithm). One key per limiter holds
#: "<stamp> <ahead>": the server's time in whole microseconds when it was written, and how
#: far the schedule (the theoretical arrival time of the next call) was ahead of it. Kept
#: as an offset from a stamp rather than as an absolute time, the sums stay small numbers:
#: a double near 1.7e15 us (today, from 1970) has a step of 0.25 us, and adding an interval
#: of 1/3 s to it a million times would drift the rate. The key expires when the schedule
#: catches up with the clock: from then on a missing key means the same (a full burst).
#: A value that does not parse (or none, after FLUSHALL) starts afresh: a full burst.
#: Replies: admitted (1 or 0), the wait (us, as text: Redis truncates Lua numbers to
#: integers), the server's time (us) and how far ahead the schedule now is (us, as text);
#: with ARGV[3] = "1" (a policy's call, which needs no diagnostics) an admission is the
#: integer 1 alone: a quarter of the reply to parse on the path taken most.
GCRA_SCRIPT = """\
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local ahead = 0
local kept = redis.call('GET', KEYS[1])
if kept then
  local stamp, was = string.match(kept, '^(%d+) (%S+)$')
  if stamp and tonumber(was) then
    ahead = tonumber(was) - (now - tonumber(stamp))
  end
end
if ahead < 0 then ahead = 0 end
if ahead <= tolerance + interval * 1e-9 then
  ahead = ahead + interval
  redis.call('SET', KEYS[1], string.format('%d %.17g', now, ahead),
             'PX', string.format('%d', math.ceil(ahead / 1000)))
  if ARGV[3] == '1' then return 1 end
  return {1, '0', now, string.format('%.17g', ahead)}
end
return {0, string.format('%.17g', ahead - tolerance), now, string.format('%.17g', ahead)}
"""
_GCRA_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()

#: What a URL may not set: the backend's own bound on an operation, and no retries.
_OURS = ("socket_timeout", "socket_connect_timeout", "retry_on_timeout", "retry_on_error")
_MAX_TIMEOUT = 60.0
_MAX_PREFIX = 100


class Admission(NamedTuple):
    """The fleet's answer to one call: admitted or not, and the seconds until it would
    be (0 when admitted); with the server's time (microseconds since 1970) and how far
    ahead of it the schedule is (microseconds), for tests and diagnostics."""

    admitted: bool
    retry_after: float
    now_us: int
    ahead_us: float


def _check_timeout(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0.0 < value <= _MAX_TIMEOUT
    ):
        raise ConfigError(
            "timeout",
            value,
            f"seconds per Redis operation, a number > 0 and at most {_MAX_TIMEOUT:g}"
            " (tens of milliseconds: what an outage may cost each call)",
            owner="RedisBackend",
        )
    return float(value)


def _check_prefix(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= _MAX_PREFIX
        or not value.isprintable()
        or any(c in value for c in "{} ")
    ):
        raise ConfigError(
            "prefix",
            value,
            f"a non-empty string of at most {_MAX_PREFIX} printable characters, without"
            " spaces, '{' or '}' (the policy's name is the keys' hash tag)",
            owner="RedisBackend",
        )
    return value


def _options(url: str, timeout: float) -> dict[str, Any]:
    """The keyword arguments for the clients of ``url``: the URL checked, and our
    timeout with no retries in place of redis-py's defaults."""
    try:
        given = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ConfigError("url", url, str(exc), owner="RedisBackend") from None
    ours = sorted(set(given) & set(_OURS))
    if ours:
        raise ConfigError(
            "url",
            url,
            f"a Redis URL without {', '.join(ours)}: the backend's timeout= bounds each"
            " operation, and it never retries (a retry is the caller's decision)",
            owner="RedisBackend",
        )
    try:  # a connection made, not connected: what its class does not take, refused now
        redis.ConnectionPool.from_url(url).make_connection()
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            "url",
            url,
            f"a Redis URL whose query arguments redis-py's connections take ({exc})",
            owner="RedisBackend",
        ) from None
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry_on_timeout": False,
        "retry_on_error": [],
    }


def check_url(url: str) -> None:
    """ConfigError unless ``url`` is a Redis URL a backend can be made from."""
    _options(url, 0.05)


class RedisBackend:
    """Fleet-wide state in one Redis: what processes sharing a policy agree on.

    ``client_or_url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL, or a redis-py
    client (``redis.Redis`` for sync calls, ``redis.asyncio.Redis`` for async ones). From a
    URL the backend makes both, with ``timeout`` seconds (default 0.05) per connect and
    per read and no retries; a client given is used as it is. ``prefix`` starts every key.
    """

    def __init__(
        self,
        client_or_url: str | redis.Redis | redis.asyncio.Redis,
        *,
        prefix: str = "resilient",
        timeout: float = 0.05,
    ) -> None:
        self.timeout = _check_timeout(timeout)
        self.prefix = _check_prefix(prefix)
        self._url: str | None = None
        self._sync: redis.Redis | None = None
        self._async: redis.asyncio.Redis | None = None
        # From a URL: one async client per event loop (redis.asyncio's connections belong
        # to the loop that opened them), dropped with the loop.
        # (each with the async generator that closes it as its loop shuts down)
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]]
        self._by_loop = weakref.WeakKeyDictionary()
        if isinstance(client_or_url, str):
            self._options = _options(client_or_url, self.timeout)
            self._url = client_or_url
            self._sync = redis.Redis.from_url(
                client_or_url, retry=Retry(NoBackoff(), 0), **self._options
            )
        elif isinstance(client_or_url, redis.asyncio.Redis):
            self._async = client_or_url
        elif isinstance(client_or_url, redis.Redis):
            self._sync = client_or_url
        else:
            raise ConfigError(
                "client_or_url",
                client_or_url,
                "a Redis URL (redis://host:port/db) or a redis.Redis or redis.asyncio.Redis",
                owner="RedisBackend",
            )
        # The outage, shared by every policy on this backend: what failed (None while
        # Redis answers), and until when (time.monotonic) nobody tries it again.
        self._outage_lock = threading.Lock()
        self._away: str | None = None
        self._retry_at = 0.0
        self._told_trio = False
        #: Where breakers publish their changes: one channel per prefix and database
        #: serves them all (channels are not per database in Redis: the number is in
        #: the name, so services on databases of their own never hear each other).
        self.channel = f"{self.prefix}:changes:{self._database()}"
        self.who = _who()
        # The breakers linked, by name (a process may hold several of one name: each is
        # told; a list is replaced, never changed in place, so the listener reads it
        # without the lock), and every policy on the backend (told of outages).
        self._links: dict[str, list[BreakerLink]] = {}
        self._links_lock = threading.Lock()
        self._policies: weakref.WeakSet[Any] = weakref.WeakSet()
        self._worker: _Worker | None = None
        self._worker_lock = threading.Lock()
        _backends.add(self)

    def _database(self) -> int:
        client: Any = self._sync if self._sync is not None else self._async
        return int(client.connection_pool.connection_kwargs.get("db", 0) or 0)

    def __repr__(self) -> str:
        where = self._url if self._url is not None else repr(self._sync or self._async)
        return f"RedisBackend({where!r}, prefix={self.prefix!r}, timeout={self.timeout:g})"

    def key(self, name: str, what: str) -> str:
        """The key of ``what`` for the policy ``name``: ``{prefix}:{name}:what``."""
        if (
            not isinstance(name, str)
            or not name
            or "{" in name
            or "}" in name
            or not name.isprintable()
        ):
            raise ConfigError(
                "name",
                name,
                "a non-empty policy name without '{' or '}' (it is the keys' hash tag) and"
                " without control characters such as a newline (it is told in messages)",
                owner="RedisBackend",
            )
        return f"{self.prefix}:{{{name}}}:{what}"

    # -- the clients --------------------------------------------------------------------

    def _client(self) -> redis.Redis:
        if self._sync is None:
            raise TypeError(
                "this RedisBackend was given a redis.asyncio client: its calls are async"
                " (acquire_async); give it a URL or a redis.Redis for sync calls"
            )
        return self._sync

    async def _client_async(self) -> redis.asyncio.Redis:
        """The async client: the one given, or this event loop's own (made from the URL
        on first use, and closed as the loop shuts down its async generators, which
        asyncio.run() and asyncio.Runner do: a loop that ends leaves no connection)."""
        if self._async is not None:
            return self._async
        if self._url is None:
            raise TypeError(
                "this RedisBackend was given a sync redis.Redis: its calls are sync"
                " (acquire); give it a URL or a redis.asyncio.Redis for async calls"
            )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "RedisBackend's async calls run on asyncio (redis.asyncio), and no asyncio"
                " event loop is running here"
            ) from None
        kept = self._by_loop.get(loop)
        if kept is not None:
            return kept[0]  # type: ignore[no-any-return]
        client = redis.asyncio.Redis.from_url(
            self._url, retry=AsyncRetry(NoBackoff(), 0), **self._options
        )
        closer = self._closer(loop, client)
        await closer.__anext__()  # (started: the loop's asyncgen hooks now track it)
        self._by_loop[loop] = (client, closer)
        return client

    async def _closer(
        self, loop: asyncio.AbstractEventLoop, client: redis.asyncio.Redis
    ) -> AsyncIterator[None]:
        """Suspended until the loop shuts its async generators down (or aclose()):
        then the loop's client is closed, while the loop still runs."""
        try:
            yield
        finally:
            if self._by_loop.get(loop, (None,))[0] is client:
                del self._by_loop[loop]
            await client.aclose()

    def close(self) -> None:
        """Stop the worker threads (if breakers started them) and close the connections
        of the sync client the backend made (a client given is left open: it is yours).
        Async clients close with :meth:`aclose`."""
        with self._worker_lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
        if self._url is not None and self._sync is not None:
            self._sync.close()

    # -- policies on the backend ------------------------------------------------------

    def attach(self, policy: Any) -> None:
        """``policy`` uses this backend: it hears of outages (events)."""
        self._policies.add(policy)

    def link(self, breaker: Any) -> BreakerLink:
        """Tie ``breaker`` (named) to the fleet: its changes go to Redis, the fleet's
        come back to it. Started here: the worker threads (a sync client is needed),
        subscribed when this returns (waited for at most ``timeout``), so the state
        the breaker reads next misses no change."""
        if self._sync is None:
            raise ConfigError(
                "backend",
                self,
                "a backend made from a URL or a redis.Redis for a CircuitBreaker: the fleet's"
                " changes reach it through a worker thread, which needs a sync client",
                owner=f"CircuitBreaker({breaker.name!r})",
            )
        link = BreakerLink(self, breaker)
        self.attach(breaker)
        with self._links_lock:
            self._links[link.name] = [*self._links.get(link.name, ()), link]
        worker = self._running()
        if self._usable():  # (bounded by the timeout; not at all while Redis is away)
            worker.listening.wait(self.timeout)
        return link

    def unlink(self, link: BreakerLink) -> None:
        with self._links_lock:
            kept = [other for other in self._links.get(link.name, ()) if other is not link]
            if kept:
                self._links[link.name] = kept
            else:
                self._links.pop(link.name, None)

    def _linked(self) -> list[BreakerLink]:
        """Every link whose breaker is alive (the others forgotten)."""
        with self._links_lock:
            for name, links in list(self._links.items()):
                alive = [link for link in links if link.ref() is not None]
                if len(alive) != len(links):
                    if alive:
                        self._links[name] = alive
                    else:
                        del self._links[name]
            return [link for links in self._links.values() for link in links]

    def _running(self) -> _Worker:
        """The worker of this process, started if needed (again in a forked child)."""
        worker = self._worker
        if worker is None or worker.pid != os.getpid():
            with self._worker_lock:
                worker = self._worker
                if worker is None or worker.pid != os.getpid():
                    worker = self._worker = _Worker(self)
        return worker

    def _enqueue(self, link: BreakerLink, command: str, args: tuple[str, ...]) -> None:
        self._running().queue.put((link, command, args))

    def _tell(self, event: type, **fields: Any) -> None:
        """An outage's event (or the recovery's) to every policy on the backend."""
        from resilient._core.configuration import events

        for policy in list(self._policies):
            plan = getattr(policy, "_plan", None)
            now = getattr(plan, "now", time.monotonic)
            try:
                events.emit(policy, event(policy, now(), repr(self), **fields))
            except Exception:  # pragma: no cover - listeners are guarded by events
                pass

    async def aclose(self) -> None:
        """Close the connections the backend opened on this event loop."""
        if self._url is None:
            return
        kept = self._by_loop.pop(asyncio.get_running_loop(), None)
        if kept is not None:
            await kept[1].aclose()  # (its finally closes the client)

    # -- outages: what the policies report, told once each way -------------------------

    def _usable(self) -> bool:
        """Whether to try Redis now: it answers, or the back-off after a failure is over."""
        return self._away is None or self._retry_at <= time.monotonic()

    def _lost(self, error: BaseException) -> None:
        """An operation failed: policies go local for :data:`RETRY_AFTER` seconds; the
        first failure of an outage is told (WARNING), the rest are not."""
        with self._outage_lock:
            self._retry_at = time.monotonic() + RETRY_AFTER
            if self._away is not None:
                return
            self._away = away = f"{type(error).__name__}: {error}"
        log.warning(
            "%r: Redis is away (%s); policies on it use their local state, and try Redis"
            " again every %gs",
            self,
            away,
            RETRY_AFTER,
        )
        from resilient.events import FleetUnavailable

        self._tell(FleetUnavailable, error=away)

    def _answered(self) -> None:
        """An operation succeeded: if Redis was away, it is back (told once)."""
        if self._away is None:
            return
        with self._outage_lock:
            was, self._away = self._away, None
        if was is not None:
            log.warning("%r: Redis answers again; policies on it share its state again", self)
            from resilient.events import FleetRestored

            self._tell(FleetRestored)

    def _reachable_async(self) -> bool:
        """Whether a task here can reach Redis: on asyncio through redis.asyncio, else
        (trio; or a sync client given) through the sync client in a worker thread. Only
        a redis.asyncio client given, off asyncio, cannot: the policies then use their
        local state (told once per backend)."""
        if self._sync is not None or _on_asyncio():
            return True
        if not self._told_trio:
            self._told_trio = True
            log.warning(
                "%r: async calls off asyncio (trio) cannot use the redis.asyncio client"
                " given; they use the policies' local state (give the backend a URL or a"
                " redis.Redis to reach Redis from trio)",
                self,
            )
        return False

    def _attempt(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, an operation on Redis, or :data:`AWAY` when Redis is away (in
        its back-off) or the operation fails: every policy's one way to ask Redis, so an
        outage is told once (the first failure) and so is the recovery."""
        if not self._usable():
            return AWAY
        try:
            value = fn(*args)
        except Exception as error:  # redis-py's, or a client given that cannot
            self._lost(error)
            return AWAY
        self._answered()
        return value

    async def _attempt_async(self, fn: Callable[..., Any], *args: Any) -> Any:
        """:meth:`_attempt` of ``await fn(*args)``, from a task that can reach Redis."""
        if not self._usable() or not self._reachable_async():
            return AWAY
        try:
            value = await fn(*args)
        except Exception as error:
            self._lost(error)
            return AWAY
        self._answered()
        return value

    async def _run_async(self, on_asyncio: Any, in_thread: Any, *args: Any) -> Any:
        """``await on_asyncio(*args)`` on asyncio with an async client (a URL's, or one
        given); else ``in_thread(*args)`` with the sync client, in a worker thread."""
        if _on_asyncio() and (self._url is not None or self._async is not None):
            return await on_asyncio(*args)
        import anyio.to_thread

        return await anyio.to_thread.run_sync(in_thread, *args)

    # -- scripts ------------------------------------------------------------------------

    @staticmethod
    def _script(
        client: redis.Redis, script: str, sha: str, keys: tuple[str, ...], *args: str
    ) -> Any:
        """EVALSHA (the script's text sent once per server); on NOSCRIPT (a new server,
        a restart, SCRIPT FLUSH) EVAL, which runs it and caches it in one round trip."""
        try:
            return client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(script, len(keys), *keys, *args)

    @staticmethod
    async def _script_async(
        client: redis.asyncio.Redis, script: str, sha: str, keys: tuple[str, ...], *args: str
    ) -> Any:
        try:
            return await client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(script, len(keys), *keys, *args)

    # -- the fleet's GCRA ---------------------------------------------------------------

    def _gcra_call(
        self, name: str, interval: float, tolerance: float, lean: bool = False
    ) -> tuple[str, ...]:
        """The script's key and arguments for a limiter (a policy makes them once)."""
        if not 0.0 < interval < math.inf or not 0.0 <= tolerance < math.inf:
            raise ValueError(
                f"interval must be > 0 and tolerance >= 0, both finite seconds;"
                f" got interval={interval!r}, tolerance={tolerance!r}"
            )
        key = self.key(name, "gcra")
        return key, repr(interval * 1e6), repr(tolerance * 1e6), "1" if lean else "0"

    @staticmethod
    def _admission(reply: Any) -> Admission:
        admitted, wait, now, ahead = reply
        return Admission(admitted == 1, float(wait) / 1e6, int(now), float(ahead))

    def gcra(self, name: str, interval: float, tolerance: float) -> Admission:
        """One call through the fleet's GCRA for the limiter ``name``: calls spaced
        ``interval`` seconds apart, each up to ``tolerance`` early (``(burst - 1) *
        interval``). One round trip; redis-py's errors raised as they are."""
        key, *args = self._gcra_call(name, interval, tolerance)
        return self._admission(self._script(self._client(), GCRA_SCRIPT, _GCRA_SHA, (key,), *args))

    async def gcra_async(self, name: str, interval: float, tolerance: float) -> Admission:
        """:meth:`gcra` on asyncio."""
        key, *args = self._gcra_call(name, interval, tolerance)
        client = await self._client_async()
        reply = await self._script_async(client, GCRA_SCRIPT, _GCRA_SHA, (key,), *args)
        return self._admission(reply)

    def acquire(self, name: str, interval: float, tolerance: float) -> tuple[bool, float]:
        """(admitted, retry_after): :meth:`gcra`'s answer, without the diagnostics."""
        wait = self._admit(self._gcra_call(name, interval, tolerance, lean=True))
        return wait is None, wait or 0.0

    async def acquire_async(
        self, name: str, interval: float, tolerance: float
    ) -> tuple[bool, float]:
        """:meth:`acquire` on asyncio."""
        wait = await self._admit_async(self._gcra_call(name, interval, tolerance, lean=True))
        return wait is None, wait or 0.0

    def _admit(self, call: tuple[str, ...]) -> float | None:
        """A policy's call through the GCRA, its key and arguments made beforehand
        (:meth:`_gcra_call`, lean): None when admitted, else the seconds to wait."""
        key, *args = call
        reply = self._script(self._client(), GCRA_SCRIPT, _GCRA_SHA, (key,), *args)
        return None if reply == 1 else float(reply[1]) / 1e6

    async def _admit_async(self, call: tuple[str, ...]) -> float | None:
        key, *args = call
        client = await self._client_async()
        reply = await self._script_async(client, GCRA_SCRIPT, _GCRA_SHA, (key,), *args)
        return None if reply == 1 else float(reply[1]) / 1e6


def resolve(policy: Any, settings: Any) -> RedisBackend | None:
    """A policy's ``backend`` setting as a backend (a URL: the one backend of that URL
    in this process), checked against the policy: it needs a name the keys can carry.
    None for an unnamed policy whose backend a DEFAULT variable set: the fleet shares
    named policies, and a DEFAULT variable must not break the unnamed ones (a library's
    own, say), which stay this process's."""
    from resilient._core.configuration.config import default_variable

    option, value = settings.blame("backend")
    if policy.name is None and option == default_variable(policy.KIND, "backend"):
        return None
    if policy.name is None:
        raise ConfigError(
            option,
            value,
            f"a backend for a named {type(policy).__name__} (name=...): the name is what the"
            " fleet's processes share in Redis",
            owner=policy._owner(),
        )
    backend = settings["backend"]
    if isinstance(backend, str):
        backend = backend_for(backend)
    assert isinstance(backend, RedisBackend)
    backend.key(policy.name, "state")  # a name the keys cannot carry: its ConfigError now
    return backend


#: Every backend of the process: a forked child restarts the workers of those with
#: breakers linked (the parent's threads do not exist in the child).
_backends: weakref.WeakSet[RedisBackend] = weakref.WeakSet()


def _after_fork() -> None:
    for backend in list(_backends):
        backend._worker_lock = threading.Lock()
        backend._outage_lock = threading.Lock()
        backend._links_lock = threading.Lock()
        backend._worker = None
        backend._by_loop = weakref.WeakKeyDictionary()
        for link in backend._linked():
            # The parent's queued changes are not the child's, nor its deferred messages
            # (and a lock held in another thread at the fork would stay held): the child
            # starts afresh and takes the fleet's state at the next refresh.
            link._lock = threading.Lock()
            link.pending = link.chained = link.known = 0
            link.deferred = None
        if backend._linked():
            backend._running()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

_by_url: dict[str, RedisBackend] = {}
_by_url_lock = threading.Lock()


def backend_for(url: str) -> RedisBackend:
    """The backend of ``url`` with the default prefix and timeout, one per URL in a
    process: what a policy configured with a URL (an environment variable) uses, so
    policies on one URL share its connections and its outages."""
    with _by_url_lock:
        backend = _by_url.get(url)
        if backend is None:
            backend = _by_url[url] = RedisBackend(url)
        return backend


# -- the fleet's circuit breakers -------------------------------------------------------
#
# Decide locally, agree in Redis. Each process keeps its window (lock-free, no Redis on
# the CLOSED path) and decides to open from it; what the fleet shares is small: the
# state, its generation, the open-until time on the server's clock, the half-open probe
# permits and the times opened. Each change is one run of BREAKER_SCRIPT, which checks
# the generation the process saw (a stale process cannot undo a newer state), and
# publishes the change; every process adopts it. A worker thread per backend runs the
# changes (off the caller's path), listens, and reads every breaker once a second (the
# backstop for a message missed). Only a half-open probe asks Redis in a call's way.

#: One script for every change of a breaker's shared state, dispatched on ARGV[1]:
#:
#: - ``read``: the state, nothing written.
#: - ``open <gen> <open_for_ms> <reason>``: open, if the state is still the generation
#:   the caller saw (or the hash is missing: FLUSHALL, expiry) and closed or half_open.
#: - ``probe <half_open_calls> <lease_ms>``: a half-open permit: an OPEN spell that has
#:   ended turns half_open and gives the first; then up to ``half_open_calls`` in all.
#:   A spell whose permits are all out for longer than ``lease_ms`` (a probe's process
#:   died) starts again.
#: - ``probed <gen> <outcome> <half_open_calls> <failure_rate> <slow_rate> <reopen_ms>``:
#:   a probe's outcome (ok, fail, slow_ok, slow_fail, or none: a permit given back); the
#:   last one closes or reopens.
#: - ``close <gen> <reason>``: close a half-open spell, if it is still the generation
#:   the caller saw (a process whose probes decided it without the script: a reload
#:   that needs fewer probes, or Redis away as they reported).
#: - ``force <state> <reason>``: forced_open, or closed (a reset).
#:
#: ``opened`` counts the spells in a row, as one breaker's ``times_opened`` does: every
#: close (the probes', or a reset) forgets it. Each change: generation = max(gen + 1,
#: the server's time in us), so generations grow across a FLUSHALL or a restart too;
#: the hash and the history stream expire a day after the change (or after an open
#: spell, if longer); the change is appended to the history (XADD MAXLEN ~ 100) and
#: published on the channel (ARGV[2]) as
#: "name\nstate\ngen\nleft_ms\nopened\nby\nreason". Every answer:
#: {state, gen (text: Lua numbers are truncated to integers), left_ms, opened, permit,
#: by, why} (who made the last change, and why).
BREAKER_SCRIPT = """\
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h, log = KEYS[1], KEYS[2]
local cmd, channel, name, by = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local s = redis.call('HMGET', h, 'state', 'gen', 'until', 'opened', 'probes', 'passed',
                     'failed', 'slow', 'since', 'why', 'by')
local fresh = not s[1]
local state = s[1] or 'closed'
local gen = tonumber(s[2]) or 0
local until_ms = tonumber(s[3]) or 0
local opened = tonumber(s[4]) or 0
local probes = tonumber(s[5]) or 0
local passed = tonumber(s[6]) or 0
local failed = tonumber(s[7]) or 0
local slow = tonumber(s[8]) or 0
local since = tonumber(s[9]) or 0
local why, who = s[10] or '', s[11] or ''
local DAY = 86400000

local function left()
  if state == 'open' and until_ms > now_ms then return until_ms - now_ms end
  return 0
end
local function answer(permit)
  return {state, string.format('%d', gen), left(), opened, permit, who, why}
end
local function counts()
  redis.call('HSET', h, 'probes', string.format('%d', probes),
             'passed', string.format('%d', passed), 'failed', string.format('%d', failed),
             'slow', string.format('%d', slow))
end
local function move(new, reason, open_ms)
  local old = state
  state = new
  gen = math.max(gen + 1, now_us)
  probes, passed, failed, slow, since, why, who = 0, 0, 0, 0, now_ms, reason, by
  if new == 'open' then
    until_ms = now_ms + open_ms
    opened = opened + 1
  elseif new == 'closed' then
    opened = 0  -- spells in a row, as one process counts them: a close ends the run
  end
  local ttl = DAY + left()
  redis.call('HSET', h, 'state', state, 'gen', string.format('%d', gen),
             'until', string.format('%d', until_ms), 'opened', string.format('%d', opened),
             'since', string.format('%d', since), 'why', why, 'by', who)
  counts()
  redis.call('PEXPIRE', h, ttl)
  redis.call('XADD', log, 'MAXLEN', '~', '100', '*', 'from', old, 'to', state,
             'gen', string.format('%d', gen), 'left_ms', string.format('%d', left()),
             'opened', string.format('%d', opened), 'by', by, 'reason', reason)
  redis.call('PEXPIRE', log, ttl)
  redis.call('PUBLISH', channel, table.concat({name, state, string.format('%d', gen),
             string.format('%d', left()), string.format('%d', opened), by, reason}, '\\n'))
end

if cmd == 'read' then
  return answer(0)
elseif cmd == 'open' then
  if (fresh or s[2] == ARGV[5]) and (state == 'closed' or state == 'half_open') then
    move('open', ARGV[7], tonumber(ARGV[6]))
  end
  return answer(0)
elseif cmd == 'probe' then
  local calls, lease = tonumber(ARGV[5]), tonumber(ARGV[6])
  if state == 'open' and now_ms >= until_ms then
    move('half_open', 'open_for has passed')
  elseif state == 'half_open' and probes >= calls and now_ms - since >= lease then
    move('half_open', string.format('probes held their permits over %.3gs: a new spell',
                                    lease / 1000))
  elseif state ~= 'half_open' or probes >= calls then
    return answer(0)
  end
  probes = probes + 1
  redis.call('HSET', h, 'probes', string.format('%d', probes))
  return answer(1)
elseif cmd == 'probed' then
  if fresh or s[2] ~= ARGV[5] or state ~= 'half_open' then
    return answer(0)
  end
  local outcome, calls = ARGV[6], tonumber(ARGV[7])
  if outcome == 'none' then
    if probes > 0 then probes = probes - 1 end
    counts()
    return answer(0)
  end
  if outcome == 'fail' or outcome == 'slow_fail' then
    failed = failed + 1
  else
    passed = passed + 1
  end
  if outcome == 'slow_ok' or outcome == 'slow_fail' then slow = slow + 1 end
  local reported = passed + failed
  if reported < calls then
    counts()
    return answer(0)
  end
  local rate, slow_rate = tonumber(ARGV[8]), tonumber(ARGV[9])
  if failed / reported >= rate then
    move('open', string.format('%d of %d probes failed, at or over failure_rate=%g',
                               failed, reported, rate), tonumber(ARGV[10]))
  elseif slow / reported >= slow_rate then
    move('open', string.format('%d of %d probes were slow, at or over slow_call_rate=%g',
                               slow, reported, slow_rate), tonumber(ARGV[10]))
  else
    move('closed', string.format('%d of %d probes succeeded', passed, reported))
  end
  return answer(0)
elseif cmd == 'close' then
  if not fresh and s[2] == ARGV[5] and state == 'half_open' then
    move('closed', ARGV[6])
  end
  return answer(0)
elseif cmd == 'force' then
  move(ARGV[5], ARGV[6], 0)
  return answer(0)
end
return redis.error_reply('unknown command ' .. tostring(cmd))
"""
_BREAKER_SHA = hashlib.sha1(BREAKER_SCRIPT.encode()).hexdigest()


class Shared(NamedTuple):
    """A breaker's state as the fleet shares it: ``state`` (closed, open, half_open,
    forced_open), its generation, the seconds an OPEN spell has left (on the server's
    clock, when it answered), the times opened, whether the answer gives a half-open
    permit, and, for a change told by another process, who made it and why."""

    state: str
    gen: int
    left: float
    opened: int
    permit: bool = False
    by: str = ""
    reason: str = ""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _shared(reply: Any) -> Shared:
    state, gen, left_ms, opened, permit, by, why = reply
    return Shared(
        _text(state),
        int(gen),
        int(left_ms) / 1000.0,
        int(opened),
        permit == 1,
        _text(by),
        _text(why),
    )


#: Who makes a change, in the history and the messages: host and process.
def _who() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class BreakerLink:
    """One breaker's tie to its backend: the keys, and the generation it last saw.

    The breaker calls :meth:`probe` (or :meth:`probe_async`) for a half-open permit and
    :meth:`send` for a change it made; the backend's worker calls the breaker's
    ``_fleet_adopt`` with each change the fleet makes. The link holds the breaker weakly:
    a breaker dropped is forgotten by the worker."""

    def __init__(self, backend: RedisBackend, breaker: Any) -> None:
        self.backend = backend
        self.name: str = breaker.name
        self.keys = (backend.key(self.name, "breaker"), backend.key(self.name, "history"))
        self.ref = weakref.ref(breaker)
        self.known = 0  # the generation last adopted (0: none yet)
        # This breaker's own changes sent and not yet answered, and the generation the
        # last answer gave: a change made while others are queued builds on theirs.
        self.pending = 0
        self.chained = 0
        # The newest change of another process told while this breaker's own were
        # queued: adopted after their answers (which it may be newer than).
        self.deferred: Shared | None = None
        self._lock = threading.Lock()

    def _args(self, command: str, *args: str) -> tuple[str, ...]:
        return (command, self.backend.channel, self.name, self.backend.who, *args)

    def run(self, command: str, *args: str) -> Shared:
        """One run of the script, sync (redis-py's errors raised as they are)."""
        reply = self.backend._script(
            self.backend._client(),
            BREAKER_SCRIPT,
            _BREAKER_SHA,
            self.keys,
            *self._args(command, *args),
        )
        return _shared(reply)

    async def run_async(self, command: str, *args: str) -> Shared:
        reply = await self.backend._script_async(
            await self.backend._client_async(),
            BREAKER_SCRIPT,
            _BREAKER_SHA,
            self.keys,
            *self._args(command, *args),
        )
        return _shared(reply)

    def ask(self, command: str, *args: str) -> Shared | None:
        """:meth:`run` in a call's way: None when Redis is away (the breaker decides
        locally), the outage told by the backend."""
        shared = self.backend._attempt(self.run, command, *args)
        return None if shared is AWAY else shared

    async def ask_async(
        self,
        command: str,
        *args: str,
        abandoned: Callable[[Shared], object] | None = None,
    ) -> Shared | None:
        """:meth:`ask` for a task: on asyncio through redis.asyncio (a URL's clients);
        elsewhere (trio, or a sync client given) the sync client in a worker thread.
        ``abandoned``: called with the answer if the task is cancelled while the script
        runs on asyncio (a permit the server gave must be given back): the script runs
        in a task of its own, shielded, so the answer is still read."""
        shared = await self.backend._attempt_async(self._asking, command, args, abandoned)
        return None if shared is AWAY else shared

    async def _asking(
        self, command: str, args: tuple[str, ...], abandoned: Callable[[Shared], object] | None
    ) -> Shared:
        asking = self.backend._run_async(self.run_async, self.run, command, *args)
        if abandoned is None or not _on_asyncio():
            return await asking  # type: ignore[no-any-return]
        task = asyncio.ensure_future(asking)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(functools.partial(_abandon, abandoned))
            raise

    def history(self, count: int) -> list[dict[str, Any]]:
        """The fleet's last ``count`` changes of this breaker, oldest first (from the
        stream; [] when Redis is away): when (server time, seconds), from, to, why, by
        whom, the generation, the seconds an open spell had, the times opened."""
        backend = self.backend
        rows = backend._attempt(lambda: backend._client().xrevrange(self.keys[1], count=count))
        if rows is AWAY:
            return []
        changes = []
        for entry_id, fields in reversed(rows):
            text = {k.decode(): v.decode() for k, v in fields.items()}
            stamp = entry_id.decode().partition("-")[0]
            changes.append(
                {
                    "at": int(stamp) / 1000.0,
                    "from": text.get("from", ""),
                    "to": text.get("to", ""),
                    "reason": text.get("reason", ""),
                    "by": text.get("by", ""),
                    "gen": int(text.get("gen", 0)),
                    "open_for_seconds": int(text.get("left_ms", 0)) / 1000.0,
                    "times_opened": int(text.get("opened", 0)),
                }
            )
        return changes

    def send(self, command: str, *args: str) -> None:
        """A change this process made, for the worker to agree in Redis (off the call's
        path); the worker hands the answer to the breaker. A trip made while changes of
        its own are still queued (a reset(), then failures at once) names no generation
        of its own: it builds on the one the change before it leaves (:data:`_CHAIN`),
        which the process has not seen yet."""
        with self._lock:
            if self.pending and command == "open":
                args = (_CHAIN, *args[1:])
            self.pending += 1
        self.backend._enqueue(self, command, args)

    def _answered(self, shared: Shared | None) -> tuple[bool, Shared | None]:
        """One of this breaker's changes answered (None: not sent): whether it was the
        last one queued (only then is its answer the state to adopt: an earlier one
        would undo a change made here since), and then what others told meanwhile."""
        with self._lock:
            self.pending -= 1
            if shared is not None:
                self.chained = shared.gen
            if self.pending:
                return False, None
            deferred, self.deferred = self.deferred, None
            return True, deferred

    def _defer(self, shared: Shared) -> bool:
        """Keep another process's change for later if this breaker's own are queued."""
        with self._lock:
            if not self.pending:
                return False
            if self.deferred is None or shared.gen > self.deferred.gen:
                self.deferred = shared
            return True

    def _chain(self, args: tuple[str, ...]) -> tuple[str, ...]:
        if args and args[0] == _CHAIN:
            return (str(self.chained or self.known), *args[1:])
        return args


def _abandon(abandoned: Callable[[Shared], object], task: asyncio.Future[Shared]) -> None:
    """A probe's task, done after its caller was cancelled: its answer handed on."""
    if task.cancelled() or task.exception() is not None:
        return  # (nothing given: the script did not answer)
    try:
        abandoned(task.result())
    except Exception:  # pragma: no cover - a defect of ours, told, never fatal
        log.exception("handing back an abandoned probe's answer failed")


#: What :meth:`RedisBackend._attempt` answers when Redis could not be asked.
AWAY: Any = object()

#: In a queued ``open``, for the generation: the one the change queued before it leaves.
_CHAIN = "chain"


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


#: How often the worker reads every breaker on its backend: the backstop for a message
#: missed (a reconnect, a subscriber that was away), and how soon Redis is tried again
#: after an outage (besides RETRY_AFTER's first call).
REFRESH = 1.0
#: How long the listener waits for a message before it looks whether to stop: what
#: ``close()`` may wait for it (a wait on the socket, no command to Redis).
_LISTEN_POLL = 0.1


class _Worker:
    """A backend's two daemon threads: one runs the changes the breakers made (a queue)
    and reads every breaker once a second; one listens on the channel. Started on the
    first breaker linked, in the process that links it (a forked child starts its own),
    stopped by ``RedisBackend.close()``."""

    def __init__(self, backend: RedisBackend) -> None:
        import queue

        self.backend = backend
        self.pid = os.getpid()
        self.queue: queue.SimpleQueue[tuple[BreakerLink, str, tuple[str, ...]] | None]
        self.queue = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.pubsub: Any = None
        #: Set once Redis confirms the subscription (cleared when the connection fails):
        #: a breaker linked waits for it before it reads the state (RedisBackend.link),
        #: so no change falls between its read and the first message it can hear.
        self.listening = threading.Event()
        self.threads = [
            threading.Thread(
                target=self._send, name=f"resilient-fleet-send {backend.prefix}", daemon=True
            ),
            threading.Thread(
                target=self._listen, name=f"resilient-fleet-listen {backend.prefix}", daemon=True
            ),
        ]
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        self.queue.put(None)
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    # -- the changes, and the refresh ---------------------------------------------------

    def _send(self) -> None:
        import queue

        next_refresh = time.monotonic() + REFRESH
        while not self.stopping.is_set():
            try:
                item = self.queue.get(timeout=max(0.0, next_refresh - time.monotonic()))
            except queue.Empty:
                item = None
            if self.stopping.is_set():
                return
            if item is not None:
                link, command, args = item
                self._run(link, command, args)
            if time.monotonic() >= next_refresh:
                self._refresh()
                next_refresh = time.monotonic() + REFRESH

    def _run(self, link: BreakerLink, command: str, args: tuple[str, ...]) -> None:
        shared = self.backend._attempt(link.run, command, *link._chain(args))
        if shared is AWAY:  # (the change stays this process's own)
            shared = None
        last, deferred = link._answered(shared)
        if shared is None:
            breaker = link.ref()
            if breaker is not None and command == "probed":
                breaker._fleet_unsent(link, int(args[0]))  # (its process decides)
        elif last:
            _hand(link, shared, answer=True)
        if deferred is not None:  # (adopted only if newer than what came before it)
            _hand(link, deferred, answer=True)

    def _refresh(self) -> None:
        """Every breaker of the backend, read in one pipelined round trip."""
        backend = self.backend
        links = backend._linked()
        if not links:
            return
        pipe = backend._client().pipeline(transaction=False)
        pipe.time()
        for link in links:
            pipe.hmget(link.keys[0], "state", "gen", "until", "opened", "by", "why")
        replies = backend._attempt(pipe.execute)
        if replies is AWAY:
            return
        now_s, now_us, *rows = self._timed(replies)
        now_ms = now_s * 1000 + now_us // 1000
        for link, row in zip(links, rows, strict=True):
            state, gen, until, opened, by, why = row
            if state is None:
                continue  # nothing shared (a FLUSHALL, an expiry): the next change writes it
            left = max(0, int(until or 0) - now_ms) if state == b"open" else 0
            shared = Shared(_text(state), int(gen), left / 1000.0, int(opened or 0))
            _hand(link, shared._replace(by=_text(by), reason=_text(why)))

    @staticmethod
    def _timed(replies: list[Any]) -> list[Any]:
        (seconds, micros), *rows = replies
        return [int(seconds), int(micros), *rows]

    # -- the channel --------------------------------------------------------------------

    def _listen(self) -> None:
        backend = self.backend
        while not self.stopping.is_set():
            pubsub = None
            try:
                pubsub = backend._client().pubsub()
                pubsub.subscribe(backend.channel)
                self.pubsub = pubsub
                while not self.stopping.is_set():
                    message = pubsub.get_message(timeout=_LISTEN_POLL)
                    kind = None if message is None else message.get("type")
                    if kind == "message":
                        self._heard(message["data"])
                    elif kind == "subscribe":  # Redis confirms: every change from now on
                        self.listening.set()
            except Exception as error:
                self.listening.clear()
                if self.stopping.is_set():
                    return
                if backend._usable():
                    backend._lost(error)
                self.stopping.wait(RETRY_AFTER)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass

    def _heard(self, data: bytes) -> None:
        try:
            name, state, gen, left_ms, opened, by, reason = data.decode().split("\n", 6)
            shared = Shared(state, int(gen), int(left_ms) / 1000.0, int(opened), False, by, reason)
        except ValueError:
            return  # not one of ours
        for link in self.backend._links.get(name, ()):
            _hand(link, shared)


def _hand(link: BreakerLink, shared: Shared, *, answer: bool = False) -> None:
    """Give the fleet's state to the breaker (if it still exists); an error of the
    breaker's (a listener's are caught there) never stops the worker. While changes of
    the breaker's own are queued, the others' wait for their answers (``_defer``)."""
    breaker = link.ref()
    if breaker is None or (not answer and link._defer(shared)):
        return
    try:
        breaker._fleet_adopt(link, shared)
    except Exception:  # pragma: no cover - a defect of ours, told, never fatal
        log.exception("%r: adopting %s for breaker %r failed", link.backend, shared, link.name)
