# pragma version ~=0.4.3
"""
@title Allmende Governor
@custom:contract-name governor
@license Apache-2.0
@notice Proposals are lists of calls (target, value, calldata) with a description.
        Voting weight is the voter's ALM stake in Registry plus the voting power
        token holders delegated to it in Votes, each the lowest it was through
        the proposal's lookback: from Params `unbonding_period` before the
        snapshot (the end of the second before the proposal was made) to the
        snapshot, as Verdicts does for fraud votes. Stake rented for the
        snapshot, or staked, moved or re-delegated after it, gives no weight,
        and each account votes once. The proposal id hashes the proposer with
        the calls and description, so nobody can take (and cancel) the id of
        another proposer's proposal. Voting delay, voting
        period, quorum (bps of all voting stake at the snapshot), the grace
        period and the proposal threshold come from Params; a proposal keeps
        the values in force when it was created, so a later change of Params
        cannot revive a defeated proposal. Calls are checked when proposed:
        none is empty or goes to an account without code, and a Params.set
        must be one Params would accept now (its bounds), so nobody votes on
        a change that can never execute. A proposal passes with quorum
        (for + abstain) and more for than against; it must then be queued in
        the Timelock within the grace period, and executed within the grace
        period after its eta, or it expires. It is queued with Params
        `timelock_delay` (or the Timelock's own minimum, if larger), and a call
        to the Timelock's `update_delay` must be within that parameter's
        bounds, so the delay users rely on cannot be switched off; an expired queued proposal can be
        cancelled by anyone (it leaves the Timelock), a pending one by its
        proposer.
"""

from interfaces import IParams
from interfaces import IRegistry
from interfaces import ITimelock
from interfaces import IVotes

BPS: constant(uint256) = 10_000
MAX_CALLS: constant(uint256) = 8

DELAY_KEY: constant(bytes32) = keccak256("voting_delay")
LOOKBACK_KEY: constant(bytes32) = keccak256("unbonding_period")
TIMELOCK_DELAY_KEY: constant(bytes32) = keccak256("timelock_delay")
PERIOD_KEY: constant(bytes32) = keccak256("voting_period")
QUORUM_KEY: constant(bytes32) = keccak256("quorum_bps")
THRESHOLD_KEY: constant(bytes32) = keccak256("proposal_threshold")
GRACE_KEY: constant(bytes32) = keccak256("proposal_grace_period")

# proposal states
PENDING: constant(uint8) = 0
ACTIVE: constant(uint8) = 1
DEFEATED: constant(uint8) = 2
SUCCEEDED: constant(uint8) = 3
QUEUED: constant(uint8) = 4
EXECUTED: constant(uint8) = 5
EXPIRED: constant(uint8) = 6
CANCELED: constant(uint8) = 7

SUPPORT_AGAINST: constant(uint8) = 0
SUPPORT_FOR: constant(uint8) = 1
SUPPORT_ABSTAIN: constant(uint8) = 2


struct Proposal:
    proposer: address
    start: uint256
    end: uint256
    for_votes: uint256
    against_votes: uint256
    abstain_votes: uint256
    queued: bool
    executed: bool
    eta: uint256
    description: String[1024]
    quorum_bps: uint256  # Params quorum_bps when the proposal was created
    expires_at: uint256  # a succeeded proposal not queued by then has expired
    snapshot: uint256  # vote weights and the quorum base are read at the end of this second
    canceled: bool
    held_from: uint256  # weights are what was held from here to the snapshot


event ProposalCreated:
    proposal_id: indexed(uint256)
    proposer: indexed(address)
    targets: DynArray[address, MAX_CALLS]
    start: uint256
    end: uint256
    description: String[1024]


event VoteCast:
    proposal_id: indexed(uint256)
    voter: indexed(address)
    support: uint8
    weight: uint256


event ProposalQueued:
    proposal_id: indexed(uint256)
    eta: uint256


event ProposalExecuted:
    proposal_id: indexed(uint256)


event ProposalCanceled:
    proposal_id: indexed(uint256)


registry: public(immutable(IRegistry))
votes: public(immutable(IVotes))
params: public(immutable(IParams))
timelock: public(immutable(ITimelock))

