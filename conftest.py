"""Runs every ```python block of README.md and docs/*.md as a test (sybil).

docs/fleet.md's examples need a Redis: they get ``redis_url``, a redis-server of the
suite's own on 127.0.0.1 (tests/redis_server.py: skipped without the binary, failed
with CI_REQUIRE_REDIS=1), as a reader's examples would get their Redis's URL."""

from collections.abc import Iterator

import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    from tests.redis_server import RedisServer

    with RedisServer() as server:
        yield server.url


_pages = Sybil(
    parsers=[PythonCodeBlockParser()],
    patterns=["README.md", "docs/*.md"],
    excludes=["docs/fleet.md"],
)
_fleet = Sybil(
    parsers=[PythonCodeBlockParser()],
    patterns=["docs/fleet.md"],
    fixtures=["redis_url"],
)
pytest_collect_file = (_pages + _fleet).pytest()
