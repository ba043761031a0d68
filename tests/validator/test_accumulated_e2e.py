"""Accumulated evidence end to end, on the package's audit network (tests/validator/conftest.py:
a chain of its own, shared with test_faults_e2e and test_shapes_e2e): a provider process that
serves int8 weights of the tiny model under its registered id (allmende.testing.cheats, mode
`int8`) passes every single audit, but the auditing validator's evidence ledger tips to
"cheating"; it opens a case whose evidence is the window's audits, a juror re-checks them with
its own model and votes guilty, the case resolves guilty and the provider is slashed and
paused. The network's honest provider audited as often under the same validator is never reported. Both
validators run at
the default (accumulated cases on); one with them turned off votes not guilty on the case."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import Anvil, DevnetAccount
from allmende.validator.evidence import Evidence
from allmende.validator.service import Validator
from tests.conftest import wait_for
from tests.validator.conftest import AuditNetwork, make_validator
from tests.validator.test_faults_e2e import (
    FixedTraffic,
    anvil,  # noqa: F401  (the audit network's chain)
    audited_provider,
    deployment,  # noqa: F401
    deployments_file,  # noqa: F401
    fresh_account,
    gateway,  # noqa: F401  (the audit network's gateway)
    votes_guilty,
    wait_out_the_lookback,
    weigh_a_quorum,
)

pytestmark = pytest.mark.process

AUDITS = 16  # the most audits of 32 tokens the cheat may take (512 tokens)


def bodies(count: int) -> list[dict[str, Any]]:
    """Plain audits: greedy and seeded draws of 32 tokens."""
    out = []
    for i in range(count):
        body: dict[str, Any] = {"messages": [{"role": "user", "content": f"Tell me about tides, part {i}."}],
                                "max_tokens": 32}  # fmt: skip
        body |= {"temperature": 0.8, "seed": 40 + i} if i % 2 else {"temperature": 0}
        out.append(body)
    return out


@pytest.fixture
def int8_provider(
    anvil: Anvil,  # noqa: F811
    deployments_file: Path,  # noqa: F811
    accounts: list[DevnetAccount],
    gateway: str,  # noqa: F811
    tmp_path: Path,
) -> Iterator[tuple[str, str]]:
    with audited_provider(anvil, deployments_file, accounts[7], gateway, tmp_path / "int8", "int8") as net:
        yield net


@pytest.fixture
def honest(audit_network: AuditNetwork) -> tuple[str, str]:
    """(address, gateway URL) of the audit network's honest provider."""
    return audit_network.honest, audit_network.gateway


def test_int8_serving_is_convicted_on_accumulated_evidence_and_an_honest_provider_never_reported(
    anvil: Anvil,  # noqa: F811
    deployment: Deployment,  # noqa: F811
    deployments_file: Path,  # noqa: F811
    accounts: list[DevnetAccount],
    int8_provider: tuple[str, str],
    honest: tuple[str, str],
    tmp_path: Path,
) -> None:
    cheater, cheat_gateway = int8_provider
    honest_address, honest_gateway = honest
    auditor_account = fresh_account(anvil, deployment, accounts, "auditor")
    juror_account = fresh_account(anvil, deployment, accounts, "juror")
    auditor, _ = make_validator(anvil, deployments_file, auditor_account, tmp_path / "auditor", cheat_gateway)
    juror, _ = make_validator(anvil, deployments_file, juror_account, tmp_path / "juror", cheat_gateway)
    assert auditor.config.accumulated_cases and juror.config.accumulated_cases  # the default
    weigh_a_quorum(anvil, deployment, accounts, juror)
    wait_out_the_lookback(anvil, deployment, accounts)
    reader = Contracts(ChainClient(anvil.url), deployment)
    auditor.directory.refresh()
    entry, fair = auditor.directory.entry(cheater), auditor.directory.entry(honest_address)
    assert entry is not None and fair is not None
    model_id = next(iter(entry.offers))
    stake_before = reader.registry.stake_of(cheater)

    # the cheat, audit after audit until the ledger reports it
    auditor.traffic = FixedTraffic(bodies(AUDITS))  # type: ignore[assignment]
    records = []
    while len(records) < AUDITS and (not records or records[-1].case_id is None):
        records.append(auditor.audit(entry, model_id))
    # the honest provider, as often, through the gateway it names in its audits
    auditor.config = dataclasses.replace(auditor.config, gateways=(honest_gateway,))
    auditor.traffic = FixedTraffic(bodies(len(records)))  # type: ignore[assignment]
    fair_records = [auditor.audit(fair, model_id) for _ in range(len(records))]

    assert all(r.ok for r in records), [r.reason for r in records]  # every single audit passed
    case_id = records[-1].case_id
    assert case_id is not None, auditor.ledger.summary()
    print(f"int8 convicted after {len(records)} audits, {32 * len(records)} audited tokens")
    case = reader.verdicts.case(case_id)
    assert case.provider == cheater
    report = reader.verdicts.reports(case_id)[0]
    document = Evidence.from_bytes(auditor.evidence.get("0x" + report.evidence_hash.hex()) or b"")
    assert document.accumulated is not None and len(document.accumulated["audits"]) == len(records)
    assert all(r.ok and r.case_id is None for r in fair_records), [r.reason for r in fair_records]
    assert reader.verdicts.open_case_of(honest_address, model_id) == 0

    wait_for("the juror's guilty vote", lambda: votes_guilty(juror, case_id), 120)
    # a validator that turned accumulated cases off (--no-accumulated-cases) votes not guilty
    default = Validator(dataclasses.replace(juror.config, accumulated_cases=False, state_dir=tmp_path / "off"))
    judged: list[bool | None] = []
    wait_for(
        "the judgement of a validator with accumulated cases off",
        lambda: (
            judged.append(default._recheck(report.evidence_uri, report.evidence_hash, cheater))
            or judged[-1] is not None
        ),
        120,
    )
    assert judged[-1] is False
    ChainClient(anvil.url, accounts[0].key).increase_time(reader.params.get("fraud_voting_period"))
    juror.resolve_due()

    resolved = reader.verdicts.case(case_id)
    assert resolved.status == 2 and not reader.registry.is_active(cheater)  # guilty, paused
    assert reader.registry.stake_of(cheater) == stake_before - resolved.slashed > 0
    assert resolved.slashed > 0
