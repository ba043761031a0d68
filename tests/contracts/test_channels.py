"""Channels: opening, paying by voucher, splitting, closing — and every revert path."""

from __future__ import annotations

import boa
import pytest
from eth_utils import keccak

from allmende.core import Domain, Voucher, effective_royalty_bps, sign_voucher, split_payment
from allmende.testing.inprocess import register_model
from tests.contracts.conftest import USD, System, actor

MODEL = keccak(text="model-a")
OTHER_MODEL = keccak(text="model-b")
PAYER = actor("payer")
PROVIDER = actor("provider")
OWNER = actor("model-owner")
STRANGER = actor("stranger")


@pytest.fixture
def channel(system: System) -> bytes:
    """A 100 dUSD channel PAYER → PROVIDER, and MODEL registered with a 10 % royalty."""
    system.fund(PAYER.address, usd=1_000 * USD)
    with boa.env.prank(OWNER.address):
        register_model(system.models, MODEL, "Apache-2.0", 1000, [], [], "ipfs://card")
    with boa.env.prank(PAYER.address):
        return system.channels.open(PROVIDER.address, 100 * USD)


def voucher(
    system: System,
    channel_id: bytes,
    cumulative: int,
    model: bytes = MODEL,
    signer=PAYER,
    domain: Domain | None = None,
) -> tuple:
    signed = sign_voucher(Voucher(channel_id, model, cumulative), domain or system.voucher_domain, signer.key)
    return signed.as_tuple()


def redeem(system: System, vouchers: list[tuple], sender: str = PROVIDER.address) -> int:
    with boa.env.prank(sender):
        return system.channels.redeem(vouchers)


# ---------------------------------------------------------------- happy paths


def test_open_pulls_deposit_and_records_parties(system: System, channel: bytes) -> None:
    state = system.channels.channel(channel)

    assert (state.payer, state.provider) == (PAYER.address, PROVIDER.address)
    assert (state.deposit, state.spent, state.closes_at) == (100 * USD, 0, 0)
    assert system.stable.balanceOf(system.channels.address) == 100 * USD
    assert system.stable.balanceOf(PAYER.address) == 900 * USD


def test_python_signed_voucher_redeems_and_splits(system: System, channel: bytes) -> None:
    paid = redeem(system, [voucher(system, channel, 12_345_678)])

    split = split_payment(12_345_678, 1000, 100)
    assert paid == 12_345_678
    assert system.channels.earnings(OWNER.address) == split.royalty == 1_234_567
    assert system.channels.earnings(system.treasury) == split.protocol_fee == 123_456
    assert system.channels.earnings(PROVIDER.address) == split.provider
    assert system.channels.channel(channel).spent == 12_345_678


def test_second_voucher_pays_only_the_increase(system: System, channel: bytes) -> None:
    redeem(system, [voucher(system, channel, 5 * USD)])

    paid = redeem(system, [voucher(system, channel, 7 * USD)])

    assert paid == 2 * USD
    assert system.channels.redeemed(channel, MODEL) == 7 * USD
    assert system.channels.channel(channel).spent == 7 * USD


def test_cumulatives_are_per_model(system: System, channel: bytes) -> None:
    paid = redeem(system, [voucher(system, channel, 3 * USD), voucher(system, channel, 4 * USD, OTHER_MODEL)])

    assert paid == 7 * USD
    # OTHER_MODEL is unregistered: no royalty for it
    assert system.channels.earnings(OWNER.address) == 3 * USD // 10
    assert system.channels.channel(channel).spent == 7 * USD


def test_one_redeem_covers_many_channels(system: System, channel: bytes) -> None:
    with boa.env.prank(PAYER.address):
        second = system.channels.open(PROVIDER.address, 10 * USD)

    paid = redeem(system, [voucher(system, channel, 1 * USD), voucher(system, second, 2 * USD)])

    assert paid == 3 * USD
    assert system.channels.channel(second).spent == 2 * USD


def test_withdraw_earnings_moves_tokens(system: System, channel: bytes) -> None:
    redeem(system, [voucher(system, channel, 10 * USD)])

    with boa.env.prank(PROVIDER.address):
        got = system.channels.withdraw_earnings()

    assert got == system.stable.balanceOf(PROVIDER.address) == split_payment(10 * USD, 1000, 100).provider
    assert system.channels.earnings(PROVIDER.address) == 0


