"""Channels' cheaper session lifecycle (#31): a relay's redeem that funds its own channel in the
same transaction (`fund_into`), a cooperative close (`release`: the provider gives the channel
up and its payer's rest goes back at once), and a channel that has paid nothing but a relay
keeping no zero-model slot. The adversary: a relay that funds a channel not its own, someone
not the provider releasing, a payer or provider who mixes zero-model and model vouchers on one
channel to be paid twice."""

from __future__ import annotations

import boa
import pytest

from allmende.core import RELAY_MODEL, Voucher, sign_voucher, split_increment
from allmende.testing.inprocess import register_model
from tests.contracts.conftest import USD, System, actor

AGENT, GATEWAY, PROVIDER, STRANGER, OWNER = (
    actor(f"coop-{name}") for name in ("agent", "gateway", "provider", "stranger", "owner")
)
MODEL = b"\x62" * 32


def voucher(system: System, payer, channel: bytes, model: bytes, cumulative: int) -> tuple:
    return sign_voucher(Voucher(channel, model, cumulative), system.voucher_domain, payer.key).as_tuple()


def open_channel(system: System, payer, payee, amount: int) -> bytes:
    with boa.env.prank(payer.address):
        return system.channels.open(payee.address, amount)


@pytest.fixture
def session(system: System) -> bytes:
    """The agent's session channel to the gateway (10 dUSD)."""
    system.fund(AGENT.address, usd=100 * USD)
    system.fund(GATEWAY.address, usd=100 * USD)
    with boa.env.prank(OWNER.address):
        register_model(system.models, MODEL, "MIT", 0)
    return open_channel(system, AGENT, GATEWAY, 10 * USD)


def test_a_relayed_redeem_funds_the_relays_own_channel_up_to_its_most(system: System, session: bytes) -> None:
    """What `redeem` then `fund` would do, in one transaction: up to `fund_most` into the
    gateway's provider channel (counted as relayed), the rest into its relay balance."""
    own = open_channel(system, GATEWAY, PROVIDER, USD)
    with boa.env.prank(GATEWAY.address):
        paid = system.channels.redeem([voucher(system, AGENT, session, RELAY_MODEL, 3 * USD)], own, 2 * USD, False)
    assert paid == 3 * USD
    assert system.channels.channel(own).deposit == 3 * USD  # 1 of tokens + 2 relayed
    assert system.channels.relayed(own) == 2 * USD
    assert system.channels.relay_balance(GATEWAY.address) == USD
    assert system.channels.channel(session).spent == 3 * USD
    # the rest is funded later as always; all of the next redeem goes in when it fits
    with boa.env.prank(GATEWAY.address):
        system.channels.redeem([voucher(system, AGENT, session, RELAY_MODEL, 4 * USD)], own, 10 * USD, False)
    assert system.channels.relayed(own) == 3 * USD
    assert system.channels.relay_balance(GATEWAY.address) == USD


def test_fund_into_only_the_relays_own_open_channel(system: System, session: bytes) -> None:
    other = open_channel(system, AGENT, PROVIDER, USD)  # the agent's, not the gateway's
    own = open_channel(system, GATEWAY, PROVIDER, USD)
    batch = [voucher(system, AGENT, session, RELAY_MODEL, USD)]
    with boa.reverts("channels: not payer"), boa.env.prank(GATEWAY.address):
        system.channels.redeem(batch, other, USD, False)
    with boa.reverts("channels: not payer"), boa.env.prank(GATEWAY.address):
        system.channels.redeem(batch, session, USD, False)  # the very channel it redeems
    with boa.env.prank(GATEWAY.address):
        system.channels.request_close(own)
    with boa.reverts("channels: closing"), boa.env.prank(GATEWAY.address):
        system.channels.redeem(batch, own, USD, False)
    assert system.channels.channel(session).spent == 0  # every refused batch undone whole
    assert system.channels.relay_balance(GATEWAY.address) == 0


def test_a_cooperative_close_redeems_releases_and_refunds_in_one_transaction(system: System, session: bytes) -> None:
    own = open_channel(system, GATEWAY, PROVIDER, USD)
    wallet = system.stable.balanceOf(AGENT.address)
    with boa.env.prank(GATEWAY.address):
        system.channels.redeem([voucher(system, AGENT, session, RELAY_MODEL, 1_234_567)], own, 2**255, True)
    record = system.channels.channel(session)
    assert record.closes_at == boa.env.evm.patch.timestamp  # closed now, no delay
    assert record.spent == record.deposit == 1_234_567  # the rest left
    assert system.stable.balanceOf(AGENT.address) - wallet == 10 * USD - 1_234_567  # at once, to the payer
    assert system.channels.relayed(own) == 1_234_567
    with boa.reverts("channels: channel closed"), boa.env.prank(GATEWAY.address):
        system.channels.redeem([voucher(system, AGENT, session, RELAY_MODEL, 2 * USD)])
    with boa.reverts("channels: nothing to withdraw"), boa.env.prank(AGENT.address):
        system.channels.withdraw(session)