proposals: public(HashMap[uint256, Proposal])
proposal_count: public(uint256)
proposal_at: public(HashMap[uint256, uint256])
has_voted: public(HashMap[uint256, HashMap[address, bool]])
_targets: HashMap[uint256, DynArray[address, MAX_CALLS]]
_values: HashMap[uint256, DynArray[uint256, MAX_CALLS]]
_payloads: HashMap[uint256, DynArray[Bytes[1_024], MAX_CALLS]]


@deploy
def __init__(registry_: IRegistry, votes_: IVotes, params_: IParams, timelock_: ITimelock):
    registry = registry_
    votes = votes_
    params = params_
    timelock = timelock_


@external
def propose(
    targets: DynArray[address, MAX_CALLS],
    values: DynArray[uint256, MAX_CALLS],
    payloads: DynArray[Bytes[1_024], MAX_CALLS],
    description: String[1024],
) -> uint256:
    """
    @notice Proposes calls; the caller's voting weight just before now must reach
            the threshold. Every call is checked: not empty, to a contract, and a
            Params.set within what Params accepts now.
    @return uint256 The proposal id: keccak256 of the proposer, the calls and the
            description.
    """
    assert len(targets) > 0, "governor: empty proposal"
    assert len(targets) == len(values) and len(targets) == len(payloads), "governor: length mismatch"
    for i: uint256 in range(len(targets), bound=MAX_CALLS):
        self._check_call(targets[i], values[i], payloads[i])
    # one snapshot for every weight: the end of the second before this one, so stake
    # added in this block (even before this transaction) weighs nothing
    snapshot: uint256 = block.timestamp - 1
    held_from: uint256 = snapshot - min(staticcall params.value(LOOKBACK_KEY), snapshot)
    weight: uint256 = self._weight(msg.sender, held_from, snapshot)
    assert weight >= staticcall params.value(THRESHOLD_KEY), "governor: stake below proposal threshold"
    # the proposer is part of the id: a copy by someone else is another proposal, so
    # cancelling the copy cannot block the original
    proposal_id: uint256 = convert(
        keccak256(abi_encode(msg.sender, targets, values, payloads, keccak256(description))), uint256
    )
    assert self.proposals[proposal_id].proposer == empty(address), "governor: proposal exists"
    start: uint256 = block.timestamp + staticcall params.value(DELAY_KEY)
    end: uint256 = start + staticcall params.value(PERIOD_KEY)
    self.proposals[proposal_id] = Proposal(
        proposer=msg.sender,
        start=start,
        end=end,
        for_votes=0,
        against_votes=0,
        abstain_votes=0,
        queued=False,
        executed=False,
        eta=0,
        description=description,
        quorum_bps=staticcall params.value(QUORUM_KEY),
        expires_at=end + staticcall params.value(GRACE_KEY),
        snapshot=snapshot,
        canceled=False,
        held_from=held_from,
    )
    self._targets[proposal_id] = targets
    self._values[proposal_id] = values
    self._payloads[proposal_id] = payloads
    self.proposal_at[self.proposal_count] = proposal_id
    self.proposal_count += 1
    log ProposalCreated(
        proposal_id=proposal_id, proposer=msg.sender, targets=targets, start=start, end=end, description=description
    )
    return proposal_id


@external
def cast_vote(proposal_id: uint256, support: uint8) -> uint256:
    """
    @notice Votes against (0), for (1) or abstain (2) with the weight held at the
            proposal's snapshot (own Registry stake + voting power delegated in Votes).
    @return uint256 The weight counted.
    """
    assert self._state(proposal_id) == ACTIVE, "governor: voting not active"
    assert support <= SUPPORT_ABSTAIN, "governor: bad support value"
    assert not self.has_voted[proposal_id][msg.sender], "governor: already voted"
    weight: uint256 = self._weight(
        msg.sender, self.proposals[proposal_id].held_from, self.proposals[proposal_id].snapshot
    )
    assert weight > 0, "governor: no stake at snapshot"
    self.has_voted[proposal_id][msg.sender] = True
    if support == SUPPORT_FOR:
        self.proposals[proposal_id].for_votes += weight
    elif support == SUPPORT_AGAINST:
        self.proposals[proposal_id].against_votes += weight
    else:
        self.proposals[proposal_id].abstain_votes += weight
    log VoteCast(proposal_id=proposal_id, voter=msg.sender, support=support, weight=weight)
    return weight


