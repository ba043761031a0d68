"""Three attacks on the validators (issue 29), against real provider and gateway processes on
the package's audit network (tests/validator/conftest.py: a chain, a gateway and an honest
provider shared with test_accumulated_e2e and test_shapes_e2e); each test that catches a cheat
starts a provider of its own and stakes validators of fresh accounts, so what one test's
verdicts do touches no other:

- billing past the end: a provider (allmende.testing.cheats, mode `overrun`: the right model
  and honest proofs, but every completion drawn on past EOS and past the request's stop
  strings up to max_tokens, the text cut at the stop string so the user sees the honest text)
  is paid by the gateway, which cannot see tokens past a cut text without the model; a
  validator's audit fails with the overrun as its reason and opens a case with the provider's
  own receipt, and another validator re-checks the evidence and votes guilty;
- a shield case: a colluder opens the one case on a (provider, model) with an evidence URL
  that sends one byte every 0.2 s; a juror's audits (of an honest provider) and its vote on
  another case go on while that server drips;
- one fault, one slash: a validator resolves a case guilty (pausing the provider) while it
  reports a fault it found in an audit that began before the verdict: no second case."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from allmende.api.canonical import canonical
from allmende.api.protocol import input_hash
from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import Anvil, DevnetAccount
from allmende.chain.bindings import ROLE_PROVIDER, ROLE_VALIDATOR
from allmende.core import Receipt, sign_receipt
from allmende.engine import collect
from allmende.engine.proofs import commit
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.validator.checker import NOTHING, Verdict
from allmende.validator.node import run_rounds
from allmende.validator.service import Found, Validator
from tests.conftest import wait_for
from tests.provider.conftest import start_provider
from tests.validator.conftest import AuditNetwork, make_validator, routed
from tests.validator.test_endings import REQUEST_ID, early_eos_body, plain
from tests.validator.test_fetcher import Tarpit


# The package's audit network (tests/validator/conftest.py): its chain, its gateway, its honest provider.
@pytest.fixture(scope="module")
def anvil(audit_network: AuditNetwork) -> Anvil:
    return audit_network.anvil


@pytest.fixture(scope="module")
def deployment(audit_network: AuditNetwork) -> Deployment:
    return audit_network.deployment


@pytest.fixture(scope="module")
def deployments_file(audit_network: AuditNetwork) -> Path:
    return audit_network.deployments_file


QUESTION = [{"role": "user", "content": "Write a short paragraph about tides."}]
ALM = 10**18


class FixedTraffic:
    """Audit bodies given by the test (shapes users send: a seed, stop strings)."""

    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        self.bodies = bodies

    def body(self, model: str) -> dict[str, Any]:
        return {"model": model, **self.bodies.pop(0)}

    def draw(self, published: Any, model: str) -> tuple[str, dict[str, Any]]:
        return "chat", self.body(model)


@contextlib.contextmanager
def audited_provider(
    anvil: Anvil, deployments: Path, provider: DevnetAccount, gateway: str, root: Path, cheat: str | None
) -> Iterator[tuple[str, str]]:
    """A provider process (cheating in mode `cheat`, or honest), once `gateway` routes to it: each
    test has its own, so what one test's verdicts do to a provider touches no other."""
    process = start_provider(anvil, deployments, provider, root / "provider", ["allmende:tiny"], cheat=cheat)
    try:
        wait_for(f"the gateway to route to {provider.address}", lambda: provider.address in routed(gateway), 60)
        yield provider.address, gateway
    finally:
        process.stop()


@pytest.fixture(scope="module")
def gateway(audit_network: AuditNetwork) -> str:
    return audit_network.gateway


