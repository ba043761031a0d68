"""One state machine over all contracts together (ALM, Registry, Channels, Verdicts,
Governor + Timelock): random staking, payments, fraud cases, votes and admin attempts.
Invariants: ALM and dUSD are conserved across every holder, and no account other than
the Timelock can change Params, Registry or Channels administration or mint ALM."""

from __future__ import annotations

import os

import boa
import pytest
from eth_utils import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from allmende.core import Receipt, Voucher, sign_receipt, sign_voucher
from allmende.testing.inprocess import ALM, System, actor, deploy_system

PROVIDER = actor("s-provider")
VALIDATORS = [actor(f"s-validator-{i}") for i in range(2)]
PAYER = actor("s-payer")
INTRUDER = actor("s-intruder")
MODEL = keccak(text="s-model")
EXAMPLES = int(os.environ.get("ALLMENDE_FUZZ_EXAMPLES", "20"))
SYSTEM: System | None = None


def system() -> System:
    global SYSTEM
    if SYSTEM is None:
        s = deploy_system(governed=True)
        s.fund(PROVIDER.address, alm=20_000 * ALM)
        with boa.env.prank(PROVIDER.address):
            s.registry.register(1, "http://p", b"\x01" * 32, 5_000 * ALM)
        for v in VALIDATORS:
            s.fund(v.address, alm=20_000 * ALM)
            with boa.env.prank(v.address):
                s.registry.register(2, "http://v", b"\x00" * 32, 6_000 * ALM)
                s.token.approve(s.verdicts_contract.address, 2**256 - 1)
        s.fund(PAYER.address, usd=10**12)
        boa.env.time_travel(seconds=s.params.get("unbonding_period") + 5)  # votes weigh stake held this long
        SYSTEM = s
    return SYSTEM


@pytest.fixture(scope="module", autouse=True)
def _deployed() -> None:
    system()


class SystemMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s = system()
        self.alm_holders = [
            PROVIDER.address,
            PAYER.address,
            INTRUDER.address,
            *(v.address for v in VALIDATORS),
            self.s.registry.address,
            self.s.verdicts_contract.address,
            self.s.timelock.address,
        ]
        self.alm_total = sum(self.s.token.balanceOf(h) for h in self.alm_holders)
        self.usd_holders = [PAYER.address, PROVIDER.address, self.s.channels.address, self.s.timelock.address]
        self.usd_total = sum(self.s.stable.balanceOf(h) for h in self.usd_holders)
        self.channel: bytes | None = None
        self.cumulative = 0
        self.n = 0
        self.cases: list[int] = []

    @rule(amount=st.integers(1, 10**6))
    def pay(self, amount: int) -> None:
        if self.channel is None:
            with boa.env.prank(PAYER.address):
                self.channel = self.s.channels.open(PROVIDER.address, 10**9)
        self.cumulative = min(self.cumulative + amount, 10**9)
        signed = sign_voucher(Voucher(self.channel, MODEL, self.cumulative), self.s.voucher_domain, PAYER.key)
        with boa.env.prank(PROVIDER.address):
            if self.s.channels.redeemed(self.channel, MODEL) < self.cumulative:
                self.s.channels.redeem([signed.as_tuple()])

    @rule()
    def provider_withdraws(self) -> None:
        if self.s.channels.earnings(PROVIDER.address):
            with boa.env.prank(PROVIDER.address):
                self.s.channels.withdraw_earnings()

    @rule(who=st.integers(0, 1), amount=st.integers(1, 3_000))
    def validator_unbonds(self, who: int, amount: int) -> None:
        v = VALIDATORS[who]
        if self.s.registry.stake_of(v.address) > amount * ALM:
            with boa.env.prank(v.address):
                self.s.registry.unbond(amount * ALM)

    @rule(who=st.integers(0, 1))
    def report(self, who: int) -> None:
        reporter = VALIDATORS[who]
        if not self.s.registry.is_active(reporter.address) or self.s.registry.role_of(PROVIDER.address) != 1:
            return
        self.n += 1
        r = Receipt(
            keccak(text=f"r{self.n}"),
            MODEL,
            PROVIDER.address,
            b"\x01" * 32,
            b"\x02" * 32,
            b"\x03" * 32,
            1,
            1,
            1,
            self.n,
        )
        sig = sign_receipt(r, self.s.receipt_domain, PROVIDER.key).signature
        v = self.s.verdicts_contract
        case = v.open_case_of(PROVIDER.address, MODEL)
        if case and v.is_reporter(case, reporter.address):
            return  # at most one report per validator in the one open case of this fault
        with boa.env.prank(reporter.address):
            opened = v.open_case(r.as_tuple(), sig, keccak(text=f"evidence-{self.n}"), "u")
        if opened not in self.cases:
            self.cases.append(opened)

    @rule(who=st.integers(0, 1), guilty=st.booleans())
    def vote_and_resolve(self, who: int, guilty: bool) -> None:
        v = self.s.verdicts_contract
        for case in self.cases:
            data = v.cases(case)
            voter = VALIDATORS[who]
            if (
                data.status == 1
                and boa.env.evm.patch.timestamp < data.deadline
                and not v.is_reporter(case, voter.address)
                and not v.voted(case, voter.address)
                and v.vote_weight(case, voter.address) > 0
            ):
                with boa.env.prank(voter.address):
                    v.vote(case, guilty, 0)
        boa.env.time_travel(seconds=self.s.params.get("fraud_voting_period"))
        for case in self.cases:
            if v.cases(case).status == 1:
                v.resolve(case)
            for reporter in VALIDATORS:
                if v.claimable(case, reporter.address) > 0:
                    with boa.env.prank(reporter.address):
                        v.claim(case)

    @rule(which=st.integers(0, 5))
    def intruder_tries_admin(self, which: int) -> None:
        s = self.s
        calls = [
            lambda: s.params.set("protocol_fee_bps", 9_000),
            lambda: s.registry.set_verdicts(INTRUDER.address),
            lambda: s.channels.set_treasury(INTRUDER.address),
            lambda: s.token.mint(INTRUDER.address, 1),
            lambda: s.registry.slash(PROVIDER.address, 1, INTRUDER.address),
            lambda: s.timelock.schedule_batch([s.params.address], [0], [b""], b"\x00" * 32, b"\x00" * 32, 10**6),
        ]
        for who in (INTRUDER.address, s.admin, PROVIDER.address):
            with boa.env.prank(who), boa.reverts():
                calls[which]()

    @invariant()
    def money_is_conserved(self) -> None:
        assert sum(self.s.token.balanceOf(h) for h in self.alm_holders) == self.alm_total
        assert sum(self.s.stable.balanceOf(h) for h in self.usd_holders) == self.usd_total
        held = self.s.stable.balanceOf(self.s.channels.address)
        owed = sum(self.s.channels.earnings(h) for h in (PROVIDER.address, self.s.timelock.address))
        unspent = 0
        if self.channel is not None:
            state = self.s.channels.channel(self.channel)
            unspent = state.deposit - state.spent
        assert held == owed + unspent
        assert self.s.params.owner() == self.s.timelock.address


SystemMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestSystemMachine = SystemMachine.TestCase
