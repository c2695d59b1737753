"""The registry of live policies, and what makes a policy configurable and registered.

Every policy that has options registers itself, weakly: dropping the last reference to a
policy frees it. A named policy is found by (kind, name).

A name is not a lock on an object. Making a policy always makes a new, independent one,
even if a live policy of that kind already has the name; the registry then finds the
newest. Refusing the second (or handing back the first, state and all) would make code
depend on when the garbage collector frees the old one: an object kept alive by a
traceback's reference cycle, a notebook cell run again, a module reloaded, two tests
that both say "payments". Every policy with the name reads the same variables, so the
environment configures them all alike. To share state, share the object.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from resilient._core.configuration import config, events, shapes
from resilient._core.configuration import options as opt
from resilient._core.state import forking
from resilient._errors import ConfigError, logger

__all__ = ["Configured", "Registry", "name_policies", "registry", "reload"]

L = TypeVar("L", bound=Callable[..., object])


class Registry:
    """The live policies: ``registry.get(name)``, ``list(registry)``, ``registry.reset()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._all: weakref.WeakSet[Configured] = weakref.WeakSet()
        self._births = itertools.count()

    def get(self, name: str, kind: str | None = None) -> Any:
        """The live policy called ``name`` (of ``kind``: "breaker", "retry", ...), the
        newest if several are; KeyError if none is, or if several kinds share the name
        and no kind is given."""
        newest: dict[str, Configured] = {}
        for policy in self.policies(kind):  # by age: a later one replaces an earlier one
            if policy.name == name:
                newest[policy.KIND] = policy
        found = list(newest.values())
        if len(found) == 1:
            return found[0]
        if not found:
            what = "policy" if kind is None else kind
            raise KeyError(f"no live {what} is named {name!r}")
        kinds = ", ".join(sorted(p.KIND for p in found))
        raise KeyError(f"several policies are named {name!r} ({kinds}): say which kind")

    def policies(self, kind: str | None = None) -> list[Any]:
        """Every live named policy (of ``kind``), by kind, name and age."""
        with self._lock:
            live = [p for p in self._all if p.name is not None and kind in (None, p.KIND)]
        return sorted(live, key=lambda p: (p.KIND, p.name, p._born))

    def __iter__(self) -> Iterator[Any]:
        return iter(self.policies())

    def __len__(self) -> int:
        return len(self.policies())

    def reset(self, name: str | None = None, *, kind: str | None = None) -> None:
        """Reset the state of the named policies (all, or those called ``name``): a
        breaker closes with an empty window, counters start again from zero."""
        for policy in self.policies(kind):
            if name is None or policy.name == name:
                policy.reset()

    def _live(self) -> list[Configured]:
        """Every live policy, named or not (``reload`` reconfigures them all)."""
        with self._lock:
            return list(self._all)

    def _add(self, policy: Configured) -> None:
        with self._lock:
            policy._born = next(self._births)
            self._all.add(policy)

    def _discard(self, policy: Configured) -> None:
        """Forget a policy made but never used (one of two made at once for one name)."""
        with self._lock:
            self._all.discard(policy)

    def __repr__(self) -> str:
        names = ", ".join(f"{p.KIND}:{p.name}" for p in self.policies())
        return f"<resilient.registry [{names}]>"


registry = Registry()


