"""The text around a run: the banner before it (the scenario and the settings in force),
then the summary table and a few sentences on what resilience changed. The summary is
read from its JSON-shaped data alone, so the text says nothing that ``--json`` lacks."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator, Sequence
from typing import Literal, TextIO

from resilient import State
from resilient._core.configuration import config
from resilient._demo.policies import TITLES, describe_policies, environment
from resilient._demo.simulation import CLIENT_TIMEOUT, REQUEST_INTERVAL, Simulation
from resilient._demo.summary import PhaseSpan, Summary, Tally

#: The outcomes a tally counts.
Counted = Literal[
    "succeeded", "errors", "timeouts", "refused_breaker", "refused_bulkhead", "unanswered"
]


def wrap(items: Sequence[str], first: str, then: str, sep: str = " ") -> list[str]:
    """``items`` joined by ``sep`` and wrapped to 79 columns, never inside an item."""
    text = sep.join(item.replace(" ", "\xa0") for item in items)  # textwrap keeps \xa0
    lines = textwrap.wrap(
        text, width=79, initial_indent=first, subsequent_indent=then, break_on_hyphens=False
    )
    return [line.replace("\xa0", " ") for line in lines]


def banner(sim: Simulation, out: TextIO) -> None:
    """Before the run: the timeline, the two groups, the settings in force and their source."""
    settings, policies = sim.settings, sim.policies
    lines = [
        f"resilient demo: two groups of {settings.clients} clients, each client sending"
        f" ~{1 / REQUEST_INTERVAL:g} requests/s",
        f"for {settings.duration:g} s (intensity {settings.intensity}, seed {settings.seed})",
        *wrap(
            [f"{phase.label} {phase.span()}" for phase in sim.timeline.phases],
            f"  the service ({sim.workers} workers): ",
            "    ",
            sep=", ",
        ),
        f"  unguarded clients: await service(), with a {CLIENT_TIMEOUT:g} s client timeout",
        "  resilient clients: the same call through Pipeline(",
    ]
    for entry in describe_policies(policies):
        title = f"{TITLES[entry['kind']]}({entry['name']!r})"
        shown = [
            f"{option}={o['value']}" + ("*" if o["source"].startswith(config.PREFIX) else "")
            for option, o in entry["options"].items()
        ]
        lines += wrap(shown, f"    {title:<25} ", " " * 30)
    lines.append("  )")
    variables, unknown = environment(policies)
    if not policies.enabled:
        lines.append("  RESILIENT_ENABLED=0: every policy passes calls straight through")
    ignored = {var for var, _ in unknown}
    if used := [f"{k}={v}" for k, v in variables.items() if k not in ignored]:
        lines += wrap(used, "  * from the environment: ", "    ")
    for var, suggestion in unknown:
        hint = f"; did you mean {suggestion}?" if suggestion else ""
        note = f"note: {var} matches no option of the demo's policies{hint}"
        lines += wrap(note.split(), "  ", "    ")
    if not variables:
        lines.append("  tweak them with e.g. RESILIENT_DEMO_BREAKER_OPEN_FOR=5s; more in --help")
    print(*lines, "", sep="\n", file=out, flush=True)


def fmt_time(seconds: float | None, unfinished: bool = False) -> str:
    if seconds is None:
        return "-"
    if unfinished:  # a wait cut short by the end of the demo
        return ">" + fmt_time(seconds)
    if seconds < 0.001:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def p50(tally: Tally) -> str:
    return fmt_time(tally["p50"], tally["p50_unfinished"])


def p99(tally: Tally) -> str:
    return fmt_time(tally["p99"], tally["p99_unfinished"])


def share(tally: Tally, outcome: Counted = "succeeded") -> str:
    """The share of the requests that had ``outcome``, as a percentage; "-" for none."""
    whole = tally["requests"]
    return f"{tally[outcome] / whole:.0%}" if whole else "-"


def phase_span(s: Summary, key: str) -> PhaseSpan:
    return next(p for p in s["phases"] if p["key"] == key)


def summary_lines(s: Summary) -> Iterator[str]:
    """The summary table, per phase, and what changed, as lines of text."""
    u, r = s["groups"]["unguarded"], s["groups"]["resilient"]
    yield ""
    yield (
        f"Summary ({s['clients']} clients per group, {s['duration']:g} s, intensity"
        f" {s['intensity']}, seed {s['seed']}; took {s['elapsed']:.1f} s)"
    )
    yield ""
    yield f"  {'':<34}{'unguarded':>12}{'resilient':>12}"

    def row(label: str, left: object, right: object) -> str:
        return f"  {label:<34}{left!s:>12}{right!s:>12}"

    def counted(label: str, outcome: Counted) -> str:
        return row(
            label,
            f"{u[outcome]} {share(u, outcome):>4}",
            f"{r[outcome]} {share(r, outcome):>4}",
        )

    yield row("requests", u["requests"], r["requests"])
    yield counted("  succeeded", "succeeded")
    yield counted("  failed: error", "errors")
    yield counted("  failed: timed out", "timeouts")
    yield counted("  refused fast: breaker open", "refused_breaker")
    yield counted("  refused fast: bulkhead full", "refused_bulkhead")
    yield counted("  still unanswered at the end", "unanswered")
    yield row("retries", u["retries"], r["retries"])
    yield row("answer time, median", p50(u), p50(r))
    yield row("answer time, p99", p99(u), p99(r))
    yield row("most requests in flight at once", u["peak_in_flight"], r["peak_in_flight"])
    yield row("calls that reached the service", u["service_calls"], r["service_calls"])
    u_out, r_out = u["phases"]["outage"], r["phases"]["outage"]
    yield row("  during the outage", u_out["service_calls"], r_out["service_calls"])
    yield row("  turned away: no free worker", u["service_overloaded"], r["service_overloaded"])
    yield row(
        "service workers busy, at most",
        f"{u['service_peak_busy']}/{u['service_workers']}",
        f"{r['service_peak_busy']}/{r['service_workers']}",
    )
    yield ""
    yield f"  {'by phase: succeeded, p99 answer time':<34}{'unguarded':>15}{'resilient':>15}"
    for phase in s["phases"]:
        pu, pr = u["phases"][phase["key"]], r["phases"][phase["key"]]
        label = f"{phase['label']} ({phase['start']:g}-{phase['end']:g} s)"
        cells = [f"{share(p):>4} {p99(p):>9}" for p in (pu, pr)]
        yield f"  {label:<34}{cells[0]:>15}{cells[1]:>15}"
    yield ""
    yield "What changed:"
    for sentence in explain(s):
        glued = re.sub(r"(\d) (ms|s)\b", "\\1\xa0\\2", sentence)  # keep "1.13 s" together
        text = textwrap.fill(
            glued, width=79, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False
        )
        yield text.replace("\xa0", " ")


def explain(s: Summary) -> list[str]:
    """Two to four plain sentences: what resilience changed, phase by phase."""
    u, r = s["groups"]["unguarded"], s["groups"]["resilient"]
    if not s["enabled"]:
        return [
            "Resilience was switched off (RESILIENT_ENABLED=0): every policy passed calls"
            " straight through, so the resilient group fared like the unguarded one"
            f" ({share(r)} of requests succeeded, against {share(u)}).",
            _outage(s),
        ]
    if s["breaker"]["initial_state"] == State.FORCED_OPEN.value:
        return [
            "The breaker was forced open (RESILIENT_DEMO_BREAKER_STATE=forced_open): every"
            f" resilient request was refused in {fmt_time(r['p50'])} (median) and"
            f" {r['service_calls']} calls reached the service, while"
            f" {share(u)} of the unguarded requests succeeded."
        ]
    return [_mild(s), _outage(s), _recovery(s)]


def _mild(s: Summary) -> str:
    """Spikes and errors: the work of the per-attempt timeout and the retries, unless
    they were bad enough to open the breaker."""
    u, r = s["groups"]["unguarded"], s["groups"]["resilient"]
    clauses = []
    retried = r["retries"] > 0
    for key in ("spikes", "errors"):
        up, rp = u["phases"][key], r["phases"][key]
        label = phase_span(s, key)["label"]
        if key in s["breaker"]["opened_in"]:
            clauses.append(
                f"in the {label} so many attempts failed that the breaker opened:"
                f" {share(rp, 'refused_breaker')} of the resilient requests"
                f" were refused fast, while {share(up)} of the"
                " unguarded ones succeeded"
            )
        elif key == "spikes":
            clauses.append(
                f"in the {label} the per-attempt timeout cut slow calls short"
                + (" and retried them" if retried else "")
                + f": 99% of resilient answers came within {p99(rp)} (unguarded:"
                f" {p99(up)}), and {share(rp)} succeeded (unguarded: {share(up)})"
            )
        elif retried:
            extra = rp["service_calls"] - up["service_calls"]
            clauses.append(
                f"in the {label} retries took the share of requests that succeeded from"
                f" {share(up)} (unguarded) to {share(rp)}"
                + (f", at the cost of {extra} more calls to the service" if extra > 0 else "")
            )
        else:
            clauses.append(
                f"in the {label}, with no retries, {share(rp)} of the resilient requests"
                f" succeeded (unguarded: {share(up)})"
            )
    sentence = "; ".join(clauses) + "."
    return sentence[0].upper() + sentence[1:]


def _outage(s: Summary) -> str:
    u, r = s["groups"]["unguarded"], s["groups"]["resilient"]
    uo, ro = u["phases"]["outage"], r["phases"]["outage"]
    phase = phase_span(s, "outage")
    hung = uo["timeouts"] + uo["unanswered"]
    unguarded = (
        f"During the outage ({phase['start']:g}-{phase['end']:g} s) the unguarded clients"
        f" sent {uo['service_calls']} calls to the failing service: {hung} hung, each holding"
        f" one of its {u['service_workers']} workers until its caller gave up"
        f" ({s['client_timeout']:g} s) or the demo ended"
    )
    if uo["service_overloaded"]:
        unguarded += (
            f", and the other {uo['service_overloaded']} were turned away: no worker was free"
        )
    if not s["enabled"]:
        return unguarded + "; the resilient clients, unguarded too, did the same."
    breaker = s["breaker"]
    opened = breaker["opened_after_outage_start"]
    if breaker["initial_state"] == State.DISABLED.value:
        how = "the breaker was disabled, but the per-attempt timeout freed hung workers"
    elif breaker["state_at_outage_start"] in (State.OPEN.value, State.HALF_OPEN.value):
        how = "the breaker was already open when it began"
    elif opened is not None:
        late = opened >= phase["end"] - phase["start"]  # a short run: the outage was over
        how = f"the breaker opened {fmt_time(opened)} after it began" + (
            ", when it was over" if late else ""
        )
    else:
        how = "the breaker never opened, but the per-attempt timeout freed hung workers"
    calls = ro["service_calls"]
    if not calls:
        reached = "no call reached the service"
    else:
        only = "only " if calls <= uo["service_calls"] / 2 else ""
        reached = f"{only}{calls} calls reached the service"
    return (
        f"{unguarded}. With resilience {how}, callers had their answer (mostly a fast"
        f" refusal) in {p50(ro)} (median), and {reached}."
    )


def _recovery(s: Summary) -> str:
    u, r = s["groups"]["unguarded"], s["groups"]["resilient"]
    ur, rr = u["phases"]["recovery"], r["phases"]["recovery"]
    phase = phase_span(s, "recovery")
    breaker = s["breaker"]
    sentence = f"The service came back at {phase['start']:g} s"
    if ur["service_overloaded"]:
        until = u["service_last_overloaded"]
        sentence += (
            ", but calls hanging since the outage still held the unguarded side's workers,"
            f" so it turned away {ur['service_overloaded']} more unguarded calls"
            + (
                f" until {until:.1f} s"
                if until is not None and until < s["duration"] - 0.2
                else " to the end"
            )
        )
    options = next(p for p in s["policies"] if p["kind"] == "breaker")["options"]
    open_for = options["open_for"]["value"]
    closed = breaker["closed_after_recovery"]
    state = breaker["state_at_recovery_start"]
    if state in (State.CLOSED.value, State.DISABLED.value):
        sentence += f", and the resilient side, its breaker {state}, answered at once."
    elif closed is not None:
        sentence += (
            f"; the breaker, probing every open_for={open_for}, closed {fmt_time(closed)}"
            f" later, and refused {rr['refused_breaker']} resilient requests until then."
        )
    else:
        sentence += (
            f"; the breaker (open_for={open_for}) had not closed by the end: a shorter"
            " open_for finds a recovery sooner, a longer one spares a struggling service more."
        )
    return sentence
