"""Stateful property test of Channels with ghost accounting (solmate's BalanceSum idea).

Random sequences of open, top_up, redeem (valid and invalid vouchers), close,
time passing, withdraw and withdraw_earnings. Invariants after every step:
- the dUSD Channels holds = deposits − everything paid out;
- that balance = unspent deposits + accrued earnings (no unit lost or created);
- no channel has paid more than its deposit;
- every party's total is the split of the final cumulative amounts alone, so
  splitting a redeem into many smaller ones never changes anybody's total.
"""

from __future__ import annotations

import os

import boa
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from allmende.core import Voucher, sign_voucher, split_increment, split_payment
from allmende.testing.inprocess import register_model
from tests.contracts.conftest import actor, deploy_system

PAYERS = [actor("payer-0"), actor("payer-1")]
PROVIDERS = [actor("provider-0"), actor("provider-1")]
OWNER = actor("owner")
MODELS = [b"\x11" * 32, b"\x22" * 32]  # the first is registered with a royalty, the second not
SYSTEM = None
EXAMPLES = int(os.environ.get("ALLMENDE_FUZZ_EXAMPLES", "40"))


def system():
    global SYSTEM
    if SYSTEM is None:
        SYSTEM = deploy_system()
        for payer in PAYERS:
            SYSTEM.fund(payer.address, usd=10**15)
        with boa.env.prank(OWNER.address):
            register_model(SYSTEM.models, MODELS[0], "MIT", 777, [], [], "")
    return SYSTEM


@pytest.fixture(scope="module", autouse=True)
def _deployed() -> None:
    # titanoboa's pytest plugin rolls the chain back after every hypothesis example,
    # so the system is deployed once, outside any example.
    system()


