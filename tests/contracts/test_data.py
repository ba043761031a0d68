"""Data: datasets, grants with an epsilon budget, the vault-only access log, attestations."""

from __future__ import annotations

import boa
import pytest
from eth_utils import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allmende.testing.inprocess import register_dataset
from tests.contracts.conftest import System, actor

OWNER = actor("data-owner")
VAULT = actor("owner-vault")
GRANTEE = actor("grantee")
STRANGER = actor("stranger")
VALIDATOR = actor("validator")
DATASET = keccak(text="hospital-records-manifest")
MODEL = keccak(text="base-model")
OTHER_MODEL = keccak(text="other-model")
EVALUATE, FEDERATED, AGGREGATE = 1, 2, 3
EPS = 1_000_000  # one epsilon, in millionths


def job(name: str) -> bytes:
    return keccak(text=name)


@pytest.fixture
def dataset(system: System) -> bytes:
    with boa.env.prank(OWNER.address):
        register_dataset(system.data, DATASET, VAULT.address, "CC-BY-NC-4.0", "https://example.org/policy")
    return DATASET


@pytest.fixture
def grant(system: System, dataset: bytes) -> int:
    expires = boa.env.evm.patch.timestamp + 86_400
    with boa.env.prank(OWNER.address):
        return int(system.data.grant(dataset, GRANTEE.address, FEDERATED, [MODEL], expires, 3 * EPS))


def test_register_dataset_records_owner_vault_and_terms(system: System, dataset: bytes) -> None:
    d = system.data.dataset(dataset)
    assert (d.owner, d.vault, d.license, d.policy_uri, d.accesses) == (
        OWNER.address,
        VAULT.address,
        "CC-BY-NC-4.0",
        "https://example.org/policy",
        0,
    )
    assert system.data.dataset_count() == 1 and system.data.dataset_at(0) == dataset


def test_grant_then_vault_logs_accesses_and_charges_epsilon(system: System, grant: int) -> None:
    assert system.data.permits(grant, GRANTEE.address, FEDERATED, MODEL, EPS)
    with boa.env.prank(VAULT.address):
        system.data.record_access(grant, job("round-1"), MODEL, keccak(text="update-1"), EPS)
        system.data.record_access(grant, job("round-2"), MODEL, keccak(text="update-2"), 2 * EPS)
    g = system.data.get_grant(grant)
    assert (g.epsilon_budget, g.epsilon_spent, g.revoked) == (3 * EPS, 3 * EPS, False)
    assert system.data.dataset(DATASET).accesses == 2
    first = system.data.access_at(DATASET, 0)
    assert (first.grant_id, first.job_id, first.model_id, first.epsilon_spent) == (grant, job("round-1"), MODEL, EPS)
    assert system.data.access_at(DATASET, 1).result_hash == keccak(text="update-2")
    # the budget is used up: not even a tiny job is permitted any more
    assert not system.data.permits(grant, GRANTEE.address, FEDERATED, MODEL, 1)
    with boa.env.prank(VAULT.address), boa.reverts("data: privacy budget exceeded"):
        system.data.record_access(grant, job("round-3"), MODEL, keccak(text="update-3"), 1)


def test_permits_checks_every_term(system: System, grant: int) -> None:
    assert not system.data.permits(grant, STRANGER.address, FEDERATED, MODEL, EPS)  # not the grantee
    assert not system.data.permits(grant, GRANTEE.address, EVALUATE, MODEL, EPS)  # other template
    assert not system.data.permits(grant, GRANTEE.address, FEDERATED, OTHER_MODEL, EPS)  # model not granted
    assert not system.data.permits(grant, GRANTEE.address, FEDERATED, MODEL, 3 * EPS + 1)  # over budget
    assert not system.data.permits(999, GRANTEE.address, FEDERATED, MODEL, 0)  # no such grant
    boa.env.time_travel(seconds=86_400)
    assert not system.data.permits(grant, GRANTEE.address, FEDERATED, MODEL, EPS)  # expired


def test_revoked_or_expired_grants_log_nothing(system: System, grant: int) -> None:
    with boa.env.prank(OWNER.address):
        system.data.revoke(grant)
    assert system.data.get_grant(grant).revoked
    assert not system.data.permits(grant, GRANTEE.address, FEDERATED, MODEL, 0)
    with boa.env.prank(VAULT.address), boa.reverts("data: grant revoked"):
        system.data.record_access(grant, job("late"), MODEL, b"\x00" * 32, 0)
    expires = boa.env.evm.patch.timestamp + 60
    with boa.env.prank(OWNER.address):
        second = system.data.grant(DATASET, GRANTEE.address, AGGREGATE, [], expires, EPS)
    boa.env.time_travel(seconds=61)
    with boa.env.prank(VAULT.address), boa.reverts("data: grant expired"):
        system.data.record_access(second, job("too-late"), b"\x00" * 32, b"\x00" * 32, 0)