@external
def queue(proposal_id: uint256) -> uint256:
    """
    @notice Schedules a passed proposal in the Timelock; anyone may call it.
    @return uint256 The time from which it can be executed.
    """
    assert self._state(proposal_id) == SUCCEEDED, "governor: proposal not successful"
    # the delay Params promises users, even if the Timelock's own minimum is lower
    delay: uint256 = max(staticcall timelock.get_minimum_delay(), staticcall params.value(TIMELOCK_DELAY_KEY))
    extcall timelock.schedule_batch(
        self._call_targets(proposal_id), self._call_values(proposal_id), self._call_payloads(proposal_id),
        empty(bytes32), convert(proposal_id, bytes32), delay
    )
    eta: uint256 = block.timestamp + delay
    self.proposals[proposal_id].queued = True
    self.proposals[proposal_id].eta = eta
    log ProposalQueued(proposal_id=proposal_id, eta=eta)
    return eta


@external
def execute(proposal_id: uint256):
    """
    @notice Executes a queued proposal once the Timelock's delay has passed.
    """
    assert self._state(proposal_id) == QUEUED, "governor: proposal not queued"
    operation: bytes32 = staticcall timelock.hash_operation_batch(
        self._call_targets(proposal_id), self._call_values(proposal_id), self._call_payloads(proposal_id),
        empty(bytes32), convert(proposal_id, bytes32)
    )
    assert staticcall timelock.is_operation_ready(operation), "governor: timelock delay not over"
    self.proposals[proposal_id].executed = True
    extcall timelock.execute_batch(
        self._call_targets(proposal_id), self._call_values(proposal_id), self._call_payloads(proposal_id),
        empty(bytes32), convert(proposal_id, bytes32)
    )
    log ProposalExecuted(proposal_id=proposal_id)


@external
def cancel(proposal_id: uint256):
    """
    @notice Cancels a proposal: its proposer may while it is pending (before any
            vote); anyone may once it expired in the Timelock's queue (queued,
            never executed within the grace period after its eta, e.g. because
            a call keeps failing), which also removes it from the Timelock.
    """
    state: uint8 = self._state(proposal_id)
    p: Proposal = self.proposals[proposal_id]
    if state == PENDING:
        assert msg.sender == p.proposer, "governor: only the proposer cancels a pending proposal"
    else:
        assert state == EXPIRED and p.queued, "governor: proposal cannot be cancelled"
        operation: bytes32 = staticcall timelock.hash_operation_batch(
            self._call_targets(proposal_id), self._call_values(proposal_id), self._call_payloads(proposal_id),
            empty(bytes32), convert(proposal_id, bytes32)
        )
        extcall timelock.cancel(operation)
    self.proposals[proposal_id].canceled = True
    log ProposalCanceled(proposal_id=proposal_id)


@external
@view
def state(proposal_id: uint256) -> uint8:
    """
    @notice 0 pending, 1 active, 2 defeated, 3 succeeded, 4 queued, 5 executed, 6 expired,
            7 canceled.
    """
    return self._state(proposal_id)


@external
@view
def quorum(proposal_id: uint256) -> uint256:
    """
    @notice Votes (for + abstain) a proposal needs: its quorum_bps (fixed when it was
            created) of all voting stake at its snapshot.
    """
    return self._quorum(proposal_id)


@external
@view
def weight_at(account: address, timestamp: uint256) -> uint256:
    """
    @notice The voting weight a proposal made in the second after `timestamp`
            would give the account: its Registry stake plus the ALM holders
            delegated to it in Votes, each as held through the lookback (Params
            `unbonding_period` now) ending at `timestamp`.
    """
    return self._weight(account, timestamp - min(staticcall params.value(LOOKBACK_KEY), timestamp), timestamp)


@external
@view
def vote_weight(proposal_id: uint256, account: address) -> uint256:
    """
    @notice What `account`'s vote on the proposal weighs (its weight held through
            the proposal's lookback).
    """
    assert self.proposals[proposal_id].proposer != empty(address), "governor: unknown proposal"
    return self._weight(account, self.proposals[proposal_id].held_from, self.proposals[proposal_id].snapshot)


