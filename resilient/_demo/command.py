"""``resilient demo``: the settings, the policies, the run, and its summary on stdout."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from resilient import ConfigError
from resilient._demo import chart
from resilient._demo.policies import Policies
from resilient._demo.report import banner, summary_lines
from resilient._demo.settings import Settings, parse
from resilient._demo.simulation import Simulation
from resilient._demo.summary import summarise
from resilient._demo.view import make_view


def main(argv: Sequence[str]) -> int:
    """Exit codes: 0 done, 1 a bad RESILIENT_* variable or a chart that could not be
    written, 2 a bad argument, 130 interrupted."""
    return run(parse(argv))


def run(settings: Settings) -> int:
    # The policies' log lines would break into the live view; what they tell, the view
    # and the summary show. (An application that configured logging still gets them.)
    logging.getLogger("resilient").addHandler(logging.NullHandler())
    try:
        policies = Policies.make(settings.clients, settings.seed)
    except ConfigError as error:  # a bad RESILIENT_* variable, found as the policy was made
        print(f"resilient demo: invalid configuration\n{error}", file=sys.stderr)
        return 1
    sim = Simulation(settings, policies)
    out = sys.stderr if settings.json else sys.stdout
    banner(sim, out)
    view = make_view(out, settings.live)
    try:
        asyncio.run(sim.run(view))
    except KeyboardInterrupt:
        view.close()
        print("\nresilient demo: interrupted", file=sys.stderr)
        return 130
    view.close()
    summary = summarise(sim)
    if settings.json:
        print(json.dumps(summary, indent=2))
    else:
        print("\n".join(summary_lines(summary)))
    if settings.chart:
        try:
            chart.write(sim, settings.chart)
        except OSError as error:
            print(f"resilient demo: could not write the chart: {error}", file=sys.stderr)
            return 1
        print(f"Chart: {settings.chart}", file=out)
    return 0
