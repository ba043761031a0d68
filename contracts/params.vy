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
        Basis-point parameters carry an upper bound so that governance
        cannot set a fee above 100 %.
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

# @dev keccak256(name) -> value
value: public(HashMap[bytes32, uint256])
# @dev keccak256(name) -> inclusive upper bound (0 = unbounded)
upper_bound: public(HashMap[bytes32, uint256])
# @dev keccak256(name) -> known
known: public(HashMap[bytes32, bool])
# @dev every name ever set, for enumeration
names: public(DynArray[String[32], MAX_PARAMS])


@deploy
def __init__():
    ownable.__init__()
    # fees and shares, in basis points of an amount
    self._define("protocol_fee_bps", 100, BPS)
    self._define("royalty_cap_bps", 3000, BPS)
    self._define("slash_bps", 1000, BPS)
    self._define("fraud_quorum_bps", 5000, BPS)
    self._define("reporter_reward_bps", 2000, BPS)
    self._define("fraud_forfeit_bps", 5000, BPS)
    # stakes, in ALM wei (18 decimals)
    self._define("min_provider_stake", 1000 * 10**18, 0)
    self._define("min_validator_stake", 5000 * 10**18, 0)
    self._define("fraud_bond", 100 * 10**18, 0)
    # durations, in seconds
    self._define("unbonding_period", 7 * 86400, 0)
    self._define("channel_close_delay", 86400, 0)
    self._define("fraud_voting_period", 86400, 0)
    # governance: delays in seconds, quorum in bps of the voting supply
    self._define("voting_delay", 60, 0)
    self._define("voting_period", 3 * 86400, 0)
    self._define("quorum_bps", 400, BPS)
    self._define("proposal_threshold", 1000 * 10**18, 0)
    self._define("timelock_delay", 2 * 86400, 0)
    self._define("proposal_grace_period", 14 * 86400, 0)


@internal
def _define(name: String[32], default_value: uint256, bound: uint256):
    key: bytes32 = keccak256(name)
    self.known[key] = True
    self.upper_bound[key] = bound
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
            basis-point parameter must stay within its bound. Owner only.
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
            now (empty name, bound, too many names), ownership aside. The
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