@pytest.fixture
def overrunner(
    anvil: Anvil, deployments_file: Path, accounts: list[DevnetAccount], gateway: str, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """(address, gateway URL) of a provider that bills past the end of its completions."""
    with audited_provider(anvil, deployments_file, accounts[2], gateway, tmp_path / "net", "overrun") as net:
        yield net


@pytest.fixture
def honest_provider(audit_network: AuditNetwork) -> tuple[str, str]:
    """(address, gateway URL) of the audit network's honest provider: audits of it pass, whatever
    other cases do."""
    return audit_network.honest, audit_network.gateway


@pytest.fixture
def second_overrunner(
    anvil: Anvil, deployments_file: Path, accounts: list[DevnetAccount], gateway: str, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """Another provider that bills past the end: its test pauses it."""
    with audited_provider(anvil, deployments_file, accounts[4], gateway, tmp_path / "net", "overrun") as net:
        yield net


def fresh_account(
    anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount], label: str, alm: int = 20_000
) -> DevnetAccount:
    """A new account with devnet ETH and `alm` ALM: this test's own, nobody else's state."""
    new = Account.create()
    admin = Contracts(ChainClient(anvil.url, accounts[0].key), deployment)
    admin.client.send_value(new.address, 10 * 10**18)
    admin.token.transfer(new.address, alm * ALM)
    return DevnetAccount(-1, new.address, bytes(new.key), label)


def weigh(validator: Validator, amount: int) -> None:
    """Add `amount` to the validator's stake."""
    contracts = validator.contracts
    contracts.token.ensure_allowance(contracts.registry.address, amount)
    contracts.registry.register(ROLE_VALIDATOR, validator.config.endpoint, b"\x00" * 32, amount)


def weigh_a_quorum(anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount], juror: Validator) -> None:
    """Make `juror` a quorum on its own: more stake than every other validator on the chain
    together, however many earlier tests (of any module on this chain) staked (the ALM from
    the deployer)."""
    admin = Contracts(ChainClient(anvil.url, accounts[0].key), deployment)
    amount = admin.registry.role_stake(ROLE_VALIDATOR) + ALM
    admin.token.transfer(juror.address, amount)
    weigh(juror, amount)


def wait_out_the_lookback(anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]) -> None:
    """Votes weigh stake held through the lookback before a case opens: let it pass."""
    reader = Contracts(ChainClient(anvil.url), deployment)
    ChainClient(anvil.url, accounts[0].key).increase_time(reader.params.get("unbonding_period") + 1)


def stop_body(engine: CausalLMEngine) -> dict[str, Any]:
    """A sampled request with a stop string its honest answer reaches after a few tokens."""
    body: dict[str, Any] = {"messages": QUESTION, "max_tokens": 32, "temperature": 0.7, "seed": 5}
    prompt, params = canonical("chat", body, REQUEST_ID).generation
    ids = engine.prompt_ids(prompt)
    out = asyncio.run(collect(engine.generate(ids, dataclasses.replace(params)), len(ids))).token_ids
    body["stop"] = [next(p for p in (engine.decode([t]) for t in out[3:]) if plain(p))]
    return body


def test_a_provider_that_bills_past_eos_and_stop_strings_is_caught_and_voted_guilty(
    anvil: Anvil,
    deployment: Deployment,
    deployments_file: Path,
    accounts: list[DevnetAccount],
    overrunner: tuple[str, str],
    tmp_path: Path,
) -> None:
    cheater, gateway = overrunner
    auditor_account, juror_account = (fresh_account(anvil, deployment, accounts, n) for n in ("auditor", "juror"))
    auditor, _ = make_validator(anvil, deployments_file, auditor_account, tmp_path / "auditor", gateway)
    juror, _ = make_validator(anvil, deployments_file, juror_account, tmp_path / "juror", gateway)
    wait_out_the_lookback(anvil, deployment, accounts)
    reader = Contracts(ChainClient(anvil.url), deployment)
    engine: CausalLMEngine = next(iter(auditor.engines.values()))
    auditor.traffic = FixedTraffic([early_eos_body(engine), stop_body(engine)])  # type: ignore[assignment]
    auditor.directory.refresh()
    entry = auditor.directory.entry(cheater)
    assert entry is not None
    model_id = next(iter(entry.offers))

    past_eos = auditor.audit(entry, model_id)
    past_stop = auditor.audit(entry, model_id)

    assert not past_eos.ok and "runs past its end: EOS drawn as token" in past_eos.reason, past_eos.reason
    assert not past_stop.ok and "runs past its end: a stop string completed" in past_stop.reason, past_stop.reason
    case_id = past_eos.case_id
    assert case_id is not None and past_stop.case_id == case_id  # one open case per (provider, model)
    assert reader.verdicts.case(case_id).provider == cheater
    wait_for("the juror's guilty vote", lambda: votes_guilty(juror, case_id), 90)