class ChannelsMachine(RuleBasedStateMachine):
    channels = Bundle("channels")

    def __init__(self) -> None:
        super().__init__()
        self.sys = system()
        self.start_balance = self.sys.stable.balanceOf(self.sys.channels.address)
        self.deposited = 0
        self.paid_out = 0
        self.redeemed_total = 0
        self.parties: dict[bytes, tuple] = {}
        self.cumulative: dict[tuple[bytes, bytes], int] = {}
        self.withdrawn: dict[str, int] = {}

    @initialize()
    def fee(self) -> None:
        self.fee_bps = self.sys.params.get("protocol_fee_bps")

    @rule(
        target=channels,
        payer=st.sampled_from(PAYERS),
        provider=st.sampled_from(PROVIDERS),
        amount=st.integers(10**8, 10**10) | st.integers(1, 10**8),
    )
    def open(self, payer, provider, amount):
        with boa.env.prank(payer.address):
            channel_id = self.sys.channels.open(provider.address, amount)
        self.deposited += amount
        self.parties[channel_id] = (payer, provider)
        return channel_id

    @rule(channel_id=channels, amount=st.integers(1, 10**9))
    def top_up(self, channel_id, amount):
        payer, _ = self.parties[channel_id]
        closing = self.sys.channels.channel(channel_id).closes_at != 0
        with boa.env.prank(payer.address):
            if closing:
                with boa.reverts("channels: closing"):
                    self.sys.channels.top_up(channel_id, amount)
                return
            self.sys.channels.top_up(channel_id, amount)
        self.deposited += amount

    @rule(
        first=channels,
        second=channels,
        items=st.lists(
            st.tuples(
                st.booleans(),
                st.sampled_from(MODELS),
                st.integers(1, 10**6) | st.integers(-5, 0) | st.integers(10**6, 2 * 10**10),
            ),
            min_size=1,
            max_size=4,
        ),
        wrong_provider=st.integers(0, 9),
    )
    def redeem(self, first, second, items, wrong_provider):
        """A batch over one or two channels; invalid batches must revert as a whole."""
        provider = self.parties[first][1]
        if wrong_provider == 0:
            provider = PROVIDERS[1] if provider == PROVIDERS[0] else PROVIDERS[0]
        picks = [(second if use_second else first, model, delta) for use_second, model, delta in items]
        vouchers, expect_ok, pending = [], True, {}
        spent_after: dict[bytes, int] = {}
        provider_share = 0
        for channel_id, model, delta in picks:
            payer, channel_provider = self.parties[channel_id]
            state = self.sys.channels.channel(channel_id)
            previous = pending.get((channel_id, model), self.cumulative.get((channel_id, model), 0))
            cumulative = max(previous + delta, 0)
            spent = spent_after.get(channel_id, state.spent) + max(delta, 0)
            closed = state.closes_at != 0 and boa.env.evm.patch.timestamp >= state.closes_at
            if channel_provider != provider or closed or delta <= 0 or spent > state.deposit:
                expect_ok = False
            pending[(channel_id, model)] = cumulative
            spent_after[channel_id] = spent
            signed = sign_voucher(Voucher(channel_id, model, cumulative), self.sys.voucher_domain, payer.key)
            vouchers.append((signed.as_tuple(), max(delta, 0), model))
            if delta > 0:
                provider_share += split_increment(previous, cumulative, self._royalty(model), self.fee_bps).provider
        if expect_ok and self.sys.channels.earnings(provider.address) + provider_share < 0:
            expect_ok = False  # a one-unit increment rounded up twice, with nothing credited to take it from
        with boa.env.prank(provider.address):
            if not expect_ok:
                with boa.reverts():
                    self.sys.channels.redeem([v for v, _, _ in vouchers])
                event("redeem refused")
                return
            total = self.sys.channels.redeem([v for v, _, _ in vouchers])
        event("redeem paid")
        assert total == sum(d for _, d, _ in vouchers)
        self.cumulative.update(pending)
        self.redeemed_total += total

    def _royalty(self, model: bytes) -> int:
        return 777 if model == MODELS[0] else 0

    @rule(channel_id=channels)
    def request_close(self, channel_id):
        payer, _ = self.parties[channel_id]
        if self.sys.channels.channel(channel_id).closes_at == 0:
            with boa.env.prank(payer.address):
                self.sys.channels.request_close(channel_id)

    @rule(seconds=st.sampled_from([86400, 3600, 60, 2 * 86400]))
    def time_passes(self, seconds):
        boa.env.time_travel(seconds=seconds)

    @rule(channel_id=channels)
    def withdraw(self, channel_id):
        payer, _ = self.parties[channel_id]
        state = self.sys.channels.channel(channel_id)
        ready = state.closes_at != 0 and boa.env.evm.patch.timestamp >= state.closes_at
        with boa.env.prank(payer.address):
            if not ready or state.deposit == state.spent:
                with boa.reverts():
                    self.sys.channels.withdraw(channel_id)
                return
            refund = self.sys.channels.withdraw(channel_id)
        event("payer withdrew")
        assert refund == state.deposit - state.spent
        self.paid_out += refund

    @rule(who=st.sampled_from([*PROVIDERS, OWNER]))
    def withdraw_earnings(self, who):
        owed = self.sys.channels.earnings(who.address)
        if owed == 0:
            return
        before = self.sys.stable.balanceOf(who.address)
        with boa.env.prank(who.address):
            self.sys.channels.withdraw_earnings()
        assert self.sys.stable.balanceOf(who.address) - before == owed
        self.paid_out += owed
        self.withdrawn[who.address] = self.withdrawn.get(who.address, 0) + owed

    @invariant()
    def tokens_are_conserved(self):
        held = self.sys.stable.balanceOf(self.sys.channels.address) - self.start_balance
        assert held == self.deposited - self.paid_out
        unspent = 0
        for channel_id in self.parties:
            state = self.sys.channels.channel(channel_id)
            assert state.spent <= state.deposit
            unspent += state.deposit - state.spent
        accrued = sum(self.sys.channels.earnings(a.address) for a in [*PROVIDERS, OWNER]) + self.sys.channels.earnings(
            self.sys.treasury
        )
        assert held == unspent + accrued

    @invariant()
    def totals_depend_only_on_the_final_cumulatives(self):
        """Every party holds (accrued + withdrawn) exactly the split of each (channel, model)'s
        final cumulative amount: how the redeems were cut up changes nothing."""
        owed: dict[str, int] = {}
        for (channel_id, model), cumulative in self.cumulative.items():
            split = split_payment(cumulative, self._royalty(model), self.fee_bps)
            provider = self.parties[channel_id][1].address
            owed[provider] = owed.get(provider, 0) + split.provider
            owed[OWNER.address] = owed.get(OWNER.address, 0) + split.royalty
            owed["treasury"] = owed.get("treasury", 0) + split.protocol_fee
        assert self.sys.channels.earnings(self.sys.treasury) == owed.get("treasury", 0)
        for who in [*PROVIDERS, OWNER]:
            held = self.sys.channels.earnings(who.address) + self.withdrawn.get(who.address, 0)
            assert held == owed.get(who.address, 0)


ChannelsMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestChannelsMachine = ChannelsMachine.TestCase
