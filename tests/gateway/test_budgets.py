"""API-key budgets are reserved before a request and settled after it (gateway.budgets):
32 concurrent clients on one key never spend more than its budget (before: 30 concurrent
requests on a 300-unit budget spent 1,115), the budget is set from the CLI (`--budget
KEY=UNITS`), and where keys are required `/metrics` needs one too. In process (fakes)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import typer

from allmende.api.canonical import checked
from allmende.cli.gateway import budgets_of
from allmende.gateway.app import GatewayLimits, create_app
from tests.gateway.fakes import FakeProvider, Network, network

CLIENTS = 32
BODY = {"model": "fake", "messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 8}
AUTH = {"authorization": "Bearer k"}


def gateway(tmp: Path, **limits: Any) -> tuple[Any, Network]:
    net = network(tmp, [FakeProvider(tmp)])
    contracts = net.service.directory.contracts  # the explorer's chain view reads these lazily
    for name in ("channels", "verdicts", "governor"):
        if not hasattr(contracts, name):
            setattr(contracts, name, SimpleNamespace())
        getattr(contracts, name).contract = None
    contracts.deployment = SimpleNamespace(deploy_block=0)
    return create_app(net.service, GatewayLimits(**limits)), net


def most_cost(net: Network) -> int:
    """The most BODY can cost (what admission reserves for it)."""

    return net.service.most_cost(checked("chat", dict(BODY)))[1]


def test_32_concurrent_clients_never_spend_more_than_the_keys_budget(tmp_path: Path) -> None:
    # Prepare: a budget room for a few requests at their most, far fewer than the clients
    probe_app, probe = gateway(tmp_path / "probe")
    most = most_cost(probe)
    budget = 5 * most + most // 2
    app, net = gateway(tmp_path / "gw", api_keys=frozenset({"k"}), budgets={"k": budget})

    async def go() -> tuple[list[httpx.Response], int, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
            replies = await asyncio.gather(
                *(http.post("/v1/chat/completions", json=BODY, headers=AUTH) for _ in range(CLIENTS))
            )
            settled = net.store.spent("k")
            later = await http.post("/v1/chat/completions", json=BODY, headers=AUTH)  # after all settled
            return list(replies), settled, later

    # Execute
    replies, settled, later = asyncio.run(go())

    # Assert: every reply is an answer or the budget's refusal; what was spent is within the budget
    statuses = [r.status_code for r in replies]
    assert set(statuses) <= {200, 402}, [r.text for r in replies if r.status_code not in (200, 402)]
    refused = [r.json()["error"] for r in replies if r.status_code == 402]
    assert refused and all(e["code"] == "insufficient_quota" for e in refused)
    assert "held by requests in flight" in refused[0]["message"]
    assert statuses.count(200) >= 5  # what the budget holds at the most each may cost
    paid = sum(int(r.json()["allmende"]["amount"]) for r in replies if r.status_code == 200)
    assert settled == paid <= budget
    # settled after: the next request is served exactly when the real charges leave room for its most
    assert later.status_code == (200 if settled + most <= budget else 402)
    assert net.store.spent("k") <= budget
    del probe_app


def test_a_key_without_a_budget_and_an_open_gateway_are_not_limited(tmp_path: Path) -> None:
    app, _ = gateway(tmp_path, api_keys=frozenset({"k", "free"}), budgets={"k": 1})

    async def go() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
            free = {"authorization": "Bearer free"}
            replies = await asyncio.gather(
                *(http.post("/v1/chat/completions", json=BODY, headers=free) for _ in range(8))
            )
            over = await http.post("/v1/chat/completions", json=BODY, headers=AUTH)
            return [r.status_code for r in replies] + [over.status_code]

    assert asyncio.run(go()) == [200] * 8 + [402]  # a 1-unit budget cannot hold any request's most


@pytest.mark.parametrize("keys,status", [((), 200), (("k",), 401)], ids=["open", "keys-required"])
def test_metrics_need_a_key_where_keys_are_required(tmp_path: Path, keys: tuple[str, ...], status: int) -> None:
    app, _ = gateway(tmp_path, api_keys=frozenset(keys))

    async def go() -> tuple[int, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
            anonymous = await http.get("/metrics")
            keyed = await http.get("/metrics", headers=AUTH)
            return anonymous.status_code, keyed.status_code

    assert asyncio.run(go()) == (status, 200)


def test_budgets_from_the_command_line() -> None:
    assert budgets_of(["team-a=300", "b=0"], ["team-a", "b", "c"]) == {"team-a": 300, "b": 0}
    assert budgets_of(["k=v=5"], ["k=v"]) == {"k=v": 5}  # the units follow the last '='
    for spec, keys in ((["a"], ["a"]), (["a=1.5"], ["a"]), (["a=-1"], ["a"]), (["x=5"], ["a"])):
        with pytest.raises(typer.BadParameter):
            budgets_of(spec, keys)
