"""Property: whatever order a federated round's signed stages, replays, aborts and revocations
arrive in, the ε the chain charges a grant is exactly that of the rounds whose aggregate the
vault released (an unmask that handed out its shares, or a plain FedAvg update that left), and
every released round is one access on chain.

It drives a vault's own request gate, round book and service (`RequestGate`, `VaultFlower.run_stage`,
`VaultService`) in process against the real chain of the vault tests, with the Flower client app
replaced by what each stage does to the vault's books: masked vectors and fit train and charge,
unmask commits, the rest only move the round on."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from eth_utils import keccak
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from allmende.chain import Contracts
from allmende.chain.bindings import TEMPLATES
from allmende.core.eip712 import Domain
from allmende.core.vault_requests import (
    ROUND_ABORT,
    ROUND_FIT,
    ROUND_MASKED_VECTORS,
    ROUND_SETUP,
    ROUND_SHARE_KEYS,
    ROUND_UNMASK,
    SECURE_STAGES,
    VaultRequest,
)
from allmende.vault.auth import RequestGate
from allmende.vault.datasets import load_table, write_table
from allmende.vault.errors import RequestReplayed, VaultError
from allmende.vault.flower import VaultFlower
from allmende.vault.model import MICRO
from allmende.vault.rounds import RoundState
from allmende.vault.service import VaultPolicy, VaultService
from allmende.vault.store import VaultStore
from tests.vault.conftest import CONFIG, SPEC, World

VAULT_ACCOUNT = 8  # a devnet account no vault process uses: this vault runs in the test's process
STAGES = [ROUND_SETUP, ROUND_SHARE_KEYS, ROUND_MASKED_VECTORS, ROUND_UNMASK, ROUND_FIT, ROUND_ABORT]


@dataclass
class InProcessVault:
    world: World
    owner: Contracts
    service: VaultService
    gate: RequestGate
    flower: VaultFlower
    domain: Domain
    dataset_id: bytes
    runs: Iterator[int] = field(default_factory=lambda: itertools.count(900_000))


@pytest.fixture(scope="module")
def vault(world: World, tmp_path_factory: pytest.TempPathFactory) -> InProcessVault:
    root: Path = tmp_path_factory.mktemp("property-vault")
    x, y = world.heldout
    table = load_table(write_table(root / "property.csv", [f"f{i}" for i in range(64)], x[7:47], y[7:47]))
    owner = world.net.contracts(world.net.accounts[VAULT_ACCOUNT])
    owner.data.register_dataset(table.dataset_id, owner.client.address, "CC0-1.0", "")
    store = VaultStore(root / "vault.db")
    service = VaultService([table], owner, store, VaultPolicy(min_noise=CONFIG.noise))
    domain = Domain(owner.client.chain_id, owner.data.address)
    gate = RequestGate(service.address, domain, store, grantee_of=service.grantee_of)
    return InProcessVault(world, owner, service, gate, VaultFlower(service), domain, table.dataset_id)


@dataclass
class Coordinator:
    """The grantee's side of one run, and what it saw released."""

    vault: InProcessVault
    grant_id: int
    run_id: int
    released: list[int] = field(default_factory=list)  # ε (millionths) of each round whose aggregate left
    charges: dict[int, int] = field(default_factory=dict)  # round -> ε its masked vectors reserved
    sent: list[tuple[str, bytes]] = field(default_factory=list)  # (header, body) of every request
    round: int = 1  # the round an honest coordinator is in
    stage: int = 0  # and the next of its SecAgg+ stages

    def request(self, operation: str, round_number: int) -> tuple[str, bytes]:
        body = os.urandom(16)  # the Flower message; the book and the books do not read it here
        signed = VaultRequest(self.vault.service.address, operation, self.vault.dataset_id, self.grant_id, self.run_id,
                              round_number, os.urandom(32), int(time.time()) + 120, keccak(body))  # fmt: skip
        key = self.vault.world.accounts["coordinator"].key
        return signed.to_header(signed.sign(self.vault.domain, key)), body

    def deliver(self, header: str, body: bytes) -> None:
        """What the vault's HTTP handlers do with it (`allmende.vault.app`), minus Flower."""
        v = self.vault
        request, signer = v.gate.signer_of(header, body)
        operation = request.operation
        admitted = v.gate.admit(request, signer, [operation])
        v.service.grant_for(request.grant_id, signer, "federated_round", request.dataset_id)
        flower = v.flower
        if operation == ROUND_ABORT:
            flower.abort(admitted)
            return

        def work(state: RoundState) -> bytes:
            if operation in (ROUND_MASKED_VECTORS, ROUND_FIT):
                _, _, charge = v.service.train_round(
                    request.grant_id, signer, request.dataset_id, request.run_id, SPEC, v.world.base_params, 1, 1.0,
                    CONFIG.noise, CONFIG.clipping_norm, reserve=operation == ROUND_MASKED_VECTORS,
                    round_number=request.round,
                )  # fmt: skip
                self.charges[request.round] = charge
            return b""

        flower.run_stage(admitted, work)
        if operation in (ROUND_UNMASK, ROUND_FIT):  # the aggregate's part left this vault
            self.released.append(self.charges[request.round])


ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("next"), st.just(0)),  # the honest coordinator's next stage
        st.tuples(st.just("next"), st.just(0)),
        st.tuples(st.sampled_from(STAGES), st.integers(1, 3)),  # any stage of any round
        st.tuples(st.just("replay"), st.integers(0, 30)),
        st.tuples(st.just("revoke"), st.just(0)),
    ),
    max_size=14,
)


