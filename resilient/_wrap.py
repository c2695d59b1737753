"""wrap(): any client object behind a transparent proxy whose methods run through policies.

The proxy is a ``wrapt.ObjectProxy``: attributes, their assignment, ``isinstance``,
``repr``, ``==`` and the dunders pass through to the client. Only reading a public method
differs: it gives that method guarded by its policy, ``policy(client.method)``.

Which names are guarded is decided per name, on first read, from the client's class (and
again if the client's class changes): with ``methods=None`` (or a mapping) every public
method the class defines (a ``def`` or ``async def``, or a method of a compiled class),
except ``close``/``aclose``, classmethods, staticmethods, properties and generator
functions; with names, exactly those. Any callable may be named, instance attributes too.

The guarded method is cached per name, with the value it guards: a read compares that
value with what the client gives now (a bound method compares equal while it is the same
function on the same object), so a method patched on the instance or the class, or a
client swapped under the proxy, is guarded afresh rather than served stale. No lock: two
threads that miss at once each decorate, and either result is a correct guard (a policy
keeps its state on itself, never on a decorated function).

Cost: a call through the proxy costs about 0.45 µs more than ``policy(fn)`` decorated
once, and an attribute read about 0.4 µs, less than wrapt's own forwarding (0.55 µs),
which fails a lookup on the proxy before it asks the client (CPython 3.11,
``benchmarks/test_wrap.py``).

Not guarded, by design (docs/clients.md has the table): what the client calls on itself,
iteration after the call that opened it, and the work of an awaitable that a plain
``def`` returns (a plain ``def`` that returns a coroutine is guarded as async from its
first call on).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from functools import cached_property
from types import CodeType, CoroutineType, FunctionType, MethodType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

import wrapt

from resilient._core.configuration.options import (
    CO_ASYNC_GENERATOR,
    CO_GENERATOR,
    is_async_callable,
)
from resilient._core.execution.drivers import awaiting
from resilient._errors import ConfigError
from resilient._pipeline import Policy, is_policy

__all__ = ["wrap"]

T = TypeVar("T")

#: Closing the client is no call to the downstream: unguarded unless named in ``methods``.
LIFECYCLE = frozenset({"close", "aclose"})

_MISSING: Any = object()
_GENERATOR = CO_GENERATOR | CO_ASYNC_GENERATOR

POLICIES = (
    "a resilient policy (CircuitBreaker, Retry, Timeout, Bulkhead, Fallback, a Pipeline)"
    " or another resilient.Policy"
)


def class_attribute(cls: type, name: str) -> Any:
    """What ``cls`` defines under ``name`` (its own or inherited), unbound; _MISSING if none."""
    for klass in cls.__mro__:
        attributes = vars(klass)
        if name in attributes:
            return attributes[name]
    return _MISSING


def is_method(attribute: object) -> bool:
    """A class attribute that reads as a method of the instance: a function, or another
    callable that binds like one (a compiled method, a wrapt-decorated function)."""
    if isinstance(attribute, FunctionType):
        return True
    kind = type(attribute)
    return (
        callable(attribute)
        and hasattr(kind, "__get__")
        and not hasattr(kind, "__set__")  # a data descriptor is an attribute
        and not isinstance(attribute, (type, classmethod, staticmethod))
    )


def is_generator_function(value: object) -> bool:
    """Calling it only creates the generator: there is nothing to guard."""
    code = getattr(value, "__code__", None)
    return isinstance(code, CodeType) and bool(code.co_flags & _GENERATOR)


class Selection(NamedTuple):
    """Which methods wrap() guards, with which policy, decided per name."""

    policy: Policy
    #: The methods named in ``methods``, each with its policy.
    named: Mapping[str, Policy]
    #: Guard the other public methods too (``methods`` was None or a mapping).
    others: bool
    exclude: frozenset[str]

    def policy_for(self, cls: type, name: str) -> Policy | None:
        """For a public ``name`` (the proxy never asks about a ``_private`` one)."""
        policy = self.named.get(name)
        if policy is not None:
            return policy
        if (
            not self.others
            or name in self.exclude
            or name in LIFECYCLE
            or not is_method(class_attribute(cls, name))
        ):
            return None
        return self.policy


if TYPE_CHECKING:
    _Base = wrapt.ObjectProxy[Any]
else:
    _Base = wrapt.ObjectProxy

#: The proxy's own lookup: its ``_self_`` names and dunders, else its ``__getattr__``.
_proxy_attribute = _Base.__getattribute__
#: A plain lookup on the proxy object, for its ``__wrapped__`` and ``_self_guards``.
_own = object.__getattribute__


class Guards:
    """One proxy's selection, and what it decided and decorated so far."""

    __slots__ = ("decided", "guarded", "selection")

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        #: name -> (the value guarded, the guarded callable)
        self.guarded: dict[str, tuple[object, Callable[..., Any]]] = {}
        #: name -> (the client's class, the policy for that name, or None)
        self.decided: dict[str, tuple[type, Policy | None]] = {}


