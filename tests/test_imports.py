"""What ``import resilient`` costs: which modules it loads, and which it must not.

The figure against tenacity and stamina is a benchmark (``python -m
benchmarks.import_time``, docs/benchmarks.md), never a timed assertion; this holds the
cause of the cost instead: nothing heavy is imported until it is used.
"""

from __future__ import annotations

import inspect
import json
import pathlib
import subprocess
import sys

import pytest

from resilient._core.configuration import options

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Never loaded by ``import resilient``: event loop libraries (sync-only programs need
#: none), the optional integrations, wrapt (for wrap() only), the demo, and what costs
#: more than the library; nor the pytest plugin, nor pytest (loaded by pytest only).
NEVER = (
    "resilient.pytest_plugin",
    # loaded on first use: a program that never rate-limits, hedges or injects faults
    # does not pay for them
    "resilient._ratelimit",
    "resilient._hedge",
    "resilient._faults",
    "resilient._core.execution.racing",
    "pytest",
    "_pytest",
    "asyncio",
    "trio",
    "anyio",
    "tenacity",
    "httpx",
    "starlette",
    "opentelemetry",
    "prometheus_client",
    "redis",
    "wrapt",
    "importlib.metadata",
    "inspect",
    "dataclasses",
    "logging",
    "difflib",
    "ssl",
    "socket",
)


def loaded_after(code: str) -> list[str]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=ROOT,
    )
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "code",
    [
        "import resilient",
        "import resilient; resilient.CircuitBreaker('a')(lambda: 1)()",
        "import resilient; resilient.Retry(2)(lambda: 1)()",
        "import resilient; resilient.Timeout(1)(lambda: 1)()",
        "from resilient import Bulkhead as B, Fallback as F, Pipeline as P; P(F(0), B(2))(int)()",
        "import resilient, resilient.backoff",
    ],
)
def test_import_and_sync_use_load_nothing_heavy(code: str) -> None:
    loaded = loaded_after(code)
    assert [m for m in NEVER if m in loaded] == []
    assert [m for m in loaded if m.startswith(("resilient._demo", "resilient.demo"))] == []


def test_version_reads_the_metadata_on_first_use() -> None:
    loaded = loaded_after("import resilient; assert resilient.__version__")
    assert "importlib.metadata" in loaded


def test_async_use_loads_the_event_loop_it_runs_on_only() -> None:
    code = (
        "import asyncio, resilient\n"
        "async def f(): return 1\n"
        "p = resilient.Pipeline(resilient.Timeout(1), resilient.Retry(2, wait=0.001))\n"
        "assert asyncio.run(p(f)()) == 1"
    )
    loaded = loaded_after(code)
    assert "trio" not in loaded
    assert "tenacity" not in loaded


def test_code_flags_are_the_interpreters() -> None:
    assert (options.CO_GENERATOR, options.CO_COROUTINE, options.CO_ASYNC_GENERATOR) == (
        inspect.CO_GENERATOR,
        inspect.CO_COROUTINE,
        inspect.CO_ASYNC_GENERATOR,
    )


def test_no_private_asyncio_names_are_used() -> None:
    private = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "resilient").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "asyncio.events" in line or "_get_running_loop" in line or "asyncio._" in line
    ]
    assert private == []


def test_a_lazy_policys_variables_are_known_before_its_first_use() -> None:
    """``import resilient`` leaves the rate limiter, the hedge and the injectors for
    later, but a variable of theirs is a known one all the same (no warning), and the
    first use of the name loads the class as resilient.X."""
    code = (
        "import os, warnings, resilient\n"
        "from resilient._core.configuration import config\n"
        "assert config.parts_of('RESILIENT_API_RATE_LIMITER_RATE').kind == 'rate_limiter'\n"
        "assert config.parts_of('RESILIENT_API_HEDGE_DELAY').kind == 'hedge'\n"
        "assert resilient.Hedge.__module__ == 'resilient'\n"
        "assert 'RateLimiter' in dir(resilient)\n"
        "from resilient import InjectFault\n"
        "assert InjectFault is resilient.InjectFault\n"
    )
    loaded_after(code)
