"""Validators audit stage providers (`validator.stages`): the validator finds the Registry's
offers of the model's stage ids on the session's anvil, opens a paid, sealed session with one
stage provider (a real stage app with its payment gate, the validator's own channel), feeds it
a real prefix's activations from its own copy of the other stages, and checks every call's
commitment. Honest providers of every stage pass audit after audit and are reported nowhere;
a provider of the middle stage that skips a block, or serves weights perturbed by 5 %, is
caught in its first audit and reported on chain, its own signed receipt the case's anchor."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from eth_utils import keccak
from safetensors.numpy import load, save

from allmende.chain import ChainClient, Contracts, Deployment, deploy_all
from allmende.chain.anvil import Anvil, DevnetAccount, free_port
from allmende.chain.bindings import ROLE_PROVIDER, ROLE_VALIDATOR, CaseReport
from allmende.chain.stages import register_layout, registered_stages
from allmende.core.envelope import public_key_bytes
from allmende.core.stages import StageLayout, StagePrice
from allmende.engine import DEFAULT_CHAT_MODEL, ResolvedModel
from allmende.engine.stages import StageEngine
from allmende.payer.payments import ChannelPolicy, Payments
from allmende.payer.stage_payer import SessionPayer
from allmende.payer.store import GatewayStore
from allmende.provider.stage_app import StageGate, create_stage_app
from allmende.testing.stage_harness import perturb, skip_block
from allmende.validator.app import create_app as evidence_app
from allmende.validator.evidence import MAX_EVIDENCE_BYTES, MAX_STAGE_EVIDENCE_BYTES, Evidence, EvidenceStore
from allmende.validator.service import Validator, ValidatorConfig
from allmende.validator.stages import StageAudit, StageAuditor, recheck_stage
from tests.conftest import contracts_for, wait_for
from tests.stages.paid import PaidStage, Wire, funded, paid_stage
from tests.stages.test_stages_on_chain import fresh

PRICES = [StagePrice(2), StagePrice(3), StagePrice(4, 50)]
TOKENS = 4  # tokens drawn per audit: a prompt call and three decode calls
AUDITS = 2  # audits of each honest stage provider
DEPOSIT = 10**6
LONG_POSITIONS = 400  # a session whose middle-stage evidence (576 float32 per row, base64) passes 1 MiB


# A chain of this module's own: its validators stake and never vote, and on the session's chain
# they joined the quorum base of every later case there (tests/validator/test_validator_e2e.py's
# cases then ended inconclusive in a full run on the same worker)
@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="module")
def deployment(anvil: Anvil, accounts: list[DevnetAccount]) -> Deployment:
    return deploy_all(ChainClient(anvil.url, accounts[0].key), fund=[a.address for a in accounts])


@pytest.fixture(scope="module")
def deployments_file(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stage-audit-chain") / "deployments.json"
    deployment.save(path)
    return path


@pytest.fixture
def admin(anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]) -> Contracts:
    return contracts_for(anvil, deployment, accounts[0])


def on_chain(
    anvil: Anvil,
    deployment: Deployment,
    admin: Contracts,
    engine: StageEngine,
    price: StagePrice,
    root: Path,
    url: str | None = None,
) -> PaidStage:
    """A paid stage provider staked in the Registry, offering its stage id at its price, its
    X25519 key on its account (withdraw its offer at the end of the test: `retire`)."""
    url = url or f"http://stage-{secrets.token_hex(4)}.invalid"
    stage = paid_stage(anvil, deployment, admin, engine, price, url, root)
    stake = admin.params.get("min_provider_stake")
    admin.token.transfer(stage.address, stake)
    registry = stage.contracts.registry
    stage.contracts.token.approve(registry.address)
    registry.register(ROLE_PROVIDER, url, public_key_bytes(stage.x25519), stake)
    registry.set_offer(engine.spec.stage_id, price.per_position, price.per_token)
    return stage


def retire(*stages: PaidStage) -> None:
    """Withdraw the stages' offers, so no later audit on the session's chain finds them."""
    for stage in stages:
        stage.contracts.registry.remove_offer(stage.engine.spec.stage_id)


def validator(
    anvil: Anvil, deployment: Deployment, admin: Contracts, copy: list[StageEngine], root: Path
) -> tuple[StageAuditor, Payments]:
    """A staked validator with its own copy of the stages, and its own channels to pay with."""
    key, contracts = funded(anvil, deployment, admin, stable=10 * DEPOSIT)
    stake = admin.params.get("min_validator_stake")
    admin.token.transfer(contracts.client.address, stake + 10 * admin.params.get("fraud_bond"))
    contracts.token.ensure_allowance(contracts.registry.address, stake)
    contracts.registry.register(ROLE_VALIDATOR, "http://validator.test", b"\x00" * 32, stake)
    contracts.token.ensure_allowance(contracts.verdicts.address, 2**255)
    auditor = StageAuditor(copy, contracts, EvidenceStore(root / "evidence"), "http://validator.test")
    payments = Payments(GatewayStore(root / "validator.db"), contracts, key, ChannelPolicy(deposit=DEPOSIT))
    return auditor, payments


def audit(auditor: StageAuditor, payments: Payments, stage: PaidStage, prompt: list[int]) -> tuple[StageAudit, bytes]:
    """One audit of `stage`, found among the Registry's offers, through the real stage app; and
    the validator's channel it was paid on."""
    mine = [o for o in auditor.offers() if o.provider == stage.address]
    assert len(mine) == 1 and mine[0].url == stage.url and mine[0].x25519 == public_key_bytes(stage.x25519)
    payer = SessionPayer(payments, lambda _: DEPOSIT, len(prompt) + TOKENS, TOKENS, None)

    async def run() -> StageAudit:
        async with httpx.AsyncClient(transport=Wire({stage.url: stage.transport()})) as client:
            return await auditor.audit(mine[0], client, payer, prompt, TOKENS)

    return asyncio.run(run()), payer.holds[stage.address].channel


