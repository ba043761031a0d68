# pragma version ~=0.4.3
"""
@title Governance stake of token holders
@custom:contract-name votes
@license Apache-2.0
@notice A token holder who runs no node takes part in governance here: it
        locks ALM (`stake`) and its voting power goes to a delegate of its
        choice, itself by default (`delegate`). The Governor weighs a vote by
        `votes_at(voter, snapshot)`, a checkpoint as of a moment before the
        proposal was made, so tokens staked, moved or re-delegated after it
        add nothing: the same ALM cannot vote twice. The Governor counts only
        power held through a lookback as long as the unbonding period
        (`votes_held`), so power rented for the snapshot weighs nothing. Stake leaves in two
        steps like Registry stake: `unstake` removes the voting power at
        once, `withdraw` returns the ALM after Params `unbonding_period`, so
        borrowed ALM has to stay locked for that long to weigh anything.
        This stake is never slashed; it does not make anyone a provider or
        a validator.
"""

from ethereum.ercs import IERC20
from interfaces import IParams

UNBONDING_PERIOD_KEY: constant(bytes32) = keccak256("unbonding_period")
# @dev checkpoints `votes_held` reads inside one window (more: the window weighs nothing)
MAX_HELD_SCAN: constant(uint256) = 128


struct Checkpoint:
    at: uint256  # block timestamp from which `votes` holds
    votes: uint256


struct Holder:
    staked: uint256  # ALM locked and voting (through `delegate`)
    delegate: address  # who votes with it; empty until the first stake, then the holder itself
    unbonding: uint256  # ALM on its way out, voting for nobody
    unbond_at: uint256  # when `unbonding` can be withdrawn


event Staked:
    holder: indexed(address)
    amount: uint256
    staked: uint256


event DelegateChanged:
    holder: indexed(address)
    from_delegate: indexed(address)
    to_delegate: indexed(address)


event VotesChanged:
    delegate: indexed(address)
    votes: uint256


event Unstaking:
    holder: indexed(address)
    amount: uint256
    unbond_at: uint256


event Withdrawn:
    holder: indexed(address)
    amount: uint256


stake_token: public(immutable(IERC20))
params: public(immutable(IParams))

holders: public(HashMap[address, Holder])
# @dev voting power delegated to an account, now
votes_of: public(HashMap[address, uint256])
# @dev all staked ALM, now (every unit votes for exactly one delegate)
total_votes: public(uint256)

_checkpoints: HashMap[address, HashMap[uint256, Checkpoint]]
_checkpoint_count: HashMap[address, uint256]
_total_checkpoints: HashMap[uint256, Checkpoint]
_total_checkpoint_count: uint256


@deploy
def __init__(stake_token_: IERC20, params_: IParams):
    stake_token = stake_token_
    params = params_


# ------------------------------------------------------------------ stake


@external
def stake(amount: uint256):
    """
    @notice Locks `amount` ALM (pulled with transferFrom) and adds it to the
            voting power of the caller's delegate (the caller, unless it chose
            another with `delegate`).
    @param amount ALM in wei-units, more than 0.
    """
    assert amount > 0, "votes: zero amount"
    assert extcall stake_token.transferFrom(msg.sender, self, amount, default_return_value=True), "votes: transfer failed"
    holder: Holder = self.holders[msg.sender]
    if holder.delegate == empty(address):
        holder.delegate = msg.sender
        log DelegateChanged(holder=msg.sender, from_delegate=empty(address), to_delegate=msg.sender)
    self.holders[msg.sender] = Holder(
        staked=holder.staked + amount, delegate=holder.delegate, unbonding=holder.unbonding, unbond_at=holder.unbond_at
    )
    self._move_votes(empty(address), holder.delegate, amount)
    self._write_total(self.total_votes + amount)
    log Staked(holder=msg.sender, amount=amount, staked=holder.staked + amount)


@external
def delegate(to: address):
    """
    @notice Gives the voting power of all the caller's staked ALM to `to`
            (itself to vote directly). Proposals made before this keep the
            weights of their snapshot.
    @param to The new delegate; not the zero address.
    """
    assert to != empty(address), "votes: zero delegate"
    holder: Holder = self.holders[msg.sender]
    old: address = holder.delegate
    if old == empty(address):
        old = msg.sender  # nothing staked yet: the choice holds for the first stake
    self.holders[msg.sender].delegate = to
    self._move_votes(old, to, holder.staked)
    log DelegateChanged(holder=msg.sender, from_delegate=old, to_delegate=to)


