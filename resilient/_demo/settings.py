"""What a run is asked for on the command line, parsed once into ``Settings``: a bad value
stops the command before anything runs, with argparse's usage and a message that names
the option, the value and what it accepts."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

from resilient import _demo
from resilient._demo.drawing import RENDERERS
from resilient._demo.scenario import INTENSITIES

MAX_CLIENTS = 200  # beyond, one event loop falls behind the traffic it simulates
MAX_DURATION = 3600.0


@dataclass(frozen=True)
class Settings:
    """What one run is asked for. Its defaults are the command line's, written once here."""

    duration: float = 10.0  # seconds the clients send requests; the phases scale with it
    clients: int = 30  # in each group
    intensity: str = "normal"  # a key of INTENSITIES
    seed: int = 1
    live: bool | None = None  # None: the live view on a terminal wide enough for it
    json: bool = False
    chart: str | None = None  # a file to draw the run in, .svg or .png


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(
            f"must be more than 0 and at most {MAX_DURATION:g} seconds, not {text}"
        )
    return value


def client_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_CLIENTS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_CLIENTS}, not {text}")
    return value


def chart_file(text: str) -> str:
    suffix = os.path.splitext(text)[1]
    if suffix.lower() not in RENDERERS:
        raise argparse.ArgumentTypeError(
            f"expected a file name ending in {' or '.join(RENDERERS)}, not {text!r}"
        )
    directory = os.path.dirname(text) or "."
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"no directory {directory!r} to write {text!r} in")
    return text


def make_parser(prog: str) -> argparse.ArgumentParser:
    """The command's parser: its description is the package's docstring."""
    parser = argparse.ArgumentParser(
        prog=prog, description=_demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration",
        type=positive_float,
        default=Settings.duration,
        metavar="SECONDS",
        help="how long the clients send requests (default: 10, at most 3600); the"
        " phases scale with it",
    )
    parser.add_argument(
        "--clients",
        type=client_count,
        default=Settings.clients,
        metavar="N",
        help=f"clients in each group, each sending ~10 requests/s (default: 30, at most"
        f" {MAX_CLIENTS})",
    )
    parser.add_argument(
        "--intensity",
        choices=tuple(INTENSITIES),
        default=Settings.intensity,
        help="how bad the spikes, errors and outage are (default: normal)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=Settings.seed,
        metavar="N",
        help="seed of the simulation's dice, so that runs compare (default: 1)",
    )
    parser.add_argument(
        "--no-live",
        dest="live",
        action="store_false",
        default=Settings.live,
        help="print a line per second instead of the live view (the default when not"
        " on a terminal)",
    )
    parser.add_argument("--live", action="store_true", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON on stdout (progress goes to stderr)",
    )
    parser.add_argument(
        "--chart",
        type=chart_file,
        metavar="FILE",
        help="also draw the run in FILE, an .svg or a .png (by its suffix): requests/s by"
        " outcome for both groups, the breaker's state and the phases",
    )
    return parser


def parse(argv: Sequence[str], prog: str = "resilient demo") -> Settings:
    """The settings ``argv`` asks for; SystemExit(2) with the usage for a bad one."""
    args = make_parser(prog).parse_args(argv)
    return Settings(
        duration=args.duration,
        clients=args.clients,
        intensity=args.intensity,
        seed=args.seed,
        live=args.live,
        json=args.json,
        chart=args.chart,
    )
