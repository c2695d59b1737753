"""Checked by mypy --strict, never run: wrap() gives back the client's own type."""

from __future__ import annotations

from typing_extensions import assert_type

from resilient import CircuitBreaker, Pipeline, Retry, Timeout, wrap


class Client:
    base_url = "https://api.test"

    async def get(self, key: str) -> dict[str, str]:
        return {"key": key}

    def ping(self) -> bool:
        return True


async def use() -> None:
    client = wrap(Client(), Retry(3))
    assert_type(client, Client)
    assert_type(await client.get("a"), dict[str, str])
    assert_type(client.ping(), bool)
    assert_type(client.base_url, str)
    mapped = wrap(
        Client(),
        CircuitBreaker(),
        methods={"get": Pipeline(Retry(3), Timeout(2))},
        exclude=["ping"],
    )
    assert_type(mapped, Client)
    named = wrap(Client(), Timeout(1), methods=("get",))
    assert_type(named, Client)


wrap(Client(), 3)  # type: ignore[arg-type]
wrap(Client(), Retry(3), methods=3)  # type: ignore[arg-type]
