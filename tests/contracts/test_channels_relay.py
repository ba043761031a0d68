"""Channels' relayed payments (x402 sessions): a zero-model voucher pays a relay (a gateway)
with no fee and no royalty, into a balance it can only spend on its own channels (`fund`)
or take out as tokens paying the fee (`withdraw_relay`), so a payment through a gateway
pays the protocol fee exactly once, as one straight to a provider does. The adversary: a
gateway that tries to take relayed money out without the fee (straight, through a channel
it funds and closes, through a sockpuppet, in small pieces)."""

from __future__ import annotations

import boa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allmende.core import RELAY_MODEL, Voucher, relay_withdrawal_fee, sign_voucher, split_increment
from allmende.testing.inprocess import register_model
from tests.contracts.conftest import USD, System, actor

AGENT, GATEWAY, PROVIDER, PUPPET, OWNER = (
    actor(f"relay-{name}") for name in ("agent", "gateway", "provider", "puppet", "owner")
)
MODEL = b"\x61" * 32
ROYALTY_BPS = 500


def pay(system: System, payer, channel: bytes, model: bytes, cumulative: int, redeemer) -> int:
    signed = sign_voucher(Voucher(channel, model, cumulative), system.voucher_domain, payer.key)
    with boa.env.prank(redeemer.address):
        return system.channels.redeem([signed.as_tuple()])


def open_channel(system: System, payer, payee, amount: int) -> bytes:
    with boa.env.prank(payer.address):
        return system.channels.open(payee.address, amount)


@pytest.fixture
def session(system: System) -> bytes:
    """The agent's session channel to the gateway (10 dUSD), MODEL registered with a royalty."""
    system.fund(AGENT.address, usd=100 * USD)
    system.fund(GATEWAY.address, usd=100 * USD)
    with boa.env.prank(OWNER.address):
        register_model(system.models, MODEL, "MIT", ROYALTY_BPS)
    return open_channel(system, AGENT, GATEWAY, 10 * USD)


def balances(system: System) -> dict[str, int]:
    return {
        "treasury": system.channels.earnings(system.treasury),
        "gateway_earnings": system.channels.earnings(GATEWAY.address),
        "gateway_relay": system.channels.relay_balance(GATEWAY.address),
    }


def test_a_relayed_redeem_pays_no_fee_into_the_relay_balance(system: System, session: bytes) -> None:
    before = balances(system)
    assert pay(system, AGENT, session, RELAY_MODEL, 1_234_567, GATEWAY) == 1_234_567
    after = balances(system)
    assert after["treasury"] == before["treasury"]  # no fee on this hop
    assert after["gateway_earnings"] == before["gateway_earnings"]  # nothing withdrawable as earnings
    assert after["gateway_relay"] == 1_234_567
    assert system.channels.channel(session).spent == 1_234_567


def test_session_paid_to_a_provider_pays_the_fee_once(system: System, session: bytes) -> None:
    """The x402 session path end to end on the contract: agent → gateway (relayed), gateway →
    provider (funded from the relay): the treasury gets what a direct payment pays it, the
    provider and the model owner their shares of it, the gateway keeps nothing and loses
    nothing, and its token deposit comes back whole."""
    receipts = 3_000_001
    fee_bps = system.params.get("protocol_fee_bps")
    provider_channel = open_channel(system, GATEWAY, PROVIDER, 5 * USD)  # the gateway's own tokens
    gateway_tokens = system.stable.balanceOf(GATEWAY.address)
    treasury = system.channels.earnings(system.treasury)
    pay(system, GATEWAY, provider_channel, MODEL, receipts, PROVIDER)  # the gateway pays first
    pay(system, AGENT, session, RELAY_MODEL, receipts, GATEWAY)  # the session's voucher, later
    with boa.env.prank(GATEWAY.address):
        system.channels.fund(provider_channel, receipts)  # the relay backs what it paid
        system.channels.request_close(provider_channel)
    boa.env.time_travel(seconds=system.params.get("channel_close_delay"))
    with boa.env.prank(GATEWAY.address):
        system.channels.withdraw(provider_channel)
    split = split_increment(0, receipts, ROYALTY_BPS, fee_bps)
    assert system.channels.earnings(system.treasury) - treasury == split.protocol_fee == receipts * fee_bps // 10_000
    assert system.channels.earnings(PROVIDER.address) == split.provider
    assert system.channels.earnings(OWNER.address) == split.royalty
    assert system.stable.balanceOf(GATEWAY.address) - gateway_tokens == 5 * USD  # all its tokens back
    assert system.channels.relay_balance(GATEWAY.address) == 0


