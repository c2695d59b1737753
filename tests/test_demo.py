"""``resilient demo``, run as a user runs it: in a subprocess, with its exit code.

The runs that take time (a couple of seconds each) start together, once, in the ``runs``
fixture; each test then reads the one it needs. Their checks are about the structure
of what happened (the breaker opened, fewer calls reached the failing service, a
variable took effect), with generous bounds on time, so a loaded machine passes them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from resilient import ConfigError
from resilient._demo import policies as demo
from resilient._demo.report import explain, summary_lines
from resilient._demo.settings import Settings, parse
from resilient._demo.simulation import Answer, Outcome
from resilient._demo.summary import percentile, tally

DURATION = 2.0  # long enough for the outage to take every worker of the unguarded service
CLIENTS = 20
SHORT = ("--duration", str(DURATION), "--clients", str(CLIENTS))


def environment(**env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_")}
    clean.pop("NO_COLOR", None)
    return {**clean, "COLUMNS": "80", **env}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "resilient", "demo", *args]


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), capture_output=True, text=True, env=environment(**env), timeout=60
    )


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # wall-clock time, start to exit

    @property
    def summary(self) -> dict[str, Any]:
        assert self.returncode == 0, self.stderr
        return json.loads(self.stdout)  # type: ignore[no-any-return]


class Started:
    """A demo started in the background; ``finish()`` waits for it."""

    def __init__(self, args: tuple[str, ...], env: dict[str, str], tty: bool) -> None:
        self.started = time.monotonic()
        self.chunks: list[bytes] = []
        if tty:  # a real terminal, so that the demo finds one on its own
            import pty

            master, slave = pty.openpty()
            self.proc = subprocess.Popen(
                command(*args), stdout=slave, stderr=subprocess.PIPE, env=environment(**env)
            )
            os.close(slave)
            self.reader = threading.Thread(target=self._read, args=(master,), daemon=True)
            self.reader.start()
        else:
            self.proc = subprocess.Popen(
                command(*args),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment(**env),
            )

    def _read(self, fd: int) -> None:
        try:
            while chunk := os.read(fd, 65536):
                self.chunks.append(chunk)
        except OSError:  # EIO: the demo has exited and closed the terminal
            pass
        finally:
            os.close(fd)

    def finish(self) -> Run:
        stdout, stderr = self.proc.communicate(timeout=60)
        seconds = time.monotonic() - self.started
        if stdout is None:
            self.reader.join(10)
            stdout = b"".join(self.chunks)
        text = stdout.decode().replace("\r\n", "\n")
        return Run(self.proc.returncode, text, stderr.decode(), seconds)


RUNS: dict[str, tuple[tuple[str, ...], dict[str, str], bool]] = {
    "default": ((*SHORT, "--no-live", "--json"), {}, False),
    "switched off": ((*SHORT, "--no-live", "--json"), {"RESILIENT_ENABLED": "0"}, False),
    "forced open": (
        (*SHORT, "--no-live", "--json"),
        {"RESILIENT_DEMO_BREAKER_STATE": "forced_open"},
        False,
    ),
    "open for 100ms": (
        (*SHORT, "--no-live", "--json"),
        {"RESILIENT_DEMO_BREAKER_OPEN_FOR": "100ms"},
        False,
    ),
    "live, forced": (("--duration", "1.5", "--clients", "10", "--live"), {}, False),
    "on a terminal": (("--duration", "1.5", "--clients", "10"), {"TERM": "xterm"}, True),
}


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    started = {
        name: Started(args, env, tty=tty and sys.platform != "win32")
        for name, (args, env, tty) in RUNS.items()
    }
    return {name: each.finish() for name, each in started.items()}


OUTCOMES = ("succeeded", "errors", "timeouts", "refused_breaker", "refused_bulkhead", "unanswered")


def accounted(group: dict[str, Any]) -> int:
    """Requests with an outcome: each has exactly one."""
    return sum(group[outcome] for outcome in OUTCOMES)


# -- the command line ----------------------------------------------------------------------


def test_help_reads_well() -> None:
    result = run("--help")
    assert result.returncode == 0
    text = result.stdout
    assert text.startswith("usage: resilient demo")
    for option in ("--duration SECONDS", "--clients N", "--intensity", "--seed", "--no-live"):
        assert option in text
    assert "--json" in text
    assert "--live" not in text.replace("--no-live", "")  # a hidden flag, for tests
    for phase in ("healthy", "latency spikes", "error burst", "outage", "recovery"):
        assert phase in text
    assert "RESILIENT_DEMO_BREAKER_OPEN_FOR=5s" in text
    assert "RESILIENT_ENABLED=0" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("--duration", "0"), "argument --duration: must be more than 0"),
        (("--duration", "-1"), "argument --duration: must be more than 0"),
        (("--duration", "soon"), "argument --duration: not a number"),
        (("--clients", "0"), "argument --clients: must be from 1 to"),
        (("--clients", "many"), "argument --clients: not a whole number"),
        (("--intensity", "extreme"), "argument --intensity: invalid choice"),
        (("--bogus",), "unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_exit_with_2(args: tuple[str, ...], complaint: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "usage: resilient demo" in result.stderr
    assert complaint in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RESILIENT_DEMO_BREAKER_OPEN_FOR", "soon"),
        ("RESILIENT_DEMO_ATTEMPT_TIMEOUT_SECONDS", "-1"),
        ("RESILIENT_ENABLED", "maybe"),
    ],
)
def test_a_bad_variable_exits_with_1_and_names_it(variable: str, value: str) -> None:
    result = run("--duration", "1", **{variable: value})
    assert result.returncode == 1
    assert "resilient demo: invalid configuration" in result.stderr
    assert f"{variable}={value!r} is invalid" in result.stderr
    assert result.stdout == ""


def test_a_variable_that_matches_nothing_is_pointed_out() -> None:
    result = run("--duration", "0.3", "--clients", "2", RESILIENT_DEMO_BREAKER_OPNE_FOR="3s")
    assert result.returncode == 0
    said = " ".join(result.stdout.split())  # the note is wrapped to the terminal
    assert "RESILIENT_DEMO_BREAKER_OPNE_FOR matches no option of the demo's policies" in said
    assert "did you mean RESILIENT_DEMO_BREAKER_OPEN_FOR?" in said
    assert "* from the environment" not in said


# -- what a run shows ----------------------------------------------------------------------


def test_a_run_finishes_in_time_and_sums_up_both_groups(runs: dict[str, Run]) -> None:
    result = runs["default"]
    summary = result.summary
    assert summary["duration"] == DURATION
    assert summary["clients"] == CLIENTS
    assert summary["enabled"] is True
    assert summary["elapsed"] <= DURATION + 1
    assert result.seconds < DURATION + 10  # interpreter start-up included, on a busy machine
    plain, guarded = summary["groups"]["unguarded"], summary["groups"]["resilient"]
    # The clients keep one schedule, whatever happens to their requests.
    assert plain["requests"] == guarded["requests"] > CLIENTS * 10 * DURATION / 2
    for group in (plain, guarded):
        assert accounted(group) == group["requests"]
        assert set(group["phases"]) == {"healthy", "spikes", "errors", "outage", "recovery"}
        assert sum(p["requests"] for p in group["phases"].values()) == group["requests"]
    assert plain["retries"] == plain["refused_breaker"] == plain["refused_bulkhead"] == 0
    assert guarded["retries"] > 0


def test_resilience_spares_the_failing_service(runs: dict[str, Run]) -> None:
    summary = runs["default"].summary
    plain, guarded = summary["groups"]["unguarded"], summary["groups"]["resilient"]
    outage = {name: group["phases"]["outage"] for name, group in summary["groups"].items()}
    # Unguarded calls hang until their 5 s timeout, holding the service's workers...
    assert outage["unguarded"]["timeouts"] + outage["unguarded"]["unanswered"] > 0
    assert plain["service_peak_busy"] == plain["service_workers"] == CLIENTS * 5
    # ...while the breaker opens and refuses, so far fewer calls reach the service.
    assert summary["breaker"]["opened_after_outage_start"] is not None
    assert "outage" in summary["breaker"]["opened_in"]
    assert outage["resilient"]["refused_breaker"] > 0
    assert 0 < outage["resilient"]["service_calls"] < outage["unguarded"]["service_calls"]
    assert guarded["service_peak_busy"] <= 2 * CLIENTS  # the bulkhead's limit
    assert guarded["peak_in_flight"] < plain["peak_in_flight"]
    assert outage["resilient"]["p50"] < 0.25 < outage["unguarded"]["p99"]


def test_the_settings_in_force_are_shown_with_their_source(runs: dict[str, Run]) -> None:
    result = runs["default"]
    policies = {(p["kind"], p["name"]): p["options"] for p in result.summary["policies"]}
    assert set(policies) == {
        ("bulkhead", "demo"),
        ("timeout", "demo"),
        ("retry", "demo"),
        ("breaker", "demo"),
        ("timeout", "demo-attempt"),
    }
    assert policies[("breaker", "demo")]["open_for"] == {"value": "1s", "source": "code"}
    assert policies[("breaker", "demo")]["failure_rate"]["source"] == "default"
    assert policies[("timeout", "demo-attempt")]["seconds"]["value"] == "250ms"
    # With --json the banner and the progress lines go to stderr, the JSON alone to stdout.
    assert "CircuitBreaker('demo')" in result.stderr
    assert "open_for=1s half_open_calls=5" in result.stderr
    assert re.search(r"^t= 1\.\ds \w.* \| unguarded: \d+ sent", result.stderr, re.M)


def test_a_variable_changes_the_breaker(runs: dict[str, Run]) -> None:
    default, tweaked = runs["default"].summary, runs["open for 100ms"].summary
    options = {p["kind"]: p["options"] for p in tweaked["policies"]}
    assert options["breaker"]["open_for"] == {
        "value": "100ms",
        "source": "RESILIENT_DEMO_BREAKER_OPEN_FOR",
    }
    assert tweaked["environment"] == {"RESILIENT_DEMO_BREAKER_OPEN_FOR": "100ms"}
    assert "open_for=100ms*" in runs["open for 100ms"].stderr
    assert "* from the environment: RESILIENT_DEMO_BREAKER_OPEN_FOR=100ms" in (
        runs["open for 100ms"].stderr
    )
    # Open for 1 s, the breaker is still open when the run ends; open for 100 ms, it
    # probes the service during the outage and closes once the service is back.
    changes = [c["to"] for c in default["breaker"]["changes"]]
    assert "open" in changes
    assert changes.count("half_open") <= 1
    assert default["breaker"]["closed_after_recovery"] is None
    tweaked_changes = [c["to"] for c in tweaked["breaker"]["changes"]]
    assert tweaked_changes.count("half_open") >= 2
    assert tweaked["breaker"]["closed_after_recovery"] is not None


def test_a_forced_open_breaker_refuses_every_call(runs: dict[str, Run]) -> None:
    summary = runs["forced open"].summary
    guarded = summary["groups"]["resilient"]
    assert summary["breaker"]["initial_state"] == "forced_open"
    assert guarded["refused_breaker"] == guarded["requests"] > 0
    assert guarded["service_calls"] == guarded["retries"] == 0
    assert summary["groups"]["unguarded"]["succeeded"] > 0
    assert "forced_open" in runs["forced open"].stderr


def test_switched_off_the_resilient_group_is_unguarded_too(runs: dict[str, Run]) -> None:
    summary = runs["switched off"].summary
    plain, guarded = summary["groups"]["unguarded"], summary["groups"]["resilient"]
    assert summary["enabled"] is False
    assert summary["breaker"]["changes"] == []
    assert guarded["retries"] == guarded["refused_breaker"] == guarded["refused_bulkhead"] == 0
    # The same schedule and the same dice: the two groups fare alike.
    for key in ("service_calls", "succeeded", "errors", "timeouts", "unanswered"):
        assert abs(plain[key] - guarded[key]) <= 0.1 * plain[key] + 5, key
    assert guarded["service_peak_busy"] == guarded["service_workers"]
    assert "RESILIENT_ENABLED=0" in runs["switched off"].stderr


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("default", ["the breaker opened", "had not closed by the end"]),
        ("open for 100ms", ["the breaker opened", "probing every open_for=100ms, closed"]),
        ("switched off", ["Resilience was switched off (RESILIENT_ENABLED=0)"]),
        ("forced open", ["The breaker was forced open"]),
    ],
)
def test_the_summary_says_what_changed(runs: dict[str, Run], name: str, said: list[str]) -> None:
    sentences = explain(runs[name].summary)
    assert 1 <= len(sentences) <= 4
    assert all(sentence.endswith(".") for sentence in sentences)
    text = " ".join(sentences)
    for words in said:
        assert words in text


# -- the live view ---------------------------------------------------------------------------


def screen(output: str) -> list[str]:
    """What a terminal shows after ``output``: just the escapes the live view writes."""
    lines, row, col = [""], 0, 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)", output):
        if token == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token.endswith("K"):
                lines[row] = lines[row][:col]
        elif token:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    return lines


def panel_heights(output: str) -> Iterator[int]:
    for match in re.finditer(r"\x1b\[(\d+)A", output):
        yield int(match.group(1))


@pytest.mark.parametrize("name", ["live, forced", "on a terminal"])
def test_the_live_view_redraws_in_place(runs: dict[str, Run], name: str) -> None:
    result = runs[name]
    if name == "on a terminal" and sys.platform == "win32":
        pytest.skip("no pseudo-terminal on Windows")
    assert result.returncode == 0, result.stderr
    output = result.stdout
    assert "\x1b[?25l" in output
    assert output.count("\x1b[?25h") == 1
    heights = set(panel_heights(output))
    assert len(heights) == 1  # each redraw goes back over exactly the panel drawn before
    assert len(list(panel_heights(output))) >= 5
    if name == "on a terminal":
        assert "\x1b[32m" in output  # in colour
    shown = screen(output)
    panel_top = next(i for i, line in enumerate(shown) if line.startswith("resilient demo   t ="))
    panel = shown[panel_top : panel_top + heights.pop()]
    assert panel[1].startswith("service  ")
    assert panel[2].startswith("breaker  ")
    assert "the clients have stopped" in panel[3]
    assert any(line.startswith("requests sent") for line in panel)
    assert sum(line.startswith("resilient demo   t =") for line in shown) == 1
    # Then the summary, once, in plain text no wider than a terminal.
    assert sum(line.startswith("Summary (") for line in shown) == 1
    summary = shown[next(i for i, line in enumerate(shown) if line.startswith("Summary (")) :]
    assert any(re.match(r"  requests +\d+ +\d+$", line) for line in summary)
    assert any(line.startswith("  outage (") for line in summary)
    explained = summary[summary.index("What changed:") :]
    assert 2 <= sum(line.startswith("- ") for line in explained) <= 4
    assert max(len(line) for line in shown) <= 80


def test_percentile_is_nearest_rank_and_says_when_it_is_a_lower_bound() -> None:
    waits = [(float(n), n == 100) for n in range(1, 101)]
    assert percentile(waits, 0.5) == (50.0, False)
    assert percentile(waits, 0.99) == (99.0, False)
    assert percentile(waits, 1.0) == (100.0, True)
    assert percentile([(0.5, False)], 0.99) == (0.5, False)
    assert percentile([], 0.5) == (None, False)


def test_a_tally_counts_each_outcome_and_marks_a_wait_cut_short() -> None:
    answers = [Answer(0, Outcome.OK, 0.03, 0.1)] * 3 + [
        Answer(0, Outcome.BREAKER, 0.001, 0.2),
        Answer(1, Outcome.UNANSWERED, 2.0, 1.5),
    ]
    assert tally(answers) == {
        "requests": 5,
        "succeeded": 3,
        "errors": 0,
        "timeouts": 0,
        "refused_breaker": 1,
        "refused_bulkhead": 0,
        "unanswered": 1,
        "p50": 0.03,
        "p99": 2.0,
        "p50_unfinished": False,
        "p99_unfinished": True,
    }


def test_the_report_renders_a_summary_read_back_from_json(runs: dict[str, Run]) -> None:
    lines = "\n".join(summary_lines(runs["default"].summary)).splitlines()
    assert lines[1].startswith(f"Summary ({CLIENTS} clients per group, {DURATION:g} s,")
    assert any(re.match(r"  requests +\d+ +\d+$", line) for line in lines)
    assert "What changed:" in lines
    assert max(len(line) for line in lines) <= 79


# -- the settings ----------------------------------------------------------------------------


def test_the_command_line_is_parsed_into_settings() -> None:
    assert parse([]) == Settings(10.0, 30, "normal", 1, live=None, json=False)
    given = ["--duration", "2.5", "--clients", "4", "--intensity", "high", "--seed", "7"]
    assert parse([*given, "--no-live", "--json"]) == Settings(2.5, 4, "high", 7, False, True)
    assert parse(["--live"]).live is True


def test_a_bad_option_names_itself_its_value_and_the_range(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--clients", "500"])
    assert exited.value.code == 2
    assert "argument --clients: must be from 1 to 200, not 500" in capsys.readouterr().err


def test_a_demo_variable_retunes_its_policy_and_is_shown_with_its_source(
    env: pytest.MonkeyPatch,
) -> None:
    env.setenv("RESILIENT_DEMO_BREAKER_OPEN_FOR", "100ms")
    env.setenv("RESILIENT_DEMO_BREAKER_OPNE_FOR", "3s")
    policies = demo.Policies.make(clients=2, seed=1)
    assert policies.breaker.settings.values["open_for"] == 0.1
    described = {(p["kind"], p["name"]): p["options"] for p in demo.describe_policies(policies)}
    assert described[("breaker", "demo")]["open_for"] == {
        "value": "100ms",
        "source": "RESILIENT_DEMO_BREAKER_OPEN_FOR",
    }
    assert described[("timeout", "demo-attempt")]["seconds"] == {
        "value": "250ms",
        "source": "code",
    }
    assert demo.environment(policies) == demo.Environment(
        set_now={
            "RESILIENT_DEMO_BREAKER_OPEN_FOR": "100ms",
            "RESILIENT_DEMO_BREAKER_OPNE_FOR": "3s",
        },
        unknown=[("RESILIENT_DEMO_BREAKER_OPNE_FOR", "RESILIENT_DEMO_BREAKER_OPEN_FOR")],
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("RESILIENT_DEMO_BREAKER_OPEN_FOR", "soon", "expected seconds >= 0"),
        ("RESILIENT_DEMO_ATTEMPT_TIMEOUT_SECONDS", "-1", "expected seconds > 0"),
        ("RESILIENT_DEMO_RETRY_ATTEMPTS", "many", "expected a whole number"),
    ],
)
def test_a_bad_demo_variable_names_itself_its_value_and_what_it_expects(
    env: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    env.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        demo.Policies.make(clients=2, seed=1)
    assert f"{variable}={value!r} is invalid: {expected}" in str(raised.value)


# -- loaded only by the demo command -----------------------------------------------------------

LOADED = """
import json, sys
{run}
loaded = sorted(m for m in sys.modules if m.startswith("resilient._demo"))
print(json.dumps(loaded), file=sys.stderr)
"""


def demo_modules_loaded_by(run: str) -> list[str]:
    code = LOADED.format(run=run)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment(), timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stderr.splitlines()[-1])  # type: ignore[no-any-return]


RUN_MAIN = """
from resilient._cli import main
try:
    main({argv!r})
except SystemExit:
    pass
"""


def test_import_resilient_does_not_load_the_demo() -> None:
    assert demo_modules_loaded_by("import resilient, resilient.backoff, resilient.testing") == []


@pytest.mark.parametrize("argv", [["--help"], ["env"], ["config", "--help"]])
def test_the_other_commands_do_not_load_the_demo(argv: list[str]) -> None:
    assert demo_modules_loaded_by(RUN_MAIN.format(argv=argv)) == []


def test_resilient_demo_loads_the_demo() -> None:
    """The check above can see the demo load (so its empty answers mean something)."""
    assert "resilient._demo.command" in demo_modules_loaded_by(
        RUN_MAIN.format(argv=["demo", "--help"])
    )
