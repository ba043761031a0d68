"""Validators as `allmende up` runs them: two validator processes audit two provider
processes as mystery shoppers; the one serving int8 weights under the tiny model's id is
reported, voted guilty by the other validator, slashed and paused, and the gateway stops
routing to it while users' requests keep being served."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import devnet_accounts
from allmende.testing.network import start_network, stop_network


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("up-validators")
    process, data = start_network(
        root,
        "--providers",
        "2",
        "--model",
        "allmende:tiny",
        "--validators",
        "2",
        "--validator-option=--audit-interval=2",
        "--validator-option=--publish-every=2",
        cheat="2:int8",
    )
    data["root"] = str(root)
    try:
        yield data
    finally:
        stop_network(process)


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_validators_in_up_catch_and_slash_the_cheater(network: dict[str, Any]) -> None:
    reader = Contracts(ChainClient(network["rpc_url"]), Deployment.load(network["deployments"]))
    honest, cheater = (p["address"] for p in network["providers"])
    validators = [v["address"] for v in network["validators"]]
    assert all(reader.registry.role_of(v) == 2 and reader.registry.is_active(v) for v in validators)
    stake_before = reader.registry.stake_of(cheater)

    def case_against_cheater() -> Any:
        cases = [reader.verdicts.case(i) for i in range(1, reader.verdicts.case_count() + 1)]
        return next((c for c in cases if c.provider == cheater), None)

    case = wait_for("a fraud case against the int8 provider", case_against_cheater, 240)
    assert case.reporter in validators
    other = next(v for v in validators if v != case.reporter)
    wait_for("the other validator's vote", lambda: reader.verdicts.voted(case.case_id, other), 120)

    deployer = devnet_accounts(1)[0]
    ChainClient(network["rpc_url"], deployer.key).increase_time(reader.params.get("fraud_voting_period") + 1)
    resolved = wait_for(
        "the case to be resolved by a validator",
        lambda: (c := reader.verdicts.case(case.case_id)).status != 1 and c,
        120,
    )
    assert resolved.status == 2  # guilty
    assert resolved.slashed == stake_before * reader.params.get("slash_bps") // 10_000
    assert not reader.registry.is_active(cheater)
    cases = [reader.verdicts.case(i) for i in range(1, reader.verdicts.case_count() + 1)]
    assert all(c.provider != honest for c in cases)  # the honest provider was never reported
    # both validators may have caught it before the first verdict: each proven case slashes
    against = [c for c in cases if c.provider == cheater]
    assert all(c.status != 3 for c in against)  # never found innocent (open, guilty or no quorum)
    assert reader.registry.stake_of(cheater) == stake_before - sum(c.slashed for c in against) > 0

    gateway = network["gateway_url"].removesuffix("/v1")
    wait_for("the gateway to drop the cheater", lambda: httpx.get(gateway + "/healthz").json()["providers"] == 1, 60)
    client = OpenAI(base_url=network["gateway_url"], api_key="user", max_retries=0, timeout=60)
    for _ in range(6):
        reply = client.chat.completions.create(
            model="allmende:tiny",
            messages=[{"role": "user", "content": "Wer wacht über die Allmende?"}],
            max_tokens=8,  # type: ignore[arg-type]
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
    logs = "".join(Path(v["log"]).read_text() for v in network["validators"])
    assert "Traceback" not in logs
    shown = subprocess.run(
        [sys.executable, "-m", "allmende", "status", "--state-dir", network["root"]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "guilty" in shown.stdout and all(v in shown.stdout for v in validators)