def test_withdrawing_the_relay_takes_the_fee(system: System, session: bytes) -> None:
    fee_bps = system.params.get("protocol_fee_bps")
    pay(system, AGENT, session, RELAY_MODEL, 2_000_000, GATEWAY)
    tokens, treasury = system.stable.balanceOf(GATEWAY.address), system.channels.earnings(system.treasury)
    with boa.env.prank(GATEWAY.address):
        sent = system.channels.withdraw_relay()
    fee = relay_withdrawal_fee(0, 2_000_000, fee_bps)
    assert fee == 2_000_000 * fee_bps // 10_000 > 0
    assert sent == 2_000_000 - fee
    assert system.stable.balanceOf(GATEWAY.address) - tokens == sent
    assert system.channels.earnings(system.treasury) - treasury == fee
    assert system.channels.relay_balance(GATEWAY.address) == 0
    assert system.channels.relay_withdrawn(GATEWAY.address) == 2_000_000
    with boa.reverts("channels: no relay balance"), boa.env.prank(GATEWAY.address):
        system.channels.withdraw_relay()


def test_withdrawing_in_small_pieces_saves_no_fee(system: System, session: bytes) -> None:
    """99 units at 1 % round to no fee; the cumulative rounding charges it on the next piece."""
    system.params.set("protocol_fee_bps", 100)
    treasury = system.channels.earnings(system.treasury)
    cumulative, sent = 0, 0
    for piece in (99, 99, 99, 3):
        cumulative += piece
        pay(system, AGENT, session, RELAY_MODEL, cumulative, GATEWAY)
        with boa.env.prank(GATEWAY.address):
            sent += system.channels.withdraw_relay()
    assert system.channels.earnings(system.treasury) - treasury == 3 == 300 * 100 // 10_000
    assert sent == 297


def test_a_funded_channel_closed_unspent_returns_to_the_relay_not_as_tokens(system: System, session: bytes) -> None:
    pay(system, AGENT, session, RELAY_MODEL, 1_000_000, GATEWAY)
    channel = open_channel(system, GATEWAY, PUPPET, 2 * USD)  # 2 dUSD of tokens
    with boa.env.prank(GATEWAY.address):
        system.channels.fund(channel, 1_000_000)
        system.channels.request_close(channel)
    assert system.channels.channel(channel).deposit == 3 * USD
    assert system.channels.relayed(channel) == 1_000_000
    pay(system, GATEWAY, channel, MODEL, 400_000, PUPPET)  # 0.4 spent: counts against the relayed part
    boa.env.time_travel(seconds=system.params.get("channel_close_delay"))
    tokens = system.stable.balanceOf(GATEWAY.address)
    with boa.env.prank(GATEWAY.address):
        assert system.channels.withdraw(channel) == 3 * USD - 400_000
    assert system.stable.balanceOf(GATEWAY.address) - tokens == 2 * USD  # only its own tokens
    assert system.channels.relay_balance(GATEWAY.address) == 600_000  # the fee on it still owed


def test_a_sockpuppet_gets_relayed_money_only_as_relay(system: System, session: bytes) -> None:
    """The gateway funds a channel to an account of its own and pays it zero-model vouchers:
    the money stays fee-deferred there."""
    fee_bps = system.params.get("protocol_fee_bps")
    pay(system, AGENT, session, RELAY_MODEL, 1_000_000, GATEWAY)
    channel = open_channel(system, GATEWAY, PUPPET, 1)
    with boa.env.prank(GATEWAY.address):
        system.channels.fund(channel, 1_000_000)
    pay(system, GATEWAY, channel, RELAY_MODEL, 1_000_001, PUPPET)
    assert system.channels.earnings(PUPPET.address) == 0
    assert system.channels.relay_balance(PUPPET.address) == 1_000_001
    with boa.env.prank(PUPPET.address):
        assert system.channels.withdraw_relay() == 1_000_001 - relay_withdrawal_fee(0, 1_000_001, fee_bps)