def test_close_then_withdraw_refunds_the_rest(system: System, channel: bytes) -> None:
    redeem(system, [voucher(system, channel, 30 * USD)])
    with boa.env.prank(PAYER.address):
        closes_at = system.channels.request_close(channel)
    boa.env.time_travel(seconds=system.params.get("channel_close_delay"))

    with boa.env.prank(PAYER.address):
        refund = system.channels.withdraw(channel)

    assert closes_at == system.channels.channel(channel).closes_at
    assert refund == 70 * USD
    assert system.stable.balanceOf(PAYER.address) == 970 * USD


def test_provider_can_redeem_until_the_close_delay_ends(system: System, channel: bytes) -> None:
    with boa.env.prank(PAYER.address):
        system.channels.request_close(channel)
    boa.env.time_travel(seconds=system.params.get("channel_close_delay") - 10)

    assert redeem(system, [voucher(system, channel, 1 * USD)]) == 1 * USD


def test_top_up_raises_deposit(system: System, channel: bytes) -> None:
    with boa.env.prank(PAYER.address):
        system.channels.top_up(channel, 5 * USD)

    assert system.channels.channel(channel).deposit == 105 * USD
    assert redeem(system, [voucher(system, channel, 105 * USD)]) == 105 * USD


def test_royalty_is_capped_by_current_params(system: System, channel: bytes) -> None:
    system.params.set("royalty_cap_bps", 500)  # lowered after MODEL registered with 1000

    redeem(system, [voucher(system, channel, 10 * USD)])

    bps = effective_royalty_bps(1000, 500, 100)
    assert system.channels.earnings(OWNER.address) == split_payment(10 * USD, bps, 100).royalty == USD // 2


def test_voucher_digest_matches_python(system: System, channel: bytes) -> None:
    v = Voucher(channel, MODEL, 42)

    assert system.channels.voucher_digest(channel, MODEL, 42) == v.digest(system.voucher_domain)


# --------------------------------------------------------------- revert paths


@pytest.mark.parametrize(
    ("provider", "amount", "reason"),
    [
        ("zero", 1, "channels: zero provider"),
        ("self", 1, "channels: payer is provider"),
        ("provider", 0, "channels: zero amount"),
        ("provider", 2**128, "channels: amount overflow"),
    ],
    ids=["zero-provider", "payer-is-provider", "zero-amount", "overflow"],
)
def test_open_reverts(system: System, provider: str, amount: int, reason: str) -> None:
    system.fund(PAYER.address, usd=10 * USD)
    to = {"zero": "0x" + "00" * 20, "self": PAYER.address, "provider": PROVIDER.address}[provider]
    with boa.env.prank(PAYER.address), boa.reverts(reason):
        system.channels.open(to, amount)


def test_open_without_allowance_reverts(system: System) -> None:
    with boa.env.prank(STRANGER.address), boa.reverts("erc20: insufficient allowance"):
        system.channels.open(PROVIDER.address, 1)


def test_top_up_reverts(system: System, channel: bytes) -> None:
    with boa.env.prank(STRANGER.address), boa.reverts("channels: not payer"):
        system.channels.top_up(channel, 1)
    with boa.env.prank(PAYER.address), boa.reverts("channels: zero amount"):
        system.channels.top_up(channel, 0)
    with boa.env.prank(PAYER.address), boa.reverts("channels: amount overflow"):
        system.channels.top_up(channel, 2**128 - 100 * USD)
    with boa.env.prank(PAYER.address):
        system.channels.request_close(channel)
    with boa.env.prank(PAYER.address), boa.reverts("channels: closing"):
        system.channels.top_up(channel, 1)


def test_request_close_reverts(system: System, channel: bytes) -> None:
    with boa.reverts("channels: unknown channel"):
        system.channels.request_close(b"\x01" * 32)
    with boa.env.prank(PROVIDER.address), boa.reverts("channels: not payer"):
        system.channels.request_close(channel)
    with boa.env.prank(PAYER.address):
        system.channels.request_close(channel)
    with boa.env.prank(PAYER.address), boa.reverts("channels: closing"):
        system.channels.request_close(channel)


def test_withdraw_reverts(system: System, channel: bytes) -> None:
    with boa.reverts("channels: unknown channel"):
        system.channels.withdraw(b"\x01" * 32)
    with boa.env.prank(STRANGER.address), boa.reverts("channels: not payer"):
        system.channels.withdraw(channel)
    with boa.env.prank(PAYER.address), boa.reverts("channels: close not requested"):
        system.channels.withdraw(channel)
    with boa.env.prank(PAYER.address):
        system.channels.request_close(channel)
    with boa.env.prank(PAYER.address), boa.reverts("channels: not closed yet"):
        system.channels.withdraw(channel)
    boa.env.time_travel(seconds=system.params.get("channel_close_delay"))
    with boa.env.prank(PAYER.address):
        system.channels.withdraw(channel)
    with boa.env.prank(PAYER.address), boa.reverts("channels: nothing to withdraw"):
        system.channels.withdraw(channel)