def test_only_the_provider_releases_by_redeem(system: System, session: bytes) -> None:
    batch = [voucher(system, AGENT, session, RELAY_MODEL, USD)]
    for who in (AGENT, STRANGER):
        with boa.reverts("channels: not provider"), boa.env.prank(who.address):
            system.channels.redeem(batch, b"\x00" * 32, 0, True)
    assert system.channels.channel(session).closes_at == 0
    assert system.channels.channel(session).deposit == 10 * USD


def test_a_released_relay_funded_channel_returns_its_relayed_rest_to_the_relay(system: System, session: bytes) -> None:
    """The gateway's provider channel, funded from the relay, given up by its provider with a
    cooperative close: its unspent relayed part goes back to the relay balance (its fee still
    owed), never out as tokens; its own tokens come back as tokens."""
    system.params.set("protocol_fee_bps", 100)
    own = open_channel(system, GATEWAY, PROVIDER, 2 * USD)
    with boa.env.prank(GATEWAY.address):
        system.channels.redeem([voucher(system, AGENT, session, RELAY_MODEL, USD)], own, USD, False)
    tokens = system.stable.balanceOf(GATEWAY.address)
    with boa.env.prank(PROVIDER.address):
        system.channels.redeem([voucher(system, GATEWAY, own, MODEL, 400_000)], b"\x00" * 32, 0, True)
    assert system.stable.balanceOf(GATEWAY.address) - tokens == 2 * USD
    assert system.channels.relay_balance(GATEWAY.address) == 600_000
    assert system.channels.earnings(system.treasury) == split_increment(0, 400_000, 0, 100).protocol_fee


def test_two_vouchers_of_one_channel_released_once(system: System, session: bytes) -> None:
    own = open_channel(system, GATEWAY, PROVIDER, 3 * USD)
    wallet = system.stable.balanceOf(GATEWAY.address)
    batch = [voucher(system, GATEWAY, own, MODEL, 500_000), voucher(system, GATEWAY, own, RELAY_MODEL, 250_000)]
    with boa.env.prank(PROVIDER.address):
        assert system.channels.redeem(batch, b"\x00" * 32, 0, True) == 750_000
    assert system.stable.balanceOf(GATEWAY.address) - wallet == 3 * USD - 750_000  # refunded once


def test_zero_model_redeems_stay_exact_when_a_channel_mixes_models(system: System, session: bytes) -> None:
    """A channel that paid a relay (no zero-model slot: its spent is the zero model's
    redeemed) and then a model: the zero model's redeemed starts at what it had spent, so a
    later zero-model voucher pays its increase and no more, and an old one pays nothing."""
    own = open_channel(system, GATEWAY, PROVIDER, 5 * USD)

    def redeem(model: bytes, cumulative: int) -> int:
        with boa.env.prank(PROVIDER.address):
            return system.channels.redeem([voucher(system, GATEWAY, own, model, cumulative)])

    assert redeem(RELAY_MODEL, 1_000) == 1_000
    assert system.channels.redeemed(own, RELAY_MODEL) == 1_000
    assert redeem(MODEL, 500) == 500  # spent 1,500: the zero model's part stays 1,000
    assert system.channels.redeemed(own, RELAY_MODEL) == 1_000
    assert system.channels.redeemed(own, MODEL) == 500
    with boa.reverts("channels: voucher not above last"):
        redeem(RELAY_MODEL, 1_000)  # paid once already
    assert redeem(RELAY_MODEL, 1_200) == 200  # not 1,200 (a slot from zero), not refused (spent)
    assert redeem(MODEL, 700) == 200
    assert system.channels.redeemed(own, RELAY_MODEL) == 1_200
    assert system.channels.channel(own).spent == 1_900
    assert system.channels.relay_balance(PROVIDER.address) == 1_200


def test_a_redeem_takes_64_vouchers_and_pays_no_memory_for_256(system: System, session: bytes) -> None:
    """Channels.redeem takes at most 64 vouchers (core REDEEM_BATCH; more go in several
    transactions): at 256 every redeem, even of one voucher, paid ~11,700 gas of memory
    expansion (Vyper lays the locals out after the largest argument)."""
    with boa.env.prank(GATEWAY.address):
        system.channels.redeem([voucher(system, AGENT, session, RELAY_MODEL, 1)])
        system.channels.redeem([voucher(system, AGENT, session, RELAY_MODEL, 2)])
        one = system.channels._computation.get_gas_used()
    assert one < 12_000, one  # 21,553 with room for 256 vouchers; ~9,900 now
    agents = [actor(f"coop-batch-{i}") for i in range(65)]
    batch = []
    for payer in agents:
        system.fund(payer.address, usd=USD)
        batch.append(voucher(system, payer, open_channel(system, payer, GATEWAY, USD), RELAY_MODEL, 10))
    with boa.reverts(), boa.env.prank(GATEWAY.address):
        system.channels.redeem(batch)
    with boa.env.prank(GATEWAY.address):
        assert system.channels.redeem(batch[:64]) == 640
