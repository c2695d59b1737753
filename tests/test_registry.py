"""resilient.registry: live named policies, held weakly, found by name, listed and reset.

Other tests' policies may be alive too (until the garbage collector frees them), so these
tests look only at policies with names of their own, and count relative to a start.
"""

from __future__ import annotations

import gc
import threading
import weakref
from typing import Any

import pytest

import resilient
from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    Retry,
    State,
    Timeout,
    TimeoutExpired,
    registry,
)

from .conftest import fresh


def make_all(name: str) -> dict[str, Any]:
    return {
        "breaker": CircuitBreaker(name, min_calls=1, window_size=1),
        "retry": Retry(name=name),
        "timeout": Timeout(0.02, name=name),
        "bulkhead": Bulkhead(1, name=name),
    }


def boom() -> None:
    raise ConnectionError("down")


def mine(name: str, kind: str | None = None) -> list[Any]:
    return [p for p in registry.policies(kind) if p.name == name]


def open_breaker(b: CircuitBreaker) -> None:
    with pytest.raises(ConnectionError):
        b.call(boom)
    assert b.state is State.OPEN


def test_a_named_policy_of_each_kind_is_found_by_name_and_kind() -> None:
    found = make_all(fresh("each"))
    for kind, policy in found.items():
        name = policy.name
        assert registry.get(name, kind) is policy
        assert registry.get(name, kind=kind) is policy
        assert policy in registry.policies(kind)
        assert policy in registry.policies()
        assert policy in list(registry)
        others = [k for k in found if k != kind]
        assert all(policy not in registry.policies(k) for k in others)
        assert kind == policy.KIND


def test_get_without_kind_finds_a_name_only_one_kind_has() -> None:
    name = fresh("solo")
    retry = Retry(name=name)
    assert registry.get(name) is retry


def test_get_errors_say_what_is_missing_or_ambiguous() -> None:
    name = fresh("missing")
    with pytest.raises(KeyError, match=f"no live policy is named '{name}'"):
        registry.get(name)
    with pytest.raises(KeyError, match=f"no live retry is named '{name}'"):
        registry.get(name, "retry")
    both = fresh("both")
    b, r = CircuitBreaker(both), Retry(name=both)
    with pytest.raises(KeyError) as info:
        registry.get(both)
    assert str(info.value) == repr(
        f"several policies are named '{both}' (breaker, retry): say which kind"
    )
    assert registry.get(both, "breaker") is b
    assert registry.get(both, "retry") is r
    with pytest.raises(KeyError, match=f"no live bulkhead is named '{both}'"):
        registry.get(both, "bulkhead")


def test_unnamed_policies_are_not_listed_nor_found() -> None:
    gc.collect()
    before = len(registry)
    unnamed = [CircuitBreaker(), Retry(), Timeout(1), Bulkhead(1), Fallback(0)]
    assert len(registry) == before
    listed = registry.policies()
    assert all(all(p is not u for p in listed) for u in unnamed)


def test_registration_is_weak_dropping_a_policy_frees_it() -> None:
    name = fresh("weak")
    policies = make_all(name)
    refs = {kind: weakref.ref(p) for kind, p in policies.items()}
    assert len(mine(name)) == 4
    del policies
    gc.collect()
    assert all(ref() is None for ref in refs.values())
    assert mine(name) == []
    for kind in refs:
        with pytest.raises(KeyError):
            registry.get(name, kind)


def test_a_policy_kept_by_its_decorated_function_stays_registered() -> None:
    name = fresh("kept")

    @Retry(name=name)
    def fn() -> str:
        return "ok"

    gc.collect()
    assert registry.get(name).name == name
    assert fn() == "ok"


def test_len_iteration_and_policies_agree() -> None:
    gc.collect()
    before = len(registry)
    name = fresh("count")
    policies = make_all(name)
    assert len(registry) == before + 4
    assert list(registry) == registry.policies()
    assert len(list(registry)) == len(registry)
    kinds = {policy.KIND for policy in registry}
    assert {"breaker", "retry", "timeout", "bulkhead"} <= kinds
    assert sum(len(registry.policies(k)) for k in kinds) == len(registry)
    del policies
    gc.collect()
    assert len(registry) == before