def votes_guilty(juror: Validator, case_id: int) -> bool:
    """One review round of `juror` (its evidence downloads run off this thread: it votes in
    the round after the evidence arrived); True once it voted guilty on `case_id`."""
    juror.review_cases()
    return juror.contracts.verdicts.voted_guilty(case_id, juror.address)


def fake_provider(anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount], label: str) -> DevnetAccount:
    """A registered, staked provider with no process: only its key signs receipts."""
    account = fresh_account(anvil, deployment, accounts, label)
    contracts = Contracts(ChainClient(anvil.url, account.key), deployment)
    stake = contracts.params.get("min_provider_stake")
    contracts.token.ensure_allowance(contracts.registry.address, stake)
    contracts.registry.register(ROLE_PROVIDER, "http://127.0.0.1:9", os.urandom(32), stake)
    return account


def fabricated(engine: CausalLMEngine, provider: DevnetAccount, domain: Any) -> Found:
    """A greedy answer of fabricated tokens with an honest prefill proof, under the provider's
    own signed receipt: guilty on any re-check."""
    body = {"model": "allmende:tiny", "messages": QUESTION, "max_tokens": 8, "temperature": 0}
    prompt = engine.prompt_ids(canonical("chat", body).generation[0])
    out = [ord(c) for c in "zqzqzqzq"]
    hidden, _ = engine.prefill(prompt + out)
    proof = commit(hidden[len(prompt) - 1 : len(prompt) - 1 + len(out)])
    text = engine.decode(out)
    receipt = Receipt(os.urandom(32), engine.model_id, provider.address, input_hash("chat", body),
                      keccak(text.encode()), keccak(proof), len(prompt), len(out), 1, int(time.time()))  # fmt: skip
    return Found(body, prompt, out, proof, text, sign_receipt(receipt, domain, provider.key))


