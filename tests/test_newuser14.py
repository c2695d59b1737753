"""A new user's findings on issue 14's policies (RateLimiter, Hedge, fault injection).

Each test here failed on main when it was written: it states what a first-time user
expected from the docs and the error-message standard, and what the library did instead.
"""

from __future__ import annotations

import gc
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import resilient
from resilient import ConfigError, ConfigWarning, Hedge, InjectLatency, RateLimiter, UsageError
from resilient._cli import main


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in [v for v in os.environ if v.startswith("RESILIENT_")]:
        monkeypatch.delenv(var)
    yield
    gc.collect()


# -- `resilient env` and `resilient config`: every kind gets its class's title ----------


def test_env_lists_the_new_policies_under_their_own_titles(
    clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`resilient env` heads Hedge's and the injectors' variables "== all policies =="
    (the header of RESILIENT_ENABLED & co), as if they applied to every policy."""
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for title in ("Hedge", "InjectFault", "InjectLatency", "InjectResult", "RateLimiter"):
        assert f"== {title} ==" in out
    assert out.count("== all policies ==") == 1


def test_config_titles_the_new_policies_by_their_class(
    clean_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`resilient config` prints "CircuitBreaker 'x'" and "RateLimiter 'x'", but
    "hedge 'x'", "fault 'x'", "latency 'x'", "result 'x'" for the new ones."""
    (tmp_path / "newuser14app.py").write_text(
        "from resilient import Hedge, InjectFault, InjectLatency, InjectResult\n"
        "h = Hedge(0.2, name='nu14-search')\n"
        "f = InjectFault(ConnectionError, name='nu14-chaos')\n"
        "l = InjectLatency(0.5, name='nu14-chaos')\n"
        "r = InjectResult(None, name='nu14-chaos')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        assert main(["config", "newuser14app"]) == 0
    finally:
        sys.modules.pop("newuser14app", None)
    out = capsys.readouterr().out
    assert "Hedge 'nu14-search'" in out
    assert "InjectFault 'nu14-chaos'" in out
    assert "InjectLatency 'nu14-chaos'" in out
    assert "InjectResult 'nu14-chaos'" in out


# -- errors for a missing first argument: a real example, as Bulkhead/Timeout/Retry give --


@pytest.mark.parametrize(
    "make",
    [lambda: RateLimiter(), lambda: Hedge(), lambda: InjectLatency()],  # type: ignore[call-arg]
    ids=["RateLimiter", "Hedge", "InjectLatency"],
)
def test_a_missing_first_argument_is_shown_with_an_example(make: Callable[[], object]) -> None:
    """Bulkhead() says "e.g. Bulkhead(10)"; RateLimiter() says "e.g. RateLimiter(...)"."""
    with pytest.raises(UsageError) as caught:
        make()
    assert "(...)" not in str(caught.value)


def test_a_name_given_first_to_a_rate_limiter_is_shown_with_an_example() -> None:
    with pytest.raises(ConfigError) as caught:
        RateLimiter("partner", 5)  # type: ignore[arg-type]
    assert 'name="partner"' in str(caught.value)
    assert "(...," not in str(caught.value)


def test_an_out_of_range_percentile_is_not_taken_for_a_name() -> None:
    """Hedge("p100") ends with: a name goes by keyword: Hedge(..., name="p100")."""
    with pytest.raises(ConfigError) as caught:
        Hedge("p100")
    assert "name=" not in str(caught.value)


# -- keyword hints: a peer's keyword must not be "corrected" into a different option ------


@pytest.mark.parametrize(
    ("kwargs", "wrong"),
    [
        ({"max_rate": 10}, "max_wait=10"),  # aiolimiter's AsyncLimiter(max_rate, time_period)
        ({"block": True}, "clock=True"),
    ],
)
def test_a_peers_keyword_is_not_corrected_into_another_option(
    kwargs: dict[str, object], wrong: str
) -> None:
    """RateLimiter(max_rate=10) says "did you mean max_wait? RateLimiter(max_wait=10)":
    following it silently makes a limiter with a rate of... nothing (a UsageError for the
    missing rate at best), and a wait of 10 s the user never asked for."""
    with pytest.raises(UsageError) as caught:
        RateLimiter(**kwargs)  # type: ignore[arg-type]
    assert wrong not in str(caught.value)


def test_pollys_hedging_delay_is_not_corrected_into_min_delay() -> None:
    """Polly's hedging `Delay` is Hedge's `delay`, not its `min_delay` floor."""
    with pytest.raises(UsageError) as caught:
        Hedge(hedging_delay=0.1)  # type: ignore[call-arg]
    assert "min_delay=0.1" not in str(caught.value)


# -- the documented percentile range -------------------------------------------------------


@pytest.mark.parametrize("delay", ["p99.99", "p0.05"])
def test_the_documented_percentile_range_is_the_one_accepted(delay: str) -> None:
    """docs/hedging.md's table said 'p0.1' to 'p99.9' while p99.99 and p0.05 were taken:
    the range is 0 < p < 100, and the table says so."""
    assert Hedge(delay).settings.values["delay"] == delay
    assert "(0 < p < 100)" in (Path(__file__).parent.parent / "docs" / "hedging.md").read_text()
    with pytest.raises(ConfigError, match="0 < p < 100"):
        Hedge("p100")


# -- a misspelt variable: the suggestion must name a policy that exists -------------------


def test_a_misspelt_two_word_kind_suggests_the_live_policy(clean_env: None) -> None:
    """With only RateLimiter('nu14-partner') alive, RESILIENT_NU14_PARTNER_RATE_LIMIT_RATE
    is answered "did you mean RESILIENT_NU14_PARTNER_RATE_FAULT_RATE?": a fault injector
    named 'nu14-partner-rate' that nobody made."""
    limiter = RateLimiter(10, name="nu14-partner")
    os.environ["RESILIENT_NU14_PARTNER_RATE_LIMIT_RATE"] = "1"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            resilient.reload()
    finally:
        del os.environ["RESILIENT_NU14_PARTNER_RATE_LIMIT_RATE"]
    messages = [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]
    assert messages, "a misspelt variable warns"
    assert "did you mean RESILIENT_NU14_PARTNER_RATE_LIMITER_RATE?" in messages[0]
    assert limiter.rate == 10