def test_policies_are_ordered_by_kind_then_name_then_age() -> None:
    stem = fresh("order")
    late_b = Retry(name=f"{stem}-b")
    first_a = Retry(name=f"{stem}-a")
    second_a = Retry(name=f"{stem}-a")
    breaker = CircuitBreaker(f"{stem}-z")
    listed = [p for p in registry.policies() if p.name.startswith(stem)]
    assert listed == [breaker, first_a, second_a, late_b]
    assert [p for p in registry.policies("retry") if p.name.startswith(stem)] == [
        first_a,
        second_a,
        late_b,
    ]


def test_two_live_policies_with_one_name_are_independent_and_get_finds_the_newest() -> None:
    name = fresh("twins")
    older = CircuitBreaker(name, min_calls=1, window_size=1)
    newer = CircuitBreaker(name, min_calls=1, window_size=1)
    assert older is not newer
    assert registry.get(name) is newer
    assert registry.get(name, "breaker") is newer
    assert mine(name) == [older, newer]
    open_breaker(older)
    assert newer.state is State.CLOSED  # no shared state
    assert newer.call(lambda: "ok") == "ok"
    newest = CircuitBreaker(name)
    assert registry.get(name) is newest
    assert mine(name) == [older, newer, newest]


def test_when_the_newest_is_dropped_get_finds_the_newest_live_one() -> None:
    """BUG: the registry keeps one weak entry per (kind, name), the newest; when that
    policy is freed the entry goes, and get() no longer finds the older policy that is
    still alive and still listed by policies()."""
    name = fresh("survivor")
    older = CircuitBreaker(name)
    newer = CircuitBreaker(name)
    assert registry.get(name) is newer
    del newer
    gc.collect()
    assert mine(name) == [older]
    assert registry.get(name) is older


def test_policies_with_one_name_read_the_same_variables(env: pytest.MonkeyPatch) -> None:
    name = fresh("same-vars")
    variable = f"RESILIENT_{name.upper().replace('-', '_')}_RETRY_ATTEMPTS"
    env.setenv(variable, "5")
    first, second = Retry(name=name), Retry(2, name=name)
    assert (first.attempts, second.attempts) == (5, 5)
    env.setenv(variable, "7")
    resilient.reload()
    assert (first.attempts, second.attempts) == (7, 7)
    env.delenv(variable)
    resilient.reload()
    assert (first.attempts, second.attempts) == (3, 2)  # each back to its own code


def test_reset_by_name_resets_every_kind_with_that_name_only() -> None:
    name, other = fresh("reset"), fresh("reset-other")
    p, q = make_all(name), make_all(other)
    for group in (p, q):
        open_breaker(group["breaker"])
        group["bulkhead"].__enter__()
        with pytest.raises(BulkheadFullError):
            group["bulkhead"].call(lambda: None)
        group["bulkhead"].__exit__(None, None, None)
        release = threading.Event()
        with pytest.raises(TimeoutExpired):
            group["timeout"].call(release.wait, 5)
        release.set()
    registry.reset(name)
    assert p["breaker"].state is State.CLOSED
    assert p["breaker"].metrics.calls == 0
    assert p["breaker"].metrics.rejected == 0
    assert p["bulkhead"].metrics.rejected == 0
    assert p["timeout"].metrics.expired == 0
    assert q["breaker"].state is State.OPEN
    assert q["bulkhead"].metrics.rejected == 1
    assert q["timeout"].metrics.expired == 1


def test_reset_by_name_and_kind_and_by_kind() -> None:
    name = fresh("reset-kind")
    p = make_all(name)
    open_breaker(p["breaker"])
    p["bulkhead"].__enter__()
    with pytest.raises(BulkheadFullError):
        p["bulkhead"].call(lambda: None)
    p["bulkhead"].__exit__(None, None, None)
    registry.reset(name, kind="bulkhead")
    assert p["bulkhead"].metrics.rejected == 0
    assert p["breaker"].state is State.OPEN
    other = CircuitBreaker(fresh("reset-kind-b"), min_calls=1, window_size=1)
    open_breaker(other)
    registry.reset(kind="breaker")
    assert p["breaker"].state is State.CLOSED
    assert other.state is State.CLOSED


