"""The pytest plugin as users see it: test files generated and run by pytester.

Each run is in this process (``runpytest``), which loads plugins through their entry
points as a fresh session does; one run is a fresh interpreter, to show the installed
entry point alone brings the plugin. The generated files import only modules this one
has imported already: pytester drops the modules a run imported first, and a module
imported afresh would hold classes other tests' objects are not instances of.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import resilient
import resilient.testing
from resilient import Retry, registry
from resilient._core.configuration import events, testmode
from resilient._core.configuration.isolation import Environment, Registered
from resilient.testing import ManualClock

from .conftest import fresh

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
ISOLATED = "[pytest]\nresilient_isolate = true\n"


#: Other plugins left out of the generated runs: hypothesis's alone takes a second or two
#: to start a session. Every other one, resilient's included, loads as it would anywhere.
OTHERS = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider")


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable as the shell would set it, for the generated runs (this test's own
    environment is theirs)."""
    monkeypatch.setenv("RESILIENT_SHELL_RETRY_ATTEMPTS", "4")


def run(pytester: pytest.Pytester, *args: str, ini: str | None = None) -> pytest.RunResult:
    if ini is not None:
        pytester.makeini(ini)
    return pytester.runpytest(*OTHERS, *args)


# -- the library's own suite uses the plugin -------------------------------------------------


@pytest.mark.resilient_testing(attempts=2)
def test_the_marker_caps_attempts_and_zeroes_waits(manual_clock: ManualClock) -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise ConnectionError

    with pytest.raises(ConnectionError):
        Retry(5, wait=60, clock=manual_clock).call(down)
    assert len(calls) == 2
    assert manual_clock.monotonic() == 0.0


@pytest.mark.resilient_testing
def test_the_marker_without_attempts_zeroes_waits_only(
    resilient_testing: testmode.TestMode, manual_clock: ManualClock
) -> None:
    assert resilient_testing == testmode.TestMode(True, None) == testmode.current()
    with pytest.raises(ConnectionError):
        Retry(4, wait=60, clock=manual_clock).call(_down)
    assert manual_clock.monotonic() == 0.0


def test_isolation_is_on_for_this_suite() -> None:
    """pyproject.toml says resilient_isolate = true: no variable of the shell is here,
    and the registry holds nothing a test made (only what modules and fixtures of wider
    scope made)."""
    assert [var for var in os.environ if var.startswith("RESILIENT_")] == []


def _down() -> None:
    raise ConnectionError


def test_a_meter_switched_on_in_a_test_is_off_after_it() -> None:
    retry = Retry(2, name=fresh("metered"))  # made before: still registered after
    before = Registered()
    events.meters.add(events.Meter())
    measured = retry._plan
    before.restore()
    assert events.meters._all == ()
    assert events.meters.current is None
    assert retry._plan is not measured  # compiled again: measured no more
    assert registry.get(retry.name) is retry


def test_a_reload_in_a_test_is_undone_after_it_even_when_its_variable_is_gone() -> None:
    name = fresh("reloaded")
    retry = Retry(2, name=name)
    variable = f"RESILIENT_{name.upper().replace('-', '_')}_RETRY_ATTEMPTS"
    clean = Environment()
    os.environ[variable] = "5"
    resilient.reload()
    del os.environ[variable]  # and no reload: the policy still says 5
    assert retry.attempts == 5
    clean.restore()
    assert retry.attempts == 2


# -- the fixtures and the marker, in a user's suite ------------------------------------------


USER_TESTS = """
import os

import pytest

import resilient
from resilient import Retry, registry
from resilient._core.configuration import testmode
from resilient.testing import ManualClock


def test_manual_clock(manual_clock):
    assert isinstance(manual_clock, ManualClock)
    assert manual_clock.monotonic() == 0.0
    manual_clock.sleep(5)
    assert manual_clock.monotonic() == 5.0


def test_testing_fixture_without_a_marker(resilient_testing):
    assert resilient_testing == testmode.current() == (True, None)


@pytest.mark.resilient_testing(attempts=3)
def test_testing_fixture_with_the_markers_attempts(resilient_testing):
    assert testmode.current() == (True, 3)


@pytest.mark.resilient_testing(attempts=2)
def test_the_marker_alone(manual_clock):
    calls = []

    def down():
        calls.append(1)
        raise ConnectionError

    with pytest.raises(ConnectionError):
        Retry(9, wait=100, clock=manual_clock).call(down)
    assert (len(calls), manual_clock.monotonic()) == (2, 0.0)


@pytest.mark.resilient_testing
class TestMarkedClass:
    def test_one(self):
        assert testmode.current() == (True, None)


def test_no_test_mode_unless_asked():
    assert testmode.current() == (False, None)


def test_env(resilient_env):
    assert os.environ.get("RESILIENT_SHELL_RETRY_ATTEMPTS") is None
    retry = Retry(3, name="envy")
    resilient_env.setenv("RESILIENT_ENVY_RETRY_ATTEMPTS", "6")
    resilient.reload()
    assert retry.attempts == 6


def test_registry(resilient_registry):
    assert resilient_registry is registry
    keep = Retry(2, name="kept-by-the-test")
    assert registry.get("kept-by-the-test") is keep
"""