HONEST_ROUNDS = [("next", 0)] * 8
REPLAYED_AND_ABORTED = [("next", 0)] * 3 + [("replay", 2), (ROUND_ABORT, 1), ("next", 0), ("replay", 4)]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=ACTIONS)
@example(actions=HONEST_ROUNDS)
@example(actions=REPLAYED_AND_ABORTED)
@example(actions=[("next", 0)] * 3 + [("revoke", 0), ("next", 0)])
def test_the_chain_charges_exactly_the_rounds_whose_aggregate_was_released(
    vault: InProcessVault, actions: list[tuple[str, int]]
) -> None:
    # Prepare: a fresh grant and run
    coordinator_address = vault.world.accounts["coordinator"].address
    expires = vault.owner.client.timestamp() + 86_400
    g = vault.owner.data.grant(vault.dataset_id, coordinator_address, TEMPLATES["federated_round"],
                               [vault.world.base_id], expires, 40 * MICRO)  # fmt: skip
    coordinator = Coordinator(vault, g, next(vault.runs))

    # Execute: the interleaving; every refusal is a VaultError, a replay always a RequestReplayed
    for kind, n in actions:
        if kind == "revoke":
            vault.owner.data.revoke(g)
            continue
        if kind == "replay":
            if not coordinator.sent:
                continue
            with pytest.raises(RequestReplayed):
                coordinator.deliver(*coordinator.sent[n % len(coordinator.sent)])
            continue
        honest = kind == "next"
        if honest:
            kind, n = SECURE_STAGES[coordinator.stage], coordinator.round
        header, body = coordinator.request(kind, n)
        coordinator.sent.append((header, body))
        try:
            coordinator.deliver(header, body)
            if honest:
                coordinator.stage += 1
        except VaultError:  # a refusal: the property says what it may have cost
            if honest:  # the coordinator gives the round up and starts the next
                coordinator.stage = len(SECURE_STAGES)
        if honest and coordinator.stage == len(SECURE_STAGES):
            coordinator.round, coordinator.stage = coordinator.round + 1, 0

    # Assert: the chain's charges are the released rounds', one access each, and the vault's
    # own books hold no charge beyond those and the reservations still open
    data = vault.owner.data
    logged = [a for a in data.accesses(vault.dataset_id) if a.grant_id == g]
    assert data.get_grant(g).epsilon_spent == sum(coordinator.released)
    assert sorted(a.epsilon_spent for a in logged) == sorted(coordinator.released)
    open_reservations = vault.service.store.reserved
    pending = sum(j.epsilon_micro for r in range(1, 4) for j in open_reservations(g, coordinator.run_id, r,
                                                                                  coordinator_address))  # fmt: skip
    assert vault.service.store.spent(g)[1] == sum(coordinator.released) + pending
    if actions == HONEST_ROUNDS:  # the property is not vacuous: honest rounds are released and charged
        assert len(coordinator.released) == 2 and data.get_grant(g).epsilon_spent > 0
