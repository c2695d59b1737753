"""The chart of a run (``--chart demo.svg`` or ``demo.png``): the requests sent per second
by what they got, one panel per group, the breaker's state as a band and the phases marked.

It is composed once, here, as shapes (drawing.py), from what the simulation recorded: each
answer's outcome and when its request was sent, and the breaker's state as requests met
it. drawing.py renders the shapes as SVG or PNG, with no plotting library (it says why).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

from resilient import State
from resilient._demo.drawing import INK, RENDERERS, Drawing, Group, Line, Rect, Shape, Text
from resilient._demo.simulation import CLIENT_TIMEOUT, Outcome, Simulation

WIDTH, HEIGHT = 860, 456
LEFT, RIGHT = 64, 844  # the plots' x range
PANEL_HEIGHT = 130
PANEL_TOPS = (68, 222)  # unguarded, resilient
BAND_TOP, BAND_HEIGHT = 362, 14
GRID, FRAME = "#e4e4e4", "#888888"

#: The outcomes stacked in each bar, bottom first: the summary's, with its colours.
OUTCOMES = (
    (Outcome.OK, "succeeded", "#59a14f"),
    (Outcome.BREAKER, "refused: breaker open", "#4e79a7"),
    (Outcome.BULKHEAD, "refused: bulkhead full", "#76b7b2"),
    (Outcome.ERROR, "error", "#e15759"),
    (Outcome.TIMEOUT, "timed out", "#f28e2b"),
    (Outcome.UNANSWERED, "no answer by the end", "#9c9c9c"),
)
STATES = {
    State.CLOSED: "#b5dcae",
    State.HALF_OPEN: "#edc948",
    State.OPEN: "#c0392b",
    State.FORCED_OPEN: "#7a1f17",
    State.DISABLED: "#d6d6d6",
}
PHASES = {  # light tints of the live view's phase colours
    "healthy": "#e3f2de",
    "spikes": "#fbf1c7",
    "errors": "#f5dcef",
    "outage": "#f8d4d2",
    "recovery": "#d6eff2",
}
TITLES = {
    "unguarded": f"unguarded clients ({CLIENT_TIMEOUT:g} s client timeout)",
    "resilient": "resilient clients (the same calls through the pipeline)",
}


def write(sim: Simulation, path: str) -> None:
    """Writes the chart; the suffix (checked by settings.py) picks SVG or PNG."""
    Path(path).write_bytes(RENDERERS[Path(path).suffix.lower()](compose(sim)))


def compose(sim: Simulation) -> Drawing:
    settings = sim.settings
    duration = settings.duration

    def x(seconds: float) -> int:
        return LEFT + round(min(max(seconds, 0.0), duration) / duration * (RIGHT - LEFT))

    step = next(
        (s for s in (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0) if duration / s <= 80), 60.0
    )
    edges = [min(k * step, duration) for k in range(math.ceil(duration / step) + 1)]
    spans = list(pairwise(edges))
    counts = []  # by group, by span: the outcomes of the requests sent in it
    for group in sim.groups:
        tallies = [Counter[Outcome]() for _ in spans]
        for answer in group.answers:
            tallies[min(int(answer.sent / step), len(spans) - 1)][answer.outcome] += 1
        counts.append(list(zip(spans, tallies, strict=True)))
    top = _nice(max(sum(c.values()) / (end - start) for b in counts for (start, end), c in b))
    title = (
        f"resilient demo: {settings.clients} clients per group, {duration:g} s,"
        f" intensity {settings.intensity}, seed {settings.seed}"
    )
    axes: list[Shape] = [Text(WIDTH // 2, 16, title, anchor="middle")]
    grid: list[Shape] = []
    groups = [Group("grid", grid)]
    for group, buckets, panel_top in zip(sim.groups, counts, PANEL_TOPS, strict=True):
        base = panel_top + PANEL_HEIGHT
        bars: list[Shape] = []
        for (start, end), bucket in buckets:
            below = 0.0  # requests per second stacked under this outcome
            for outcome, label, colour in OUTCOMES:
                y0 = base - round(below / top * PANEL_HEIGHT)
                below += bucket[outcome] / (end - start)
                y1 = base - round(below / top * PANEL_HEIGHT)
                if bucket[outcome]:
                    tip = f"{group.label}, sent {start:g}-{end:g} s: {bucket[outcome]} {label}"
                    bars.append(Rect(x(start), y1, x(end) - x(start), y0 - y1, colour, tip))
        groups.append(Group(group.label, bars))
        axes += [
            Text(LEFT, panel_top - 6, TITLES[group.label]),
            Text(LEFT - 6, panel_top + 14, "req/s", anchor="end"),
            Line(((LEFT, base), (RIGHT, base)), FRAME),
        ]
        for value in (0, top / 2, top):
            y = base - round(value / top * PANEL_HEIGHT)
            grid.append(Line(((LEFT, y), (RIGHT, y)), GRID))
            axes.append(Text(LEFT - 6, y + 3, f"{value:g}", anchor="end"))
    tick = next(t for t in (1, 2, 5, 10, 30, 60, 120, 300, 600) if duration / t <= 12)
    for second in range(0, int(duration) + 1, tick):
        axes.append(Line(((x(second), BAND_TOP + BAND_HEIGHT), (x(second), 382)), FRAME))
        axes.append(Text(x(second), 394, f"{second}", anchor="middle"))
    axes.append(
        Text(RIGHT, 408, "seconds into the run, when the requests were sent", anchor="end")
    )
    groups += [_breaker(sim, x), _phases(sim, x), Group("axes", axes)]
    return Drawing(WIDTH, HEIGHT, [*groups, _legend({state for _, state in sim.seen})])


def _phases(sim: Simulation, x: Callable[[float], int]) -> Group:
    """The phases as a strip over the panels, and dashed lines through the panels and the
    band where each starts (drawn over the bars)."""
    shapes: list[Shape] = []
    for phase in sim.timeline.phases:
        x0, x1 = x(phase.start), x(phase.end)
        tip = f"{phase.label}: {phase.span()}"
        shapes.append(Rect(x0, 28, x1 - x0, 16, PHASES[phase.key], tip))
        label = phase.label if 6 * len(phase.label) < x1 - x0 else phase.key
        shapes.append(Text((x0 + x1) // 2, 40, label, anchor="middle"))
        if phase.start:
            spans = [(top, top + PANEL_HEIGHT) for top in PANEL_TOPS]
            for top, bottom in [*spans, (BAND_TOP, BAND_TOP + BAND_HEIGHT)]:
                shapes.append(Line(((x0, top), (x0, bottom)), INK, dashed=True))
    return Group("phases", shapes)


def _breaker(sim: Simulation, x: Callable[[float], int]) -> Group:
    """The breaker's state as requests met it, a band under the panels."""
    shapes: list[Shape] = [Text(LEFT - 6, BAND_TOP + 11, "breaker", anchor="end")]
    seen = sim.seen
    ends = [at for at, _ in seen[1:]] + [sim.settings.duration]
    for (start, state), end in zip(seen, ends, strict=True):
        if start < sim.settings.duration:
            x0 = x(start)
            tip = f"breaker {_name(state)}: {start:.2f}-{min(end, sim.settings.duration):.2f} s"
            shapes.append(Rect(x0, BAND_TOP, max(x(end) - x0, 1), BAND_HEIGHT, STATES[state], tip))
    return Group("breaker", shapes)


def _legend(seen: set[State]) -> Group:
    """Every outcome; the breaker's usual states, and any other it was in."""
    shapes: list[Shape] = []
    entries = [(label, colour) for _, label, colour in OUTCOMES]
    usual = {State.CLOSED, State.HALF_OPEN, State.OPEN}
    states = [(f"breaker {_name(s)}", c) for s, c in STATES.items() if s in usual | seen]
    for row, line in enumerate((entries, states)):
        left = LEFT
        for label, colour in line:
            y = 424 + 18 * row
            shapes += [Rect(left, y - 8, 9, 9, colour), Text(left + 13, y, label)]
            left += 13 + 6 * len(label) + 18
    return Group("legend", shapes)


def _name(state: State) -> str:
    return state.value.replace("_", "-")


def _nice(value: float) -> float:
    """A round number of at least ``value``, for the top of the scale (half of it is round too)."""
    power = 10.0 ** math.floor(math.log10(max(value, 1.0)))
    return next(m * power for m in (1, 2, 3, 4, 5, 6, 8, 10) if m * power >= value)
