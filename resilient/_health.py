"""``resilient.health()``: every live named policy as plain data, for a probe or a page.

Loaded on the first call. Each policy describes itself (``_health()``); this module
only gathers them and says whether anything is refusing calls right now.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from resilient._core.configuration.registry import registry

__all__ = ["health"]

#: Breaker states in which calls are refused (all or some): the process is degraded.
_REFUSING = {"open", "forced_open", "half_open"}


def health(names: Iterable[str] | None = None) -> dict[str, Any]:
    if isinstance(names, str):
        raise TypeError(f"health(names=...) takes policy names, not one string: {names!r}")
    wanted = None if names is None else set(names)
    policies = [
        {"kind": p.KIND, "name": p.name, **p._health()}
        for p in registry.policies()
        if wanted is None or p.name in wanted
    ]
    degraded = sorted({p["name"] for p in policies if p.get("state") in _REFUSING})
    return {
        "status": "degraded" if degraded else "ok",
        "degraded": degraded,
        "policies": policies,
    }