def test_reset_of_everything_leaves_unnamed_policies_alone() -> None:
    named = CircuitBreaker(fresh("reset-all"), min_calls=1, window_size=1)
    unnamed = CircuitBreaker(min_calls=1, window_size=1)
    open_breaker(named)
    open_breaker(unnamed)
    registry.reset()
    assert named.state is State.CLOSED
    assert unnamed.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        unnamed.call(lambda: None)


def test_reset_keeps_the_configuration() -> None:
    name = fresh("reset-config")
    b = CircuitBreaker(name, failure_rate=0.25, min_calls=1, window_size=1)
    open_breaker(b)
    registry.reset(name)
    assert b.settings["failure_rate"] == 0.25
    open_breaker(b)  # the same rules still apply


def test_reset_of_an_unknown_name_changes_nothing() -> None:
    b = CircuitBreaker(fresh("reset-none"), min_calls=1, window_size=1)
    open_breaker(b)
    registry.reset(fresh("nobody"))
    assert b.state is State.OPEN


def test_repr_lists_kind_and_name() -> None:
    name = fresh("repr")
    b = CircuitBreaker(name)
    assert f"breaker:{name}" in repr(registry)
    assert repr(registry).startswith("<resilient.registry [")
    del b


def test_registering_and_dropping_from_threads_while_listing(switch_often: None) -> None:
    gc.collect()
    stem = fresh("threads")
    errors: list[BaseException] = []
    kept: list[Any] = []
    lock = threading.Lock()

    def maker(i: int) -> None:
        try:
            for j in range(100):
                p = Retry(name=f"{stem}-{i}") if j % 2 else CircuitBreaker(f"{stem}-{i}")
                if j % 10 == 0:
                    with lock:
                        kept.append(p)
                del p
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def lister() -> None:
        try:
            for _ in range(150):
                for p in registry.policies():
                    assert p.name is not None
                len(registry)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=maker, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=lister))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    gc.collect()
    listed = [p for p in registry.policies() if p.name.startswith(stem)]
    assert sorted(map(id, listed)) == sorted(map(id, kept))  # the kept ones, and only them
    assert len(kept) == 3 * 10


def test_a_family_member_reads_its_own_then_its_familys_then_the_default_variables(
    env: pytest.MonkeyPatch,
) -> None:
    """A transport's per-host breakers: RESILIENT_<FAMILY>_BREAKER_* configures them all,
    RESILIENT_<MEMBER>_BREAKER_* one of them; reload() follows the same order and warns
    of neither."""
    env.setenv("RESILIENT_DEFAULT_BREAKER_OPEN_FOR", "7")
    env.setenv("RESILIENT_FAMTEST_BREAKER_OPEN_FOR", "9")
    env.setenv("RESILIENT_FAMTEST_A_EXAMPLE_443_BREAKER_OPEN_FOR", "11")
    a = CircuitBreaker._made({"_family": ("famtest",)}, name="famtest.a.example:443")
    b = CircuitBreaker._made({"_family": ("famtest",)}, name="famtest.b.example:443")
    loner = CircuitBreaker("famtest-loner")
    assert isinstance(a, CircuitBreaker)
    assert [p.settings["open_for"] for p in (a, b, loner)] == [11.0, 9.0, 7.0]
    assert b.settings.sources["open_for"] == "RESILIENT_FAMTEST_BREAKER_OPEN_FOR"
    env.setenv("RESILIENT_FAMTEST_BREAKER_OPEN_FOR", "13")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the family's variable is known: no warning
        resilient.reload()
    assert [p.settings["open_for"] for p in (a, b, loner)] == [11.0, 13.0, 7.0]
    assert registry.get("famtest.b.example:443") is b