@external
def unstake(amount: uint256):
    """
    @notice Takes `amount` of the caller's stake out of voting now; the ALM can
            be withdrawn after Params `unbonding_period`. Each call restarts
            the clock for everything that is unstaking.
    """
    holder: Holder = self.holders[msg.sender]
    assert amount > 0, "votes: zero amount"
    assert amount <= holder.staked, "votes: unstake above stake"
    unbond_at: uint256 = block.timestamp + staticcall params.value(UNBONDING_PERIOD_KEY)
    self.holders[msg.sender] = Holder(
        staked=holder.staked - amount,
        delegate=holder.delegate,
        unbonding=holder.unbonding + amount,
        unbond_at=unbond_at,
    )
    self._move_votes(holder.delegate, empty(address), amount)
    self._write_total(self.total_votes - amount)
    log Unstaking(holder=msg.sender, amount=amount, unbond_at=unbond_at)


@external
def withdraw() -> uint256:
    """
    @notice Returns every unstaked ALM once its unbonding period is over.
    @return uint256 The amount returned.
    """
    holder: Holder = self.holders[msg.sender]
    assert holder.unbonding > 0, "votes: nothing unstaking"
    assert block.timestamp >= holder.unbond_at, "votes: still unbonding"
    self.holders[msg.sender].unbonding = 0
    assert extcall stake_token.transfer(msg.sender, holder.unbonding, default_return_value=True), "votes: transfer failed"
    log Withdrawn(holder=msg.sender, amount=holder.unbonding)
    return holder.unbonding


# ------------------------------------------------------------- checkpoints


@external
@view
def votes_at(account: address, timestamp: uint256) -> uint256:
    """
    @notice Voting power delegated to `account` at the end of `timestamp`.
    """
    low: uint256 = 0
    high: uint256 = self._checkpoint_count[account]
    for _: uint256 in range(256):
        if low >= high:
            break
        mid: uint256 = (low + high) // 2
        if self._checkpoints[account][mid].at > timestamp:
            high = mid
        else:
            low = mid + 1
    if low == 0:
        return 0
    return self._checkpoints[account][low - 1].votes


@external
@view
def total_votes_at(timestamp: uint256) -> uint256:
    """
    @notice All staked ALM at the end of `timestamp`.
    """
    low: uint256 = 0
    high: uint256 = self._total_checkpoint_count
    for _: uint256 in range(256):
        if low >= high:
            break
        mid: uint256 = (low + high) // 2
        if self._total_checkpoints[mid].at > timestamp:
            high = mid
        else:
            low = mid + 1
    if low == 0:
        return 0
    return self._total_checkpoints[low - 1].votes


@external
@view
def votes_held(account: address, start: uint256, end: uint256) -> uint256:
    """
    @notice The lowest voting power delegated to `account` at any moment from the
            end of `start` to the end of `end`: power held through the whole
            window. 0 if it changed more than 128 times within the window.
    """
    count: uint256 = self._checkpoint_count[account]
    low: uint256 = 0
    high: uint256 = count
    for _: uint256 in range(256):
        if low >= high:
            break
        mid: uint256 = (low + high) // 2
        if self._checkpoints[account][mid].at > start:
            high = mid
        else:
            low = mid + 1
    if low == 0:
        return 0  # no power at the window's start
    held: uint256 = self._checkpoints[account][low - 1].votes
    for i: uint256 in range(low, low + MAX_HELD_SCAN, bound=MAX_HELD_SCAN):
        if i >= count:
            return held
        checkpoint: Checkpoint = self._checkpoints[account][i]
        if checkpoint.at > end:
            return held
        held = min(held, checkpoint.votes)
    if low + MAX_HELD_SCAN < count and self._checkpoints[account][low + MAX_HELD_SCAN].at <= end:
        return 0
    return held


# --------------------------------------------------------------- internals


@internal
def _move_votes(source: address, destination: address, amount: uint256):
    # the zero address stands for "no delegate": stake arriving or leaving
    if source == destination or amount == 0:
        return
    if source != empty(address):
        self._write(source, self.votes_of[source] - amount)
    if destination != empty(address):
        self._write(destination, self.votes_of[destination] + amount)


@internal
def _write(account: address, votes: uint256):
    self.votes_of[account] = votes
    n: uint256 = self._checkpoint_count[account]
    # one checkpoint per second: a later change in the same second overwrites it
    if n > 0 and self._checkpoints[account][n - 1].at == block.timestamp:
        self._checkpoints[account][n - 1].votes = votes
    else:
        self._checkpoints[account][n] = Checkpoint(at=block.timestamp, votes=votes)
        self._checkpoint_count[account] = n + 1
    log VotesChanged(delegate=account, votes=votes)


@internal
def _write_total(total: uint256):
    self.total_votes = total
    m: uint256 = self._total_checkpoint_count
    if m > 0 and self._total_checkpoints[m - 1].at == block.timestamp:
        self._total_checkpoints[m - 1].votes = total
    else:
        self._total_checkpoints[m] = Checkpoint(at=block.timestamp, votes=total)
        self._total_checkpoint_count = m + 1
