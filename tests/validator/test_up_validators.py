"""Validators as `allmende up` runs them: two validator processes audit two provider
processes as mystery shoppers, through the gateway as user requests. The second provider
tries to recognise audits by every trick that worked against the first validators (a
validator's payer key, a body without `model`, a public prompt pool), serving them honestly
and everyone else from a cheap generator with a recomputed proof. It recognises none, is
reported, voted guilty by the other validator, slashed and paused, and the gateway stops
routing to it while users' requests keep being served. Its receipts, inflated tenfold, are
never paid: the gateway refuses them and passes them on to the auditing validator as evidence.
(The network is shared with the
explorer's browser tests: see `cheater_network` in tests/conftest.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from allmende.chain import ChainClient, Contracts, Deployment
from tests.conftest import cheater_verdict, wait_for


def test_validators_in_up_catch_and_slash_the_cheater(cheater_network: dict[str, Any]) -> None:
    network = cheater_network
    reader = Contracts(ChainClient(network["rpc_url"]), Deployment.load(network["deployments"]))
    honest, cheater = (p["address"] for p in network["providers"])
    validators = [v["address"] for v in network["validators"]]
    assert all(reader.registry.role_of(v) == 2 and reader.registry.is_active(v) for v in validators)

    resolved = cheater_verdict(network)
    guesses = Path(network["providers"][1]["log"]).read_text()
    assert "looks like a user" in guesses  # the audits reached it ...
    assert "looks like an audit" not in guesses  # ... and none was recognised

    assert resolved.status == 2  # guilty
    # the slash is slash_bps of the stake the cheater held just before this case was resolved
    chain, start = reader.client, reader.deployment.deploy_block
    (event,) = chain.events(
        reader.verdicts.contract, "CaseResolved", start, argument_filters={"case_id": resolved.case_id}
    )
    stake_of = reader.registry.contract.functions.stake_of(cheater)
    stake_before = int(chain.call(stake_of, event["blockNumber"] - 1))
    assert resolved.slashed == stake_before * reader.params.get("slash_bps") // 10_000
    assert not reader.registry.is_active(cheater)
    cases = reader.verdicts.all_cases()
    assert all(c.provider != honest for c in cases)  # the honest provider was never reported
    # both validators may have caught it before the first verdict: each proven case slashes
    against = [c for c in cases if c.provider == cheater]
    assert all(c.status != 3 for c in against)  # never found innocent (open, guilty or no quorum)
    (opened,) = chain.events(
        reader.verdicts.contract, "CaseOpened", start, argument_filters={"case_id": resolved.case_id}
    )
    staked = int(chain.call(stake_of, opened["blockNumber"]))  # no case can be resolved this early
    assert reader.registry.stake_of(cheater) == staked - sum(c.slashed for c in against) > 0

    gateway = network["gateway_url"].removesuffix("/v1")
    refused = [
        line
        for line in httpx.get(gateway + "/metrics").text.splitlines()
        if line.startswith("allmende_gateway_failed_attempts_total") and cheater in line and "bad_receipt" in line
    ]
    assert refused and float(refused[0].rsplit(" ", 1)[1]) >= 1  # its inflated receipts were not paid
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
