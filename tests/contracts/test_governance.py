"""Governor + Timelock + Votes: proposals checked when made, snapshot-weighted votes of
node stake and of token holders' delegated stake, queue, execute, expiry and cancel —
every revert path, the attacks on the vote (double voting, flash stake), the deployer
keeps no admin power, and a vote-accounting state machine."""

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
HOLDERS = [actor(f"g-holder-{i}") for i in range(2)]
HOLDINGS = [3_000 * ALM, 4_000 * ALM]


def governed() -> System:
    system = deploy_system(governed=True)
    for s, stake in zip(STAKERS, STAKES, strict=True):
        system.fund(s.address, alm=stake * 2)
        with boa.env.prank(s.address):
            system.registry.register(2, "http://v", b"\x00" * 32, stake)
    system.fund(LATE.address, alm=10_000 * ALM)
    for h, holding in zip(HOLDERS, HOLDINGS, strict=True):
        system.fund(h.address, alm=holding * 2)
        with boa.env.prank(h.address):
            system.token.approve(system.votes.address, 2**256 - 1)
            system.votes.stake(holding)
    with boa.env.prank(LATE.address):
        system.token.approve(system.votes.address, 2**256 - 1)
    held_through_the_lookback(system)
    return system


def held_through_the_lookback(system: System) -> None:
    """Weights are stake held through the lookback (the unbonding period) before a proposal."""
    boa.env.time_travel(seconds=system.params.get("unbonding_period") + 10)


TOTAL = sum(STAKES) + sum(HOLDINGS)  # all voting weight: validators' Registry stake + holders' Votes stake


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
    assert g.quorum(pid) == TOTAL * system.params.get("quorum_bps") // 10_000


def test_defeated_mint_proposal_revived_by_lowering_the_quorum(system: System) -> None:
    g = system.governor
    small = actor("g-small-provider")  # 1,000 ALM: enough to propose, not enough for quorum
    system.fund(small.address, alm=1_000 * ALM)
    with boa.env.prank(small.address):
        system.registry.register(1, "http://small", b"\x01" * 32, 1_000 * ALM)
    held_through_the_lookback(system)
    mint = system.token.mint.prepare_calldata(small.address, 1_000_000 * ALM)
    with boa.env.prank(small.address):
        pid = g.propose([system.token.address], [0], [mint], "mint ALM to me")
    to_voting(system)
    vote(system, pid, small, 1)
    past_voting(system)
    assert g.state(pid) == 2  # 1,000 ALM for, quorum is 4 % of 34,000

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
    with boa.env.prank(STAKERS[0].address), boa.reverts("governor: proposal exists"):
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


# ------------------------------------------------- checks when a proposal is made


def test_a_fee_above_its_bound_is_refused_when_proposed_not_after_the_vote(system: System) -> None:
    with boa.env.prank(STAKERS[0].address), boa.reverts("params: above bound"):
        system.governor.propose(*fee_proposal(system, value=20_000))
    assert system.governor.proposal_count() == 0
    propose(system, value=10_000)  # the bound itself is allowed


@pytest.mark.parametrize(("name", "value"), [("fraud_voting_period", 0), ("min_provider_stake", 0), ("quorum_bps", 99)])
def test_a_protection_set_below_its_lower_bound_is_refused_when_proposed(system: System, name, value) -> None:
    payload = system.params.set.prepare_calldata(name, value)
    with boa.env.prank(STAKERS[0].address), boa.reverts("params: below bound"):
        system.governor.propose([system.params.address], [0], [payload], f"switch {name} off")
    assert system.governor.proposal_count() == 0


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda s: (s.params.address, 0, b""), "governor: empty call"),
        (lambda s: (LATE.address, 0, b"\x12\x34\x56\x78"), "governor: call to an account without code"),
        (lambda s: (s.params.address, 0, b"\x12\x34"), "governor: calldata shorter than a selector"),
        (lambda s: (s.params.address, 0, s.params.set.prepare_calldata("", 1)), "params: empty name"),
        (
            lambda s: (s.params.address, 0, s.params.set.prepare_calldata("x", 1)[:4] + b"\x01" * 7),
            "governor: Params.set calldata does not decode",
        ),
    ],
    ids=["empty-call", "no-code", "short-calldata", "empty-param-name", "garbled-params-set"],
)
def test_a_call_that_cannot_execute_is_refused_when_proposed(system: System, call, reason: str) -> None:
    target, value, payload = call(system)
    with boa.env.prank(STAKERS[0].address), boa.reverts(reason):
        system.governor.propose([system.params.address, target], [0, value], [fee_proposal(system)[2][0], payload], "x")