class GuardedProxy(_Base):
    """The client, its public methods guarded. Every name this class defines shadows the
    client's, so it defines dunders only (wrapt keeps ``_self_`` names on the proxy)."""

    def __init__(self, client: object, selection: Selection) -> None:
        super().__init__(client)
        self._self_guards = Guards(selection)

    # A public name is read from the client here, before the proxy's own lookup: that
    # lookup would fail first (the proxy has no public names) and raise an AttributeError
    # only to catch it, which costs more than the rest of the read. wrapt has no public
    # names of its own, so none is hidden.

    def __getattribute__(self, name: str) -> Any:
        if name[:1] == "_":
            return _proxy_attribute(self, name)
        client = _own(self, "__wrapped__")
        value = getattr(client, name)  # (an AttributeError: Python asks __getattr__)
        guards: Guards = _own(self, "_self_guards")
        entry = guards.guarded.get(name)
        if entry is not None and (
            entry[0] is value or (value.__class__ is MethodType and entry[0] == value)
        ):
            return entry[1]
        return _guarded(guards, client, name, value)

    def __getattr__(self, name: str) -> Any:
        # After the proxy's own lookup failed, or __getattribute__ raised: the client's
        # own error, as wrapt gives it (reading the attribute again, as wrapt does).
        return getattr(_own(self, "__wrapped__"), name)

    def __repr__(self) -> str:
        return repr(self.__wrapped__)

    # A client's __enter__ that returns the client would hand the unguarded object to
    # `with wrap(client, p) as c:`; the proxy stands in for it there.

    def __enter__(self) -> Any:
        client = self.__wrapped__
        entered = client.__enter__()
        return self if entered is client else entered

    def __exit__(self, *exc_info: Any) -> Any:
        return self.__wrapped__.__exit__(*exc_info)

    async def __aenter__(self) -> Any:
        client = self.__wrapped__
        entered = await client.__aenter__()
        return self if entered is client else entered

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.__wrapped__.__aexit__(*exc_info)


