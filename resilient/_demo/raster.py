"""Pixels for the PNG chart: a canvas of RGB bytes with filled rectangles, one-pixel lines
(Bresenham's, in integers), text in a built-in 5x7 bitmap font, and the PNG encoding
(zlib and struct: 8-bit RGB, filter 0 on every row). Small enough to need no imaging
library (drawing.py says why there is none)."""

from __future__ import annotations

import struct
import zlib

# Each glyph is 5 pixels wide and 9 high: 7 above the baseline, 2 below it for descenders.
# A block is a line of characters, then their rows; "#" is ink. The chart's text is
# lowercase (a character missing here is drawn as a box, so it shows).
FONT_ART = """
a     b     c     d     e     f     g     h     i     j     k     l     m
..... #.... ..... ....# ..... ..##. ..... #.... ..#.. ...#. #.... .##.. .....
..... #.... ..... ....# ..... .#... ..... #.... ..... ..... #.... ..#.. .....
.###. ####. .#### .#### .###. ####. .#### ####. .##.. ..##. #..#. ..#.. ##.#.
....# #...# #.... #...# #...# .#... #...# #...# ..#.. ...#. #.#.. ..#.. #.#.#
.#### #...# #.... #...# ##### .#... #...# #...# ..#.. ...#. ##... ..#.. #.#.#
#...# #...# #.... #...# #.... .#... #...# #...# ..#.. ...#. #.#.. ..#.. #.#.#
.#### ####. .#### .#### .###. .#... .#### #...# .###. ...#. #..#. .###. #.#.#
..... ..... ..... ..... ..... ..... ....# ..... ..... #..#. ..... ..... .....
..... ..... ..... ..... ..... ..... .###. ..... ..... .##.. ..... ..... .....
n     o     p     q     r     s     t     u     v     w     x     y     z
..... ..... ..... ..... ..... ..... .#... ..... ..... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... .#... ..... ..... ..... ..... ..... .....
####. .###. ####. .#### #.##. .#### ####. #...# #...# #...# #...# #...# #####
#...# #...# #...# #...# ##..# #.... .#... #...# #...# #...# .#.#. #...# ...#.
#...# #...# #...# #...# #.... .###. .#... #...# #...# #.#.# ..#.. #...# ..#..
#...# #...# #...# #...# #.... ....# .#..# #..## .#.#. #.#.# .#.#. #...# .#...
#...# .###. ####. .#### #.... ####. ..##. .##.# ..#.. .#.#. #...# .#### #####
..... ..... #.... ....# ..... ..... ..... ..... ..... ..... ..... ....# .....
..... ..... #.... ....# ..... ..... ..... ..... ..... ..... ..... .###. .....
0     1     2     3     4     5     6     7     8     9
.###. ..#.. .###. ##### ...#. ##### ..##. ##### .###. .###.
#...# .##.. #...# ...#. ..##. #.... .#... ....# #...# #...#
#..## ..#.. ....# ..#.. .#.#. ####. #.... ...#. #...# #...#
#.#.# ..#.. ...#. ...#. #..#. ....# ####. ..#.. .###. .####
##..# ..#.. ..#.. ....# ##### ....# #...# .#... #...# ....#
#...# ..#.. .#... #...# ...#. #...# #...# .#... #...# ...#.
.###. .###. ##### .###. ...#. .###. .###. .#... .###. .##..
..... ..... ..... ..... ..... ..... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... ..... ..... ..... .....
.     ,     :     /     -     (     )     %     =     +
..... ..... ..... ..... ..... ...#. .#... ##... ..... .....
..... ..... ..... ....# ..... ..#.. ..#.. ##..# ..... .....
..... ..... .##.. ...#. ..... .#... ...#. ...#. ..... ..#..
..... ..... .##.. ..#.. ..... .#... ...#. ..#.. ##### ..#..
..... ..... ..... .#... ##### .#... ...#. .#... ..... #####
.##.. .##.. .##.. #.... ..... ..#.. ..#.. #..## ##### ..#..
.##.. .##.. .##.. ..... ..... ...#. .#... ...## ..... ..#..
..... ..#.. ..... ..... ..... ..... ..... ..... ..... .....
..... .#... ..... ..... ..... ..... ..... ..... ..... .....
"""
GLYPH_ROWS = 9
ASCENT = 7  # rows above the baseline
ADVANCE = 6  # pixels from one character to the next: the glyph and a column of space


def _glyphs(art: str) -> dict[str, tuple[int, ...]]:
    """Each character's rows, as bits (the leftmost pixel is the highest of 5)."""
    lines = art.strip("\n").splitlines()
    glyphs = {" ": (0,) * GLYPH_ROWS}
    for top in range(0, len(lines), GLYPH_ROWS + 1):
        header, rows = lines[top], lines[top + 1 : top + 1 + GLYPH_ROWS]
        for k, char in enumerate(header[::ADVANCE]):
            cells = (row[ADVANCE * k : ADVANCE * k + 5] for row in rows)
            glyphs[char] = tuple(
                int(cell.replace("#", "1").replace(".", "0"), 2) for cell in cells
            )
    return glyphs


GLYPHS = _glyphs(FONT_ART)
MISSING = (0b11111, *(0b10001,) * 5, 0b11111, 0, 0)  # a box


class Canvas:
    """An RGB image, drawn on in whole pixels; what falls outside it is clipped."""

    def __init__(self, width: int, height: int, background: str) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(_rgb(background) * (width * height))

    def fill(self, x: int, y: int, width: int, height: int, colour: str) -> None:
        x0, x1 = max(x, 0), min(x + width, self.width)
        run = _rgb(colour) * max(x1 - x0, 0)
        for row in range(max(y, 0), min(y + height, self.height)):
            start = 3 * (row * self.width + x0)
            self.pixels[start : start + len(run)] = run

    def line(
        self, start: tuple[int, int], end: tuple[int, int], colour: str, dashed: bool
    ) -> None:
        """Bresenham's line; dashed: 3 pixels drawn, 3 skipped, as the SVG's dasharray."""
        (x, y), (x1, y1) = start, end
        dx, dy = abs(x1 - x), -abs(y1 - y)
        sx, sy = (1 if x < x1 else -1), (1 if y < y1 else -1)
        error = dx + dy
        for step in range(max(dx, -dy) + 1):  # one pixel a step along the longer axis
            if not dashed or step % 6 < 3:
                self.fill(x, y, 1, 1, colour)
            twice = 2 * error
            if twice >= dy:
                error, x = error + dy, x + sx
            if twice <= dx:
                error, y = error + dx, y + sy

    def text_width(self, text: str) -> int:
        return ADVANCE * len(text) - 1 if text else 0

    def text(self, x: int, baseline: int, text: str, colour: str) -> None:
        top = baseline - ASCENT
        for k, char in enumerate(text):
            for row, bits in enumerate(GLYPHS.get(char, MISSING)):
                for column in range(5):
                    if bits >> (4 - column) & 1:
                        self.fill(x + ADVANCE * k + column, top + row, 1, 1, colour)

    def png(self) -> bytes:
        stride = 3 * self.width
        rows = b"".join(
            b"\0" + self.pixels[y * stride : (y + 1) * stride] for y in range(self.height)
        )
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + b"".join(
            _chunk(kind, data)
            for kind, data in (
                (b"IHDR", header),
                (b"IDAT", zlib.compress(rows, 9)),
                (b"IEND", b""),
            )
        )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _rgb(colour: str) -> bytes:
    return bytes.fromhex(colour.removeprefix("#"))