def test_a_plain_value_transfer_is_still_a_call(system: System) -> None:
    # sending native currency from the Timelock needs no calldata and may go to any account
    with boa.env.prank(STAKERS[0].address):
        pid = system.governor.propose([LATE.address], [1], [b""], "pay someone")
    assert system.governor.state(pid) == 0


# ----------------------------------------------------- token holders (Votes)


def test_a_holder_without_a_node_stakes_and_its_vote_counts(system: System) -> None:
    g = system.governor
    pid = propose(system)
    to_voting(system)
    assert vote(system, pid, HOLDERS[0], 1) == HOLDINGS[0]
    assert vote(system, pid, STAKERS[0], 1) == STAKES[0]
    assert g.proposals(pid).for_votes == HOLDINGS[0] + STAKES[0]
    assert system.registry.role_of(HOLDERS[0].address) == 0  # not a provider or validator


def test_a_holder_with_enough_stake_proposes(system: System) -> None:
    with boa.env.prank(HOLDERS[1].address):
        pid = system.governor.propose(*fee_proposal(system, description="a holder's proposal"))
    assert system.governor.proposals(pid).proposer == HOLDERS[1].address


def test_a_holder_delegates_to_a_validator_who_votes_with_both(system: System) -> None:
    with boa.env.prank(HOLDERS[0].address):
        system.votes.delegate(STAKERS[2].address)
    held_through_the_lookback(system)
    pid = propose(system)
    to_voting(system)
    assert vote(system, pid, STAKERS[2], 1) == STAKES[2] + HOLDINGS[0]
    with boa.env.prank(HOLDERS[0].address), boa.reverts("governor: no stake at snapshot"):
        system.governor.cast_vote(pid, 0)


def test_a_holder_cannot_vote_twice_by_redelegating_after_the_snapshot(system: System) -> None:
    g = system.governor
    pid = propose(system)
    to_voting(system)
    assert vote(system, pid, HOLDERS[0], 1) == HOLDINGS[0]
    # the same ALM handed to another voter after the snapshot weighs nothing there
    with boa.env.prank(HOLDERS[0].address):
        system.votes.delegate(HOLDERS[1].address)
    assert system.votes.votes_of(HOLDERS[1].address) == HOLDINGS[0] + HOLDINGS[1]
    assert vote(system, pid, HOLDERS[1], 1) == HOLDINGS[1]
    assert g.proposals(pid).for_votes == HOLDINGS[0] + HOLDINGS[1]


def test_a_holder_cannot_vote_twice_by_moving_tokens_to_a_fresh_account(system: System) -> None:
    pid = propose(system)
    to_voting(system)
    vote(system, pid, HOLDERS[0], 1)
    # unstaked ALM is locked; the free half of its ALM staked by a fresh account weighs nothing
    with boa.env.prank(HOLDERS[0].address):
        system.votes.unstake(HOLDINGS[0])
        with boa.reverts("votes: still unbonding"):
            system.votes.withdraw()
        system.token.transfer(LATE.address, HOLDINGS[0])
    with boa.env.prank(LATE.address):
        system.votes.stake(HOLDINGS[0])
        with boa.reverts("governor: no stake at snapshot"):
            system.governor.cast_vote(pid, 1)
    assert system.governor.proposals(pid).for_votes == HOLDINGS[0]


def test_a_flash_stake_in_the_block_of_the_proposal_weighs_nothing(system: System) -> None:
    # staked in the same second as the proposal (an earlier transaction of the block)
    with boa.env.prank(LATE.address):
        system.votes.stake(10_000 * ALM)
        with boa.reverts("governor: stake below proposal threshold"):
            system.governor.propose(*fee_proposal(system))
    pid = propose(system)
    to_voting(system)
    with boa.env.prank(LATE.address), boa.reverts("governor: no stake at snapshot"):
        system.governor.cast_vote(pid, 1)
    assert system.governor.quorum(pid) == TOTAL * system.params.get("quorum_bps") // 10_000