def test_honest_stage_providers_pass_every_audit_and_are_not_reported(
    anvil: Anvil,
    deployment: Deployment,
    admin: Contracts,
    stages3: list[StageEngine],
    chat_ids: list[list[int]],
    tmp_path: Path,
) -> None:
    providers = [on_chain(anvil, deployment, admin, e, p, tmp_path) for e, p in zip(stages3, PRICES, strict=True)]
    auditor, payments = validator(anvil, deployment, admin, stages3, tmp_path)

    try:
        done = [audit(auditor, payments, p, chat_ids[n % 2]) for p in providers for n in range(AUDITS)]
    finally:
        retire(*providers)
    audits = [a for a, _ in done]

    assert [a.ok for a in audits] == [True] * len(audits), [a.reason for a in audits]
    assert all(a.calls == TOKENS and len(a.receipts) == TOKENS for a in audits)
    assert [auditor.report(a) for a in audits] == [None] * len(audits)
    verdicts = admin.verdicts
    for stage in providers:
        assert verdicts.open_case_of(stage.address, stage.engine.spec.stage_id) == 0
        # paid like a gateway's calls: the provider earned exactly what its receipts say
        receipts = [r for a in audits for r in a.receipts if r.receipt.provider == stage.address]
        channels = {c for a, c in done if a.provider == stage.address}
        assert len(receipts) == AUDITS * TOKENS
        assert sum(stage.earned(c) for c in channels) == sum(r.receipt.amount for r in receipts) > 0


