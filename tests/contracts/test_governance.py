"""Governor + Timelock: proposals, snapshot-weighted votes, queue and execute — every
revert path, the deployer keeps no admin power, and a vote-accounting state machine."""

from __future__ import annotations

import os

import boa
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from allmende.testing.inprocess import ALM, System, actor, deploy_system

STAKERS = [actor(f"g-staker-{i}") for i in range(4)]
STAKES = [5_000 * ALM, 6_000 * ALM, 7_000 * ALM, 8_000 * ALM]
LATE = actor("g-late")


def governed() -> System:
    system = deploy_system(governed=True)
    for s, stake in zip(STAKERS, STAKES, strict=True):
        system.fund(s.address, alm=stake * 2)
        with boa.env.prank(s.address):
            system.registry.register(2, "http://v", b"\x00" * 32, stake)
    system.fund(LATE.address, alm=10_000 * ALM)
    boa.env.time_travel(seconds=10)
    return system


@pytest.fixture(scope="module")
def gov_system() -> System:
    return governed()


@pytest.fixture
def system(gov_system: System):
    with boa.env.anchor():
        yield gov_system


def fee_proposal(system: System, value: int = 150, description: str = "raise the fee") -> tuple:
    payload = system.params.set.prepare_calldata("protocol_fee_bps", value)
    return [system.params.address], [0], [payload], description


def propose(system: System, who=STAKERS[0], **kw) -> int:
    with boa.env.prank(who.address):
        return system.governor.propose(*fee_proposal(system, **kw))


def to_voting(system: System) -> None:
    boa.env.time_travel(seconds=system.params.get("voting_delay") + 1)


def past_voting(system: System) -> None:
    boa.env.time_travel(seconds=system.params.get("voting_period") + 1)


def vote(system: System, pid: int, who, support: int) -> int:
    with boa.env.prank(who.address):
        return system.governor.cast_vote(pid, support)


def test_a_proposal_changes_a_parameter_after_vote_and_delay(system: System) -> None:
    g = system.governor
    pid = propose(system)
    assert g.state(pid) == 0
    to_voting(system)
    assert g.state(pid) == 1
    assert vote(system, pid, STAKERS[1], 1) == STAKES[1]
    vote(system, pid, STAKERS[2], 1)
    vote(system, pid, STAKERS[3], 0)
    past_voting(system)
    assert g.state(pid) == 3

    eta = g.queue(pid)
    with boa.reverts("governor: timelock delay not over"):
        g.execute(pid)
    boa.env.time_travel(seconds=eta - boa.env.evm.patch.timestamp)
    g.execute(pid)

    assert system.params.get("protocol_fee_bps") == 150
    assert g.state(pid) == 5


def test_defeated_when_against_wins_or_quorum_missing(system: System) -> None:
    g = system.governor
    lost = propose(system, description="lost")
    empty = propose(system, description="nobody votes")
    to_voting(system)
    vote(system, lost, STAKERS[0], 1)
    vote(system, lost, STAKERS[3], 0)
    past_voting(system)
    assert g.state(lost) == 2 and g.state(empty) == 2
    with boa.reverts("governor: proposal not successful"):
        g.queue(lost)


def test_weight_is_the_stake_at_the_snapshot(system: System) -> None:
    g = system.governor
    pid = propose(system)
    to_voting(system)
    # stake added after the start gives no weight; a newcomer has none at all
    with boa.env.prank(STAKERS[1].address):
        system.registry.add_stake(1_000 * ALM)
    with boa.env.prank(LATE.address):
        system.registry.register(2, "http://late", b"\x00" * 32, 5_000 * ALM)
    assert vote(system, pid, STAKERS[1], 1) == STAKES[1]
    with boa.env.prank(LATE.address), boa.reverts("governor: no stake at snapshot"):
        g.cast_vote(pid, 1)
    # unbonding after the snapshot does not remove weight, and moving the tokens gives none
    with boa.env.prank(STAKERS[2].address):
        system.registry.unbond(STAKES[2])
    assert vote(system, pid, STAKERS[2], 0) == STAKES[2]
    assert g.quorum(pid) == sum(STAKES) * system.params.get("quorum_bps") // 10_000


