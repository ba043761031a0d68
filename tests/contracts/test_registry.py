"""Registry: staking, offers, paging, unbonding, slashing and receipts — and every revert path."""

from __future__ import annotations

import boa
import pytest
from eth_utils import keccak

from allmende.core import Receipt, sign_receipt
from tests.contracts.conftest import ALM, System, actor

PROVIDER = actor("provider")
VALIDATOR = actor("validator")
STRANGER = actor("stranger")
KEY = keccak(text="x25519")
MODEL = keccak(text="model-a")
PROVIDER_ROLE, VALIDATOR_ROLE = 1, 2


@pytest.fixture
def provider(system: System) -> str:
    system.fund(PROVIDER.address, alm=5_000 * ALM)
    with boa.env.prank(PROVIDER.address):
        system.registry.register(PROVIDER_ROLE, "http://p:9000", KEY, 2_000 * ALM)
        system.registry.set_offer(MODEL, 100, 200)
    return PROVIDER.address


def add_provider(system: System, label: str, stake: int = 1_000 * ALM) -> str:
    who = actor(label).address
    system.fund(who, alm=stake)
    with boa.env.prank(who):
        system.registry.register(PROVIDER_ROLE, f"http://{label}", KEY, stake)
        system.registry.set_offer(MODEL, 1, 1)
    return who


def test_register_stakes_and_publishes(system: System, provider: str) -> None:
    account = system.registry.accounts(provider)

    assert (account.role, account.stake, account.endpoint, account.x25519_key) == (
        PROVIDER_ROLE,
        2_000 * ALM,
        "http://p:9000",
        KEY,
    )
    assert system.token.balanceOf(system.registry.address) == 2_000 * ALM
    assert system.registry.offers(provider, MODEL) == (100, 200, True)
    assert system.registry.is_active(provider)
    assert system.registry.role_stake(PROVIDER_ROLE) == 2_000 * ALM


def test_register_again_is_idempotent_and_updates(system: System, provider: str) -> None:
    with boa.env.prank(provider):
        system.registry.register(PROVIDER_ROLE, "http://new:1", KEY, 0)

    assert system.registry.account_count() == 1
    assert system.registry.accounts(provider).endpoint == "http://new:1"
    assert system.registry.accounts(provider).stake == 2_000 * ALM


def test_validator_registers_without_endpoint_key(system: System) -> None:
    system.fund(VALIDATOR.address, alm=5_000 * ALM)
    with boa.env.prank(VALIDATOR.address):
        system.registry.register(VALIDATOR_ROLE, "", b"\x00" * 32, 5_000 * ALM)
    assert system.registry.is_active(VALIDATOR.address)
    assert system.registry.role_stake(VALIDATOR_ROLE) == 5_000 * ALM


def test_providers_of_pages_and_filters(system: System) -> None:
    providers = [add_provider(system, f"p{i}") for i in range(5)]
    with boa.env.prank(providers[1]):
        system.registry.remove_offer(MODEL)
    with boa.env.prank(providers[3]):
        system.registry.unbond(1)  # below the minimum stake → inactive

    first, cursor = system.registry.providers_of(MODEL, 0, 2)
    second, cursor2 = system.registry.providers_of(MODEL, cursor, 100)
    empty, cursor3 = system.registry.providers_of(MODEL, cursor2, 100)

    assert list(first) == [providers[0]]
    assert cursor == 2
    assert list(second) == [providers[2], providers[4]]
    assert cursor2 == cursor3 == 5
    assert list(empty) == []


def test_unbond_then_withdraw_after_period(system: System, provider: str) -> None:
    with boa.env.prank(provider):
        system.registry.unbond(500 * ALM)
    boa.env.time_travel(seconds=system.params.get("unbonding_period"))

    with boa.env.prank(provider):
        got = system.registry.withdraw()

    assert got == 500 * ALM
    assert system.token.balanceOf(provider) == 3_500 * ALM
    assert system.registry.accounts(provider).stake == 1_500 * ALM
    assert system.registry.total_bonded() == 1_500 * ALM


def test_slash_takes_stake_then_unbonding(system: System, provider: str) -> None:
    with boa.env.prank(provider):
        system.registry.unbond(1_500 * ALM)  # stake 500, unbonding 1500
    beneficiary = STRANGER.address

    with boa.env.prank(system.verdicts):
        slashed = system.registry.slash(provider, 800 * ALM, beneficiary)

    account = system.registry.accounts(provider)
    assert slashed == 800 * ALM
    assert (account.stake, account.unbonding) == (0, 1_200 * ALM)
    assert system.token.balanceOf(beneficiary) == 800 * ALM


def test_slash_is_capped_by_what_is_there(system: System, provider: str) -> None:
    with boa.env.prank(system.verdicts):
        slashed = system.registry.slash(provider, 10**30, STRANGER.address)
    assert slashed == 2_000 * ALM
    assert not system.registry.is_active(provider)


def test_paused_provider_is_not_listed(system: System, provider: str) -> None:
    with boa.env.prank(system.verdicts):
        system.registry.set_paused(provider, True)
    assert list(system.registry.providers_of(MODEL, 0, 10)[0]) == []
    system.registry.set_paused(provider, False)
    assert list(system.registry.providers_of(MODEL, 0, 10)[0]) == [provider]


