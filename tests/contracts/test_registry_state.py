"""Stateful property test of Registry stake accounting.

Random register / add_stake / unbond / withdraw / slash / time passing. After
every step: the ALM Registry holds = Σ(stake + unbonding) = total_bonded, the
per-role stake sums match, and ALM is conserved between Registry, the stakers
and the slash beneficiary.
"""

from __future__ import annotations

import os

import boa
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.contracts.conftest import ALM, actor, deploy_system

STAKERS = [actor(f"staker-{i}") for i in range(3)]
BENEFICIARY = actor("beneficiary")
EXAMPLES = int(os.environ.get("ALLMENDE_FUZZ_EXAMPLES", "40"))
SYSTEM = None
FUNDING = 100_000 * ALM


def system():
    global SYSTEM
    if SYSTEM is None:
        SYSTEM = deploy_system()
        for s in STAKERS:
            SYSTEM.fund(s.address, alm=FUNDING)
    return SYSTEM


@pytest.fixture(scope="module", autouse=True)
def _deployed() -> None:
    system()


amounts = st.sampled_from([1_000 * ALM, 5_000 * ALM, 20_000 * ALM]) | st.integers(1, 10_000 * ALM)


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sys = system()
        self.reg = self.sys.registry
        self.roles: dict[str, int] = {}

    def _expect(self, ok: bool, call) -> bool:
        if ok:
            call()
            return True
        with boa.reverts():
            call()
        return False

    @rule(who=st.sampled_from(STAKERS), role=st.sampled_from([1, 2]), amount=amounts)
    def register(self, who, role, amount):
        acct = self.reg.accounts(who.address)
        current = self.roles.get(who.address, role)
        minimum = self.sys.params.get("min_provider_stake" if role == 1 else "min_validator_stake")
        ok = current == role and acct.stake + amount >= minimum and amount <= self.sys.token.balanceOf(who.address)
        with boa.env.prank(who.address):
            if self._expect(ok, lambda: self.reg.register(role, "http://n", b"\x01" * 32, amount)):
                self.roles[who.address] = role
                event("registered")

    @rule(who=st.sampled_from(STAKERS), amount=amounts)
    def add_stake(self, who, amount):
        ok = who.address in self.roles and amount <= self.sys.token.balanceOf(who.address)
        with boa.env.prank(who.address):
            self._expect(ok, lambda: self.reg.add_stake(amount))

    @rule(who=st.sampled_from(STAKERS), amount=amounts)
    def unbond(self, who, amount):
        ok = who.address in self.roles and amount <= self.reg.accounts(who.address).stake
        with boa.env.prank(who.address):
            if self._expect(ok, lambda: self.reg.unbond(amount)):
                event("unbonded")

    @rule(who=st.sampled_from(STAKERS))
    def withdraw(self, who):
        acct = self.reg.accounts(who.address)
        ok = acct.unbonding > 0 and boa.env.evm.patch.timestamp >= acct.unbond_at
        with boa.env.prank(who.address):
            if self._expect(ok, lambda: self.reg.withdraw()):
                event("withdrew")

    @rule(who=st.sampled_from(STAKERS), amount=amounts)
    def slash(self, who, amount):
        acct = self.reg.accounts(who.address)
        ok = acct.stake + acct.unbonding > 0
        with boa.env.prank(self.sys.verdicts):
            if self._expect(ok, lambda: self.reg.slash(who.address, amount, BENEFICIARY.address)):
                event("slashed")

    @rule(seconds=st.sampled_from([7 * 86400, 86400, 60]))
    def time_passes(self, seconds):
        boa.env.time_travel(seconds=seconds)

    @invariant()
    def stake_is_conserved(self):
        accounts = [self.reg.accounts(s.address) for s in STAKERS]
        held = self.sys.token.balanceOf(self.reg.address)
        assert held == sum(a.stake + a.unbonding for a in accounts) == self.reg.total_bonded()
        for role in (1, 2):
            assert self.reg.role_stake(role) == sum(a.stake for a in accounts if a.role == role)
        outside = sum(self.sys.token.balanceOf(s.address) for s in STAKERS)
        assert held + outside + self.sys.token.balanceOf(BENEFICIARY.address) == FUNDING * len(STAKERS)


RegistryMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestRegistryMachine = RegistryMachine.TestCase
