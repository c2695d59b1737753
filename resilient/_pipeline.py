"""Pipeline: several policies as one, the first given outermost.

``Pipeline(Timeout(10), Retry(3), CircuitBreaker(), Timeout(2))`` is
``Timeout(10)(Retry(3)(CircuitBreaker()(Timeout(2)(fn))))`` with every form a single
policy has. The chain of wrappers is built once, when a function is decorated, so a
call costs what its policies cost and nothing more: no list walked, no object made.

Two members of one kind and one name would read the same variables and be configured
alike, so a Pipeline refuses them; ``Pipeline(..., name="pay")`` names its unnamed
members by role instead (docs/composition.md has the table).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, ExitStack
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, runtime_checkable

from resilient._core.configuration import config, registry
from resilient._core.configuration import options as opt
from resilient._core.configuration.registry import Configured
from resilient._core.execution.drivers import Decorates, pop_block, push_block
from resilient._errors import ConfigError

__all__ = ["Pipeline", "Policy", "is_policy"]

P = ParamSpec("P")
R = TypeVar("R")
L = TypeVar("L", bound=Callable[..., object])


@runtime_checkable
class Policy(Protocol):
    """What a Pipeline takes: a decorator with ``call`` and ``call_async`` forms.

    Every resilient policy is one (CircuitBreaker, Retry, Timeout, Bulkhead, Fallback,
    Pipeline), and so is any object with these three methods: a Pipeline guards a
    function with it as its decorator would.
    """

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    async def call_async(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...


def is_policy(obj: object) -> bool:
    """One of ours, or an object with the three methods of :class:`Policy` (a class that
    has them is no policy: its methods are unbound)."""
    return isinstance(obj, Decorates) or (isinstance(obj, Policy) and not isinstance(obj, type))


#: The start of the warning about a breaker outside a Retry, for a warnings filter.
BREAKER_OUTSIDE_RETRY = "a CircuitBreaker outside a Retry"


class Pipeline(Decorates):
    """``policies`` applied outermost-first, as one decorator, context manager or caller.

    A Pipeline inside a Pipeline is flattened. As ``with``/``async with`` every policy
    must support that form (a Retry does not: a block cannot run twice); the policies are
    entered outermost-first and left in reverse, each seeing what the inner ones raised.
    ``name`` names the unnamed members by their role, so that each reads variables of
    its own (``RESILIENT_PAY_RETRY_ATTEMPTS``, ``RESILIENT_PAY_ATTEMPT_TIMEOUT_SECONDS``).
    """

    def __init__(self, *policies: Policy, name: str | None = None) -> None:
        self.name = opt.check_name(name, "Pipeline")
        flat: list[Policy] = []
        for policy in policies:
            if isinstance(policy, Pipeline):
                flat.extend(policy.policies)
            elif is_policy(policy):
                flat.append(policy)
            else:
                raise ConfigError(
                    "policies",
                    policy,
                    "resilient policies: CircuitBreaker, Retry, Timeout, Bulkhead, Fallback,"
                    " a Pipeline or another resilient.Policy, outermost first",
                    owner="Pipeline",
                )
        if not flat:
            raise ConfigError("policies", (), "at least one policy", owner="Pipeline")
        members = _configured(flat)
        roles = _roles(members, self.name) if self.name is not None else {}
        _refuse_shared_variables(flat, roles)
        _warn_breaker_outside_retry(members)
        registry.name_policies(list(roles.items()))
        self.policies: tuple[Policy, ...] = tuple(flat)

    @property
    def async_only(self) -> bool:
        """Whether a member is for async code only (a Hedge): a wrapped client's plain
        methods then pass through the Pipeline (resilient.wrap)."""
        return any(getattr(policy, "async_only", False) for policy in self.policies)

    def __repr__(self) -> str:
        name = "" if self.name is None else f", name={self.name!r}"
        return f"Pipeline({', '.join(map(repr, self.policies))}{name})"

    def add_listener(self, listener: L, *kinds: type) -> L:
        """Listen to the events of every policy of the pipeline (``policy.add_listener``)."""
        for member in self._ours():
            member.add_listener(listener, *kinds)
        return listener

    def _ours(self) -> list[Configured]:
        """The members that are policies of ours (a Fallback too), each once."""
        return list({id(p): p for p in self.policies if isinstance(p, Configured)}.values())

    def remove_listener(self, listener: Callable[[Any], object]) -> None:
        """Stop listening to them; ValueError if it listened to none."""
        removed = 0
        for member in self._ours():
            try:
                member.remove_listener(listener)
                removed += 1
            except ValueError:
                pass
        if not removed:
            raise ValueError(f"{listener!r} is not a listener of {self!r}")

    # A policy of our own gives its wrapper straight; another one guards as it decorates.

    def _wrap_sync(self, fn: Callable[P, R]) -> Callable[P, R]:
        for policy in reversed(self.policies):
            fn = policy._wrap_sync(fn) if isinstance(policy, Decorates) else policy(fn)
        return fn

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        wrapped: Callable[P, Awaitable[R]] = fn
        for policy in reversed(self.policies):
            wrapped = (
                policy._wrap_async(wrapped) if isinstance(policy, Decorates) else policy(wrapped)
            )
        return _as_coroutine_function(wrapped)

    # -- context managers ---------------------------------------------------------------
    # A rejection while entering (an open breaker, a full bulkhead) leaves the policies
    # already entered, then propagates: no policy can skip a with-block's body, so not
    # even a Fallback can answer in its place.

    def __enter__(self) -> None:
        stack = ExitStack()
        try:
            for policy in self.policies:
                stack.enter_context(policy)  # type: ignore[arg-type]
        except BaseException:
            stack.__exit__(*sys.exc_info())
            raise
        push_block(self, stack)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        stack: ExitStack = pop_block(self)
        return bool(stack.__exit__(exc_type, exc, tb))

    async def __aenter__(self) -> None:
        stack = AsyncExitStack()
        try:
            for policy in self.policies:
                await stack.enter_async_context(policy)  # type: ignore[arg-type]
        except BaseException:
            await stack.__aexit__(*sys.exc_info())
            raise
        push_block(self, stack)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        stack: AsyncExitStack = pop_block(self)
        return bool(await stack.__aexit__(exc_type, exc, tb))


def _as_coroutine_function(
    fn: Callable[P, Awaitable[R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    return fn  # type: ignore[return-value]  # every policy's async wrapper is one


def _configured(policies: Sequence[Policy]) -> list[Configured]:
    """The members that have variables, each once, outermost first."""
    seen: dict[int, Configured] = {}
    for policy in policies:
        if isinstance(policy, Configured) and config.KINDS[policy.KIND]:
            seen.setdefault(id(policy), policy)
    return list(seen.values())


def _roles(members: Sequence[Configured], name: str) -> dict[Configured, str]:
    """The names ``Pipeline(..., name=name)`` gives its unnamed members.

    The only member of its kind: ``name`` (the kind already tells the variables apart).
    Two of a kind, one outside the only Retry and one inside it: ``name.total`` and
    ``name.attempt``. Otherwise: ``name.1``, ``name.2``... outermost first.
    """
    by_kind: dict[str, list[Configured]] = {}
    for member in members:
        by_kind.setdefault(member.KIND, []).append(member)
    retries = [i for i, member in enumerate(members) if member.KIND == "retry"]
    roles: dict[Configured, str] = {}
    for same in by_kind.values():
        if len(same) == 1:
            names = [name]
        elif (
            len(same) == 2
            and len(retries) == 1
            and members.index(same[0]) < retries[0] < members.index(same[1])
        ):
            names = [f"{name}.total", f"{name}.attempt"]
        else:
            names = [f"{name}.{n}" for n in range(1, len(same) + 1)]
        roles.update((m, role) for m, role in zip(same, names, strict=True) if m.name is None)
    return roles


def _refuse_shared_variables(policies: Sequence[Policy], roles: dict[Configured, str]) -> None:
    """Two members of one kind whose names spell alike would read the same variables:
    ``RESILIENT_PAY_TIMEOUT_SECONDS`` would make a Timeout(10) and a Timeout(2) equal.
    Refused, with the fix. (Unnamed ones read only the kind-wide variables: documented.)"""
    first: dict[tuple[str, str], tuple[int, Configured]] = {}
    for place, member in enumerate(policies, 1):
        if not isinstance(member, Configured) or not config.KINDS[member.KIND]:
            continue
        name = roles.get(member, member.name)
        if name is None:
            continue
        key = (member.KIND, config.env_name(name))
        if key not in first:
            first[key] = (place, member)
            continue
        where, other = first[key]
        if other is member:
            continue  # one object given twice: one set of variables, rightly
        spelt = f"{config.PREFIX}{key[1]}_{member.KIND.upper()}_*"
        raise ConfigError(
            "name",
            name,
            f"a name of its own for each {member.KIND}: {other._owner()} (policy {where})"
            f" and {member._owner()} (policy {place}) would both read"
            f" {spelt} and be configured alike. Give them different names, or leave them"
            " unnamed and name the Pipeline: Pipeline(..., name=...) names each by its role",
            owner="Pipeline",
        )


def _warn_breaker_outside_retry(members: Sequence[Configured]) -> None:
    kinds = [member.KIND for member in members]
    if "breaker" not in kinds or "retry" not in kinds:
        return
    breaker = members[kinds.index("breaker")]
    last_retry = members[len(kinds) - 1 - kinds[::-1].index("retry")]
    if members.index(breaker) > members.index(last_retry):
        return
    config.warn(
        f"{BREAKER_OUTSIDE_RETRY}: {breaker._owner()} is given before {last_retry._owner()},"
        " so it counts one outcome per retried call: it opens only after several times"
        " as many failed attempts, and until then every call sends all its attempts to a"
        " failing downstream. Give the breaker after the Retry, inside it; if this order"
        " is meant, silence this with warnings.filterwarnings('ignore',"
        f" {BREAKER_OUTSIDE_RETRY!r}, resilient.ConfigWarning)"
    )