def test_receipt_signed_in_python_recovers_on_chain(system: System, provider: str) -> None:
    receipt = Receipt(
        request_id=keccak(text="req"),
        model_id=MODEL,
        provider=PROVIDER.address,
        input_hash=keccak(text="in"),
        output_hash=keccak(text="out"),
        proof_hash=keccak(text="proof"),
        tokens_in=12,
        tokens_out=34,
        amount=5678,
        timestamp=1_700_000_000,
    )
    signed = sign_receipt(receipt, system.receipt_domain, PROVIDER.key)

    assert system.registry.receipt_digest(receipt.as_tuple()) == receipt.digest(system.receipt_domain)
    assert system.registry.receipt_signer(receipt.as_tuple(), signed.signature) == PROVIDER.address


# --------------------------------------------------------------- revert paths


@pytest.mark.parametrize(
    ("role", "endpoint", "key", "amount", "reason"),
    [
        (0, "http://x", KEY, 1_000 * ALM, "registry: bad role"),
        (3, "http://x", KEY, 1_000 * ALM, "registry: bad role"),
        (PROVIDER_ROLE, "", KEY, 1_000 * ALM, "registry: empty endpoint"),
        (PROVIDER_ROLE, "http://x", b"\x00" * 32, 1_000 * ALM, "registry: empty key"),
        (PROVIDER_ROLE, "http://x", KEY, 999 * ALM, "registry: stake below minimum"),
        (VALIDATOR_ROLE, "", KEY, 4_999 * ALM, "registry: stake below minimum"),
    ],
    ids=["role-0", "role-3", "empty-endpoint", "empty-key", "provider-min", "validator-min"],
)
def test_register_reverts(system: System, role: int, endpoint: str, key: bytes, amount: int, reason: str) -> None:
    system.fund(STRANGER.address, alm=10_000 * ALM)
    with boa.env.prank(STRANGER.address), boa.reverts(reason):
        system.registry.register(role, endpoint, key, amount)


def test_register_other_role_reverts(system: System, provider: str) -> None:
    with boa.env.prank(provider), boa.reverts("registry: role taken"):
        system.registry.register(VALIDATOR_ROLE, "", KEY, 0)


def test_stake_changes_revert(system: System, provider: str) -> None:
    with boa.env.prank(STRANGER.address), boa.reverts("registry: not registered"):
        system.registry.add_stake(1)
    with boa.env.prank(provider), boa.reverts("registry: zero amount"):
        system.registry.add_stake(0)
    with boa.env.prank(STRANGER.address), boa.reverts("registry: not registered"):
        system.registry.unbond(1)
    with boa.env.prank(provider), boa.reverts("registry: zero amount"):
        system.registry.unbond(0)
    with boa.env.prank(provider), boa.reverts("registry: unbond above stake"):
        system.registry.unbond(2_000 * ALM + 1)


def test_withdraw_reverts(system: System, provider: str) -> None:
    with boa.env.prank(provider), boa.reverts("registry: nothing unbonding"):
        system.registry.withdraw()
    with boa.env.prank(provider):
        system.registry.unbond(1)
    with boa.env.prank(provider), boa.reverts("registry: still unbonding"):
        system.registry.withdraw()


def test_offer_reverts(system: System, provider: str) -> None:
    with boa.env.prank(STRANGER.address), boa.reverts("registry: not a provider"):
        system.registry.set_offer(MODEL, 1, 1)
    with boa.env.prank(provider), boa.reverts("registry: empty model id"):
        system.registry.set_offer(b"\x00" * 32, 1, 1)
    with boa.env.prank(STRANGER.address), boa.reverts("registry: no such offer"):
        system.registry.remove_offer(MODEL)
    with boa.env.prank(provider):
        for i in range(31):
            system.registry.set_offer(keccak(text=f"m{i}"), 1, 1)
    with boa.env.prank(provider), boa.reverts("registry: too many models"):
        system.registry.set_offer(keccak(text="one-too-many"), 1, 1)


def test_providers_of_page_limit(system: System) -> None:
    with boa.reverts("registry: page too large"):
        system.registry.providers_of(MODEL, 0, 101)


def test_slash_reverts(system: System, provider: str) -> None:
    with boa.env.prank(STRANGER.address), boa.reverts("registry: not verdicts"):
        system.registry.slash(provider, 1, STRANGER.address)
    with boa.env.prank(system.verdicts), boa.reverts("registry: zero beneficiary"):
        system.registry.slash(provider, 1, "0x" + "00" * 20)
    with boa.env.prank(system.verdicts), boa.reverts("registry: nothing to slash"):
        system.registry.slash(STRANGER.address, 1, STRANGER.address)


def test_admin_calls_revert_for_others(system: System, provider: str) -> None:
    with boa.env.prank(STRANGER.address), boa.reverts("registry: not verdicts"):
        system.registry.set_paused(provider, True)
    with boa.env.prank(system.verdicts), boa.reverts("ownable: caller is not the owner"):
        system.registry.set_paused(provider, False)
    with boa.env.prank(STRANGER.address), boa.reverts("ownable: caller is not the owner"):
        system.registry.set_verdicts(STRANGER.address)


def test_receipt_signer_rejects_malformed_signature(system: System) -> None:
    receipt = Receipt(b"\x01" * 32, MODEL, PROVIDER.address, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, 1, 1, 1, 1)
    with boa.reverts("ecdsa: invalid signature"):
        system.registry.receipt_signer(receipt.as_tuple(), b"\x00" * 65)
