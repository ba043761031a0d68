# pragma version ~=0.4.3
"""
@title Allmende Governor
@custom:contract-name governor
@license Apache-2.0
@notice Proposals are lists of calls (target, value, calldata) with a description.
        Voting weight is the voter's ALM stake in Registry as of the proposal's
        start (a snapshot), so tokens moved or re-staked after it give no extra
        weight, and each account votes once. Voting delay, voting period, quorum
        (bps of all stake at the start), the grace period and the proposal
        threshold come from Params; a proposal keeps the values in force when it
        was created, so a later change of Params cannot revive a defeated
        proposal. A proposal passes with quorum (for + abstain) and more for than
        against; it must then be queued in the Timelock within the grace period
        (or it expires) and is executable after the Timelock's delay.
"""

from interfaces import IParams
from interfaces import IRegistry
from interfaces import ITimelock

BPS: constant(uint256) = 10_000
MAX_CALLS: constant(uint256) = 8

DELAY_KEY: constant(bytes32) = keccak256("voting_delay")
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


registry: public(immutable(IRegistry))
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
def __init__(registry_: IRegistry, params_: IParams, timelock_: ITimelock):
    registry = registry_
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
    @notice Proposes calls; the caller's stake just before now must reach the threshold.
    @return uint256 The proposal id: keccak256 of the calls and the description.
    """
    assert len(targets) > 0, "governor: empty proposal"
    assert len(targets) == len(values) and len(targets) == len(payloads), "governor: length mismatch"
    weight: uint256 = staticcall registry.stake_at(msg.sender, block.timestamp - 1)
    assert weight >= staticcall params.value(THRESHOLD_KEY), "governor: stake below proposal threshold"
    proposal_id: uint256 = convert(keccak256(abi_encode(targets, values, payloads, keccak256(description))), uint256)
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
    @notice Votes against (0), for (1) or abstain (2) with the stake held at the start.
    @return uint256 The weight counted.
    """
    assert self._state(proposal_id) == ACTIVE, "governor: voting not active"
    assert support <= SUPPORT_ABSTAIN, "governor: bad support value"
    assert not self.has_voted[proposal_id][msg.sender], "governor: already voted"
    start: uint256 = self.proposals[proposal_id].start
    weight: uint256 = staticcall registry.stake_at(msg.sender, start)
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
    delay: uint256 = staticcall timelock.get_minimum_delay()
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
@view
def state(proposal_id: uint256) -> uint8:
    """
    @notice 0 pending, 1 active, 2 defeated, 3 succeeded, 4 queued, 5 executed, 6 expired.
    """
    return self._state(proposal_id)


@external
@view
def quorum(proposal_id: uint256) -> uint256:
    """
    @notice Votes (for + abstain) a proposal needs: its quorum_bps (fixed when it was
            created) of all stake at its start.
    """
    return self._quorum(proposal_id)


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
    total: uint256 = staticcall registry.total_stake_at(self.proposals[proposal_id].start)
    return total * self.proposals[proposal_id].quorum_bps // BPS


@internal
@view
def _state(proposal_id: uint256) -> uint8:
    p: Proposal = self.proposals[proposal_id]
    assert p.proposer != empty(address), "governor: unknown proposal"
    if p.executed:
        return EXECUTED
    if p.queued:
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