def test_defeated_mint_proposal_revived_by_lowering_the_quorum(system: System) -> None:
    g = system.governor
    small = actor("g-small-provider")  # 1,000 ALM: enough to propose, not enough for quorum
    system.fund(small.address, alm=1_000 * ALM)
    with boa.env.prank(small.address):
        system.registry.register(1, "http://small", b"\x01" * 32, 1_000 * ALM)
    boa.env.time_travel(seconds=1)
    mint = system.token.mint.prepare_calldata(small.address, 1_000_000 * ALM)
    with boa.env.prank(small.address):
        pid = g.propose([system.token.address], [0], [mint], "mint ALM to me")
    to_voting(system)
    vote(system, pid, small, 1)
    past_voting(system)
    assert g.state(pid) == 2  # 1,000 ALM for, quorum is 4 % of 27,000

    with boa.env.prank(system.timelock.address):  # governance lowers the quorum for other reasons
        system.params.set("quorum_bps", 100)

    assert g.state(pid) == 2
    with boa.reverts("governor: proposal not successful"):
        g.queue(pid)


def test_succeeded_proposal_queued_after_the_grace_period(system: System) -> None:
    g = system.governor
    pid = propose(system)
    to_voting(system)
    vote(system, pid, STAKERS[1], 1)
    past_voting(system)
    assert g.state(pid) == 3

    boa.env.time_travel(seconds=system.params.get("proposal_grace_period"))

    assert g.state(pid) == 6
    with boa.reverts("governor: proposal not successful"):
        g.queue(pid)


def test_propose_reverts(system: System) -> None:
    g = system.governor
    with boa.env.prank(STAKERS[0].address), boa.reverts("governor: empty proposal"):
        g.propose([], [], [], "x")
    with boa.env.prank(STAKERS[0].address), boa.reverts("governor: length mismatch"):
        g.propose([system.params.address], [], [b""], "x")
    with boa.env.prank(LATE.address), boa.reverts("governor: stake below proposal threshold"):
        g.propose(*fee_proposal(system))
    propose(system)
    with boa.env.prank(STAKERS[1].address), boa.reverts("governor: proposal exists"):
        g.propose(*fee_proposal(system))


def test_vote_queue_execute_reverts(system: System) -> None:
    g = system.governor
    with boa.reverts("governor: unknown proposal"):
        g.state(123)
    pid = propose(system)
    with boa.env.prank(STAKERS[1].address), boa.reverts("governor: voting not active"):
        g.cast_vote(pid, 1)
    to_voting(system)
    with boa.env.prank(STAKERS[1].address), boa.reverts("governor: bad support value"):
        g.cast_vote(pid, 3)
    vote(system, pid, STAKERS[1], 1)
    with boa.env.prank(STAKERS[1].address), boa.reverts("governor: already voted"):
        g.cast_vote(pid, 0)
    with boa.reverts("governor: proposal not queued"):
        g.execute(pid)
    vote(system, pid, STAKERS[2], 1)
    past_voting(system)
    with boa.env.prank(STAKERS[3].address), boa.reverts("governor: voting not active"):
        g.cast_vote(pid, 0)
    g.queue(pid)
    with boa.reverts("governor: proposal not successful"):
        g.queue(pid)