@pytest.mark.usefixtures("shell")  # resilient_env hides it
def test_each_fixture_and_the_marker_in_a_users_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = run(pytester)
    result.assert_outcomes(passed=8)
    assert os.environ["RESILIENT_SHELL_RETRY_ATTEMPTS"] == "4"  # back after the test
    assert "RESILIENT_ENVY_RETRY_ATTEMPTS" not in os.environ
    assert testmode.current() == testmode.TestMode()
    with pytest.raises(KeyError):
        registry.get("kept-by-the-test")


LEAKY = """
import os

import pytest

import resilient
import resilient.testing
from resilient import Retry


def test_a_sets_a_variable_and_a_policy():
    os.environ["RESILIENT_LEAKY_RETRY_ATTEMPTS"] = "7"  # not even through a fixture
    retry = Retry(2, name="leaky")
    resilient.reload()
    assert retry.attempts == 7
    resilient.add_listener(print)
    resilient.testing.set_testing(attempts=1)  # never switched off
    pytest_keeps.append(retry)  # alive after the test


def test_b_sees_none_of_it():
    assert "RESILIENT_LEAKY_RETRY_ATTEMPTS" not in os.environ
    assert "RESILIENT_SHELL_RETRY_ATTEMPTS" not in os.environ
    with pytest.raises(KeyError):
        resilient.registry.get("leaky")  # (alive, but forgotten)
    from resilient._core.configuration import events, testmode

    assert events.GLOBAL._entries == ()
    assert testmode.current() == (False, None)
    assert pytest_keeps[0].attempts == 7  # not reloaded: forgotten, and not by name


def test_c_early_policies_are_kept_and_read_the_clean_environment():
    assert resilient.registry.get("early") is early
    assert early.attempts == 2  # made with the shell's 9, reloaded clean for each test


pytest_keeps = []
early = Retry(2, name="early")
"""