@pytest.mark.parametrize("cheat", ["skip-block", "perturb-5%"])
def test_a_cheating_stage_provider_is_caught_and_reported_on_chain(
    anvil: Anvil,
    deployment: Deployment,
    admin: Contracts,
    resolved: ResolvedModel,
    layout3: StageLayout,
    stages3: list[StageEngine],
    chat_ids: list[list[int]],
    tmp_path: Path,
    cheat: str,
) -> None:
    spec = layout3.stages[1]
    engine = StageEngine(resolved.path, spec)  # loads the registered slice (its hash checks), then cheats
    engine = skip_block(engine) if cheat == "skip-block" else perturb(engine, 0.05)
    stage = on_chain(anvil, deployment, admin, engine, PRICES[1], tmp_path)
    auditor, payments = validator(anvil, deployment, admin, stages3, tmp_path)

    try:
        found, _ = audit(auditor, payments, stage, chat_ids[0])
        case_id = auditor.report(found)
    finally:
        retire(stage)

    assert found.ok is False and found.failed is not None and found.evidence is not None, found.reason
    verdicts = admin.verdicts
    assert case_id is not None and verdicts.open_case_of(stage.address, spec.stage_id) == case_id
    case = verdicts.case(case_id)
    assert (case.provider, case.model_id, case.reporter, case.status) == (
        stage.address,
        spec.stage_id,
        auditor.address,
        1,
    )
    (report,) = verdicts.reports(case_id)
    assert report.receipt_digest == found.failed.receipt.digest(admin.registry.receipt_domain())
    stored = auditor.evidence.get("0x" + report.evidence_hash.hex())
    assert stored is not None and keccak(stored) == report.evidence_hash
    evidence = Evidence.from_bytes(stored)
    assert evidence.kind == "stage" and evidence.signed_receipt == found.failed
    assert auditor.report(found) == case_id  # reported once: a second report of the same audit joins nothing
    assert len(verdicts.reports(case_id)) == 1

    # a juror with its own copy of the stage re-checks the evidence from the receipts alone: guilty
    domain = admin.registry.receipt_domain()
    juror = {s.stage_id: e for s, e in zip(layout3.stages, stages3, strict=True)}
    assert recheck_stage(juror, evidence, stage.address, domain) is True
    # evidence that is not what the provider signed for proves nothing: other inputs, another accused
    inputs = load(base64.b64decode(evidence.body["inputs"]))["input"].copy()
    inputs[-1, 0] += 1.0
    other = {**evidence.body, "inputs": base64.b64encode(save({"input": inputs})).decode()}
    assert recheck_stage(juror, dataclasses.replace(evidence, body=other), stage.address, domain) is False
    assert recheck_stage(juror, evidence, auditor.address, domain) is False
    assert recheck_stage({}, evidence, stage.address, domain) is None  # no copy of the stage: abstain


def serve(stage: PaidStage, port: int) -> uvicorn.Server:
    """The stage app on a real port, as a provider node serves it."""
    app = create_stage_app(stage.engine, signer=stage.signer, paid=StageGate(stage.x25519, stage.gate, stage.store))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    wait_for("the stage app", lambda: server.started, timeout=30)
    return server


