"""What the run shows while it goes: a panel redrawn in place on a terminal, or a line a
second for logs and pipes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import ClassVar, TextIO

from resilient import State
from resilient._demo.scenario import describe
from resilient._demo.simulation import GROUPS, Group, Outcome, Simulation, View


class Style:
    """ANSI colours and box-drawing glyphs, or plain ASCII where they would not show."""

    CODES: ClassVar[dict[str, str]] = {
        "red": "31",
        "green": "32",
        "yellow": "33",
        "magenta": "35",
        "cyan": "36",
    }

    def __init__(self, out: TextIO, colour: bool) -> None:
        self.colour = colour
        try:
            "█░━▒·".encode(out.encoding or "ascii")
        except (UnicodeEncodeError, LookupError):
            self.full, self.future, self.line, self.half, self.dot = "#", ".", "-", "~", "."
        else:
            self.full, self.future, self.line, self.half, self.dot = "█", "░", "━", "▒", "·"

    def paint(
        self, text: str, colour: str | None, *, dim: bool = False, bold: bool = False
    ) -> str:
        if not self.colour:
            return text
        codes = [self.CODES[colour]] if colour else []
        codes += ["2"] * dim + ["1"] * bold
        return f"\x1b[{';'.join(codes)}m{text}\x1b[0m" if codes else text


PHASE_COLOURS = {
    "healthy": "green",
    "spikes": "yellow",
    "errors": "magenta",
    "outage": "red",
    "recovery": "cyan",
}
STATE_COLOURS = {
    State.CLOSED: "green",
    State.OPEN: "red",
    State.HALF_OPEN: "yellow",
    State.FORCED_OPEN: "red",
    State.DISABLED: None,
}


def make_view(out: TextIO, live: bool | None) -> View:
    on_terminal = out.isatty()
    wide = shutil.get_terminal_size((80, 24)).columns >= 80  # or lines would wrap
    if live or (live is None and on_terminal and wide):
        colour = on_terminal and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        return LiveView(out, Style(out, colour))
    return PlainView(out)


def counter_rows(sim: Simulation) -> list[tuple[str, str, str]]:
    """The live counters, one row each: label, unguarded, resilient."""
    plain, guarded = sim.groups

    def row(label: str, value: Callable[[Group], object]) -> tuple[str, str, str]:
        return (label, str(value(plain)), str(value(guarded)))

    return [
        row("requests sent", lambda g: g.requests),
        row("succeeded", lambda g: g.outcomes[Outcome.OK]),
        row("failed: error", lambda g: g.outcomes[Outcome.ERROR]),
        row("failed: timed out", lambda g: g.outcomes[Outcome.TIMEOUT]),
        row("refused fast: breaker open", lambda g: g.outcomes[Outcome.BREAKER]),
        row("refused fast: bulkhead full", lambda g: g.outcomes[Outcome.BULKHEAD]),
        row("retries", lambda g: g.retries),
        row("waiting for an answer now", lambda g: g.in_flight),
        row("calls that reached the service", lambda g: g.service.calls),
        row("service workers busy now", lambda g: f"{g.service.busy}/{g.service.workers}"),
    ]


def breaker_note(sim: Simulation, now: float) -> str:
    breaker = sim.policies.breaker
    state = breaker.state
    if state is State.DISABLED:
        return "off: RESILIENT_ENABLED=0" if not sim.policies.enabled else "DISABLED"
    if state is State.FORCED_OPEN:
        return "FORCED OPEN"
    note = str(state).upper().replace("_", "-")
    open_for = breaker.settings.values["open_for"]
    opened = [at for at, _, new in sim.changes if new is State.OPEN]
    if state is State.OPEN and opened and isinstance(open_for, (int, float)):
        left = opened[-1] + open_for - sim.elapsed(now)
        note += f", probes in {max(left, 0):.1f} s"
    return note


class LiveView:
    """A panel redrawn in place (ANSI escapes), for a terminal."""

    def __init__(self, out: TextIO, style: Style) -> None:
        self.out = out
        self.style = style
        self.drawn = 0
        self.last = 0.0
        self.out.write("\x1b[?25l")  # hide the cursor while redrawing

    def update(self, sim: Simulation, now: float) -> None:
        if now - self.last < 0.12 and not sim.over:
            return
        self.last = now
        lines = self.panel(sim, now)
        up = f"\x1b[{self.drawn}A\r" if self.drawn else ""
        self.out.write(up + "".join(f"{line}\x1b[K\n" for line in lines))
        self.out.flush()
        self.drawn = len(lines)

    def close(self) -> None:
        self.out.write("\x1b[0m\x1b[?25h")
        self.out.flush()

    def panel(self, sim: Simulation, now: float) -> list[str]:
        """The lines of the panel, none wider than 79 columns (a wrapped line would break
        the redraw): lanes for the service's phases and the breaker's state, then counters."""
        s = self.style
        settings = sim.settings
        columns = shutil.get_terminal_size((80, 24)).columns
        width = max(16, min(48, columns - 38))
        elapsed = min(sim.elapsed(now), settings.duration)
        phase = sim.timeline.phases[sim.timeline.index_at(now)]
        state = sim.policies.breaker.state
        what = "the clients have stopped" if sim.over else describe(phase.key, sim.intensity)
        lines = [
            s.paint("resilient demo", None, bold=True)
            + f"   t = {elapsed:4.1f} / {settings.duration:g} s"
            f"   {settings.clients} clients per group   intensity {settings.intensity}",
            f"service  {self.service_lane(sim, elapsed, width)}  "
            + s.paint(phase.label, PHASE_COLOURS[phase.key], bold=True),
            f"breaker  {self.breaker_lane(sim, elapsed, width)}  "
            + s.paint(breaker_note(sim, now), STATE_COLOURS.get(state), bold=True),
            f"{'':9}{what}",
            "",
            f"{'':<31}" + s.paint(f"{GROUPS[0]:>11}{GROUPS[1]:>11}", None, bold=True),
        ]
        colours = {"succeeded": "green", "failed": "red", "refused": "yellow", "retries": "cyan"}
        for label, plain, guarded in counter_rows(sim):
            colour = next((c for word, c in colours.items() if label.startswith(word)), None)
            values = f"{plain:>11}{guarded:>11}"
            lines.append(f"{label:<31}" + (s.paint(values, colour) if colour else values))
        return lines

    def service_lane(self, sim: Simulation, elapsed: float, width: int) -> str:
        cells = []
        for k in range(width):
            at = (k + 0.5) * sim.settings.duration / width
            key = sim.timeline.phases[sim.timeline.index_at(sim.timeline.t0 + at)].key
            done = at <= elapsed
            glyph = self.style.full if done else self.style.future
            cells.append(self.style.paint(glyph, PHASE_COLOURS[key], dim=not done))
        return "".join(cells)

    def breaker_lane(self, sim: Simulation, elapsed: float, width: int) -> str:
        s = self.style
        glyphs = {
            State.CLOSED: s.line,
            State.OPEN: s.full,
            State.HALF_OPEN: s.half,
            State.FORCED_OPEN: s.full,
            State.DISABLED: s.dot,
        }
        duration = sim.settings.duration
        cells = []
        for k in range(width):
            at = (k + 0.5) * duration / width
            if at > elapsed:
                cells.append(" ")
                continue
            # The worst state seen in the cell, so a short OPEN spell is not lost.
            start, stop = k * duration / width, (k + 1) * duration / width
            states = {sim.breaker_state_at(start)}
            states.update(new for t, _, new in sim.changes if start <= t < stop)
            state = max(states, key=_severity)
            cells.append(s.paint(glyphs[state], STATE_COLOURS[state]))
        return "".join(cells)


def _severity(state: State) -> int:
    order = (State.DISABLED, State.CLOSED, State.HALF_OPEN, State.OPEN, State.FORCED_OPEN)
    return order.index(state)


class PlainView:
    """One line per second, for logs and pipes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.next_line = 1.0

    def update(self, sim: Simulation, now: float) -> None:
        elapsed = sim.elapsed(now)
        if elapsed + 1e-3 < self.next_line or sim.over:
            return
        self.next_line = int(elapsed + 1e-3) + 1.0
        phase = sim.timeline.phases[sim.timeline.index_at(now)]
        plain, guarded = sim.groups
        print(
            f"t={elapsed:4.1f}s {phase.label:<14}"
            f" | unguarded: {plain.requests} sent, {plain.outcomes[Outcome.OK]} ok,"
            f" {plain.failed} failed, {plain.in_flight} waiting"
            f" | resilient: {guarded.requests} sent, {guarded.outcomes[Outcome.OK]} ok,"
            f" {guarded.failed} failed, {guarded.refused} refused, {guarded.retries} retries"
            f" | breaker {sim.policies.breaker.state.value}",
            file=self.out,
            flush=True,
        )

    def close(self) -> None:
        pass
