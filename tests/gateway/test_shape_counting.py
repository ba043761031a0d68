"""A gateway counts the shapes of the requests it serves (GET /v1/shapes, for validators'
audits) unless told not to: an agent's in-process gateway publishes them to no one, so it
does not spend a request's CPU on them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.validator.test_audit_shapes import gateway_app

USER = {"model": "fake", "messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 4}


def totals(app: object) -> tuple[int, int]:
    async def go() -> tuple[int, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:  # type: ignore[arg-type]
            served = [await http.post("/v1/chat/completions", json=USER) for _ in range(2)]
            assert [r.status_code for r in served] == [200, 200]
            return len(served), (await http.get("/v1/shapes")).json()["total"]

    return asyncio.run(go())


def test_a_gateway_counts_shapes_and_an_agents_does_not(tmp_path: Path) -> None:
    assert totals(gateway_app(tmp_path / "public")) == (2, 2)
    assert totals(gateway_app(tmp_path / "agent", count_shapes=False)) == (2, 0)
