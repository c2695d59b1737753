"""The ``resilient`` command's env and config subcommands, run as a user runs them: in a
subprocess, with their exit codes. (``resilient demo`` has tests of its own.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import resilient
from resilient._core.configuration import config

APP = textwrap.dedent(
    """
    from resilient import Bulkhead, CircuitBreaker, Pipeline, Retry, Timeout

    breaker = CircuitBreaker("payments", failure_rate=0.3)
    pipe = Pipeline(Bulkhead(4, name="payments"), Retry(3, name="payments"), breaker)
    unrelated = Timeout(2, name="search")
    """
)


def run(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_")}
    return subprocess.run(
        [sys.executable, "-m", "resilient", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**clean, **env},
        timeout=60,
        check=False,
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def test_the_console_script_is_declared() -> None:
    scripts = metadata.entry_points(group="console_scripts")
    assert [ep.value for ep in scripts if ep.name == "resilient"] == ["resilient._cli:main"]


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("demo", "env", "config"):
        assert command in result.stdout
    assert "RESILIENT_<NAME>_<KIND>_<OPTION>" in result.stdout


@pytest.mark.parametrize(("args", "code"), [((), 2), (("nonsense",), 2), (("config",), 2)])
def test_misuse_exits_with_2(args: tuple[str, ...], code: int) -> None:
    result = run(*args)
    assert result.returncode == code
    assert "usage: resilient" in result.stdout + result.stderr


class TestEnv:
    def test_lists_every_variable_of_every_kind(self) -> None:
        result = run("env")
        assert result.returncode == 0
        assert "RESILIENT_ENABLED" in result.stdout
        for kind, options in config.KINDS.items():
            for option in options:
                variable = f"RESILIENT_<NAME>_{kind.upper()}_{option.name.upper()}"
                assert variable in result.stdout
                assert config.default_variable(kind, option.name) in result.stdout

    def test_json_has_the_declared_types_defaults_and_docs(self) -> None:
        result = run("env", "--json", RESILIENT_X_BREAKER_MIN_CALLS="7")
        assert result.returncode == 0
        data = json.loads(result.stdout)
        rows = {(r["kind"], r["option"]): r for r in data["variables"]}
        failure_rate = rows[("breaker", "failure_rate")]
        assert failure_rate["default"] == "0.5"
        assert failure_rate["syntax"] == "a decimal number, e.g. 0.25"
        assert "0 < failure_rate <= 1" in failure_rate["accepts"]
        assert rows[("timeout", "seconds")]["default"] == "(required in code)"
        assert rows[("breaker", "state")]["accepts"] == "auto, forced_open or disabled"
        assert data["set"] == {"RESILIENT_X_BREAKER_MIN_CALLS": "7"}

    def test_output_piped_into_a_closed_pipe_is_not_an_error(self) -> None:
        command = (
            f"{sys.executable} -m resilient env | {sys.executable} -c"
            " 'import sys; sys.stdin.readline()'"
        )
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr


class TestConfig:
    def test_shows_each_named_policy_and_where_values_came_from(self, app: Path) -> None:
        result = run("config", "app", cwd=app, RESILIENT_PAYMENTS_BREAKER_OPEN_FOR="2m")
        assert result.returncode == 0, result.stderr
        out = result.stdout
        for title in (
            "CircuitBreaker 'payments'",
            "Bulkhead 'payments'",
            "Retry 'payments'",
            "Timeout 'search'",
        ):
            assert title in out
        lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
        assert "(code)" in lines["failure_rate"]
        assert "(RESILIENT_PAYMENTS_BREAKER_OPEN_FOR=2m)" in lines["open_for"]
        assert "120.0" in lines["open_for"]
        assert "(default)" in lines["min_calls"]

    def test_an_attribute_narrows_to_its_policies(self, app: Path) -> None:
        result = run("config", "app:pipe", "--json", cwd=app)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert [(p["kind"], p["name"]) for p in data["policies"]] == [
            ("bulkhead", "payments"),
            ("retry", "payments"),
            ("breaker", "payments"),
        ]
        breaker = data["policies"][2]["options"]
        assert breaker["failure_rate"] == {"value": "0.3", "source": "code"}
        assert data["unknown"] == []
        assert data["invalid"] == []

    def test_check_passes_a_clean_environment(self, app: Path) -> None:
        result = run(
            "config",
            "app",
            "--check",
            cwd=app,
            RESILIENT_PAYMENTS_RETRY_ATTEMPTS="5",
            RESILIENT_DEFAULT_TIMEOUT_SECONDS="1.5",
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""

    def test_check_fails_on_a_variable_that_matches_nothing(self, app: Path) -> None:
        typo = {"RESILIENT_PAYMNTS_BREAKER_FAILURE_RATE": "0.2"}
        result = run("config", "app", "--check", cwd=app, **typo)
        assert result.returncode == 1
        assert "RESILIENT_PAYMNTS_BREAKER_FAILURE_RATE matches no option" in result.stderr
        assert "did you mean RESILIENT_PAYMENTS_BREAKER_FAILURE_RATE?" in result.stderr
        assert run("config", "app", cwd=app, **typo).returncode == 0  # only --check fails

    def test_check_json_lists_unknown_variables(self, app: Path) -> None:
        result = run(
            "config", "app", "--check", "--json", cwd=app, RESILIENT_SEARCH_TIMEOUT_SECOND="1"
        )
        assert result.returncode == 1
        assert json.loads(result.stdout)["unknown"] == [
            {
                "variable": "RESILIENT_SEARCH_TIMEOUT_SECOND",
                "did_you_mean": "RESILIENT_SEARCH_TIMEOUT_SECONDS",
            }
        ]

    @pytest.mark.parametrize("check", [(), ("--check",)])
    def test_an_invalid_variable_exits_with_1_naming_it(
        self, app: Path, check: tuple[str, ...]
    ) -> None:
        result = run(
            "config",
            "app",
            *check,
            cwd=app,
            RESILIENT_PAYMENTS_BREAKER_MIN_CALLS="-1",
            RESILIENT_PAYMENTS_BREAKER_OPEN_FOR="soon",
        )
        assert result.returncode == 1
        assert "RESILIENT_PAYMENTS_BREAKER_MIN_CALLS='-1' is invalid" in result.stderr
        assert "RESILIENT_PAYMENTS_BREAKER_OPEN_FOR='soon' is invalid" in result.stderr

    def test_invalid_variables_as_json(self, app: Path) -> None:
        result = run(
            "config", "app", "--json", cwd=app, RESILIENT_PAYMENTS_BULKHEAD_MAX_WAIT="nan"
        )
        assert result.returncode == 1
        (invalid,) = json.loads(result.stdout)["invalid"]
        assert invalid["variable"] == "RESILIENT_PAYMENTS_BULKHEAD_MAX_WAIT"
        assert invalid["value"] == "nan"
        assert invalid["policy"] == "Bulkhead('payments')"

    def test_check_validates_variables_no_policy_reads_yet(self, app: Path) -> None:
        # A policy made lazily later would fail in production: --check catches it now.
        result = run(
            "config",
            "app",
            "--check",
            "--json",
            cwd=app,
            RESILIENT_DEFAULT_BULKHEAD_MAX_CONCURRENT="abc",
            RESILIENT_LATER_RETRY_ATTEMPTS="-3",
        )
        assert result.returncode == 1
        invalid = {e["variable"]: e["value"] for e in json.loads(result.stdout)["invalid"]}
        assert invalid == {
            "RESILIENT_DEFAULT_BULKHEAD_MAX_CONCURRENT": "abc",
            "RESILIENT_LATER_RETRY_ATTEMPTS": "-3",
        }

    def test_a_bad_keyword_in_code_is_reported_as_json_too(self, app: Path) -> None:
        (app / "badcode.py").write_text(
            "import resilient\nclass Secs:\n    pass\nresilient.Timeout(Secs(), name='x')\n"
        )
        result = run("config", "badcode", "--json", cwd=app)
        assert result.returncode == 1
        (invalid,) = json.loads(result.stdout)["invalid"]
        assert invalid["variable"] == "seconds"
        assert "Secs object" in invalid["value"]

    @pytest.mark.parametrize("target", ["no_such_module", "app:no_such_attr", "app:unrelated.x"])
    def test_a_target_that_cannot_be_loaded_exits_with_2(self, app: Path, target: str) -> None:
        result = run("config", target, cwd=app)
        assert result.returncode == 2
        assert f"cannot load {target}" in result.stderr

    @pytest.mark.parametrize("code", ["0", "None", "3", "'bye'"])
    def test_a_module_that_exits_as_it_imports_fails_the_check(self, app: Path, code: str) -> None:
        """A deploy gate must not pass because the app called sys.exit(0) on import: the
        command says so and exits 2, or 1 when a variable is bad."""
        (app / "exits.py").write_text(f"import sys\nsys.exit({code})\n")
        result = run("config", "exits", "--check", cwd=app)
        assert result.returncode == 2
        assert "exits exited while importing" in result.stderr
        bad = run("config", "exits", "--check", cwd=app, RESILIENT_PAYMENTS_BREAKER_MIN_CALLS="-1")
        assert bad.returncode == 1
        assert "RESILIENT_PAYMENTS_BREAKER_MIN_CALLS='-1' is invalid" in bad.stderr

    def test_an_attribute_that_is_no_policy_exits_with_2(self, app: Path) -> None:
        (app / "plain.py").write_text("value = 3\n")
        result = run("config", "plain:value", cwd=app)
        assert result.returncode == 2
        assert "not a resilient policy" in result.stderr

    def test_a_module_with_no_named_policy_says_so(self, app: Path) -> None:
        (app / "empty.py").write_text("import resilient\nresilient.Retry(2)\n")
        result = run("config", "empty", cwd=app)
        assert result.returncode == 0
        assert "empty made no named policy" in result.stdout


def test_the_in_process_entry_point_returns_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    from resilient._cli import main

    assert main(["env", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["variables"]
    assert resilient.__version__
