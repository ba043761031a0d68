"""Validators on a real chain (the package's audit network, tests/validator/conftest.py: a chain
of its own, a gateway and an honest provider) against real provider processes, auditing through a
real gateway as user requests: a provider that skips a layer of the tiny model under its id is
caught, reported with its own receipt, voted guilty by another validator, slashed and
paused, and the gateway stops routing to it; an honest provider audited 32 times (streamed
and not, greedy and sampled, fresh prompts) is never reported; a validator that frames it
with a real receipt and another prompt loses its case and its bond."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from allmende.api.canonical import prompt_of
from allmende.api.directory import Directory
from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import Anvil, DevnetAccount
from allmende.core import SignedReceipt
from allmende.validator.checker import NOTHING, Verdict
from allmende.validator.service import Found, Validator, ValidatorConfig, ask_gateway
from tests.conftest import wait_for
from tests.validator.conftest import AuditNetwork, make_validator
from tests.validator.test_faults_e2e import (
    anvil,  # noqa: F401  (the audit network's chain)
    audited_provider,
    deployment,  # noqa: F401
    deployments_file,  # noqa: F401
    fresh_account,
    gateway,  # noqa: F401  (the audit network's gateway)
    weigh_a_quorum,
)

MAX_AUDITS_TO_CATCH = 3


@pytest.fixture
def cheat(
    anvil: Anvil,  # noqa: F811
    deployments_file: Path,  # noqa: F811
    accounts: list[DevnetAccount],
    gateway: str,  # noqa: F811
    tmp_path: Path,
) -> Iterator[tuple[str, str]]:
    """(address, gateway URL) of a provider that skips a layer, once the gateway routes to it."""
    with audited_provider(anvil, deployments_file, accounts[1], gateway, tmp_path / "cheat", "skip-layer") as net:
        yield net


def test_cheater_is_caught_voted_guilty_slashed_and_dropped(
    anvil: Anvil,  # noqa: F811
    deployment: Deployment,  # noqa: F811
    deployments_file: Path,  # noqa: F811
    accounts: list[DevnetAccount],
    cheat: tuple[str, str],
    tmp_path: Path,
) -> None:
    cheater, through = cheat  # up, and the gateway routes to it
    v1_account, v2_account = (fresh_account(anvil, deployment, accounts, n) for n in ("v1", "v2"))
    v1, _ = make_validator(anvil, deployments_file, v1_account, tmp_path / "v1", through)
    v2, _ = make_validator(anvil, deployments_file, v2_account, tmp_path / "v2", through)
    weigh_a_quorum(anvil, deployment, accounts, v2)  # its guilty vote decides the case
    # votes weigh the stake held through the lookback (the unbonding period) before a case opens
    reader = Contracts(ChainClient(anvil.url), deployment)
    ChainClient(anvil.url, accounts[0].key).increase_time(reader.params.get("unbonding_period") + 1)
    stake_before = reader.registry.stake_of(cheater)
    v1.directory.refresh()
    entry = v1.directory.entry(cheater)
    assert entry is not None
    model_id = next(iter(entry.offers))

    records = []
    for _ in range(MAX_AUDITS_TO_CATCH):
        records.append(v1.audit(entry, model_id))
        if records[-1].case_id:
            break
    case_id = records[-1].case_id
    assert case_id is not None, [r.reason for r in records]
    assert "proof" in records[-1].reason

    again = v1.audit(entry, model_id)  # the next audit round catches it again: no second case
    assert again.case_id == case_id and reader.verdicts.case_count() == case_id
    caught = v2.audit(entry, model_id)  # v2 catches it too, re-checks the case's evidence, votes guilty
    assert not caught.ok and caught.case_id == case_id
    assert reader.verdicts.voted_guilty(case_id, v2.address) and reader.verdicts.case_count() == case_id
    assert reader.verdicts.reports(case_id)[0].reporter == v1.address and len(reader.verdicts.reports(case_id)) == 1
    assert v2.review_cases() == []  # nothing left to vote on
    status = v1.status()
    (listed,) = [c for c in status["open_cases"] if c["case_id"] == case_id]
    assert listed["this_validator"] == "reporter" and int(listed["guilty_weight"]) > 0
    ChainClient(anvil.url, accounts[0].key).increase_time(reader.params.get("fraud_voting_period"))
    assert case_id in v1.resolve_due()
    metrics = generate_latest(v1.metrics.registry).decode()
    assert f'allmende_validator_reports_total{{action="opened",provider="{cheater}"}} 1.0' in metrics
    assert f'allmende_validator_reports_total{{action="already_reported",provider="{cheater}"}} 1.0' in metrics
    assert 'allmende_validator_resolutions_total{outcome="guilty"} 1.0' in metrics
    assert int(v1.status()["rewards_earned"]) == reader.verdicts.rewards_of(v1.address) > 0

    case = reader.verdicts.case(case_id)
    assert case.status == 2
    assert reader.registry.stake_of(cheater) == stake_before - case.slashed
    assert case.slashed == stake_before * reader.params.get("slash_bps") // 10_000
    assert not reader.registry.is_active(cheater)
    # the same round audits from the directory it read before the verdict: the paused
    # provider is not audited again, so no second case punishes the same fault
    stale = v1.audit(entry, model_id)
    assert stale.case_id is None and stale.reason == "unavailable: not an active provider on chain"
    assert reader.verdicts.case_count() == case_id and reader.verdicts.open_case_of(cheater, model_id) == 0
    gateway_view = Directory(reader, httpx.Client(timeout=5))
    gateway_view.refresh()
    assert gateway_view.entry(cheater) is None
    assert all(e.address != cheater for e in gateway_view.candidates(model_id))


def test_honest_provider_audited_32_times_is_never_reported(
    anvil: Anvil,  # noqa: F811
    deployment: Deployment,  # noqa: F811
    deployments_file: Path,  # noqa: F811
    accounts: list[DevnetAccount],
    audit_network: AuditNetwork,
    gateway: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    honest_address = audit_network.honest
    v1 = Validator(
        ValidatorConfig(
            anvil.url,
            fresh_account(anvil, deployment, accounts, "auditor").key,
            deployments_file,
            tmp_path / "v",
            ["allmende:tiny"],
            endpoint="http://127.0.0.1:1",
            gateways=(gateway,),
            seed=2,
        )
    )
    v1.stake()  # a validator of its own: this test must pass alone and before the others
    reader = Contracts(ChainClient(anvil.url), deployment)
    cases_before = reader.verdicts.case_count()
    v1.directory.refresh()
    entry = v1.directory.entry(honest_address)
    assert entry is not None
    model_id = next(iter(entry.offers))

    records = [v1.audit(entry, model_id) for _ in range(32)]

    assert [r.reason for r in records if not r.ok] == []
    assert not [r.reason for r in records if r.reason.startswith("unavailable")]  # all 32 were checked
    assert reader.verdicts.case_count() == cases_before
    v1.publish_scores()
    gateway_view = Directory(reader, httpx.Client(timeout=5))
    gateway_view.refresh()
    honest_entry = gateway_view.entry(honest_address)
    assert honest_entry is not None
    assert honest_entry.stats[model_id].reputation == 1.0


def test_a_validator_that_frames_an_honest_provider_loses_its_case(
    anvil: Anvil,  # noqa: F811
    deployment: Deployment,  # noqa: F811
    deployments_file: Path,  # noqa: F811
    accounts: list[DevnetAccount],
    audit_network: AuditNetwork,
    gateway: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The framer holds a real receipt of the honest provider and files it with evidence of
    another prompt. The juror re-checks the evidence against the receipt's inputHash, votes
    not guilty, and the framer loses its bond; the provider keeps its stake and stays active."""
    honest = audit_network.honest
    framer_account, juror_account = (fresh_account(anvil, deployment, accounts, n) for n in ("framer", "juror"))
    framer, _ = make_validator(anvil, deployments_file, framer_account, tmp_path / "framer", gateway)
    juror, _ = make_validator(anvil, deployments_file, juror_account, tmp_path / "juror", gateway)
    weigh_a_quorum(anvil, deployment, accounts, juror)  # its vote decides the case
    # the juror's stake counts once held through the lookback (the unbonding period)
    reader = Contracts(ChainClient(anvil.url), deployment)
    ChainClient(anvil.url, accounts[0].key).increase_time(reader.params.get("unbonding_period") + 1)
    stake_before = reader.registry.stake_of(honest)
    asked = {"model": "allmende:tiny", "messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 8}
    evidence = ask_gateway(framer.http, gateway, asked, honest)
    receipt = SignedReceipt.from_json(evidence["receipt"])
    other = {**evidence["request"], "messages": [{"role": "user", "content": "Say something rude."}]}
    engine = next(iter(framer.engines.values()))
    forged = Found(
        other,
        engine.prompt_ids(prompt_of("chat", other)),
        evidence["token_ids"],
        bytes.fromhex(evidence["proof"][2:]),
        evidence["text"],
        receipt,
    )
    framer.directory.refresh()
    entry = framer.directory.entry(honest)
    assert entry is not None
    bond = reader.params.get("fraud_bond")
    balance_before = reader.token.balance_of(framer.address)

    case_id = framer.report(entry, forged, Verdict(False, "framed", NOTHING, 0))

    assert case_id is not None
    # the juror fetches the evidence off its own thread, and votes in the round after it arrived
    assert wait_for("the juror's vote", juror.review_cases, 60) == [(case_id, False)]
    ChainClient(anvil.url, accounts[0].key).increase_time(reader.params.get("fraud_voting_period"))
    assert case_id in juror.resolve_due()
    assert reader.verdicts.case(case_id).status == 3  # not guilty
    assert reader.token.balance_of(framer.address) == balance_before - bond
    assert reader.registry.stake_of(honest) == stake_before
    assert reader.registry.is_active(honest)