def test_fund_reverts(system: System, session: bytes) -> None:
    pay(system, AGENT, session, RELAY_MODEL, 1_000, GATEWAY)
    own = open_channel(system, GATEWAY, PROVIDER, 1)
    with boa.reverts("channels: over relay balance"), boa.env.prank(GATEWAY.address):
        system.channels.fund(own, 1_001)
    with boa.reverts("channels: not payer"), boa.env.prank(GATEWAY.address):
        system.channels.fund(session, 1)  # the agent's channel: not the gateway's to fund
    with boa.reverts("channels: zero amount"), boa.env.prank(GATEWAY.address):
        system.channels.fund(own, 0)
    with boa.env.prank(GATEWAY.address):
        system.channels.request_close(own)
    with boa.reverts("channels: closing"), boa.env.prank(GATEWAY.address):
        system.channels.fund(own, 1)
    assert system.channels.relay_balance(GATEWAY.address) == 1_000


def test_a_released_channel_returns_the_rest_to_its_payer_at_once(system: System, session: bytes) -> None:
    """An expired session: the gateway redeems what it holds, releases the channel and sends
    the agent the rest, with no transaction of the agent's and no close delay."""
    pay(system, AGENT, session, RELAY_MODEL, 700_000, GATEWAY)
    wallet = system.stable.balanceOf(AGENT.address)
    with boa.env.prank(GATEWAY.address):
        system.channels.release(session)
        assert system.channels.withdraw(session) == 10 * USD - 700_000
    assert system.stable.balanceOf(AGENT.address) - wallet == 10 * USD - 700_000
    assert system.channels.channel(session).closes_at > 0
    with boa.reverts("channels: channel closed"):
        pay(system, AGENT, session, RELAY_MODEL, 800_000, GATEWAY)  # nothing more to redeem after it
    with boa.reverts("channels: nothing to withdraw"), boa.env.prank(AGENT.address):
        system.channels.withdraw(session)


def test_release_and_withdraw_by_others_revert(system: System, session: bytes) -> None:
    for who in (AGENT, PUPPET):  # only the provider releases
        with boa.reverts("channels: not provider"), boa.env.prank(who.address):
            system.channels.release(session)
    with boa.env.prank(GATEWAY.address):
        system.channels.release(session)
    with boa.reverts("channels: not payer"), boa.env.prank(PUPPET.address):
        system.channels.withdraw(session)  # a stranger cannot move it, even to the payer
    with boa.reverts("channels: channel closed"), boa.env.prank(GATEWAY.address):
        system.channels.release(session)
    assert system.channels.channel(session).deposit == 10 * USD  # still all there, the payer's


# ------------------------------------------------------- property: fee once, value conserved

ACTION = st.one_of(
    # the agent pays the gateway more; its redeem funds the gateway's channel i up to a most (-1: none)
    st.tuples(st.just("session"), st.integers(1, 3 * USD), st.integers(-1, 2), st.integers(0, 3 * USD)),
    st.tuples(st.just("fund"), st.integers(0, 2), st.integers(1, 3 * USD)),  # relay → channel i
    st.tuples(st.just("pay"), st.integers(0, 2), st.integers(1, 2 * USD), st.booleans()),  # channel i pays (relayed?)
    st.tuples(st.just("withdraw_relay"), st.sampled_from(["gateway", "puppet"])),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(ACTION, min_size=1, max_size=14), fee_bps=st.integers(0, 500))