def test_redeem_refuses_unknown_channel(system: System, channel: bytes) -> None:
    with boa.reverts("channels: unknown channel"):
        redeem(system, [voucher(system, b"\x02" * 32, 1)])


def test_redeem_refuses_other_provider(system: System, channel: bytes) -> None:
    with boa.reverts("channels: not provider"):
        redeem(system, [voucher(system, channel, 1)], sender=STRANGER.address)


def test_redeem_refuses_after_close(system: System, channel: bytes) -> None:
    with boa.env.prank(PAYER.address):
        system.channels.request_close(channel)
    boa.env.time_travel(seconds=system.params.get("channel_close_delay"))
    with boa.reverts("channels: channel closed"):
        redeem(system, [voucher(system, channel, 1)])


@pytest.mark.parametrize("second", [5 * USD, 5 * USD - 1], ids=["equal", "lower"])
def test_redeem_refuses_voucher_not_above_last(system: System, channel: bytes, second: int) -> None:
    redeem(system, [voucher(system, channel, 5 * USD)])
    with boa.reverts("channels: voucher not above last"):
        redeem(system, [voucher(system, channel, second)])


def test_redeem_refuses_zero_cumulative(system: System, channel: bytes) -> None:
    with boa.reverts("channels: voucher not above last"):
        redeem(system, [voucher(system, channel, 0)])


def test_redeem_refuses_over_deposit(system: System, channel: bytes) -> None:
    with boa.reverts("channels: over deposit"):
        redeem(system, [voucher(system, channel, 100 * USD + 1)])


def test_redeem_refuses_over_deposit_across_models(system: System, channel: bytes) -> None:
    with boa.reverts("channels: over deposit"):
        redeem(system, [voucher(system, channel, 60 * USD), voucher(system, channel, 41 * USD, OTHER_MODEL)])


def test_redeem_refuses_other_signer(system: System, channel: bytes) -> None:
    with boa.reverts("channels: bad signature"):
        redeem(system, [voucher(system, channel, 1, signer=STRANGER)])


def test_redeem_refuses_other_chain_id(system: System, channel: bytes) -> None:
    wrong = Domain(system.voucher_domain.chain_id + 1, system.channels.address)
    with boa.reverts("channels: bad signature"):
        redeem(system, [voucher(system, channel, 1, domain=wrong)])


def test_redeem_refuses_other_contract(system: System, channel: bytes) -> None:
    wrong = Domain(system.voucher_domain.chain_id, system.registry.address)
    with boa.reverts("channels: bad signature"):
        redeem(system, [voucher(system, channel, 1, domain=wrong)])


def test_redeem_refuses_tampered_amount(system: System, channel: bytes) -> None:
    channel_id, model, _, signature = voucher(system, channel, 1 * USD)
    with boa.reverts("channels: bad signature"):
        redeem(system, [(channel_id, model, 2 * USD, signature)])


def test_redeem_refuses_malformed_signature(system: System, channel: bytes) -> None:
    with boa.reverts("ecdsa: invalid signature"):
        redeem(system, [(channel, MODEL, 1, b"\x00" * 65)])


def test_bad_voucher_reverts_the_whole_batch(system: System, channel: bytes) -> None:
    with boa.reverts("channels: bad signature"):
        redeem(system, [voucher(system, channel, 1 * USD), voucher(system, channel, 2, OTHER_MODEL, STRANGER)])
    assert system.channels.channel(channel).spent == 0


def test_withdraw_earnings_reverts_without_earnings(system: System) -> None:
    with boa.env.prank(STRANGER.address), boa.reverts("channels: no earnings"):
        system.channels.withdraw_earnings()


def test_set_treasury_is_owner_only(system: System) -> None:
    with boa.env.prank(STRANGER.address), boa.reverts("ownable: caller is not the owner"):
        system.channels.set_treasury(STRANGER.address)
    with boa.reverts("channels: zero treasury"):
        system.channels.set_treasury("0x" + "00" * 20)
    system.channels.set_treasury(STRANGER.address)
    assert system.channels.treasury() == STRANGER.address
