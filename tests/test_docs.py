"""The docs stay in step with the code they describe."""

from __future__ import annotations

from pathlib import Path

from resilient._breaker import OPTIONS
from resilient._core.options import markdown_table

DOCS = Path(__file__).parent.parent / "docs"


def test_breaker_options_table_matches_the_declarations() -> None:
    assert markdown_table(OPTIONS) in (DOCS / "breaker.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    command = (
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'"
        " && .venv/bin/python -m pytest"
    )
    assert command in readme
    assert command in (DOCS.parent / ".ci" / "run").read_text()
