"""A breaker opening on a failing downstream and recovering once it is healthy again.

Run: python examples/breaker_demo.py   (about 3 seconds)
"""

from __future__ import annotations

import time

from resilient import CircuitBreaker, CircuitOpenError


class FlakyService:
    """Healthy, then down for 1.2 s, then healthy again."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.calls = 0

    def fetch(self, item: int) -> str:
        self.calls += 1
        elapsed = time.monotonic() - self.started
        if 0.5 <= elapsed < 1.7:
            raise ConnectionError("downstream is down")
        return f"item {item}"


def main() -> None:
    service = FlakyService()
    breaker = CircuitBreaker(
        "inventory", min_calls=5, window_size=10, open_for=0.5, half_open_calls=2
    )
    fetch = breaker(service.fetch)
    outcomes = {"ok": 0, "failed": 0, "rejected": 0}
    last_state = None
    for item in range(60):
        hint = None
        try:
            fetch(item)
            outcomes["ok"] += 1
        except ConnectionError:
            outcomes["failed"] += 1
        except CircuitOpenError as exc:
            outcomes["rejected"] += 1
            hint = exc.retry_after
        if breaker.state != last_state:
            last_state = breaker.state
            at = time.monotonic() - service.started
            note = f" (rejected: retry after {hint:.2f}s)" if hint is not None else ""
            print(f"t={at:4.2f}s  call {item:2}: breaker is {breaker.state.value.upper()}{note}")
        time.sleep(0.05)
    print(f"\n{outcomes['ok']} ok, {outcomes['failed']} failed, {outcomes['rejected']} rejected")
    print(f"the downstream saw {service.calls} of 60 calls: the breaker spared it the rest")
    print(f"final state: {breaker.state.value}, metrics: {breaker.metrics}")


if __name__ == "__main__":
    main()
