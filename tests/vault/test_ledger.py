"""The ε ledger under failures: a reservation forgotten, undone, expired or lost in a restart
never discounts a later charge, the rounds a grant released never pass its budget, and the
chain's figure is the vault's.

In process: a vault's own service and store (`VaultService`, `VaultStore`, `reconcile` at a
restart) against the session's real chain, training for real (one DP step on a small table)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import Anvil, DevnetAccount
from allmende.chain.bindings import TEMPLATES
from allmende.chain.errors import TransactionFailed
from allmende.core.privacy import MICRO, GrantLedger, epsilon_of, micro_epsilon
from allmende.vault.datasets import load_table, write_table
from allmende.vault.errors import AccessDenied, VaultError
from allmende.vault.model import ModelSpec, model_id, rho_of
from allmende.vault.node import reconcile
from allmende.vault.service import VaultPolicy, VaultService
from allmende.vault.store import VaultStore

SPEC = ModelSpec(4, 2)
NOISE = 2.0
VAULT_ACCOUNT, GRANTEE_ACCOUNT = 7, 2
RHO = rho_of(1, NOISE, SPEC.inputs * SPEC.classes + SPEC.classes)  # one DP step per round
BUDGET = micro_epsilon(epsilon_of(4.5 * RHO, 1e-5))  # room for 4 rounds, not 5
runs = itertools.count(1)


@dataclass
class Vault:
    """One vault in this process; `restart` is a new process on the same database."""

    root: Path
    owner: Contracts
    grantee: str
    service: VaultService = field(init=False)
    dataset_id: bytes = field(init=False)
    base: list[np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng()
        x = rng.normal(size=(80, SPEC.inputs))
        y = (x[:, 0] > 0).astype(int)
        self.table = load_table(write_table(self.root / "rows.csv", [f"f{i}" for i in range(SPEC.inputs)], x, y))
        self.dataset_id = self.table.dataset_id
        self.owner.data.register_dataset(self.dataset_id, self.owner.client.address, "CC0-1.0", "")
        self.base = SPEC.init(0)
        self.restart()

    def restart(self) -> None:
        store = VaultStore(self.root / "vault.db")
        reconcile(store, self.owner)
        self.service = VaultService([self.table], self.owner, store, VaultPolicy(min_noise=NOISE))

    def grant(self) -> int:
        expires = self.owner.client.timestamp() + 86_400
        return self.owner.data.grant(self.dataset_id, self.grantee, TEMPLATES["federated_round"],
                                     [model_id(SPEC, self.base)], expires, BUDGET)  # fmt: skip

    def train(self, grant: int, run: int, round_number: int, params: list[np.ndarray], reserve: bool) -> list:
        out, _, _ = self.service.train_round(grant, self.grantee, self.dataset_id, run, SPEC, params, 1, 0.5, NOISE,
                                             5.0, reserve=reserve, round_number=round_number)  # fmt: skip
        return out

    def spent_on_chain(self, grant: int) -> int:
        return self.owner.data.get_grant(grant).epsilon_spent


@pytest.fixture(scope="module")
def vault(anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount], tmp_path_factory) -> Iterator[Vault]:
    owner = Contracts(ChainClient(anvil.url, accounts[VAULT_ACCOUNT].key), deployment)
    yield Vault(tmp_path_factory.mktemp("ledger-vault"), owner, accounts[GRANTEE_ACCOUNT].address)


def assert_exact(vault: Vault, grant: int, released: int) -> None:
    """The grant's released rounds fit its budget, and the chain's ε is the vault's and that of
    exactly those rounds."""
    vault.service.settle(grant)
    ledger = vault.service.store.ledger(grant)
    assert epsilon_of(released * RHO, 1e-5) <= BUDGET / MICRO + 1e-6
    assert ledger.logged_rho == pytest.approx(released * RHO, rel=1e-12)
    assert vault.spent_on_chain(grant) == ledger.logged_micro == micro_epsilon(epsilon_of(ledger.logged_rho, 1e-5))


def test_an_abandoned_run_does_not_discount_the_next_rounds_nor_stretch_the_budget(vault: Vault) -> None:
    # Prepare: a run abandoned right after its vaults trained (reserved, nothing on chain)
    g = vault.grant()
    vault.train(g, next(runs), 1, vault.base, reserve=True)

    # Execute: a new run within the reservation's lifetime, round 1 logged
    run = next(runs)
    params = vault.train(g, run, 1, vault.base, reserve=True)
    vault.service.commit_round(g, run, 1, vault.grantee)

    # Assert: charged as a fresh round (before: the growth over the abandoned reservation, about half)
    assert vault.spent_on_chain(g) == micro_epsilon(epsilon_of(RHO, 1e-5))

    # Execute: the vault restarts (the abandoned reservation is undone); the run goes on until refused
    vault.restart()
    released, refused = 1, None
    for round_number in range(2, 8):
        try:
            params = vault.train(g, run, round_number, params, reserve=True)
            vault.service.commit_round(g, run, round_number, vault.grantee)
            released += 1
        except VaultError as exc:
            refused = exc
            break

    # Assert: 4 rounds fit the budget, the 5th is refused before it trains; the chain has exactly 4
    assert released == 4 and refused is not None and "privacy budget exceeded" in str(refused)
    assert_exact(vault, g, released)


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "reserve", "commit", "commit", "abort", "plain", "expire", "restart", "crash"]),
        st.integers(0, 2),
    ),
    max_size=12,
)


def lose_answers(logged: Callable[[bytes, str], None], jobs: set[bytes]) -> Callable[[bytes, str], None]:
    """`VaultStore.logged` that never hears the chain's answer for `jobs` (mined all the same)."""

    def maybe_lost(job_id: bytes, tx_hash: str) -> None:
        if job_id in jobs:
            raise ConnectionError("the chain's answer was lost")
        logged(job_id, tx_hash)

    return maybe_lost