def test_a_shield_case_with_a_tarpit_evidence_server_stalls_no_juror(
    anvil: Anvil,
    deployment: Deployment,
    deployments_file: Path,
    accounts: list[DevnetAccount],
    honest_provider: tuple[str, str],
    tmp_path: Path,
) -> None:
    _, gateway = honest_provider
    colluder_account, reporter_account, juror_account = (
        fresh_account(anvil, deployment, accounts, n) for n in ("colluder", "reporter", "juror")
    )
    colluder, _ = make_validator(anvil, deployments_file, colluder_account, tmp_path / "colluder", gateway)
    reporter, _ = make_validator(anvil, deployments_file, reporter_account, tmp_path / "reporter", gateway)
    juror, _ = make_validator(anvil, deployments_file, juror_account, tmp_path / "juror", gateway)
    shielded, faked = (fake_provider(anvil, deployment, accounts, n) for n in ("shielded", "faked"))
    wait_out_the_lookback(anvil, deployment, accounts)
    reader = Contracts(ChainClient(anvil.url), deployment)
    engine: CausalLMEngine = next(iter(juror.engines.values()))
    domain = reader.registry.receipt_domain()
    tarpit = Tarpit()
    # the shield: the one case on (shielded, tiny), its evidence at the tarpit; opened first,
    # so a juror that downloads on its own thread is stuck there before it reaches the next
    shield_receipt = fabricated(engine, shielded, domain).receipt
    shield = colluder.contracts.verdicts.open_case(
        shield_receipt.receipt.as_tuple(), shield_receipt.signature, keccak(b"never sent"), tarpit.url
    )
    found = fabricated(engine, faked, domain)
    other = reporter.report(SimpleNamespace(address=faked.address), found, Verdict(False, "fabricated", NOTHING, 8))  # type: ignore[arg-type]
    assert other is not None and other != shield
    stopping = threading.Event()
    rounds = threading.Thread(target=run_rounds, args=(juror, stopping, 0.2, 1000), daemon=True)

    rounds.start()
    try:
        # observable progress while the tarpit drips: the vote on the other case, on chain,
        # and audit records of round after round
        wait_for("the juror's vote on the other case", lambda: reader.verdicts.voted_guilty(other, juror.address), 120)
        wait_for("three audits", lambda: juror.store.audit_count() >= 3, 120)
        dripped = tarpit.bytes_sent
        # a download ends at its 10 s deadline and the juror asks again RETRY_AFTER (30 s) later, in a
        # round that may take a minute on a loaded machine: 30 s here missed the next download once
        wait_for("the tarpit to drip on", lambda: tarpit.bytes_sent > dripped, 150)
    finally:
        stopping.set()
        tarpit.close()
        rounds.join(timeout=240)  # the round in flight ends first (minutes on a loaded 2-core machine)

    assert tarpit.requests >= 1  # the juror did ask for the shield's evidence ...
    assert not reader.verdicts.voted(shield, juror.address)  # ... and abstains on what never came
    assert not rounds.is_alive()


def test_a_fault_found_before_a_guilty_verdict_is_not_reported_again(
    anvil: Anvil,
    deployment: Deployment,
    deployments_file: Path,
    accounts: list[DevnetAccount],
    second_overrunner: tuple[str, str],
    tmp_path: Path,
) -> None:
    """The juror's own audit began while the provider was active; reporting it, the juror
    finds the case it voted on due, resolves it guilty (the provider is slashed and paused)
    and then would have opened a second case for the same fault (seen: 1,000 → 900 → 810 ALM)."""
    cheater, gateway = second_overrunner
    auditor_account = fresh_account(anvil, deployment, accounts, "auditor")
    juror_account = fresh_account(anvil, deployment, accounts, "juror")
    auditor, _ = make_validator(anvil, deployments_file, auditor_account, tmp_path / "auditor", gateway)
    juror, _ = make_validator(anvil, deployments_file, juror_account, tmp_path / "juror", gateway)
    weigh_a_quorum(anvil, deployment, accounts, juror)
    wait_out_the_lookback(anvil, deployment, accounts)
    reader = Contracts(ChainClient(anvil.url), deployment)
    engine: CausalLMEngine = next(iter(auditor.engines.values()))
    auditor.traffic = FixedTraffic([early_eos_body(engine)])  # type: ignore[assignment]
    juror.traffic = FixedTraffic([stop_body(engine)])  # type: ignore[assignment]
    auditor.directory.refresh()
    entry = auditor.directory.entry(cheater)
    assert entry is not None
    model_id = next(iter(entry.offers))
    stake_before = reader.registry.stake_of(cheater)
    first = auditor.audit(entry, model_id)
    case_id = first.case_id
    assert case_id is not None
    wait_for("the juror's guilty vote", lambda: votes_guilty(juror, case_id), 90)
    ChainClient(anvil.url, accounts[0].key).increase_time(reader.params.get("fraud_voting_period"))

    again = juror.audit(entry, model_id)  # begins before the verdict; reporting it resolves the case

    case = reader.verdicts.case(case_id)
    assert not again.ok and again.case_id is None, again
    assert case.status == 2 and not reader.registry.is_active(cheater)  # guilty, paused
    assert reader.verdicts.case_count() == case_id  # no second case
    assert reader.verdicts.open_case_of(cheater, model_id) == 0
    assert reader.registry.stake_of(cheater) == stake_before - case.slashed  # slashed once
