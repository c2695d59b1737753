"""resilient demo: a flaky downstream, called with and without resilience (being written)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")


def run(args: argparse.Namespace) -> int:
    print("resilient demo: not written yet")
    return 0
