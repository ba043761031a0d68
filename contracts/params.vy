# pragma version ~=0.4.3
"""
@title Protocol parameters
@custom:contract-name params
@license Apache-2.0
@notice Named uint256 protocol parameters with sane defaults. Only the
        owner (the Timelock once governance is deployed) may change them
        and every change emits `ParamSet`. Names are short strings; other
        contracts read them by `keccak256(name)` through `value(key)`,
        people and tools read them by name through `get(name)`.
        Every parameter defined here carries both bounds. Basis points stay
        at most 100 %. Parameters that would switch a protection off at
        zero carry a lower bound: a stake or bond that costs nothing, a
        slash that takes nothing, a vote or delay that lasts no time, a
        quorum that any one vote meets. Upper bounds keep governance and
        the network usable after any single passed proposal: no proposal
        threshold nobody holds, no quorum no turnout meets, no period or
        delay that never ends, no stake that shuts every node out. The
        Timelock's own delay follows `timelock_delay` (the Governor queues
        with the larger of the two and refuses an `update_delay` outside
        its bounds). Both bounds are checked by `set` and by `check`, which
        the Governor asks when a proposal is made. A new name (read by no
        contract) may be added, unbounded.
"""

from snekmate.auth import ownable

initializes: ownable

exports: (ownable.owner, ownable.transfer_ownership)


event ParamSet:
    key: indexed(bytes32)
    name: String[32]
    old_value: uint256
    new_value: uint256


MAX_PARAMS: constant(uint256) = 64
BPS: constant(uint256) = 10_000
ALM: constant(uint256) = 10**18
HOUR: constant(uint256) = 3600
DAY: constant(uint256) = 86400

# @dev keccak256(name) -> value
value: public(HashMap[bytes32, uint256])
# @dev keccak256(name) -> inclusive upper bound (0 = unbounded)
upper_bound: public(HashMap[bytes32, uint256])
# @dev keccak256(name) -> inclusive lower bound (0 = none: any uint256 is at least 0)
lower_bound: public(HashMap[bytes32, uint256])
# @dev keccak256(name) -> known
known: public(HashMap[bytes32, bool])
# @dev every name ever set, for enumeration
names: public(DynArray[String[32], MAX_PARAMS])


@deploy
def __init__():
    ownable.__init__()
    # fees and shares, in basis points of an amount: (name, default, lower, upper)
    self._define("protocol_fee_bps", 100, 0, BPS)
    self._define("royalty_cap_bps", 3000, 0, BPS)
    self._define("slash_bps", 1000, 1, BPS)  # a guilty verdict must cost something
    # no case decided by a sliver of the stake, nor one no turnout can ever decide
    self._define("fraud_quorum_bps", 5000, 1000, 6000)
    self._define("reporter_reward_bps", 2000, 0, BPS)
    self._define("fraud_forfeit_bps", 5000, 0, BPS)
    self._define("juror_penalty_bps", 500, 1, 5000)  # voting against the verdict has a price
    # stakes, in ALM wei (18 decimals): at least 1 ALM, or there is nothing to slash or
    # forfeit; at most a sum that does not shut every new node out
    self._define("min_provider_stake", 1000 * ALM, ALM, 1_000_000 * ALM)
    self._define("min_validator_stake", 5000 * ALM, ALM, 1_000_000 * ALM)
    self._define("fraud_bond", 100 * ALM, ALM, 100_000 * ALM)
    # durations, in seconds: long enough that the other side can act in time, short enough
    # that nothing waits for ever. unbonding_period is also the lookback of every vote.
    self._define("unbonding_period", 7 * DAY, DAY, 30 * DAY)  # a cheater cannot leave before its case ends
    self._define("channel_close_delay", DAY, HOUR, 30 * DAY)  # a provider redeems before a channel closes
    self._define("fraud_voting_period", DAY, 60, 14 * DAY)  # validators re-check and vote
    # governance: delays in seconds, quorum in bps of the voting supply; the upper bounds
    # keep governance usable after any single proposal (a threshold nobody reaches, a
    # quorum no turnout meets, or a period that never ends would lock it for ever)
    self._define("voting_delay", 60, 1, 7 * DAY)  # the snapshot is the second before the proposal
    self._define("voting_period", 3 * DAY, HOUR, 14 * DAY)
    self._define("quorum_bps", 400, 100, 2000)
    self._define("proposal_threshold", 1000 * ALM, ALM, 100_000 * ALM)  # proposals are not free to spam
    self._define("timelock_delay", 2 * DAY, HOUR, 14 * DAY)  # users see a change coming and can leave
    self._define("proposal_grace_period", 14 * DAY, DAY, 30 * DAY)


@internal
def _define(name: String[32], default_value: uint256, lower: uint256, upper: uint256):
    key: bytes32 = keccak256(name)
    self.known[key] = True
    self.lower_bound[key] = lower
    self.upper_bound[key] = upper
    self.value[key] = default_value
    self.names.append(name)
    log ParamSet(key=key, name=name, old_value=0, new_value=default_value)


@external
@view
def get(name: String[32]) -> uint256:
    """
    @notice Reads a parameter by name; reverts on an unknown name.
    @param name The parameter's name, e.g. "protocol_fee_bps".
    @return uint256 Its current value.
    """
    key: bytes32 = keccak256(name)
    assert self.known[key], "params: unknown name"
    return self.value[key]


@external
@view
def count() -> uint256:
    """
    @notice Number of named parameters (for enumeration with `names`).
    """
    return len(self.names)


@external
def set(name: String[32], new_value: uint256):
    """
    @notice Sets a parameter. A new name is added (unbounded); a known
            parameter must stay within its lower and upper bounds. Owner
            only.
    @param name The parameter's name.
    @param new_value Its new value.
    """
    ownable._check_owner()
    self._check(name, new_value)
    key: bytes32 = keccak256(name)
    if not self.known[key]:
        self.known[key] = True
        self.names.append(name)
    old: uint256 = self.value[key]
    self.value[key] = new_value
    log ParamSet(key=key, name=name, old_value=old, new_value=new_value)


@external
@view
def check(name: String[32], new_value: uint256) -> bool:
    """
    @notice Reverts with the reason `set(name, new_value)` would revert with
            now (empty name, either bound, too many names), ownership aside. The
            Governor asks it when a proposal is made, so a change that can
            never execute is refused before anyone votes on it.
    @return bool True.
    """
    self._check(name, new_value)
    return True


@internal
@view
def _check(name: String[32], new_value: uint256):
    assert len(name) > 0, "params: empty name"
    key: bytes32 = keccak256(name)
    if not self.known[key]:
        assert len(self.names) < MAX_PARAMS, "params: too many names"
    bound: uint256 = self.upper_bound[key]
    assert bound == 0 or new_value <= bound, "params: above bound"
    assert new_value >= self.lower_bound[key], "params: below bound"
