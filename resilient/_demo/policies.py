"""The resilient group's policies, named so that RESILIENT_DEMO_* variables retune them
with no code change, and what each option is set to and by what: the banner shows it
before the run and the summary records it, so a run says which settings it had."""

from __future__ import annotations

import os
import random
import re
import warnings
from dataclasses import dataclass
from typing import NamedTuple, TypedDict

from resilient import (
    Bulkhead,
    CircuitBreaker,
    ConfigWarning,
    Pipeline,
    Retry,
    Timeout,
    backoff,
)
from resilient._core.configuration import config

NAME = "demo"  # RESILIENT_DEMO_<KIND>_<OPTION>
ATTEMPT_NAME = "demo-attempt"  # RESILIENT_DEMO_ATTEMPT_TIMEOUT_SECONDS


@dataclass(frozen=True)
class Policies:
    bulkhead: Bulkhead
    total: Timeout
    retry: Retry
    breaker: CircuitBreaker
    attempt: Timeout

    @classmethod
    def make(cls, clients: int, seed: int) -> Policies:
        """The recommended order (docs/composition.md); the environment may retune each."""
        with warnings.catch_warnings():  # unknown variables are reported by the banner
            warnings.simplefilter("ignore", ConfigWarning)
            return cls(
                bulkhead=Bulkhead(2 * clients, max_wait=0.05, name=NAME),
                total=Timeout(1.0, name=NAME),
                retry=Retry(
                    3,
                    wait=backoff.exponential(base=0.05, cap=0.2, rng=random.Random(seed)),
                    on=(ConnectionError, TimeoutError),
                    name=NAME,
                ),
                breaker=CircuitBreaker(NAME, open_for=1.0),  # the defaults, but for open_for
                attempt=Timeout(0.25, name=ATTEMPT_NAME),
            )

    def all(self) -> tuple[Bulkhead, Timeout, Retry, CircuitBreaker, Timeout]:
        return (self.bulkhead, self.total, self.retry, self.breaker, self.attempt)

    def pipeline(self) -> Pipeline:
        return Pipeline(*self.all())

    @property
    def enabled(self) -> bool:
        return self.breaker.settings.enabled


#: The options the banner shows for each kind (any other one shows if the environment set it).
SHOWN = {
    "bulkhead": ("max_concurrent", "max_wait"),
    "timeout": ("seconds",),
    "retry": ("attempts", "wait"),
    "breaker": ("failure_rate", "window_size", "min_calls", "open_for", "half_open_calls"),
}
TITLES = {
    "bulkhead": "Bulkhead",
    "timeout": "Timeout",
    "retry": "Retry",
    "breaker": "CircuitBreaker",
}


class Shown(TypedDict):
    """An option's value as the banner writes it, and "default", "code" or its variable."""

    value: str
    source: str


class Described(TypedDict):
    """A policy's key settings; JSON-shaped, as the summary records them."""

    kind: str
    name: str | None
    options: dict[str, Shown]


def show_value(option: str, value: object) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float) and option in ("max_wait", "seconds", "open_for"):
        return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"
    if isinstance(value, (int, float, str)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, backoff.Backoff):  # leave out what is the default anyway
        return re.sub(r", (rng=<[^>]*>|factor=2\.0|jitter='full')", "", repr(value))
    return str(getattr(value, "__qualname__", None) or value)


def describe_policies(policies: Policies) -> list[Described]:
    """Each policy's key settings, and where each value came from."""
    described: list[Described] = []
    for policy in policies.all():
        settings = policy.settings
        options: dict[str, Shown] = {}
        for option, value in settings.values.items():
            source = settings.sources[option]
            from_env = source.startswith(config.PREFIX)
            if option in SHOWN[policy.KIND] or from_env:
                shown = settings.texts[option] if from_env else show_value(option, value)
                options[option] = {"value": shown, "source": source}
        described.append({"kind": policy.KIND, "name": policy.name, "options": options})
    return described


class Environment(NamedTuple):
    """The RESILIENT_* variables set now, and those that match none of the demo's options
    (each with a close match, if there is one)."""

    set_now: dict[str, str]
    unknown: list[tuple[str, str | None]]


def environment(policies: Policies) -> Environment:
    set_now = {k: v for k, v in sorted(os.environ.items()) if k.startswith(config.PREFIX)}
    known = config.known_variables((p.KIND, p.name) for p in policies.all())
    return Environment(set_now, config.unknown_variables(known))