@pytest.mark.usefixtures("shell")
def test_nothing_leaks_from_one_test_into_the_next_when_isolated(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESILIENT_EARLY_RETRY_ATTEMPTS", "9")  # read as the module imports
    pytester.makepyfile(test_leaky=LEAKY)
    run(pytester, ini=ISOLATED).assert_outcomes(passed=3)
    # The outer state is back too: this test's environment, the early policy reloaded.
    assert os.environ["RESILIENT_EARLY_RETRY_ATTEMPTS"] == "9"
    assert "RESILIENT_LEAKY_RETRY_ATTEMPTS" not in os.environ
    assert events.GLOBAL._entries == ()
    assert testmode.current() == testmode.TestMode()


@pytest.mark.usefixtures("shell")
def test_without_isolation_the_shell_is_seen(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_shell="""
        import os

        import pytest


        def test_default_off():
            assert os.environ["RESILIENT_SHELL_RETRY_ATTEMPTS"] == "4"


        @pytest.mark.resilient_isolate
        def test_opted_in():
            assert "RESILIENT_SHELL_RETRY_ATTEMPTS" not in os.environ
        """
    )
    run(pytester).assert_outcomes(passed=2)


@pytest.mark.usefixtures("shell")
def test_a_module_opts_out_of_the_ini_options_isolation(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_deployed="""
        import os

        import pytest

        pytestmark = pytest.mark.resilient_isolate(False)


        def test_reads_the_deployments_variables():
            assert os.environ["RESILIENT_SHELL_RETRY_ATTEMPTS"] == "4"


        @pytest.mark.resilient_isolate(on=True)
        def test_but_this_one_is_isolated():
            assert "RESILIENT_SHELL_RETRY_ATTEMPTS" not in os.environ
        """,
        test_other="""
        import os


        def test_isolated_by_the_ini_option():
            assert "RESILIENT_SHELL_RETRY_ATTEMPTS" not in os.environ
        """,
    )
    run(pytester, ini=ISOLATED).assert_outcomes(passed=3)


def test_the_marker_on_a_module(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_module_marked="""
        import pytest

        from resilient._core.configuration import testmode

        pytestmark = pytest.mark.resilient_testing(attempts=2)


        def test_one():
            assert testmode.current() == (True, 2)


        class TestMany:
            def test_two(self):
                assert testmode.current() == (True, 2)


        @pytest.mark.resilient_testing(attempts=4)
        def test_the_nearest_marker_wins():
            assert testmode.current() == (True, 4)
        """
    )
    run(pytester).assert_outcomes(passed=3)
    assert testmode.current() == testmode.TestMode()


@pytest.mark.parametrize(
    ("marker", "said"),
    [
        ("resilient_testing(3)", "takes attempts=N only"),
        ("resilient_testing(tries=3)", "takes attempts=N only"),
        ("resilient_testing(attempts=0)", "attempts=0"),
        ("resilient_isolate('yes')", "takes one bool"),
    ],
)
def test_a_bad_marker_is_an_error_that_says_why(
    pytester: pytest.Pytester, marker: str, said: str
) -> None:
    pytester.makepyfile(
        test_bad=f"""
        import pytest


        @pytest.mark.{marker}
        def test_it():
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*{said}*"])


STRICT = """
import pytest

pytestmark = [pytest.mark.resilient_testing, pytest.mark.resilient_isolate]


def test_it(manual_clock, resilient_testing, resilient_env, resilient_registry):
    pass
"""


def test_the_entry_point_loads_the_plugin_and_strict_markers_accept_its_markers(
    pytester: pytest.Pytester,
) -> None:
    """In a fresh interpreter, with no ``-p``: only the installed entry point brings it."""
    pytester.makepyfile(test_strict=STRICT)
    result = pytester.runpytest_subprocess("--strict-markers", *OTHERS)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["plugins:*resilient-toolkit-*"])


def test_without_the_plugin_its_fixtures_are_unknown(pytester: pytest.Pytester) -> None:
    """``-p no:resilient`` names the entry point. (Its markers cannot be shown unknown
    in this process: pytest.mark remembers the markers it has seen registered.)"""
    pytester.makepyfile(test_strict=STRICT)
    result = run(pytester, "-p", "no:resilient")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'manual_clock' not found*"])


def test_the_markers_and_the_ini_option_are_documented_by_pytest(
    pytester: pytest.Pytester,
) -> None:
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.resilient_testing(attempts=None):*", "@pytest.mark.resilient_isolate(*"]
    )
    result = run(pytester, "--help")
    result.stdout.fnmatch_lines(["*resilient_isolate (bool):*"])
    result = run(pytester, "--fixtures")
    for fixture in ("manual_clock", "resilient_testing", "resilient_env", "resilient_registry"):
        result.stdout.fnmatch_lines([f"{fixture} -- *resilient*pytest_plugin.py*"])


# -- docs/testing.md -------------------------------------------------------------------------


def blocks(language: str) -> list[str]:
    """The ```<language> blocks of docs/testing.md (sybil runs its ```python ones only)."""
    return re.findall(rf"^```{language}\n(.*?)^```$", DOCS.read_text(), re.M | re.S)


def test_the_docs_example_passes_under_the_docs_ini_option(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plugin's example in docs/testing.md, the very text, run as a user's suite."""
    (toml,) = blocks("toml")
    (example,) = blocks("py")
    monkeypatch.setenv("RESILIENT_PAYMENTS_RETRY_ATTEMPTS", "8")  # from the "shell"
    pytester.makepyprojecttoml(toml)
    pytester.makepyfile(test_payments=example)
    run(pytester).assert_outcomes(passed=4)
    assert resilient.testing.ManualClock is ManualClock  # (nothing imported anew)


@pytest.mark.usefixtures("shell")
def test_isolation_hides_the_shells_variables_not_those_a_test_module_sets(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the session began with (the shell, CI) is hidden; a variable a test module
    sets as it is imported is the suite's own and stays, from test to test."""
    monkeypatch.setenv("RESILIENT_IMPORTED_RETRY_ATTEMPTS", "0")  # (undone: gone after)
    monkeypatch.delenv("RESILIENT_IMPORTED_RETRY_ATTEMPTS")
    pytester.makepyfile(
        test_imported="""
        import os

        os.environ["RESILIENT_IMPORTED_RETRY_ATTEMPTS"] = "7"


        def test_sees_it():
            assert os.environ["RESILIENT_IMPORTED_RETRY_ATTEMPTS"] == "7"
            assert "RESILIENT_SHELL_RETRY_ATTEMPTS" not in os.environ


        def test_and_again(resilient_env):
            assert "RESILIENT_IMPORTED_RETRY_ATTEMPTS" not in os.environ  # asked: none


        def test_still():
            assert os.environ["RESILIENT_IMPORTED_RETRY_ATTEMPTS"] == "7"
        """
    )
    run(pytester, ini=ISOLATED).assert_outcomes(passed=3)
