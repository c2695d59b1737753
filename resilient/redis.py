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
import hashlib
import logging
import math
import threading
import time
import weakref
from typing import Any, NamedTuple

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import NoScriptError
from redis.retry import Retry

from resilient._errors import ConfigError

__all__ = ["GCRA_SCRIPT", "RETRY_AFTER", "Admission", "RedisBackend", "backend_for", "check_url"]

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
#: integers), the server's time (us) and how far ahead the schedule now is (us, as text).
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
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis]
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

    def __repr__(self) -> str:
        where = self._url if self._url is not None else repr(self._sync or self._async)
        return f"RedisBackend({where!r}, prefix={self.prefix!r}, timeout={self.timeout:g})"

    def key(self, name: str, what: str) -> str:
        """The key of ``what`` for the policy ``name``: ``{prefix}:{name}:what``."""
        if not isinstance(name, str) or not name or "{" in name or "}" in name:
            raise ConfigError(
                "name",
                name,
                "a non-empty policy name without '{' or '}' (it is the keys' hash tag)",
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

    def _client_async(self) -> redis.asyncio.Redis:
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
        client = self._by_loop.get(loop)
        if client is None:
            client = redis.asyncio.Redis.from_url(
                self._url, retry=AsyncRetry(NoBackoff(), 0), **self._options
            )
            self._by_loop[loop] = client
        return client

    def close(self) -> None:
        """Close the connections of the sync client the backend made (a client given
        is left open: it is yours). Async clients close with :meth:`aclose`."""
        if self._url is not None and self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        """Close the connections the backend opened on this event loop."""
        if self._url is None:
            return
        client = self._by_loop.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

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
            self._away = f"{type(error).__name__}: {error}"
        log.warning(
            "%r: Redis is away (%s); policies on it use their local state, and try Redis"
            " again every %gs",
            self,
            self._away,
            RETRY_AFTER,
        )

    def _answered(self) -> None:
        """An operation succeeded: if Redis was away, it is back (told once)."""
        if self._away is None:
            return
        with self._outage_lock:
            was, self._away = self._away, None
        if was is not None:
            log.warning("%r: Redis answers again; policies on it share its state again", self)

    def _asyncio_running(self) -> bool:
        """Whether this task runs on asyncio: redis.asyncio cannot run on trio, where
        the policies use their local state (told once per backend)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if not self._told_trio:
                self._told_trio = True
                log.warning(
                    "%r: async calls off asyncio (trio) cannot reach Redis (redis.asyncio"
                    " runs on asyncio only); they use the policies' local state",
                    self,
                )
            return False
        return True

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

    def _gcra_call(self, name: str, interval: float, tolerance: float) -> tuple[str, ...]:
        if not 0.0 < interval < math.inf or not 0.0 <= tolerance < math.inf:
            raise ValueError(
                f"interval must be > 0 and tolerance >= 0, both finite seconds;"
                f" got interval={interval!r}, tolerance={tolerance!r}"
            )
        return self.key(name, "gcra"), repr(interval * 1e6), repr(tolerance * 1e6)

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
        client = self._client_async()
        reply = await self._script_async(client, GCRA_SCRIPT, _GCRA_SHA, (key,), *args)
        return self._admission(reply)

    def acquire(self, name: str, interval: float, tolerance: float) -> tuple[bool, float]:
        """(admitted, retry_after): :meth:`gcra`'s answer, without the diagnostics."""
        admission = self.gcra(name, interval, tolerance)
        return admission.admitted, admission.retry_after

    async def acquire_async(
        self, name: str, interval: float, tolerance: float
    ) -> tuple[bool, float]:
        """:meth:`acquire` on asyncio."""
        admission = await self.gcra_async(name, interval, tolerance)
        return admission.admitted, admission.retry_after


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
