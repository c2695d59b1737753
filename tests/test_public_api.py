"""The public surface: __all__ matches what the package exports, and says resilient.X."""

from __future__ import annotations

import pickle

import resilient
from resilient import CircuitOpenError, State


def test_all_lists_exactly_the_public_names() -> None:
    for name in resilient.__all__:  # (the policies loaded on first use, loaded)
        getattr(resilient, name)
    assert set(resilient.__all__) <= set(dir(resilient))
    # (Under pytest, whose assertion rewriting reaches every module of a distribution
    # with a pytest plugin, each module also holds "@py_builtins": no name to import.)
    public = {name for name in vars(resilient) if name.isidentifier() and name[0] != "_"}
    # Public submodules (an integration is an attribute once something imported it).
    public -= {"testing", "backoff", "events", "httpx", "starlette", "otel", "prometheus", "redis"}
    public -= {"pytest_plugin"}  # loaded by pytest, through its entry point
    assert sorted(resilient.__all__) == resilient.__all__
    assert set(resilient.__all__) - {"__version__"} == public


def test_exports_claim_the_public_module() -> None:
    for name in resilient.__all__:
        obj = getattr(resilient, name)
        if isinstance(obj, type):
            assert obj.__module__ == "resilient", name


def test_error_tree() -> None:
    assert issubclass(resilient.CircuitOpenError, resilient.RejectedError)
    assert issubclass(resilient.RejectedError, resilient.ResilienceError)
    assert issubclass(resilient.ConfigError, ValueError)


def test_circuit_open_error_pickles_and_reads_well() -> None:
    err = CircuitOpenError("payments", 1.5, State.OPEN)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.name, copy.retry_after, copy.state) == ("payments", 1.5, State.OPEN)
    assert str(err) == "circuit breaker 'payments' is open; retry after 1.500s"
    assert str(CircuitOpenError(None, None, State.FORCED_OPEN)) == (
        "circuit breaker (unnamed) is forced_open"
    )


def test_version() -> None:
    assert isinstance(resilient.__version__, str)