def test_whatever_the_gateway_does_the_fee_is_paid_once_and_no_unit_is_lost(
    system_module: System, actions: list[tuple], fee_bps: int
) -> None:
    """A gateway with three channels of its own (to a provider, to a sockpuppet, to the
    provider again), funded with tokens and from its relay balance in any order, pays them
    real-model or zero-model vouchers, withdraws relay balances whenever; at the end every
    channel closes and everybody takes everything out (the session's redeems sometimes funding a
    gateway channel in the same transaction). Then: Channels holds nothing that is
    not accounted for at every step (unspent deposits + earnings + relay balances), the
    treasury got exactly the Python mirror's fee, and the fee is never less than what the
    agent's payments owe, less one unit per place it was rounded."""
    system = system_module
    system.params.set("protocol_fee_bps", fee_bps)
    system.params.set("royalty_cap_bps", 1_000)
    for who in (AGENT, GATEWAY):
        system.fund(who.address, usd=1_000 * USD)
    with boa.env.prank(OWNER.address):
        register_model(system.models, MODEL, "MIT", ROYALTY_BPS)
    channels = system.channels
    start = system.stable.balanceOf(channels.address)
    session = open_channel(system, AGENT, GATEWAY, 100 * USD)
    payees = [PROVIDER, PUPPET, PROVIDER]
    own = [open_channel(system, GATEWAY, payee, USD) for payee in payees]
    agent_paid = 0
    cumulative = {(c, m): 0 for c in own for m in (MODEL, RELAY_MODEL)}
    withdrawn = {GATEWAY.address: 0, PUPPET.address: 0}
    fee = 0  # the Python mirror of what the treasury gets
    every = [session, *own]
    relay_holders = [GATEWAY.address, PUPPET.address, PROVIDER.address]
    earners = [GATEWAY.address, PUPPET.address, PROVIDER.address, OWNER.address, system.treasury]

    def held() -> int:
        unspent = sum(channels.channel(c).deposit - channels.channel(c).spent for c in every)
        return (
            unspent + sum(channels.earnings(a) for a in earners) + sum(channels.relay_balance(a) for a in relay_holders)
        )

    for action in actions:
        if action[0] == "session":
            agent_paid += action[1]
            if action[2] < 0:
                pay(system, AGENT, session, RELAY_MODEL, agent_paid, GATEWAY)
            else:  # redeemed and funded into the gateway's channel in one transaction (#31)
                signed = sign_voucher(Voucher(session, RELAY_MODEL, agent_paid), system.voucher_domain, AGENT.key)
                with boa.env.prank(GATEWAY.address):
                    channels.redeem([signed.as_tuple()], own[action[2]], action[3], False)
        elif action[0] == "fund":
            amount = min(action[2], channels.relay_balance(GATEWAY.address))
            if amount:
                with boa.env.prank(GATEWAY.address):
                    channels.fund(own[action[1]], amount)
        elif action[0] == "pay":
            channel, model = own[action[1]], RELAY_MODEL if action[3] else MODEL
            record = channels.channel(channel)
            amount = min(action[2], record.deposit - record.spent)
            if amount:
                previous = cumulative[(channel, model)]
                cumulative[(channel, model)] = previous + amount
                pay(system, GATEWAY, channel, model, previous + amount, payees[action[1]])
                if model == MODEL:
                    fee += split_increment(previous, previous + amount, ROYALTY_BPS, fee_bps).protocol_fee
        else:
            who = GATEWAY.address if action[1] == "gateway" else PUPPET.address
            amount = channels.relay_balance(who)
            if amount:
                fee += relay_withdrawal_fee(withdrawn[who], amount, fee_bps)
                withdrawn[who] += amount
                with boa.env.prank(who):
                    channels.withdraw_relay()
        assert system.stable.balanceOf(channels.address) - start == held()

    # the end: everything closes, every deposit and balance is taken out
    for channel, payer in ((session, AGENT), *((c, GATEWAY) for c in own)):
        with boa.env.prank(payer.address):
            channels.request_close(channel)
    boa.env.time_travel(seconds=system.params.get("channel_close_delay"))
    for channel, payer in ((session, AGENT), *((c, GATEWAY) for c in own)):
        record = channels.channel(channel)
        if record.deposit > record.spent:
            with boa.env.prank(payer.address):
                channels.withdraw(channel)
    for who in (GATEWAY.address, PUPPET.address, PROVIDER.address):
        amount = channels.relay_balance(who)
        if amount:
            fee += relay_withdrawal_fee(withdrawn.get(who, 0), amount, fee_bps)
            withdrawn[who] = withdrawn.get(who, 0) + amount
            with boa.env.prank(who):
                channels.withdraw_relay()
    assert sum(channels.relay_balance(a) for a in relay_holders) == 0
    assert channels.earnings(system.treasury) == fee  # the mirror, to the unit
    assert system.stable.balanceOf(channels.address) - start == sum(channels.earnings(a) for a in earners)
    # every unit the agent paid left a relay's hands on a fee-paying hop: the fee on it is
    # paid, less at most one unit per rounding place (three channels' models, two relays)
    places = 3 + len([w for w in withdrawn.values() if w])
    assert fee >= agent_paid * fee_bps // 10_000 - places
