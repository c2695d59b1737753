"""A picture as a list of shapes, and its two renderings: SVG text and PNG pixels.

No plotting library: ``resilient demo`` must work on a bare install, its output must be
the same for the same shapes (so tests can read it), and a plotting library would be a
heavy dependency for one picture. The chart is composed once, by chart.py, as rectangles,
polylines and text with whole-pixel coordinates; each backend here only draws them (the
PNG one through raster.py's canvas), so both files show one picture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from html import escape
from itertools import pairwise
from typing import NamedTuple, TypeAlias

from resilient._demo.raster import Canvas

INK = "#222222"
FONT_SIZE = 10  # px: a monospace glyph is 6 px wide, as wide as raster.py's


class Rect(NamedTuple):
    x: int
    y: int
    width: int
    height: int
    fill: str  # "#rrggbb"
    tip: str = ""  # shown on hover in SVG


class Line(NamedTuple):
    """A polyline, one pixel wide."""

    points: tuple[tuple[int, int], ...]
    stroke: str
    dashed: bool = False


class Text(NamedTuple):
    x: int
    y: int  # the baseline
    text: str
    fill: str = INK
    anchor: str = "start"  # or "middle", "end": where x is on the text


Shape: TypeAlias = Rect | Line | Text


class Group(NamedTuple):
    """Shapes that belong together: an SVG <g> with this id."""

    name: str
    shapes: list[Shape]


class Drawing(NamedTuple):
    width: int
    height: int
    groups: list[Group]
    background: str = "#ffffff"

    def shapes(self) -> Iterator[Shape]:
        return (shape for group in self.groups for shape in group.shapes)


def svg(drawing: Drawing) -> bytes:
    w, h = drawing.width, drawing.height
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}"'
        f' viewBox="0 0 {w} {h}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace"'
        f' font-size="{FONT_SIZE}" shape-rendering="crispEdges">',
        f'<rect width="{w}" height="{h}" fill="{drawing.background}"/>',
    ]
    for group in drawing.groups:
        lines += [f'<g id="{escape(group.name)}">', *map(_svg_shape, group.shapes), "</g>"]
    return "\n".join([*lines, "</svg>", ""]).encode()


def _svg_shape(shape: Shape) -> str:
    if isinstance(shape, Rect):
        x, y, w, h, fill, tip = shape
        title = f"<title>{escape(tip)}</title>" if tip else ""
        return f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}">{title}</rect>'
    if isinstance(shape, Line):
        points = " ".join(f"{x + 0.5},{y + 0.5}" for x, y in shape.points)  # pixel centres
        dashes = ' stroke-dasharray="3 3"' if shape.dashed else ""
        return f'<polyline points="{points}" fill="none" stroke="{shape.stroke}"{dashes}/>'
    x, y, text, fill, anchor = shape
    return f'<text x="{x}" y="{y}" fill="{fill}" text-anchor="{anchor}">{escape(text)}</text>'


def png(drawing: Drawing) -> bytes:
    canvas = Canvas(drawing.width, drawing.height, drawing.background)
    for shape in drawing.shapes():
        if isinstance(shape, Rect):
            canvas.fill(shape.x, shape.y, shape.width, shape.height, shape.fill)
        elif isinstance(shape, Line):
            for start, end in pairwise(shape.points):
                canvas.line(start, end, shape.stroke, shape.dashed)
        else:
            width = canvas.text_width(shape.text)
            x = shape.x - {"start": 0, "middle": width // 2, "end": width}[shape.anchor]
            canvas.text(x, shape.y, shape.text, shape.fill)
    return canvas.png()


#: The file types ``--chart`` writes, by suffix.
RENDERERS: dict[str, Callable[[Drawing], bytes]] = {".svg": svg, ".png": png}
