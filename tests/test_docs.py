"""The docs stay in step with the code they describe."""

from __future__ import annotations

from pathlib import Path

import pytest

from resilient import _breaker, _budget, _bulkhead, _faults, _hedge, _ratelimit, _retry, _timeout
from resilient._core.configuration.options import Option, markdown_table

DOCS = Path(__file__).parent.parent / "docs"


@pytest.mark.parametrize(
    ("page", "options"),
    [
        ("breaker.md", _breaker.OPTIONS),
        ("retry.md", _retry.OPTIONS),
        ("retry.md", _budget.OPTIONS),
        ("timeout.md", _timeout.OPTIONS),
        ("bulkhead.md", _bulkhead.OPTIONS),
        ("ratelimit.md", _ratelimit.OPTIONS),
        ("faults.md", _faults.FAULT_OPTIONS),
        ("faults.md", _faults.LATENCY_OPTIONS),
        ("hedging.md", _hedge.OPTIONS),
    ],
)
def test_options_tables_match_the_declarations(page: str, options: tuple[Option, ...]) -> None:
    assert markdown_table(options) in (DOCS / page).read_text()


def test_the_variables_table_matches_the_declarations() -> None:
    import resilient  # noqa: F401 - every policy module declares its kind on import
    from resilient._core.configuration import config

    assert config.markdown_table() in (DOCS / "configuration.md").read_text()


def test_the_metrics_table_matches_the_declarations() -> None:
    from resilient import _metrics

    assert _metrics.markdown_table() in (DOCS / "observability.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    command = (
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'"
        " && .venv/bin/python -m pytest"
    )
    assert command in readme
    assert command in (DOCS.parent / ".ci" / "run").read_text()