def test_data_revert_paths(system: System, dataset: bytes, grant: int) -> None:
    future = boa.env.evm.patch.timestamp + 3_600
    with boa.reverts("data: empty id"):
        register_dataset(system.data, b"\x00" * 32, VAULT.address, "MIT", "")
    with boa.reverts("data: zero vault"):
        register_dataset(system.data, keccak(text="x"), "0x" + "00" * 20, "MIT", "")
    with boa.reverts("data: already registered"):
        register_dataset(system.data, dataset, VAULT.address, "MIT", "")
    with boa.env.prank(STRANGER.address), boa.reverts("data: not the owner"):
        system.data.grant(dataset, STRANGER.address, FEDERATED, [MODEL], future, EPS)
    with boa.env.prank(STRANGER.address), boa.reverts("data: not the owner"):
        system.data.revoke(grant)
    with boa.env.prank(STRANGER.address), boa.reverts("data: not the owner"):
        system.data.set_vault(dataset, STRANGER.address)
    with boa.reverts("data: unknown dataset"):
        system.data.grant(keccak(text="nope"), GRANTEE.address, FEDERATED, [MODEL], future, EPS)
    with boa.env.prank(OWNER.address):
        with boa.reverts("data: zero grantee"):
            system.data.grant(dataset, "0x" + "00" * 20, FEDERATED, [MODEL], future, EPS)
        with boa.reverts("data: unknown template"):
            system.data.grant(dataset, GRANTEE.address, 4, [MODEL], future, EPS)
        with boa.reverts("data: no models"):
            system.data.grant(dataset, GRANTEE.address, EVALUATE, [], future, EPS)
        with boa.reverts("data: already expired"):
            system.data.grant(dataset, GRANTEE.address, FEDERATED, [MODEL], boa.env.evm.patch.timestamp, EPS)
        with boa.reverts("data: zero vault"):
            system.data.set_vault(dataset, "0x" + "00" * 20)
    with boa.reverts("data: unknown grant"):
        system.data.revoke(999)
    with boa.reverts("data: unknown grant"):
        system.data.get_grant(999)
    with boa.reverts("data: unknown dataset"):
        system.data.dataset(keccak(text="nope"))
    # only the dataset's vault key logs accesses, not the owner, not the grantee
    for who in (OWNER, GRANTEE, STRANGER):
        with boa.env.prank(who.address), boa.reverts("data: not the vault"):
            system.data.record_access(grant, job("sneaky"), MODEL, b"\x00" * 32, 0)
    with boa.env.prank(VAULT.address):
        with boa.reverts("data: model not granted"):
            system.data.record_access(grant, job("other"), OTHER_MODEL, b"\x00" * 32, 0)
        with boa.reverts("data: empty job id"):
            system.data.record_access(grant, b"\x00" * 32, MODEL, b"\x00" * 32, 0)
        with boa.reverts("data: unknown grant"):
            system.data.record_access(999, job("x"), MODEL, b"\x00" * 32, 0)
        system.data.record_access(grant, job("once"), MODEL, b"\x00" * 32, 0)
        with boa.reverts("data: job already logged"):
            system.data.record_access(grant, job("once"), MODEL, b"\x00" * 32, 0)
    with boa.reverts("data: no such access"):
        system.data.access_at(dataset, 1)


def test_vault_key_rotation(system: System, grant: int) -> None:
    new_vault = actor("new-vault")
    with boa.env.prank(OWNER.address):
        system.data.set_vault(DATASET, new_vault.address)
    with boa.env.prank(VAULT.address), boa.reverts("data: not the vault"):
        system.data.record_access(grant, job("old-key"), MODEL, b"\x00" * 32, 0)
    with boa.env.prank(new_vault.address):
        system.data.record_access(grant, job("new-key"), MODEL, b"\x00" * 32, 0)
    assert system.data.dataset(DATASET).accesses == 1


def test_only_active_validators_attest_once(system: System) -> None:
    metric_model = keccak(text="trained-model")
    with boa.env.prank(STRANGER.address), boa.reverts("data: not a validator"):
        system.data.attest(metric_model, job("eval"), "accuracy", 912_000, keccak(text="report"))
    stake = system.params.get("min_validator_stake")
    system.fund(VALIDATOR.address, alm=stake)
    with boa.env.prank(VALIDATOR.address):
        system.registry.register(2, "http://validator", b"\x00" * 32, stake)
        system.data.attest(metric_model, job("eval"), "accuracy", 912_000, keccak(text="report"))
        with boa.reverts("data: already attested"):
            system.data.attest(metric_model, job("eval"), "accuracy", 999_000, keccak(text="report"))
    assert system.data.attestation_count(metric_model) == 1
    a = system.data.attestation_at(metric_model, 0)
    assert (a.validator, a.metric, a.value_ppm) == (VALIDATOR.address, "accuracy", 912_000)
    with boa.reverts("data: no such attestation"):
        system.data.attestation_at(metric_model, 1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=st.integers(0, 10 * EPS), spends=st.lists(st.integers(0, 4 * EPS), min_size=1, max_size=12))
def test_the_budget_is_never_exceeded(system: System, dataset: bytes, budget: int, spends: list[int]) -> None:
    expires = boa.env.evm.patch.timestamp + 86_400
    with boa.env.prank(OWNER.address):
        grant_id = system.data.grant(dataset, GRANTEE.address, FEDERATED, [MODEL], expires, budget)
    accepted = 0
    for i, eps in enumerate(spends):
        allowed = system.data.permits(grant_id, GRANTEE.address, FEDERATED, MODEL, eps)
        assert allowed == (accepted + eps <= budget)
        with boa.env.prank(VAULT.address):
            if allowed:
                system.data.record_access(grant_id, keccak(text=f"{grant_id}-{i}"), MODEL, b"\x00" * 32, eps)
                accepted += eps
            else:
                with boa.reverts("data: privacy budget exceeded"):
                    system.data.record_access(grant_id, keccak(text=f"{grant_id}-{i}"), MODEL, b"\x00" * 32, eps)
    assert system.data.get_grant(grant_id).epsilon_spent == accepted <= budget
    logged = [system.data.access_at(dataset, i) for i in range(system.data.dataset(dataset).accesses)]
    assert sum(a.epsilon_spent for a in logged if a.grant_id == grant_id) == accepted