@external
@view
def calls(proposal_id: uint256) -> (DynArray[address, MAX_CALLS], DynArray[uint256, MAX_CALLS], DynArray[Bytes[1_024], MAX_CALLS]):
    """
    @notice The calls a proposal makes.
    """
    return self._targets[proposal_id], self._values[proposal_id], self._payloads[proposal_id]


@internal
@view
def _quorum(proposal_id: uint256) -> uint256:
    # every weight is at most the voter's stake at either end of the lookback, so the
    # smaller total of the two ends bounds the sum of the votes
    snapshot: uint256 = self.proposals[proposal_id].snapshot
    start: uint256 = self.proposals[proposal_id].held_from
    total: uint256 = min(
        staticcall registry.total_stake_at(snapshot) + staticcall votes.total_votes_at(snapshot),
        staticcall registry.total_stake_at(start) + staticcall votes.total_votes_at(start),
    )
    return total * self.proposals[proposal_id].quorum_bps // BPS


@internal
@view
def _weight(account: address, start: uint256, end: uint256) -> uint256:
    return staticcall registry.stake_held(account, start, end) + staticcall votes.votes_held(account, start, end)


@internal
@view
def _check_call(target: address, amount: uint256, payload: Bytes[1_024]):
    if len(payload) == 0:
        assert amount > 0, "governor: empty call"
        return
    assert target.is_contract, "governor: call to an account without code"
    assert len(payload) >= 4, "governor: calldata shorter than a selector"
    if target == params.address and slice(payload, 0, 4) == method_id("set(string,uint256)"):
        # Params.check takes the same arguments as set and reverts with set's reason
        # (a bound, an empty name): the same calldata under the other selector
        ok: bool = False
        reason: Bytes[256] = b""
        ok, reason = raw_call(
            params.address,
            concat(method_id("check(string,uint256)"), slice(payload, 4, len(payload) - 4)),
            max_outsize=256,
            is_static_call=True,
            revert_on_failure=False,
        )
        if not ok:
            if len(reason) > 0:
                raw_revert(reason)  # Params' own reason, e.g. "params: above bound"
            raise "governor: Params.set calldata does not decode"
    if target == timelock.address and slice(payload, 0, 4) == method_id("update_delay(uint256)"):
        # the Timelock's own delay stays within the bounds of the parameter users read
        assert len(payload) == 36, "governor: update_delay calldata does not decode"
        delay: uint256 = convert(slice(payload, 4, 32), uint256)
        assert staticcall params.check("timelock_delay", delay)  # reverts with the bound it breaks


@internal
@view
def _state(proposal_id: uint256) -> uint8:
    p: Proposal = self.proposals[proposal_id]
    assert p.proposer != empty(address), "governor: unknown proposal"
    if p.canceled:
        return CANCELED
    if p.executed:
        return EXECUTED
    if p.queued:
        # the same grace period again after the eta: a batch that keeps failing expires
        if block.timestamp > p.eta + (p.expires_at - p.end):
            return EXPIRED
        return QUEUED
    if block.timestamp <= p.start:
        return PENDING
    if block.timestamp <= p.end:
        return ACTIVE
    if p.for_votes > p.against_votes and p.for_votes + p.abstain_votes >= self._quorum(proposal_id):
        if block.timestamp > p.expires_at:
            return EXPIRED
        return SUCCEEDED
    return DEFEATED


@internal
@view
def _call_targets(proposal_id: uint256) -> DynArray[address, 255]:
    out: DynArray[address, 255] = []
    for t: address in self._targets[proposal_id]:
        out.append(t)
    return out


@internal
@view
def _call_values(proposal_id: uint256) -> DynArray[uint256, 255]:
    out: DynArray[uint256, 255] = []
    for v: uint256 in self._values[proposal_id]:
        out.append(v)
    return out


@internal
@view
def _call_payloads(proposal_id: uint256) -> DynArray[Bytes[1_024], 255]:
    out: DynArray[Bytes[1_024], 255] = []
    for p: Bytes[1_024] in self._payloads[proposal_id]:
        out.append(p)
    return out