def test_a_flash_stake_right_before_the_vote_weighs_nothing_and_stays_locked(system: System) -> None:
    pid = propose(system)
    to_voting(system)
    with boa.env.prank(LATE.address):
        system.votes.stake(10_000 * ALM)  # the block of the vote
        with boa.reverts("governor: no stake at snapshot"):
            system.governor.cast_vote(pid, 1)
        system.votes.unstake(10_000 * ALM)
        with boa.reverts("votes: still unbonding"):
            system.votes.withdraw()
    assert system.governor.vote_weight(pid, LATE.address) == 0


def test_unstaked_alm_returns_after_the_unbonding_period_and_stops_voting_at_once(system: System) -> None:
    v, who = system.votes, HOLDERS[1]
    before = system.token.balanceOf(who.address)
    with boa.env.prank(who.address):
        v.unstake(1_000 * ALM)
    assert v.votes_of(who.address) == HOLDINGS[1] - 1_000 * ALM
    boa.env.time_travel(seconds=1)
    pid = propose(system)
    to_voting(system)
    assert vote(system, pid, who, 1) == HOLDINGS[1] - 1_000 * ALM
    boa.env.time_travel(seconds=system.params.get("unbonding_period"))
    with boa.env.prank(who.address):
        assert v.withdraw() == 1_000 * ALM
        with boa.reverts("votes: nothing unstaking"):
            v.withdraw()
    assert system.token.balanceOf(who.address) == before + 1_000 * ALM


def test_votes_reverts(system: System) -> None:
    v = system.votes
    with boa.env.prank(HOLDERS[0].address):
        with boa.reverts("votes: zero amount"):
            v.stake(0)
        with boa.reverts("votes: zero amount"):
            v.unstake(0)
        with boa.reverts("votes: unstake above stake"):
            v.unstake(HOLDINGS[0] + 1)
        with boa.reverts("votes: zero delegate"):
            v.delegate("0x" + "00" * 20)
        with boa.reverts("votes: nothing unstaking"):
            v.withdraw()
    with boa.env.prank(actor("g-poor").address), boa.reverts():
        v.stake(1)  # no allowance, no ALM


def test_a_delegate_chosen_before_the_first_stake_receives_it(system: System) -> None:
    fresh = actor("g-fresh-holder")
    system.fund(fresh.address, alm=2_000 * ALM)
    with boa.env.prank(fresh.address):
        system.token.approve(system.votes.address, 2**256 - 1)
        system.votes.delegate(HOLDERS[0].address)
        system.votes.stake(2_000 * ALM)
    assert system.votes.votes_of(HOLDERS[0].address) == HOLDINGS[0] + 2_000 * ALM
    assert system.votes.votes_of(fresh.address) == 0
    assert system.votes.total_votes() == sum(HOLDINGS) + 2_000 * ALM


# ------------------------------------------------------ expiry and cancelling


def _passed_and_queued(system: System, calls: tuple) -> tuple[int, int]:
    g = system.governor
    with boa.env.prank(STAKERS[0].address):
        pid = g.propose(*calls)
    to_voting(system)
    for s in STAKERS[1:]:
        vote(system, pid, s, 1)
    past_voting(system)
    return pid, g.queue(pid)


def test_a_queued_proposal_that_keeps_failing_expires_and_anyone_cancels_it(system: System) -> None:
    g, t = system.governor, system.timelock
    # passes every check at propose time, but the Timelock holds no ALM to send
    payload = system.token.transfer.prepare_calldata(LATE.address, 10**30)
    pid, eta = _passed_and_queued(system, ([system.token.address], [0], [payload], "send what we do not have"))
    boa.env.time_travel(seconds=eta - boa.env.evm.patch.timestamp)
    with boa.reverts():
        g.execute(pid)
    assert g.state(pid) == 4
    boa.env.time_travel(seconds=system.params.get("proposal_grace_period") + 1)
    assert g.state(pid) == 6
    with boa.reverts("governor: proposal not queued"):
        g.execute(pid)
    operation = t.hash_operation_batch([system.token.address], [0], [payload], b"\x00" * 32, pid.to_bytes(32, "big"))
    assert t.is_operation_pending(operation)
    with boa.env.prank(LATE.address):
        g.cancel(pid)
    assert g.state(pid) == 7 and not t.is_operation_pending(operation)