class CallableGuardedProxy(GuardedProxy):
    """For a client that is callable itself: calling it passes through, unguarded."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)


def _guarded(guards: Guards, client: object, name: str, value: object) -> Any:
    """``value`` (what ``client.name`` is now) guarded if ``name`` is selected; else as is."""
    cls = type(client)
    decided = guards.decided.get(name)
    if decided is None or decided[0] is not cls:
        decided = (cls, guards.selection.policy_for(cls, name))
        guards.decided[name] = decided
    policy = decided[1]
    if policy is None or not callable(value) or is_generator_function(value):
        return value
    if not is_async_callable(value) and getattr(policy, "async_only", False):
        guarded = _async_or_bare(guards, name, value, policy)
    else:
        guarded = policy(value)
        if not is_async_callable(value):
            guarded = _first_call(guards, name, value, policy, guarded)
    guards.guarded[name] = (value, guarded)
    return guarded


class _Returned(BaseException):
    """A first call's coroutine, carried out of the sync guard: not an Exception, so no
    policy counts, retries or replaces it (as with a cancellation)."""

    def __init__(self, coroutine: Any) -> None:
        super().__init__()
        self.coroutine = coroutine


def _async_or_bare(guards: Guards, name: str, value: Any, policy: Policy) -> Callable[..., Any]:
    """A plain ``def`` under a policy for async code only (a Hedge): its first call
    tells. One that returns a coroutine is guarded as async from then on, that call
    included, whose coroutine is its first attempt (as :func:`_first_call` does); one
    that returns anything else cannot be hedged, and passes through from then on (an
    httpx.AsyncClient's ``build_request``)."""

    def first(*args: Any, **kwargs: Any) -> Any:
        result = value(*args, **kwargs)
        if result.__class__ is not CoroutineType:
            guards.guarded[name] = (value, value)
            return result
        made = [result]

        def again(*args: Any, **kwargs: Any) -> Any:
            return made.pop() if made else value(*args, **kwargs)

        guards.guarded[name] = (value, policy(awaiting(value)))
        return policy(awaiting(again))(*args, **kwargs)

    functools.update_wrapper(first, value)
    return first


def _first_call(
    guards: Guards, name: str, value: Any, policy: Policy, guarded: Callable[..., Any]
) -> Callable[..., Any]:
    """A plain ``def`` is guarded as one until its first call says otherwise: one that
    returns a coroutine (redis.asyncio's commands, many SDKs' methods) is async, and is
    guarded as async from then on, that call included, whose coroutine is its first
    attempt (the method ran once). After a first call that returns anything else, the
    plain guard serves alone."""

    def probe(*args: Any, **kwargs: Any) -> Any:
        result = value(*args, **kwargs)
        if result.__class__ is CoroutineType:
            raise _Returned(result)
        return result

    probed = policy(probe)

    def first(*args: Any, **kwargs: Any) -> Any:
        try:
            result = probed(*args, **kwargs)
        except _Returned as returned:
            made = [returned.coroutine]

            def again(*args: Any, **kwargs: Any) -> Any:
                return made.pop() if made else value(*args, **kwargs)

            as_async = policy(awaiting(value))
            guards.guarded[name] = (value, as_async)
            return policy(awaiting(again))(*args, **kwargs)
        if guards.guarded.get(name, (None, None))[1] is first:
            guards.guarded[name] = (value, guarded)
        return result

    functools.update_wrapper(first, guarded)
    first.__wrapped__ = value  # type: ignore[attr-defined]  # as the guard's: the method
    return first


def wrap(
    client: T,
    policy: Policy,
    *,
    methods: Iterable[str] | Mapping[str, Policy] | None = None,
    exclude: Iterable[str] = (),
) -> T:
    """resilient.wrap: the checks, then the proxy (the docstring is there)."""
    if isinstance(client, type):
        raise ConfigError(
            "client", client, "a client object whose methods to guard, not a class", owner="wrap"
        )
    if not is_policy(policy):
        raise ConfigError("policy", policy, POLICIES, owner="wrap")
    named: dict[str, Policy]
    if methods is None:
        named, others = {}, True
    elif isinstance(methods, Mapping):
        _names("methods", methods)  # its keys
        named, others = dict(methods), True
        for name, own in named.items():
            if not is_policy(own):
                expected = POLICIES
                if own is None:
                    expected += f"; to leave {name!r} unguarded, name it in exclude"
                raise ConfigError(f"methods[{name!r}]", own, expected, owner="wrap")
    else:
        names = _names("methods", methods)
        if not names:
            raise ConfigError(
                "methods",
                methods,
                "at least one method name (None guards every public method)",
                owner="wrap",
            )
        named, others = dict.fromkeys(names, policy), False
    for name in named:
        _check_method(client, "methods", name)
    excluded = _names("exclude", exclude)
    for name in excluded:
        _check_method(client, "exclude", name)
    both = sorted(set(excluded) & named.keys())
    if both:
        raise ConfigError(
            "exclude",
            both,
            "names not also in methods: a method is either guarded or excluded",
            owner="wrap",
        )
    selection = Selection(policy, named, others, frozenset(excluded))
    kind = CallableGuardedProxy if callable(client) else GuardedProxy
    return cast(T, kind(client, selection))


def _names(option: str, names: object) -> list[str]:
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise ConfigError(
            option, names, "a list of method names, such as ['get', 'create']", owner="wrap"
        )
    listed = list(names)
    for name in listed:
        if not isinstance(name, str):
            raise ConfigError(option, name, "a method name, as a str", owner="wrap")
    return listed


def _check_method(client: object, option: str, name: str) -> None:
    """``name`` must read as a public callable of ``client`` that can be guarded."""
    if name.startswith("_"):
        raise ConfigError(
            option, name, "a public method name: _private methods are never guarded", owner="wrap"
        )
    if isinstance(class_attribute(type(client), name), (property, cached_property)):
        raise ConfigError(
            option, name, "a method of the client: properties pass through", owner="wrap"
        )
    value = getattr(client, name, _MISSING)
    if value is _MISSING or not callable(value):
        what = "no attribute" if value is _MISSING else f"a {type(value).__name__}"
        raise ConfigError(
            option,
            name,
            f"a method of the client ({type(client).__name__} has {what} of that name)",
            owner="wrap",
        )
    if option == "methods" and is_generator_function(value):
        raise ConfigError(
            option,
            name,
            "a method that does its work when called: calling a generator function only"
            " creates the generator, so there is nothing to guard (docs/clients.md: loop"
            " over a method that fetches one page, through the proxy)",
            owner="wrap",
        )