@dataclass
class Run:
    run_id: int
    params: list[np.ndarray]
    next_round: int = 1
    open_round: int = 0  # reserved here, neither logged nor undone
    open_params: list[np.ndarray] | None = None


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])  # fmt: skip
@given(actions=ACTIONS)
@example(actions=[("reserve", 0), ("reserve", 1), ("commit", 1), ("restart", 0), *[("reserve", 1), ("commit", 1)] * 4])
@example(actions=[("reserve", 0), ("crash", 0), ("reserve", 1), ("expire", 0), ("plain", 2), ("commit", 1)])
@example(actions=[("reserve", 0), ("reserve", 1), ("crash", 0), ("crash", 1)])  # found by CI
def test_released_rounds_never_pass_the_budget_and_the_chain_is_the_vaults(
    vault: Vault, actions: list[tuple[str, int]]
) -> None:
    # Prepare: a fresh grant, three runs of its grantee
    g = vault.grant()
    live = [Run(next(runs), vault.base) for _ in range(3)]
    released = 0

    # Execute: reserve, log, abort, expire, restart, a lost answer from the chain, plain rounds
    for kind, i in actions:
        run = live[i]
        try:
            if kind == "reserve" and not run.open_round:
                run.open_params = vault.train(g, run.run_id, run.next_round, run.params, reserve=True)
                run.open_round, run.next_round = run.next_round, run.next_round + 1
            elif kind == "plain":
                run.params = vault.train(g, run.run_id, run.next_round, run.params, reserve=False)
                run.next_round += 1
                released += 1
            elif kind in ("commit", "crash") and run.open_round:
                if kind == "crash":  # this round's access is mined, the vault never hears back
                    store = vault.service.store
                    # only this round's answers are lost: the vault still hears the chain when it
                    # settles an earlier lost one first (before, the crash of a second run failed
                    # in that settle, before its own access was sent, and was counted as released)
                    this_round = {j.job_id for j in store.reserved(g, run.run_id, run.open_round, vault.grantee)}
                    store.logged = lose_answers(store.logged, this_round)  # type: ignore[method-assign, assignment]
                    try:
                        with pytest.raises(ConnectionError):
                            vault.service.commit_round(g, run.run_id, run.open_round, vault.grantee)
                    finally:
                        del store.logged
                else:
                    vault.service.commit_round(g, run.run_id, run.open_round, vault.grantee)
                released += 1
                run.params, run.open_round = run.open_params or run.params, 0
            elif kind == "abort" and run.open_round:
                vault.service.abort_round(g, run.run_id, run.open_round, vault.grantee)
                run.open_round = 0
            elif kind in ("expire", "restart"):
                vault.service.expire_reservations(ttl=-1.0) if kind == "expire" else vault.restart()
                for r in live:
                    r.open_round = 0
        except VaultError:  # refused (budget, lineage): it cost nothing, the run's round is over
            run.open_round = 0
        # Assert: after every step
        assert vault.spent_on_chain(g) <= BUDGET
        assert epsilon_of(released * RHO, 1e-5) <= BUDGET / MICRO + 1e-6

    # Assert: the chain charged exactly the released rounds, as the vault's books say
    assert_exact(vault, g, released)


def test_an_access_reverted_when_mined_is_a_clear_refusal(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the grant is revoked in the block that would take the access (the estimate passed)
    g = vault.grant()

    def mined_after_revocation(*args: object) -> None:
        vault.owner.data.revoke(g)
        raise TransactionFailed("record_access: 0xabc reverted when mined")

    monkeypatch.setattr(vault.service.data, "record_access", mined_after_revocation)

    # Execute
    with pytest.raises(AccessDenied) as refused:
        vault.train(g, next(runs), 1, vault.base, reserve=False)

    # Assert: a refusal that says why (kept in `data refusals` as any 4xx), nothing left open or charged
    assert f"grant {g} was revoked" in str(refused.value) and "nothing was released" in str(refused.value)
    assert vault.service.store.ledger(g) == GrantLedger() and vault.spent_on_chain(g) == 0
