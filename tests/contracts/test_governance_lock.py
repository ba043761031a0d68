"""No single passed proposal can lock governance: a state machine passes random `Params.set`
proposals (every parameter `Params` defines, each value anywhere within its bounds, the extremes
included) and `Timelock.update_delay` calls, and after each checks that a new proposal can
still be made, pass, be queued and execute, in a time bounded by the parameters' upper bounds."""

from __future__ import annotations

import os

import boa
import pytest
from eth_utils import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from allmende.testing.inprocess import ALM, System, actor, deploy_system

VOTERS = [actor(f"gl-voter-{i}") for i in range(2)]
STAKE = 150_000 * ALM  # above the highest proposal threshold (100,000 ALM); together above any quorum
EXAMPLES = int(os.environ.get("ALLMENDE_FUZZ_EXAMPLES", "10"))
SYSTEM: System | None = None


def machine_system() -> System:
    global SYSTEM
    if SYSTEM is None:
        system = deploy_system(governed=True)
        for v in VOTERS:
            system.fund(v.address, alm=STAKE)
            with boa.env.prank(v.address):
                system.token.approve(system.votes.address, 2**256 - 1)
                system.votes.stake(STAKE)
        boa.env.time_travel(seconds=system.params.get("unbonding_period") + 1)
        SYSTEM = system
    return SYSTEM


@pytest.fixture(scope="module", autouse=True)
def _deployed() -> None:
    machine_system()


def pass_proposal(system: System, target: str, payload: bytes, description: str) -> None:
    """Propose, vote for with every voter, queue and execute: each step must succeed. A longer
    unbonding_period lengthens every lookback, so stake younger than it weighs nothing until it
    is that old: first wait that long if the voters' stake is not held through it yet."""
    g = system.governor
    if g.weight_at(VOTERS[0].address, boa.env.evm.patch.timestamp - 1) < system.params.get("proposal_threshold"):
        boa.env.time_travel(seconds=system.params.get("unbonding_period"))
    with boa.env.prank(VOTERS[0].address):
        pid = g.propose([target], [0], [payload], description)
    boa.env.time_travel(seconds=system.params.get("voting_delay") + 1)
    for v in VOTERS:
        with boa.env.prank(v.address):
            assert g.cast_vote(pid, 1) > 0
    boa.env.time_travel(seconds=system.params.get("voting_period") + 1)
    eta = g.queue(pid)
    boa.env.time_travel(seconds=eta - boa.env.evm.patch.timestamp)
    g.execute(pid)
    assert g.state(pid) == 5


class GovernanceLockMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sys = machine_system()
        self.n = 0

    @rule(index=st.integers(0, 63), where=st.sampled_from(["lower", "upper", "between"]), share=st.integers(0, 100))
    def pass_a_parameter_change(self, index: int, where: str, share: int) -> None:
        p = self.sys.params
        name = p.names(index % p.count())
        key = keccak(text=name)
        lower, upper = p.lower_bound(key), p.upper_bound(key)
        assert upper > 0, f"{name} has no upper bound"
        value = {"lower": lower, "upper": upper, "between": lower + (upper - lower) * share // 100}[where]
        self.n += 1
        pass_proposal(self.sys, p.address, p.set.prepare_calldata(name, value), f"set {name} {value} #{self.n}")
        assert p.get(name) == value

    @rule(delay=st.sampled_from([3_600, 86_400, 14 * 86_400]))
    def pass_a_timelock_delay_change(self, delay: int) -> None:
        t = self.sys.timelock
        self.n += 1
        pass_proposal(self.sys, t.address, t.update_delay.prepare_calldata(delay), f"delay {delay} #{self.n}")
        assert t.get_minimum_delay() == delay

    @invariant()
    def no_proposal_locks_governance(self) -> None:
        """A new proposal still passes and executes, in bounded time, and it waits at least
        Params' timelock_delay. A longer unbonding_period lengthens every lookback, so stake
        younger than it weighs nothing until it is that old: governance may have to wait that
        long (at most the period's upper bound), never for ever."""
        p = self.sys.params
        with boa.env.anchor():
            start = boa.env.evm.patch.timestamp
            fee = 1 + p.get("protocol_fee_bps") % 500
            pass_proposal(self.sys, p.address, p.set.prepare_calldata("protocol_fee_bps", fee), f"probe #{self.n}")
            assert p.get("protocol_fee_bps") == fee
            took = boa.env.evm.patch.timestamp - start
            assert p.get("timelock_delay") <= took <= 30 * 86_400 + 7 * 86_400 + 2 * 14 * 86_400 + 10


GovernanceLockMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=6, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestGovernanceLockMachine = GovernanceLockMachine.TestCase