def test_nobody_executes_an_expired_proposal_at_the_timelock_directly(system: System) -> None:
    payload = system.params.set.prepare_calldata("protocol_fee_bps", 150)
    pid, eta = _passed_and_queued(system, ([system.params.address], [0], [payload], "late fee"))
    boa.env.time_travel(seconds=eta - boa.env.evm.patch.timestamp + system.params.get("proposal_grace_period") + 1)
    assert system.governor.state(pid) == 6
    with boa.env.prank(LATE.address), boa.reverts("access_control: account is missing role"):
        system.timelock.execute_batch([system.params.address], [0], [payload], b"\x00" * 32, pid.to_bytes(32, "big"))
    assert system.params.get("protocol_fee_bps") == 100


def test_only_the_proposer_cancels_and_only_while_pending(system: System) -> None:
    g = system.governor
    pid = propose(system)
    with boa.env.prank(STAKERS[1].address), boa.reverts("governor: only the proposer cancels a pending proposal"):
        g.cancel(pid)
    other = propose(system, description="withdrawn")
    with boa.env.prank(STAKERS[0].address):
        g.cancel(other)
    assert g.state(other) == 7
    to_voting(system)
    with boa.env.prank(STAKERS[0].address), boa.reverts("governor: proposal cannot be cancelled"):
        g.cancel(pid)
    with boa.env.prank(STAKERS[1].address), boa.reverts("governor: voting not active"):
        g.cast_vote(other, 1)
    vote(system, pid, STAKERS[1], 1)
    past_voting(system)
    eta = g.queue(pid)
    with boa.reverts("governor: proposal cannot be cancelled"):
        g.cancel(pid)  # queued and still executable: the vote stands
    boa.env.time_travel(seconds=eta - boa.env.evm.patch.timestamp)
    g.execute(pid)
    assert system.params.get("protocol_fee_bps") == 150


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
    """Random votes, double votes, stake moves, re-delegations, unstaking and time: the
    tallies always equal the snapshot weights of the distinct voters, never more than all
    voting stake at the snapshot — whoever the ALM is handed to after it."""

    VOTERS = STAKERS + HOLDERS

    def __init__(self) -> None:
        super().__init__()
        self.sys = machine_system()
        self.pid = propose(self.sys, description=f"machine {id(self)}")
        self.snapshot = self.sys.governor.proposals(self.pid).snapshot
        self.weights = [self.sys.governor.vote_weight(self.pid, v.address) for v in self.VOTERS]
        self.voters: set[str] = set()
        to_voting(self.sys)

    @rule(who=st.integers(0, 5), support=st.integers(0, 3))
    def cast(self, who: int, support: int) -> None:
        voter = self.VOTERS[who]
        g = self.sys.governor
        ok = support <= 2 and voter.address not in self.voters and g.state(self.pid) == 1 and self.weights[who] > 0
        with boa.env.prank(voter.address):
            if ok:
                assert g.cast_vote(self.pid, support) == self.weights[who]
                self.voters.add(voter.address)
            else:
                with boa.reverts():
                    g.cast_vote(self.pid, support)

    @rule(who=st.integers(0, 3), amount=st.integers(1, 1_000))
    def move_stake(self, who: int, amount: int) -> None:
        with boa.env.prank(STAKERS[who].address):
            self.sys.registry.add_stake(amount * ALM // 1000)

    @rule(holder=st.integers(0, 1), to=st.integers(0, 5))
    def redelegate(self, holder: int, to: int) -> None:
        with boa.env.prank(HOLDERS[holder].address):
            self.sys.votes.delegate(self.VOTERS[to].address)

    @rule(holder=st.integers(0, 1), amount=st.integers(1, 1_000))
    def unstake_or_stake(self, holder: int, amount: int) -> None:
        v, who = self.sys.votes, HOLDERS[holder].address
        with boa.env.prank(who):
            if v.holders(who).staked >= amount * ALM:
                v.unstake(amount * ALM)
            elif self.sys.token.balanceOf(who) >= amount * ALM:
                v.stake(amount * ALM)

    @rule(seconds=st.sampled_from([60, 3600, 86_400]))
    def time_passes(self, seconds: int) -> None:
        boa.env.time_travel(seconds=seconds)

    @invariant()
    def tallies_match_snapshot_weights(self) -> None:
        g = self.sys.governor
        p = g.proposals(self.pid)
        counted = p.for_votes + p.against_votes + p.abstain_votes
        assert counted == sum(g.weight_at(v, self.snapshot) for v in self.voters)
        total = self.sys.registry.total_stake_at(self.snapshot) + self.sys.votes.total_votes_at(self.snapshot)
        assert counted <= total == TOTAL


VotingMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestVotingMachine = VotingMachine.TestCase