class Configured:
    """Mixin: a policy whose options come from defaults, code and the environment.

    A subclass declares ``KIND`` and ``OPTIONS`` (plus ``ENV_OPTIONS`` for settings only
    the environment gives, like a breaker's pinned state), calls ``_configure`` first in
    ``__init__`` and ``_register`` last, and implements two steps:
    ``_compile(settings)`` checks what one option cannot check alone and builds the
    policy's config object (raising ConfigError, changing nothing); ``_switch(compiled)``
    installs it in one step, and cannot fail: a call sees the old or the new, never a mix.
    A subclass's ``__init__`` is wrapped by :func:`shapes.shaped`: a call of the wrong
    shape raises an error that shows the right one.
    """

    KIND: ClassVar[str]
    OPTIONS: ClassVar[tuple[opt.Option, ...]]
    ENV_OPTIONS: ClassVar[tuple[opt.Option, ...]] = ()

    name: str | None
    #: names whose variables apply, nearest first, where the policy's own are not set:
    #: the family of policies one owner makes alike (a transport's per-host breakers)
    _family: tuple[str, ...] = ()
    _given: Mapping[str, Any] | None = None
    _born = 0  # the registry's order of making
    settings: config.Settings

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "KIND" in cls.__dict__:
            config.KINDS[cls.KIND] = (*cls.OPTIONS, *cls.ENV_OPTIONS)
            config.TITLES[cls.KIND] = cls.__name__
        # A wrongly shaped call answers with the right one: for our own policies, whose
        # shapes the hints know (a user's subclass has a shape of its own, and its own
        # TypeErrors; it still gets ours through super().__init__).
        if "__init__" in cls.__dict__ and cls.__module__.startswith("resilient."):
            shapes.shaped(cls)

    @classmethod
    def _made(cls, preset: Mapping[str, Any], /, **kwargs: Any) -> Any:
        """A policy made as ``cls(**kwargs)`` with ``preset`` attributes set before its
        ``__init__``, which reads them (its ``_compile`` does): ``_family``, the names
        whose variables (``RESILIENT_<NAME>_<KIND>_*``) it reads after its own, nearest
        first; or what an owner's subclass compiles with."""
        policy = cls.__new__(cls)
        policy.__dict__.update(preset)
        policy.__init__(**kwargs)  # type: ignore[misc]
        return policy

    def _read_names(self) -> tuple[str, ...]:
        """The names whose variables this policy reads, its own first."""
        return self._family if self.name is None else (self.name, *self._family)

    def _owner(self) -> str:
        kind = type(self).__name__
        return kind if self.name is None else f"{kind}({self.name!r})"

    def _configure(self, name: str | None, given: Mapping[str, Any]) -> config.Settings:
        """The settings of a new policy: its name checked, the environment read."""
        self._listeners: events.Listeners[Any] = events.Listeners()
        self.name = opt.check_name(name, type(self).__name__)
        settings = self._resolve(given)
        self._given = dict(given)
        config.warn_unknown(_near_misses([self]))
        return settings

    def _resolve(
        self, given: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> config.Settings:
        return config.resolve(
            self.KIND,
            (*self.OPTIONS, *self.ENV_OPTIONS),
            given,
            name=self.name,
            owner=self._owner(),
            environ=environ,
            family=self._family,
        )

    def _register(self, settings: config.Settings) -> None:
        """The last step of ``__init__``: apply the settings, then become findable."""
        self.settings = settings
        meter = events.meters.current
        self._switch(self._compile(settings))
        registry._add(self)
        if events.meters.current is not meter:  # a meter came or went as it was made,
            self._switch(self._compile(settings))  # perhaps after the others recompiled

    def _compile(self, settings: config.Settings) -> Any:
        raise NotImplementedError

    def _switch(self, compiled: Any) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget counts and state gathered so far (the configuration stays)."""

    def _health(self) -> dict[str, Any]:
        """What ``resilient.health()`` shows of this policy, as plain data."""
        return {}

    def add_listener(self, listener: L, *kinds: type) -> L:
        """Call ``listener(event)`` with each of this policy's events
        (``resilient.events``), or only those of the classes given
        (``breaker.add_listener(fn, StateChange)``); usable as a decorator.

        A listener runs on the thread that caused the event, right after it, outside any
        lock. Its errors (SystemExit and KeyboardInterrupt included) are logged once per
        listener and never reach the call. Keep it quick: in async code it runs on the
        event loop.
        """
        self._listeners.add(listener, kinds)
        self._listening_changed()
        return listener

    def remove_listener(self, listener: Callable[[Any], object]) -> None:
        """Stop calling ``listener``; ValueError if it was never added."""
        self._listeners.remove(listener)
        self._listening_changed()

    def _listening_changed(self) -> None:
        """A listener or a meter came or went (a policy that tells some events only
        while someone listens adjusts; most need not)."""

    def _metered(self) -> events.Meter | None:
        """The meter a plan compiled now reports to (None: nothing is counted)."""
        return events.meters.current

    def _after_fork(self) -> None:
        """In a forked child, right after the fork: forget what belonged to the parent's
        other threads (locks they held, slots and permits they took). Most have none."""


def _near_misses(policies: Iterable[Configured]) -> list[tuple[str, str | None]]:
    """Variables that look like a misspelt option or kind of these very policies.

    A well-formed variable for another name is left alone: that policy may be made
    later. ``reload()`` and ``resilient config --check`` report those. Cheap when no
    ``RESILIENT_*`` variable is set, and never more than a scan of the environment."""
    named = [(policy.KIND, name) for policy in policies for name in policy._read_names()]
    if not named:
        return []
    suspects = [
        var
        for var in os.environ
        if var.startswith(config.PREFIX) and var != config.ENABLED and not config.plausible(var)
    ]
    if not suspects:
        return []
    mine = [
        config.variable(kind, o.name, name) for kind, name in named for o in config.KINDS[kind]
    ]
    return [
        (var, close)
        for var in sorted(suspects)
        if (close := config.closest(var, mine)) is not None
    ]


#: Held by a reload from reading the environment to the last switch (never by a call).
_RELOADING = threading.Lock()
#: How many reloads applied: a test's isolation reloads after it only if one did.
reloads = 0


@forking.after_fork_in_child
def _after_fork() -> None:
    """A forked child starts with fresh locks, and every live policy forgets what the
    parent's other threads held."""
    global _RELOADING
    _RELOADING = threading.Lock()
    registry._lock = threading.Lock()
    for policy in list(registry._all):
        policy._listeners._lock = threading.Lock()
        policy._after_fork()


def reload(environ: Mapping[str, str] | None = None) -> None:
    """Read the environment again and apply it to every live policy, keeping their state.

    All or nothing: if any variable is bad, ConfigError reports every bad one and no
    policy changes. Each policy switches in one step. A ``RESILIENT_*`` variable that
    matches no live policy's option gets a ConfigWarning. Two reloads at once run one
    after the other: neither applies a half of its reading over the other's.
    """
    global reloads
    with _RELOADING:
        if environ is None:
            environ = config.environment()
        policies = registry._live()
        _apply(_plan(policies, environ))
        reloads += 1
    known = config.known_variables((p.KIND, n) for p in policies for n in p._read_names())
    config.warn_unknown(config.unknown_variables(known, environ))


def _recompile() -> None:
    """A meter came or went: every live policy compiles its plan again, its settings as
    they are, so that its calls are measured (or no longer are) from the next one on."""
    failed: list[str] = []
    with _RELOADING:
        for policy in registry._live():
            try:  # (a user's callable, asked again, may fail now: the others go on)
                policy._switch(policy._compile(policy.settings))
            except Exception as error:
                failed.append(f"{policy._owner()} ({type(error).__name__})")
    if failed:
        logger().warning(
            "a meter came or went, but these policies could not compile their plans again"
            " and keep them as they were: %s",
            ", ".join(failed),
        )


events.meters.changed = _recompile


def listening_changed() -> None:
    """A global listener came or went: every live policy adjusts."""
    for policy in registry._live():
        policy._listening_changed()


def name_policies(named: Sequence[tuple[Configured, str]]) -> None:
    """Name unnamed policies (a Pipeline names its members), all or none: each reads its
    own variables at once, as a reload would, and keeps its state. A bad variable
    raises ConfigError and leaves every one of them unnamed and unchanged."""
    if not named:
        return
    with _RELOADING:  # (no reload reads a name between these lines)
        for policy, new in named:  # the variables read, and the errors' owner, follow it
            policy.name = new
        try:
            planned = _plan([policy for policy, _ in named], config.environment())
        except BaseException:  # a bad variable, or a warning made an error
            for policy, _ in named:
                policy.name = None
            raise
        _apply(planned)
    config.warn_unknown(_near_misses([policy for policy, _ in named]))


_Planned = list[tuple[Configured, config.Settings, Any]]


def _plan(policies: Iterable[Configured], environ: Mapping[str, str]) -> _Planned:
    """Each policy's settings from ``environ``, compiled; ConfigError for every bad one."""
    planned: _Planned = []
    errors: list[ConfigError] = []
    for policy in policies:
        assert policy._given is not None
        try:
            settings = policy._resolve(policy._given, environ)
            planned.append((policy, settings, policy._compile(settings)))
        except ConfigError as error:
            errors.append(error)
    if errors:
        raise ConfigError.combine(errors)
    return planned


def _apply(planned: _Planned) -> None:
    for policy, settings, compiled in planned:
        policy.settings = settings
        policy._switch(compiled)