def test_the_deployer_keeps_no_admin_power(system: System) -> None:
    deployer = system.admin
    owner_error = "ownable: caller is not the owner"
    with boa.env.prank(deployer):
        for call in (
            lambda: system.params.set("protocol_fee_bps", 1),
            lambda: system.params.transfer_ownership(deployer),
            lambda: system.registry.set_verdicts(deployer),
            lambda: system.registry.set_paused(STAKERS[0].address, False),
            lambda: system.channels.set_treasury(deployer),
        ):
            with boa.reverts(owner_error):
                call()
        with boa.reverts("erc20: access is denied"):
            system.token.mint(deployer, 1)
        with boa.reverts(owner_error):
            system.token.set_minter(deployer, True)
        with boa.reverts("access_control: account is missing role"):
            system.timelock.grantRole(system.timelock.PROPOSER_ROLE(), deployer)
        with boa.reverts("access_control: account is missing role"):
            system.timelock.schedule_batch([system.params.address], [0], [b""], b"\x00" * 32, b"\x00" * 32, 10**6)
    assert system.params.owner() == system.registry.owner() == system.channels.owner() == system.timelock.address
    assert system.token.owner() == system.timelock.address and system.channels.treasury() == system.timelock.address


def test_governance_can_mint_through_the_timelock(system: System) -> None:
    g = system.governor
    payload = system.token.mint.prepare_calldata(LATE.address, 7 * ALM)
    with boa.env.prank(STAKERS[3].address):
        pid = g.propose([system.token.address], [0], [payload], "grant")
    to_voting(system)
    for s in STAKERS[1:]:
        vote(system, pid, s, 1)
    past_voting(system)
    eta = g.queue(pid)
    boa.env.time_travel(seconds=eta - boa.env.evm.patch.timestamp)
    before = system.token.balanceOf(LATE.address)
    g.execute(pid)
    assert system.token.balanceOf(LATE.address) == before + 7 * ALM


# ------------------------------------------------------------ state machine

SYSTEM: System | None = None
EXAMPLES = int(os.environ.get("ALLMENDE_FUZZ_EXAMPLES", "30"))


def machine_system() -> System:
    global SYSTEM
    if SYSTEM is None:
        SYSTEM = governed()
    return SYSTEM


@pytest.fixture(scope="module", autouse=True)
def _deployed() -> None:
    machine_system()


class VotingMachine(RuleBasedStateMachine):
    """Random votes, double votes, stake moves and time: the tallies always equal the
    snapshot stakes of the distinct voters, never more than the stake at the start."""

    def __init__(self) -> None:
        super().__init__()
        self.sys = machine_system()
        self.pid = propose(self.sys, description=f"machine {id(self)}")
        self.start = self.sys.governor.proposals(self.pid).start
        self.voters: set[str] = set()
        to_voting(self.sys)

    @rule(who=st.integers(0, 3), support=st.integers(0, 3))
    def cast(self, who: int, support: int) -> None:
        voter = STAKERS[who]
        g = self.sys.governor
        ok = support <= 2 and voter.address not in self.voters and g.state(self.pid) == 1
        with boa.env.prank(voter.address):
            if ok:
                assert g.cast_vote(self.pid, support) == STAKES[who]
                self.voters.add(voter.address)
            else:
                with boa.reverts():
                    g.cast_vote(self.pid, support)

    @rule(who=st.integers(0, 3), amount=st.integers(1, 1_000))
    def move_stake(self, who: int, amount: int) -> None:
        with boa.env.prank(STAKERS[who].address):
            self.sys.registry.add_stake(amount * ALM // 1000)

    @rule(seconds=st.sampled_from([60, 3600, 86_400]))
    def time_passes(self, seconds: int) -> None:
        boa.env.time_travel(seconds=seconds)

    @invariant()
    def tallies_match_snapshot_stakes(self) -> None:
        p = self.sys.governor.proposals(self.pid)
        counted = p.for_votes + p.against_votes + p.abstain_votes
        assert counted == sum(self.sys.registry.stake_at(v, self.start) for v in self.voters)
        assert counted <= self.sys.registry.total_stake_at(self.start)


VotingMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestVotingMachine = VotingMachine.TestCase
