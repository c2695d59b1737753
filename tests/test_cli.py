"""The ``resilient`` command's env and config subcommands, run as a user runs them: in a
subprocess, with their exit codes, and in-process through ``main()``. (``resilient demo``
has tests of its own.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import pytest

import resilient
from resilient._cli import main
from resilient._core.configuration import config

APP = textwrap.dedent(
    """
    from resilient import Bulkhead, CircuitBreaker, Pipeline, Retry, Timeout

    breaker = CircuitBreaker("payments", failure_rate=0.3)
    pipe = Pipeline(Bulkhead(4, name="payments"), Retry(3, name="payments"), breaker)
    unrelated = Timeout(2, name="search")
    """
)


#: ``python -m resilient``, or the console script pip installed.
MODULE = (sys.executable, "-m", "resilient")
SCRIPT = (str(Path(sysconfig.get_path("scripts")) / "resilient"),)


def run(
    *args: str, cwd: Path | None = None, command: tuple[str, ...] = MODULE, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_")}
    return subprocess.run(
        [*command, *args],
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
    for command in ("demo", "env", "config", "--version"):
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
        assert failure_rate["default"] == 0.5
        assert failure_rate["syntax"] == "a decimal number, e.g. 0.25"
        assert "0 < failure_rate <= 1" in failure_rate["accepts"]
        assert rows[("timeout", "seconds")]["default"] is None
        assert rows[("timeout", "seconds")]["required"] is True
        assert not rows[("breaker", "min_calls")]["required"]
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
        assert breaker["failure_rate"] == {"value": 0.3, "source": "code"}
        assert data["pending"] == data["unknown"] == data["invalid"] == []

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
        typo = {"RESILIENT_PAYMENTS_BREAKER_FAILURE_RAT": "0.2"}
        result = run("config", "app", "--check", cwd=app, **typo)
        assert result.returncode == 1
        assert "RESILIENT_PAYMENTS_BREAKER_FAILURE_RAT matches no option" in result.stderr
        assert "did you mean RESILIENT_PAYMENTS_BREAKER_FAILURE_RATE?" in result.stderr
        assert run("config", "app", cwd=app, **typo).returncode == 0  # only --check fails

    def test_a_name_no_live_policy_has_passes_the_check_with_a_hint(self, app: Path) -> None:
        """A well-formed variable for a name nothing made yet may be for a policy made
        later: --check passes it, and hints at the live name it may misspell; --strict,
        for an app that makes every policy as it imports, fails on it."""
        typo = {"RESILIENT_PAYMNTS_BREAKER_FAILURE_RATE": "0.2"}
        result = run("config", "app", "--check", cwd=app, **typo)
        assert result.returncode == 0, result.stderr
        assert (
            "RESILIENT_PAYMNTS_BREAKER_FAILURE_RATE=0.2: applies to the breaker named"
            " 'paymnts' when one is made (no live breaker has that name yet; did you mean"
            " RESILIENT_PAYMENTS_BREAKER_FAILURE_RATE?)"
        ) in result.stdout
        strict = run("config", "app", "--strict", cwd=app, **typo)
        assert strict.returncode == 1
        assert "--strict: 1 variable(s) name no live policy" in strict.stderr
        clean = {"RESILIENT_PAYMENTS_BREAKER_FAILURE_RATE": "0.2"}
        assert run("config", "app", "--strict", cwd=app, **clean).returncode == 0

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
    assert main(["env", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["variables"]
    assert resilient.__version__


def test_version_names_the_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"resilient-toolkit {resilient.__version__}\n"


class TestJson:
    """``--json`` says numbers, booleans and None in JSON's own types; text only for
    what has no JSON form (an exception filter as written, an object by import path)."""

    def test_config_values_keep_their_types(self, app: Path) -> None:
        result = run(
            "config",
            "app",
            "--json",
            cwd=app,
            RESILIENT_PAYMENTS_BREAKER_OPEN_FOR="2m",
            RESILIENT_PAYMENTS_BREAKER_FAILURE_RESULT="json:loads",  # a predicate
            RESILIENT_LATER_BULKHEAD_MAX_WAIT="250ms",
        )
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        policies = {(p["kind"], p["name"]): p for p in data["policies"]}
        breaker = policies[("breaker", "payments")]
        assert breaker["enabled"] is True
        values = {name: shown["value"] for name, shown in breaker["options"].items()}
        assert values["failure_rate"] == 0.3
        assert type(values["failure_rate"]) is float
        assert values["min_calls"] == 20
        assert type(values["min_calls"]) is int
        assert values["open_for"] == 120.0  # a duration: seconds, as a number
        assert type(values["open_for"]) is float
        assert values["half_open_max_wait"] is None
        assert values["window_type"] == "count"
        assert values["record"] == "Exception"
        assert values["ignore"] == "()"
        assert values["failure_result"] == "json:loads"  # by import path
        timeout = policies[("timeout", "search")]["options"]
        assert timeout["seconds"]["value"] == 2.0
        assert timeout["thread_locals"]["value"] == []
        (later,) = data["pending"]
        assert later["value"] == 0.25
        assert type(later["value"]) is float
        assert later["text"] == "250ms"

    def test_env_defaults_keep_their_types(self) -> None:
        data = json.loads(run("env", "--json").stdout)
        defaults = {r["variable"]: r["default"] for r in data["variables"]}
        assert defaults["RESILIENT_ENABLED"] is True
        assert defaults["RESILIENT_MAX_WORKERS"] == config.MAX_WORKERS
        assert type(defaults["RESILIENT_MAX_WORKERS"]) is int
        assert defaults["RESILIENT_<NAME>_BREAKER_MIN_CALLS"] == 20
        assert defaults["RESILIENT_<NAME>_BREAKER_RECORD"] == "Exception"


# -- Factories: an app that makes its policies later, none as it imports ----------------------

FACTORY = textwrap.dedent(
    """
    import resilient

    _breakers = {}


    def breaker_for(host):
        \"\"\"One breaker per downstream host, made on first use.\"\"\"
        if host not in _breakers:
            _breakers[host] = resilient.CircuitBreaker(host)
        return _breakers[host]


    def ledger_retry():
        return resilient.Retry(3, name="ledger")
    """
)

#: Valid variables for the policies the factory makes: none is live when --check runs.
LATER = {
    "RESILIENT_PER_HOST_BREAKER_FAILURE_RATE": "0.2",
    "RESILIENT_LEDGER_RETRY_ATTEMPTS": "5",
    "RESILIENT_DEFAULT_TIMEOUT_SECONDS": "2.5",  # kind-wide: always known
}


class Result(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., Result]]:
    """``main()`` run in this process on a module ``clifactory`` written from FACTORY,
    imported afresh each time, with only the given RESILIENT_* variables set (the
    plugin's isolation, on for the suite, keeps the outer ones out)."""
    (tmp_path / "clifactory.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() puts the directory first

    def run_main(*args: str, **env: str) -> Result:
        sys.modules.pop("clifactory", None)
        with monkeypatch.context() as patch:
            for var, value in env.items():
                patch.setenv(var, value)
            code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    yield run_main
    sys.modules.pop("clifactory", None)  # (the registry forgets its policies: the plugin)


class TestFactories:
    def test_valid_variables_pass_the_check_and_say_no_policy_has_the_name_yet(
        self, cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        result = cli("config", "clifactory", "--check", **LATER)
        assert result == (0, result.out, ""), result.err
        assert "clifactory made no named policy as it imported" in result.out
        assert (
            "RESILIENT_PER_HOST_BREAKER_FAILURE_RATE=0.2: applies to the breaker named"
            " 'per_host' when one is made (no live breaker has that name yet)\n"
        ) in result.out
        assert "applies to the retry named 'ledger' when one is made" in result.out
        assert "RESILIENT_DEFAULT_TIMEOUT_SECONDS" not in result.out  # read by every Timeout
        # And they do apply, once the factory makes its policies.
        for var, value in LATER.items():
            monkeypatch.setenv(var, value)
        factory = sys.modules["clifactory"]
        assert factory.breaker_for("per-host").settings["failure_rate"] == 0.2
        assert factory.ledger_retry().attempts == 5

    def test_the_json_lists_them_as_pending(self, cli: Callable[..., Result]) -> None:
        result = cli("config", "clifactory", "--check", "--json", **LATER)
        assert result.code == 0, result.err
        data = json.loads(result.out)
        assert data["policies"] == data["unknown"] == data["invalid"] == []
        assert data["pending"] == [
            {
                "variable": "RESILIENT_LEDGER_RETRY_ATTEMPTS",
                "text": "5",
                "value": 5,
                "kind": "retry",
                "option": "attempts",
                "name": "ledger",
                "family": None,
                "did_you_mean": None,
            },
            {
                "variable": "RESILIENT_PER_HOST_BREAKER_FAILURE_RATE",
                "text": "0.2",
                "value": 0.2,
                "kind": "breaker",
                "option": "failure_rate",
                "name": "per_host",
                "family": None,
                "did_you_mean": None,
            },
        ]

    def test_a_bad_value_fails_naming_the_variable_value_and_range(
        self, cli: Callable[..., Result]
    ) -> None:
        result = cli(
            "config", "clifactory", "--check", **{**LATER, "RESILIENT_LEDGER_RETRY_WAIT": "soon"}
        )
        assert result.code == 1
        assert ("error: RESILIENT_LEDGER_RETRY_WAIT='soon' is invalid: expected") in result.err
        assert "250ms" in result.err  # how a duration is written
        assert "RESILIENT_LEDGER_RETRY_WAIT=soon: applies" not in result.out
        assert "applies to the breaker named 'per_host'" in result.out  # the others stand

    @pytest.mark.parametrize(
        "typo",
        [
            "RESILIENT_PER_HOST_BREAKER_FAILURE_RAT",  # an option that does not exist
            "RESILIENT_PER_HOST_BREAKR_FAILURE_RATE",  # a kind that does not exist
            "RESILIENT_per_host_BREAKER_FAILURE_RATE",  # a name as no variable spells one
        ],
    )
    def test_an_unknown_variable_fails_with_a_suggestion(
        self, cli: Callable[..., Result], typo: str
    ) -> None:
        result = cli("config", "clifactory", "--check", **{typo: "0.2"})
        assert result.code == 1
        assert (
            f"warning: {typo} matches no option of any policy;"
            " did you mean RESILIENT_PER_HOST_BREAKER_FAILURE_RATE?"
        ) in result.err
        assert cli("config", "clifactory", **{typo: "0.2"}).code == 0  # only --check fails

    def test_only_the_policies_the_import_made_are_shown(self, cli: Callable[..., Result]) -> None:
        elsewhere = resilient.CircuitBreaker("cli_elsewhere")  # live, made by another module
        result = cli(
            "config", "clifactory", "--check", RESILIENT_CLI_ELSEWHERE_BREAKER_MIN_CALLS="5"
        )
        assert result == (0, "clifactory made no named policy as it imported.\n", "")
        assert elsewhere.settings["min_calls"] == 20  # read when made; --check changes nothing

    def test_the_hint_names_a_live_policy_only_when_the_names_are_close(
        self, cli: Callable[..., Result]
    ) -> None:
        live = resilient.CircuitBreaker("cli_payments")  # live while the command runs
        result = cli(
            "config",
            "clifactory",
            "--check",
            RESILIENT_CLI_PAYMNTS_BREAKER_FAILURE_RATE="0.2",
            RESILIENT_PER_HOST_BREAKER_FAILURE_RATE="0.2",
        )
        assert result.code == 0, result.err
        hinted, plain = result.out.splitlines()[1:]
        assert hinted.endswith("did you mean RESILIENT_CLI_PAYMENTS_BREAKER_FAILURE_RATE?)")
        assert plain.endswith("(no live breaker has that name yet)")
        del live

    def test_the_console_script_runs_the_check(self, tmp_path: Path) -> None:
        (tmp_path / "clifactory.py").write_text(FACTORY)
        result = run("config", "clifactory", "--check", cwd=tmp_path, command=SCRIPT, **LATER)
        assert result.returncode == 0, result.stderr
        assert "applies to the breaker named 'per_host' when one is made" in result.stdout
        version = run("--version", command=SCRIPT)
        assert (version.returncode, version.stdout) == (
            0,
            f"resilient-toolkit {resilient.__version__}\n",
        )


@pytest.mark.parametrize(
    ("var", "parts"),
    [
        ("RESILIENT_PER_HOST_BREAKER_FAILURE_RATE", ("PER_HOST", "breaker", "failure_rate")),
        ("RESILIENT_X_RETRY_MAX_WAIT", ("X", "retry", "max_wait")),  # not RETRY_WAIT of X
        ("RESILIENT_X_BULKHEAD_MAX_WAIT", ("X", "bulkhead", "max_wait")),
        ("RESILIENT_X_RETRY_ON_RESULT", ("X", "retry", "on_result")),
        ("RESILIENT_DEFAULT_TIMEOUT_SECONDS", ("DEFAULT", "timeout", "seconds")),
        ("RESILIENT_API_V2_TIMEOUT_MAX_ABANDONED", ("API_V2", "timeout", "max_abandoned")),
        ("RESILIENT_BREAKER_FAILURE_RATE", None),  # no name
        ("RESILIENT___BREAKER_FAILURE_RATE", None),  # no name a policy can have
        ("RESILIENT_payments_BREAKER_FAILURE_RATE", None),  # names are spelt upper-case
        ("RESILIENT_X_BREAKER_FAILURE_RAT", None),
        ("OTHER_X_BREAKER_FAILURE_RATE", None),
    ],
)
def test_a_variable_splits_into_name_kind_and_option(
    var: str, parts: tuple[str, str, str] | None
) -> None:
    found = config.parts_of(var)
    split = None if found is None else (found.name, found.kind, found.option.name)
    assert split == parts


def test_a_transports_host_variables_are_told_as_its_hosts_and_pass_strict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """RESILIENT_<NAME>_<HOST>_BREAKER_* names a per-host breaker the transport makes on
    first use: config says so (not "a breaker named 'gw_api_example_com_443'"), and
    --strict does not call it an orphan; the transport's own and the family's apply."""
    (tmp_path / "gateway.py").write_text(
        "from resilient.httpx import ResilientTransport\n"
        "transport = ResilientTransport(name='gw')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("RESILIENT_GW_API_EXAMPLE_COM_443_BREAKER_OPEN_FOR", "60")
    monkeypatch.setenv("RESILIENT_GW_BREAKER_MIN_CALLS", "5")
    monkeypatch.setenv("RESILIENT_GW_TOTAL_TIMEOUT_SECONDS", "12")
    try:
        code = main(["config", "gateway", "--strict"])
    finally:
        sys.modules.pop("gateway", None)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (
        "RESILIENT_GW_API_EXAMPLE_COM_443_BREAKER_OPEN_FOR=60: applies to the breaker of one"
        " of 'gw''s members (a transport's host, spelt 'gw_api_example_com_443' here) when"
        " it is made"
    ) in out
    assert "Timeout 'gw.total'" in out
    assert "12.0" in out
