"""Validators as `allmende up` runs them: two validator processes audit two provider
processes as mystery shoppers, through the gateway as user requests. The second provider
tries to recognise audits by every trick that worked against the first validators (a
validator's payer key, a body without `model`, a public prompt pool), serving them honestly
and everyone else from a cheap generator with a recomputed proof. It recognises none, is
reported, voted guilty by the other validator, slashed and paused, and the gateway stops
routing to it while users' requests keep being served. Its receipts, inflated tenfold, are
never paid: the gateway refuses them and passes them on to the auditing validator as evidence.
The operator's view, as the README's "Running a validator" shows it: each validator's log,
/metrics and /status, and `allmende status`, show the audits, the one case, the votes, the
resolution and the reporter's reward; one more validator joins from the command line
(after a start on a busy port that stakes nothing), is seen, stops, and unbonds.
(The network is shared with the explorer's browser tests: see `cheater_network` in
tests/conftest.py.)"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from openai import OpenAI
from typer.testing import CliRunner

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import devnet_accounts, free_port
from allmende.cli import app
from allmende.cli.common import console
from allmende.cli.status import render
from tests.conftest import cheater_verdict, wait_for

JOINER, BUSY = devnet_accounts(6)[5], devnet_accounts(6)[4]  # accounts `up` leaves free


def cli(network: dict[str, Any], *args: str, exit_code: int = 0) -> Result:
    """An `allmende` command as the README runs it next to `allmende up` (its state dir, no
    ALLMENDE_RPC or ALLMENDE_DEPLOYMENTS), run in this process by typer's runner: the same
    parsing, commands and exit codes without an interpreter start-up (about 2 s of CPU a
    command, 5 s for a validator, which imports torch). An unhandled exception fails it."""
    env = {"ALLMENDE_STATE_DIR": network["root"], "ALLMENDE_RPC": None, "ALLMENDE_DEPLOYMENTS": None}
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == exit_code, result.output + repr(result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def start_validator(network: dict[str, Any], port: int, key: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ALLMENDE_STATE_DIR": network["root"]}
    env.pop("ALLMENDE_RPC", None)
    env.pop("ALLMENDE_DEPLOYMENTS", None)
    command = [sys.executable, "-m", "allmende", "validator", "--key", key, "--port", str(port),
               "--state-dir", str(log.parent / log.stem)]  # fmt: skip
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a prometheus text page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{" if labels else name + " ") and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_validators_in_up_catch_and_slash_the_cheater(
    cheater_network: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    network = cheater_network
    root = Path(network["root"])
    # started now, checked at the end: its start overlaps the wait for the verdict
    joiner_port = free_port()
    joiner = start_validator(network, joiner_port, f"devnet:{JOINER.index}", root / "joiner.log")
    request.addfinalizer(lambda: joiner.poll() is None and joiner.kill())
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
    # a start on a busy port stakes nothing; a validator that joins is seen and stops
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused = cli(network, "validator", "--key", f"devnet:{BUSY.index}", "--port", str(port),
                      "--state-dir", str(root / "busy-validator"), exit_code=1)  # fmt: skip
    assert f"cannot listen on 127.0.0.1:{port}" in refused.stderr
    assert reader.registry.role_of(BUSY.address) == 0
    joined = f"http://127.0.0.1:{joiner_port}"
    wait_for("the joining validator", lambda: _answers(joined + "/status"), 120)
    seen = httpx.get(joined + "/status", timeout=30).json()
    assert seen["address"] == JOINER.address and seen["active"]
    assert int(seen["stake"]) == reader.params.get("min_validator_stake") and seen["rewards_earned"] == "0"
    assert metric(httpx.get(joined + "/metrics", timeout=10).text, "allmende_validator_stake_alm") > 0
    joiner.send_signal(signal.SIGINT)
    assert joiner.wait(timeout=60) == 0
    assert "evidence endpoint withdrawn" in (root / "joiner.log").read_text()
    # the README's commands: status, and unbonding
    shown_json = cli(network, "status", "--json").stdout
    unbonded = cli(network, "stake", "unbond", "all", "--key", f"devnet:{JOINER.index}").stdout

    # the operator's view of the case: logs, /metrics and /status of both validators
    by_address = {v["address"]: v for v in network["validators"]}
    reporters = [r.reporter for r in reader.verdicts.reports(resolved.case_id)]
    assert reporters == [resolved.reporter]  # the other validator voted instead of reporting again
    reporter = by_address[resolved.reporter]
    juror = next(v for v in network["validators"] if v["address"] != resolved.reporter)
    reward = reader.verdicts.rewards_of(resolved.reporter)
    assert reward == resolved.slashed * reader.params.get("reporter_reward_bps") // 10_000 > 0
    ended = f"case {resolved.case_id} against {cheater} resolved: guilty"
    wait_for("the outcome in the reporter's log", lambda: ended in Path(reporter["log"]).read_text(), 60)
    reporter_log, juror_log = Path(reporter["log"]).read_text(), Path(juror["log"]).read_text()
    assert f"audit of {cheater}: FAILED" in reporter_log and f"audit of {honest}: passed" in reporter_log
    assert f"opened case {resolved.case_id} against {cheater}" in reporter_log
    assert "this validator's reward" in reporter_log and "allmende.validator" in reporter_log
    assert f"voted guilty on case {resolved.case_id} against {cheater}" in juror_log
    assert "published scores" in reporter_log + juror_log
    scraped = httpx.get(reporter["url"] + "/metrics", timeout=10).text
    assert metric(scraped, "allmende_validator_audits_total", provider=cheater, result="failed") >= 1
    assert metric(scraped, "allmende_validator_audits_total", provider=honest, result="passed") >= 1
    assert metric(scraped, "allmende_validator_reports_total", provider=cheater, action="opened") >= 1
    assert metric(scraped, "allmende_validator_resolutions_total", outcome="guilty") >= 1
    assert metric(scraped, "allmende_validator_rewards_alm") == reward / 10**18
    juror_metrics = httpx.get(juror["url"] + "/metrics", timeout=10).text
    assert metric(juror_metrics, "allmende_validator_votes_total", provider=cheater, vote="guilty") >= 1
    mine = httpx.get(reporter["url"] + "/status", timeout=30).json()
    assert mine["address"] == resolved.reporter and int(mine["rewards_earned"]) == reward
    assert mine["audits"]["failed"] >= 1 and int(mine["stake"]) == reader.registry.stake_of(resolved.reporter)
    # one open case per fault: none against the cheater opened while another was open
    for earlier, later in itertools.pairwise(against):
        assert earlier.status != 1 and later.opened_at >= earlier.deadline

    report = json.loads(shown_json)
    table = rendered(report)  # the table `allmende status` prints for the same report
    assert "guilty" in table and all(v in table for v in validators)
    (case,) = [c for c in report["cases"] if c["case_id"] == resolved.case_id]
    assert case["state"] == "guilty" and case["reporters"] == [resolved.reporter]
    assert int(case["guilty_weight"]) > 0 and int(case["bonds"]) == reader.params.get("fraud_bond")
    assert case["deadline"] == resolved.deadline and int(case["slashed"]) == resolved.slashed
    listed = {v["address"]: v for v in report["validators"]}
    assert int(listed[resolved.reporter]["rewards_earned"]) == reward
    assert listed[JOINER.address]["stopped"] and listed[JOINER.address]["endpoint"] == ""
    assert "no longer active" in unbonded
    assert not reader.registry.is_active(JOINER.address)


def rendered(report: dict[str, Any]) -> str:
    width = console.width
    console.width = 250  # wide enough for addresses in full
    try:
        with console.capture() as captured:
            render(report)
    finally:
        console.width = width
    return captured.get()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