def test_the_validator_node_audits_stage_providers_in_its_round(
    anvil: Anvil,
    deployment: Deployment,
    deployments_file: Path,
    admin: Contracts,
    resolved: ResolvedModel,
    layout3: StageLayout,
    stages3: list[StageEngine],
    chat_ids: list[list[int]],
    tmp_path: Path,
) -> None:
    """`Validator.stage_round` (what `allmende validator --stage-deposit` runs every round): it
    finds the stages registered for its model on chain, loads its copy of them, audits every
    offer over real HTTP from its own channels (of an account not linked to it), passes the
    honest provider and opens a case against the one that skips a block; as a juror, it
    downloads the case's evidence from the reporter's evidence server and finds it proves the
    fault (not abstaining on a stage id), also when a long session's evidence passes the 1 MiB
    cap of a whole model's case."""
    owner = fresh(anvil, deployment, admin)
    if owner.models.owner_of(layout3.base) is None:  # another test may have registered the default model
        owner.models.register(layout3.base, "Apache-2.0", 0)
        register_layout(owner, layout3, "Apache-2.0")
    assert set(layout3.stages) <= set(registered_stages(admin, layout3.base))
    cheat = skip_block(StageEngine(resolved.path, layout3.stages[1]))
    ports = [free_port(), free_port(), free_port()]
    honest, cheating = (
        on_chain(anvil, deployment, admin, e, PRICES[1], tmp_path, f"http://127.0.0.1:{port}")
        for e, port in zip([stages3[1], cheat], ports[:2], strict=True)
    )
    servers = [serve(honest, ports[0]), serve(cheating, ports[1])]
    key, account = funded(anvil, deployment, admin)
    payer_key, payer = funded(anvil, deployment, admin, stable=10 * DEPOSIT)  # not linked to the validator
    stake_and_bond = admin.params.get("min_validator_stake") + admin.params.get("fraud_bond")
    admin.token.transfer(account.client.address, stake_and_bond)
    config = ValidatorConfig(
        anvil.url, key, deployments_file, tmp_path / "v", [DEFAULT_CHAT_MODEL], endpoint=f"http://127.0.0.1:{ports[2]}",
        seed=3, stage_deposit=DEPOSIT, stage_tokens=3, stage_payer_key=payer_key,
    )  # fmt: skip
    node = Validator(config)
    node.stake()
    evidence = uvicorn.Server(uvicorn.Config(evidence_app(node), host="127.0.0.1", port=ports[2], log_level="error"))
    threading.Thread(target=evidence.run, daemon=True).start()
    servers.append(evidence)
    wait_for("the evidence server", lambda: evidence.started, timeout=30)
    try:
        records = {r.provider: r for r in node.stage_round()}
        # a juror's path: the case's evidence downloaded from the reporter's endpoint and re-checked
        # on the node's copy of the stage (validator.stages.recheck_stage): it proves the fault
        caught = records[cheating.address]
        assert caught.case_id is not None, caught.reason
        (report,) = admin.verdicts.reports(caught.case_id)
        stage_id = layout3.stages[1].stage_id
        assert node._evidence_limit(stage_id) == MAX_STAGE_EVIDENCE_BYTES  # a stage's case: its larger cap
        assert node.fetcher.wait(report.evidence_uri, report.evidence_hash, MAX_STAGE_EVIDENCE_BYTES) is not None
        judged = (
            node._judge_reports([report], cheating.address, stage_id),
            node._judge_reports([report], honest.address, stage_id),
        )
        # a long session: its evidence carries every input row from position 0 and passes 1 MiB,
        # the cap of a whole model's case, which jurors once applied to stages too (and abstained)
        (auditor,) = node.stage_auditors()
        (offer,) = [o for o in auditor.offers() if o.provider == cheating.address]
        long_prompt = (chat_ids[0] * (LONG_POSITIONS // len(chat_ids[0]) + 1))[:LONG_POSITIONS]
        assert node.stage_payments is not None
        long_payer = SessionPayer(node.stage_payments, lambda _: DEPOSIT, LONG_POSITIONS + TOKENS, TOKENS, None)

        async def long_audit() -> StageAudit:
            async with httpx.AsyncClient(timeout=120) as client:
                return await auditor.audit(offer, client, long_payer, long_prompt, TOKENS)

        found = asyncio.run(long_audit())
        assert found.ok is False and found.evidence is not None, found.reason
        digest = node.evidence.put(found.evidence)
        uri = f"http://127.0.0.1:{ports[2]}/v1/evidence/0x{digest.hex()}"
        size = len(found.evidence.to_bytes())
        assert node.fetcher.wait(uri, digest, MAX_STAGE_EVIDENCE_BYTES) is not None
        long_judged = node._judge_reports([CaseReport(auditor.address, b"", digest, uri)], cheating.address, stage_id)
    finally:
        retire(honest, cheating)
        for server in servers:
            server.should_exit = True

    passed, caught = records[honest.address], records[cheating.address]
    assert passed.ok and passed.case_id is None, passed.reason
    assert not caught.ok and caught.case_id is not None, caught.reason
    assert admin.verdicts.open_case_of(cheating.address, layout3.stages[1].stage_id) == caught.case_id
    assert admin.verdicts.open_case_of(honest.address, layout3.stages[1].stage_id) == 0
    assert node.store.counts()["passed"] >= 1 and node.store.counts()["failed"] >= 1
    assert judged == ((True, 0), (False, 0))  # guilty; and no evidence against another provider
    assert MAX_EVIDENCE_BYTES < size < MAX_STAGE_EVIDENCE_BYTES
    assert long_judged == (True, 0)  # fetched past 1 MiB and re-checked: guilty, not an abstention
    # paid from the payer account's channels, none from the validator's registered account
    assert admin.channels.channel_nonce(payer.client.address) >= 2
    assert admin.channels.channel_nonce(account.client.address) == 0
