"""``import resilient`` against its peers' imports, side by side in one run.

Each figure is the best of ``--runs`` fresh interpreters of ``python -X importtime -c
"import X"``: the module's own cumulative microseconds as the interpreter reports them,
so the interpreter's start-up (and whatever ``site`` imports) is not counted. Best of,
not mean: a noisy machine only ever adds time. Bytecode is cached first (as an installed
package's is), whatever ``PYTHONDONTWRITEBYTECODE`` says.

    python -m benchmarks.import_time [--runs 15] [module ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

PEERS = ("resilient", "tenacity", "stamina", "pybreaker", "circuitbreaker", "backoff")


_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def import_us(module: str) -> int:
    """Microseconds one fresh interpreter spends importing ``module`` (cumulative)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        env=_ENV,
    )
    for line in reversed(done.stderr.splitlines()):
        fields = line.split("|")
        if len(fields) == 3 and fields[2].strip() == module:
            return int(fields[1])
    raise RuntimeError(f"no import time reported for {module}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("modules", nargs="*", default=list(PEERS))
    args = parser.parse_args(argv)
    present = []
    for module in args.modules:
        try:
            import_us(module)  # writes the bytecode cache
        except subprocess.CalledProcessError:
            print(f"({module} is not installed: skipped; the dev extra has every peer)")
        else:
            present.append(module)
    args.modules = present
    best = {m: min(import_us(m) for _ in range(args.runs)) for m in args.modules}
    base = best.get("tenacity")
    print(f"| module | import (ms), best of {args.runs} | vs tenacity |")
    print("|---|---:|---:|")
    for module, us in best.items():
        ratio = f"{us / base:.2f}x" if base else "-"
        print(f"| {module} | {us / 1000:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
