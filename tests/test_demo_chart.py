"""``resilient demo --chart``: the run drawn as SVG or PNG by the demo's own small writer.

Two real runs (in subprocesses, started together) write one file each; their checks are
about structure (well-formed, both groups' bars, the breaker's band, the phases), never
about timing. The chart of a simulation filled by hand checks the numbers, exactly.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from resilient import State
from resilient._demo import chart, command
from resilient._demo.drawing import Drawing, Group, Line, Rect, Text, png, svg
from resilient._demo.policies import Policies
from resilient._demo.raster import GLYPHS, Canvas
from resilient._demo.settings import Settings, make_parser, parse
from resilient._demo.simulation import Answer, Outcome, Seen, Simulation

SVG = "{http://www.w3.org/2000/svg}"
PHASE_LABELS = ["healthy", "latency spikes", "error burst", "outage", "recovery"]
SHORT = ("--duration", "2", "--clients", "20", "--no-live", "--json")


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_")}


@pytest.fixture(scope="module")
def charts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """One run per file type, both at once: the chart's path and the run's JSON summary."""
    directory = tmp_path_factory.mktemp("charts")
    started = {
        suffix: subprocess.Popen(
            [sys.executable, "-m", "resilient", "demo", *SHORT, "--chart", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        for suffix, path in ((s, directory / f"run.{s}") for s in ("svg", "png"))
    }
    done = {}
    for suffix, proc in started.items():
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert f"Chart: {directory / f'run.{suffix}'}" in stderr  # stdout is the JSON
        done[suffix] = (directory / f"run.{suffix}", stdout)
    return done


def read_svg(data: bytes) -> dict[str, ElementTree.Element]:
    root = ElementTree.fromstring(data)
    assert root.tag == f"{SVG}svg"
    return {g.get("id", ""): g for g in root.iter(f"{SVG}g")}


def tips(group: ElementTree.Element) -> list[str]:
    return [rect.findtext(f"{SVG}title", "") for rect in group.iter(f"{SVG}rect")]


def test_a_run_draws_both_groups_the_breaker_and_the_phases_in_svg(
    charts: dict[str, tuple[Path, str]],
) -> None:
    path, summary = charts["svg"]
    groups = read_svg(path.read_bytes())
    for label in ("unguarded", "resilient"):
        bars = tips(groups[label])
        assert any("succeeded" in tip for tip in bars)
        assert all(tip.startswith(f"{label}, sent ") for tip in bars)
        # Every request sent is in one bar, once: the counts add up to the summary's.
        drawn = sum(int(re.findall(r": (\d+) ", tip)[0]) for tip in bars)
        assert drawn == json.loads(summary)["groups"][label]["requests"]
    band = tips(groups["breaker"])
    assert band[0].startswith("breaker closed: 0.00-")
    assert all(re.fullmatch(r"breaker [a-z-]+: [\d.]+-[\d.]+ s", tip) for tip in band)
    labels = [text.text for text in groups["phases"].iter(f"{SVG}text")]
    assert labels == PHASE_LABELS
    marks = list(groups["phases"].iter(f"{SVG}polyline"))
    assert len(marks) == 4 * 3  # where each phase after the first starts: both panels, band
    assert all(mark.get("stroke-dasharray") for mark in marks)
    legend = [text.text for text in groups["legend"].iter(f"{SVG}text")]
    assert {"succeeded", "refused: breaker open", "timed out", "breaker open"} <= set(legend)


def png_rows(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the pixel rows of an 8-bit RGB PNG, each chunk's CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, chunks = 8, dict[bytes, bytes]()
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0] == zlib.crc32(
            kind + body
        )
        chunks[kind] = chunks.get(kind, b"") + body
        at += 12 + length
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour) == (8, 2)  # 8-bit RGB
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = 1 + 3 * width
    assert len(raw) == height * stride
    rows = [raw[y * stride : (y + 1) * stride] for y in range(height)]
    assert {row[0] for row in rows} == {0}  # filter 0 on every row
    return width, height, [row[1:] for row in rows]


def colours(rows: list[bytes]) -> set[bytes]:
    return {row[x : x + 3] for row in rows for x in range(0, len(row), 3)}


def test_a_run_draws_its_chart_in_png(charts: dict[str, tuple[Path, str]]) -> None:
    width, height, rows = png_rows(charts["png"][0].read_bytes())
    assert (width, height) == (chart.WIDTH, chart.HEIGHT)
    seen = colours(rows)
    assert len(seen) >= 8
    for _, _, colour in chart.OUTCOMES[:1]:  # succeeded, in both groups
        assert bytes.fromhex(colour[1:]) in seen
    assert bytes.fromhex(chart.STATES[State.CLOSED][1:]) in seen


# -- a simulation filled by hand ----------------------------------------------------------


@pytest.fixture
def demo_env(env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The ``env`` fixture, with no RESILIENT_* variable from the outside."""
    for variable in os.environ:
        if variable.startswith("RESILIENT_"):
            env.delenv(variable)
    return env


@pytest.fixture
def sim(demo_env: pytest.MonkeyPatch) -> Simulation:
    """Two seconds, its answers and the breaker's states written by hand."""
    made = Simulation(Settings(duration=2.0, clients=1), Policies.make(clients=1, seed=1))
    plain, guarded = made.groups
    plain.answers += [Answer(0, Outcome.OK, 0.03, 0.1)] * 10  # 40/s in 0-0.25 s
    plain.answers += [Answer(3, Outcome.TIMEOUT, 5.0, 1.0)] * 5
    guarded.answers += [Answer(0, Outcome.OK, 0.03, 0.1)] * 5 + [
        Answer(0, Outcome.ERROR, 0.03, 0.2)
    ] * 5
    guarded.answers += [Answer(3, Outcome.BREAKER, 0.001, 1.1)] * 5
    made.seen += [Seen(1.0, State.OPEN), Seen(1.5, State.HALF_OPEN), Seen(1.6, State.CLOSED)]
    return made


def rects(drawing: Drawing, group: str) -> list[Rect]:
    shapes = next(g.shapes for g in drawing.groups if g.name == group)
    return [shape for shape in shapes if isinstance(shape, Rect)]


def test_bars_stack_each_outcome_to_its_rate(sim: Simulation) -> None:
    drawing = chart.compose(sim)
    base = chart.PANEL_TOPS[0] + chart.PANEL_HEIGHT  # 40/s is the top of the scale
    first, timed_out = rects(drawing, "unguarded")
    assert (first.y, first.height, first.fill) == (
        chart.PANEL_TOPS[0],
        chart.PANEL_HEIGHT,
        "#59a14f",
    )
    assert timed_out.tip == "unguarded, sent 1-1.25 s: 5 timed out"
    assert (timed_out.y + timed_out.height, timed_out.height) == (base, chart.PANEL_HEIGHT // 2)
    ok, error, refused = rects(drawing, "resilient")
    assert ok.y == error.y + error.height  # stacked, with no gap
    assert ok.height + error.height == chart.PANEL_HEIGHT
    assert refused.tip == "resilient, sent 1-1.25 s: 5 refused: breaker open"
    band = [rect.tip for rect in rects(drawing, "breaker")]
    assert band == [
        "breaker closed: 0.00-1.00 s",
        "breaker open: 1.00-1.50 s",
        "breaker half-open: 1.50-1.60 s",
        "breaker closed: 1.60-2.00 s",
    ]
    xs = [rect.x for rect in rects(drawing, "breaker")]
    assert xs == [
        chart.LEFT + round(at / 2 * (chart.RIGHT - chart.LEFT)) for at in (0, 1, 1.5, 1.6)
    ]


def test_the_svg_and_the_png_draw_the_same_shapes(sim: Simulation) -> None:
    drawing = chart.compose(sim)
    assert svg(drawing) == svg(chart.compose(sim))  # the same run, the same file
    _, _, rows = png_rows(png(drawing))
    groups = read_svg(svg(drawing))
    for name in ("unguarded", "resilient", "breaker"):
        drawn = groups[name].findall(f"{SVG}rect")
        assert len(drawn) == len(rects(drawing, name))
        for element, rect in zip(drawn, rects(drawing, name), strict=True):
            assert [element.get(a) for a in ("x", "y", "width", "height", "fill")] == [
                str(v) for v in rect[:5]
            ]
            x, y = rect.x + rect.width // 2, rect.y + rect.height // 2
            assert rows[y][3 * x : 3 * x + 3] == bytes.fromhex(rect.fill[1:])


def texts(drawing: Drawing) -> Iterator[Text]:
    return (shape for shape in drawing.shapes() if isinstance(shape, Text))


def test_every_character_of_the_chart_is_in_the_png_font(sim: Simulation) -> None:
    used = {char for text in texts(chart.compose(sim)) for char in text.text}
    assert used <= set(GLYPHS)


def test_a_dashed_line_is_drawn_three_pixels_on_three_off() -> None:
    drawing = Drawing(12, 3, [], "#000000")
    drawing.groups.append(Group("l", [Line(((0, 1), (11, 1)), "#ffffff", dashed=True)]))
    _, _, rows = png_rows(png(drawing))
    assert [rows[1][3 * x] for x in range(12)] == [255, 255, 255, 0, 0, 0] * 2
    assert set(rows[0]) == set(rows[2]) == {0}


@pytest.mark.parametrize("end", [(7, 3), (3, 7), (0, 7), (7, 0), (7, 7), (0, 0)])
@pytest.mark.parametrize("start", [(0, 0), (7, 7), (0, 7), (7, 0)])
def test_a_line_joins_its_ends_one_pixel_a_step_in_any_direction(
    start: tuple[int, int], end: tuple[int, int]
) -> None:
    canvas = Canvas(8, 8, "#000000")
    canvas.line(start, end, "#ffffff", dashed=False)
    lit = {(i // 3 % 8, i // 24) for i in range(0, len(canvas.pixels), 3) if canvas.pixels[i]}
    assert {start, end} <= lit
    assert len(lit) == max(abs(end[0] - start[0]), abs(end[1] - start[1])) + 1


def test_the_docs_show_a_chart_of_the_demo() -> None:
    root = Path(__file__).parent.parent
    groups = read_svg((root / "docs" / "demo.svg").read_bytes())
    assert {"unguarded", "resilient", "breaker", "phases"} <= set(groups)
    assert "](demo.svg)" in (root / "docs" / "index.md").read_text()
    assert "](docs/demo.svg)" in (root / "README.md").read_text()


def test_the_help_tells_of_the_chart() -> None:
    text = make_parser("resilient demo").format_help()
    assert "--chart FILE" in text
    assert ".svg or a .png" in text


# -- the option ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["demo.svg", "demo.png", "DEMO.SVG"])
def test_the_chart_is_an_svg_or_a_png_by_its_suffix(name: str) -> None:
    assert parse(["--chart", name]).chart == name


@pytest.mark.parametrize(
    ("name", "complaint"),
    [
        ("demo.jpg", "expected a file name ending in .svg or .png, not 'demo.jpg'"),
        ("demo", "expected a file name ending in .svg or .png, not 'demo'"),
        ("no/such/dir/demo.svg", "no directory 'no/such/dir' to write"),
    ],
)
def test_a_bad_chart_file_names_the_option_its_value_and_what_is_expected(
    name: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--chart", name])
    assert exited.value.code == 2
    assert f"argument --chart: {complaint}" in capsys.readouterr().err


def test_a_chart_that_cannot_be_written_fails_the_command_after_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], demo_env: pytest.MonkeyPatch
) -> None:
    (tmp_path / "taken.svg").mkdir()
    settings = Settings(duration=0.3, clients=1, live=False, chart=str(tmp_path / "taken.svg"))
    assert command.run(settings) == 1
    out, err = capsys.readouterr()
    assert "Summary (" in out
    assert "resilient demo: could not write the chart:" in err
