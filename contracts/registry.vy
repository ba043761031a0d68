# pragma version ~=0.4.3
"""
@title Registry of providers and validators
@custom:contract-name registry
@license Apache-2.0
@notice Providers and validators stake ALM here. A provider publishes an
        HTTP endpoint, an X25519 public key for end-to-end encrypted
        prompts and offers (model id -> price per 1M input and per 1M
        output tokens, in payment-token units). Gateways page through
        the active providers of a model with `providers_of`.
        Stake leaves in two steps: `unbond`, then `withdraw` once
        Params `unbonding_period` has passed; stake that is unbonding can
        still be slashed, and nothing is withdrawn while a fraud case
        against the account is open (`hold` / `release`), so unbonding
        cannot outrun a case. Only the configured `verdicts` contract may
        hold or pause; the owner (the Timelock) configures it. A Verdicts
        contract that holds an account keeps the right to slash, pause and
        release it after governance replaced it, so a case open at the
        migration still resolves and the stake it holds is released.
        Votes weigh stake *held* through a lookback (`stake_held`): the
        lowest stake an account had at any moment of the window, so stake
        rented for the vote's second weighs nothing.
        The EIP-712 domain of this contract is the one providers sign
        `Receipt`s under, so receipts can be checked on chain here.
"""

from snekmate.auth import ownable
from snekmate.utils import ecdsa
from snekmate.utils import eip712_domain_separator as eip712
from ethereum.ercs import IERC20
from interfaces import IParams

initializes: ownable
initializes: eip712

exports: (ownable.owner, ownable.transfer_ownership, eip712.eip712Domain)


ROLE_NONE: constant(uint8) = 0
ROLE_PROVIDER: constant(uint8) = 1
ROLE_VALIDATOR: constant(uint8) = 2

MAX_PAGE: constant(uint256) = 100
MAX_MODELS_PER_PROVIDER: constant(uint256) = 32
# @dev checkpoints `stake_held` reads inside one window; an account that changed its stake
#      more often than this within a lookback weighs nothing in it (it cannot gain weight)
MAX_HELD_SCAN: constant(uint256) = 128

MIN_PROVIDER_STAKE_KEY: constant(bytes32) = keccak256("min_provider_stake")
MIN_VALIDATOR_STAKE_KEY: constant(bytes32) = keccak256("min_validator_stake")
UNBONDING_PERIOD_KEY: constant(bytes32) = keccak256("unbonding_period")

RECEIPT_TYPEHASH: constant(bytes32) = keccak256(
    "Receipt(bytes32 requestId,bytes32 modelId,address provider,bytes32 inputHash,bytes32 outputHash,bytes32 proofHash,uint32 tokensIn,uint32 tokensOut,uint256 amount,uint64 timestamp)"
)


struct Account:
    role: uint8
    stake: uint256
    unbonding: uint256
    unbond_at: uint256
    endpoint: String[256]
    x25519_key: bytes32
    paused: bool
    registered_at: uint256


struct Offer:
    price_in: uint256
    price_out: uint256
    active: bool


struct Checkpoint:
    at: uint256  # block timestamp from which `stake` holds
    stake: uint256


struct Receipt:
    request_id: bytes32
    model_id: bytes32
    provider: address
    input_hash: bytes32
    output_hash: bytes32
    proof_hash: bytes32
    tokens_in: uint32
    tokens_out: uint32
    amount: uint256
    timestamp: uint64


event Registered:
    account: indexed(address)
    role: uint8
    endpoint: String[256]
    x25519_key: bytes32


event Staked:
    account: indexed(address)
    amount: uint256
    stake: uint256


event OfferSet:
    provider: indexed(address)
    model_id: indexed(bytes32)
    price_in: uint256
    price_out: uint256
    active: bool


event Unbonding:
    account: indexed(address)
    amount: uint256
    unbond_at: uint256


event Withdrawn:
    account: indexed(address)
    amount: uint256


event Slashed:
    account: indexed(address)
    amount: uint256
    beneficiary: indexed(address)


event Paused:
    account: indexed(address)
    paused: bool


event Held:
    account: indexed(address)
    open_cases: uint256


event VerdictsSet:
    verdicts: indexed(address)


stake_token: public(immutable(IERC20))
params: public(immutable(IParams))
verdicts: public(address)

accounts: public(HashMap[address, Account])
offers: public(HashMap[address, HashMap[bytes32, Offer]])
provider_models: HashMap[address, DynArray[bytes32, MAX_MODELS_PER_PROVIDER]]

# @dev every account that ever registered, in order
account_count: public(uint256)
account_at: public(HashMap[uint256, address])

# @dev every provider that ever offered a model, in order (never shrinks;
#      `providers_of` filters out the inactive ones)
model_provider_count: public(HashMap[bytes32, uint256])
model_provider_at: public(HashMap[bytes32, HashMap[uint256, address]])
_listed: HashMap[bytes32, HashMap[address, bool]]

# @dev sum of `stake` (not unbonding) per role, for stake-weighted quorums
role_stake: public(HashMap[uint8, uint256])
# @dev every ALM held by this contract: stake + unbonding of all accounts
total_bonded: public(uint256)

# @dev stake history per account and of the total, for governance votes weighted by
#      stake as of a past moment (moving tokens after a snapshot gives no weight)
_checkpoints: HashMap[address, HashMap[uint256, Checkpoint]]
_checkpoint_count: HashMap[address, uint256]
_total_checkpoints: HashMap[uint256, Checkpoint]
_total_checkpoint_count: uint256
total_staked: public(uint256)
# @dev history of `role_stake` per role: the base of a fraud vote is the validators'
#      stake just before the case opened
_role_checkpoints: HashMap[uint8, HashMap[uint256, Checkpoint]]
_role_checkpoint_count: HashMap[uint8, uint256]

# @dev fraud cases open against an account; while any is, it cannot withdraw
open_cases: public(HashMap[address, uint256])
# @dev account -> Verdicts contract -> cases of that contract holding the account: a former
#      Verdicts contract still settles what it holds
holds_of: public(HashMap[address, HashMap[address, uint256]])


@deploy
def __init__(stake_token_: IERC20, params_: IParams):
    ownable.__init__()
    eip712.__init__("Allmende", "1")
    stake_token = stake_token_
    params = params_


# ---------------------------------------------------------------- accounts


@external
def register(role: uint8, endpoint: String[256], x25519_key: bytes32, amount: uint256):
    """
    @notice Registers the caller (or updates its endpoint and key) and adds
            `amount` ALM to its stake, pulled with transferFrom. The stake
            after this call must reach the role's minimum. Calling it again
            with the same role is how a restarted node stays idempotent.
    @param role 1 = provider, 2 = validator.
    @param endpoint Public base URL of the node's HTTP API.
    @param x25519_key The node's X25519 public key (providers).
    @param amount ALM to add to the stake (may be 0 when re-registering).
    """
    assert role == ROLE_PROVIDER or role == ROLE_VALIDATOR, "registry: bad role"
    account: Account = self.accounts[msg.sender]
    if account.role == ROLE_NONE:
        self.account_at[self.account_count] = msg.sender
        self.account_count += 1
        self.accounts[msg.sender].role = role
        self.accounts[msg.sender].registered_at = block.timestamp
    else:
        assert account.role == role, "registry: role taken"
    if role == ROLE_PROVIDER:
        assert len(endpoint) > 0, "registry: empty endpoint"
        assert x25519_key != empty(bytes32), "registry: empty key"
    self.accounts[msg.sender].endpoint = endpoint
    self.accounts[msg.sender].x25519_key = x25519_key
    if amount > 0:
        self._pull_stake(msg.sender, role, amount)
    assert self.accounts[msg.sender].stake >= self._min_stake(role), "registry: stake below minimum"
    log Registered(account=msg.sender, role=role, endpoint=endpoint, x25519_key=x25519_key)


@external
def add_stake(amount: uint256):
    """
    @notice Adds `amount` ALM to the caller's stake.
    """
    role: uint8 = self.accounts[msg.sender].role
    assert role != ROLE_NONE, "registry: not registered"
    assert amount > 0, "registry: zero amount"
    self._pull_stake(msg.sender, role, amount)


@external
def unbond(amount: uint256):
    """
    @notice Moves `amount` from stake to unbonding; it can be withdrawn
            after Params `unbonding_period`. Each call restarts the clock
            for everything that is unbonding.
    """
    account: Account = self.accounts[msg.sender]
    assert account.role != ROLE_NONE, "registry: not registered"
    assert amount > 0, "registry: zero amount"
    assert amount <= account.stake, "registry: unbond above stake"
    unbond_at: uint256 = block.timestamp + staticcall params.value(UNBONDING_PERIOD_KEY)
    self.accounts[msg.sender].stake = account.stake - amount
    self.accounts[msg.sender].unbonding = account.unbonding + amount
    self.accounts[msg.sender].unbond_at = unbond_at
    self.role_stake[account.role] -= amount
    self._record_stake(msg.sender, account.role, account.stake - amount, self.total_staked - amount)
    log Unbonding(account=msg.sender, amount=amount, unbond_at=unbond_at)


@external
def withdraw() -> uint256:
    """
    @notice Returns all unbonded ALM once the unbonding period is over.
    @return uint256 The amount returned.
    """
    account: Account = self.accounts[msg.sender]
    assert account.unbonding > 0, "registry: nothing unbonding"
    assert block.timestamp >= account.unbond_at, "registry: still unbonding"
    assert self.open_cases[msg.sender] == 0, "registry: open case"
    self.accounts[msg.sender].unbonding = 0
    self.total_bonded -= account.unbonding
    assert extcall stake_token.transfer(msg.sender, account.unbonding, default_return_value=True), "registry: transfer failed"
    log Withdrawn(account=msg.sender, amount=account.unbonding)
    return account.unbonding


# ------------------------------------------------------------------ offers


@external
def set_offer(model_id: bytes32, price_in: uint256, price_out: uint256):
    """
    @notice Offers (or reprices) a model. Prices are per 1,000,000 tokens
            in payment-token units.
    """
    assert self.accounts[msg.sender].role == ROLE_PROVIDER, "registry: not a provider"
    assert model_id != empty(bytes32), "registry: empty model id"
    if not self._listed[model_id][msg.sender]:
        assert len(self.provider_models[msg.sender]) < MAX_MODELS_PER_PROVIDER, "registry: too many models"
        self._listed[model_id][msg.sender] = True
        self.provider_models[msg.sender].append(model_id)
        index: uint256 = self.model_provider_count[model_id]
        self.model_provider_at[model_id][index] = msg.sender
        self.model_provider_count[model_id] = index + 1
    self.offers[msg.sender][model_id] = Offer(price_in=price_in, price_out=price_out, active=True)
    log OfferSet(provider=msg.sender, model_id=model_id, price_in=price_in, price_out=price_out, active=True)


@external
def remove_offer(model_id: bytes32):
    """
    @notice Withdraws an offer; the provider stays listed but inactive.
    """
    offer: Offer = self.offers[msg.sender][model_id]
    assert offer.active, "registry: no such offer"
    self.offers[msg.sender][model_id].active = False
    log OfferSet(provider=msg.sender, model_id=model_id, price_in=offer.price_in, price_out=offer.price_out, active=False)


@external
@view
def models_of(provider: address) -> DynArray[bytes32, MAX_MODELS_PER_PROVIDER]:
    """
    @notice Every model the provider has ever offered (check `offers`).
    """
    return self.provider_models[provider]


@external
@view
def is_active(account: address) -> bool:
    """
    @notice True for a provider or validator with enough stake, not paused.
    """
    return self._is_active(account)


@external
@view
def role_of(account: address) -> uint8:
    """
    @notice 0 = none, 1 = provider, 2 = validator.
    """
    return self.accounts[account].role


@external
@view
def stake_of(account: address) -> uint256:
    """
    @notice Bonded stake (not counting what is unbonding).
    """
    return self.accounts[account].stake


@external
@view
def providers_of(model_id: bytes32, start: uint256, limit: uint256) -> (DynArray[address, MAX_PAGE], uint256):
    """
    @notice One page of the active providers with an active offer for
            `model_id`, scanning listing indices [start, start + limit).
    @param limit At most 100.
    @return (providers, next_start); next_start == model_provider_count
            once the listing is exhausted.
    """
    assert limit <= MAX_PAGE, "registry: page too large"
    result: DynArray[address, MAX_PAGE] = []
    count: uint256 = self.model_provider_count[model_id]
    end: uint256 = min(start + limit, count)
    if start >= end:
        return result, max(start, count) if start < count else count
    for i: uint256 in range(start, end, bound=MAX_PAGE):
        provider: address = self.model_provider_at[model_id][i]
        if self.offers[provider][model_id].active and self._is_active(provider):
            result.append(provider)
    return result, end


# ----------------------------------------------------------- verdicts, admin


@external
def slash(account: address, amount: uint256, beneficiary: address) -> uint256:
    """
    @notice Takes up to `amount` ALM from `account` (stake first, then
            unbonding) and sends it to `beneficiary`. Verdicts only (or a
            former Verdicts contract that still holds `account`).
    @return uint256 The amount actually slashed.
    """
    self._check_verdicts(account)
    assert beneficiary != empty(address), "registry: zero beneficiary"
    acct: Account = self.accounts[account]
    taken_from_stake: uint256 = min(amount, acct.stake)
    taken_from_unbonding: uint256 = min(amount - taken_from_stake, acct.unbonding)
    slashed: uint256 = taken_from_stake + taken_from_unbonding
    assert slashed > 0, "registry: nothing to slash"
    self.accounts[account].stake = acct.stake - taken_from_stake
    self.accounts[account].unbonding = acct.unbonding - taken_from_unbonding
    self.role_stake[acct.role] -= taken_from_stake
    self.total_bonded -= slashed
    if taken_from_stake > 0:
        self._record_stake(account, acct.role, acct.stake - taken_from_stake, self.total_staked - taken_from_stake)
    assert extcall stake_token.transfer(beneficiary, slashed, default_return_value=True), "registry: transfer failed"
    log Slashed(account=account, amount=slashed, beneficiary=beneficiary)
    return slashed


@external
def hold(account: address):
    """
    @notice A fraud case against `account` opened: it cannot withdraw until
            every case against it is released. Verdicts only.
    """
    assert msg.sender == self.verdicts, "registry: not verdicts"
    count: uint256 = self.open_cases[account] + 1
    self.open_cases[account] = count
    self.holds_of[account][msg.sender] += 1
    log Held(account=account, open_cases=count)


@external
def release(account: address):
    """
    @notice A fraud case against `account` was resolved. Only the Verdicts
            contract that holds it, current or former.
    """
    held: uint256 = self.holds_of[account][msg.sender]
    assert held > 0 or msg.sender == self.verdicts, "registry: not verdicts"
    assert held > 0, "registry: no open case"
    count: uint256 = self.open_cases[account]
    self.holds_of[account][msg.sender] = held - 1
    self.open_cases[account] = count - 1
    log Held(account=account, open_cases=count - 1)


@external
@view
def slashable_of(account: address) -> uint256:
    """
    @notice Everything a verdict can slash now: bonded stake plus what is unbonding.
    """
    return self.accounts[account].stake + self.accounts[account].unbonding


@external
def set_paused(account: address, paused: bool):
    """
    @notice Pauses (verdicts or owner) or unpauses (owner) an account; a
            paused provider is not returned by `providers_of`.
    """
    if paused:
        if msg.sender != ownable.owner:
            self._check_verdicts(account)
    else:
        ownable._check_owner()
    self.accounts[account].paused = paused
    log Paused(account=account, paused=paused)


@external
def set_verdicts(verdicts_: address):
    """
    @notice Sets the only address allowed to slash. Owner only.
    """
    ownable._check_owner()
    self.verdicts = verdicts_
    log VerdictsSet(verdicts=verdicts_)


# ---------------------------------------------------------------- receipts


@external
@view
def receipt_digest(receipt: Receipt) -> bytes32:
    """
    @notice The EIP-712 digest a provider signs for `receipt`.
    """
    return self._receipt_digest(receipt)


@external
@view
def receipt_signer(receipt: Receipt, signature: Bytes[65]) -> address:
    """
    @notice Recovers who signed `receipt`; reverts on a malformed signature.
    """
    return ecdsa._recover_sig(self._receipt_digest(receipt), signature)


# ------------------------------------------------------------- checkpoints


@external
@view
def stake_at(account: address, timestamp: uint256) -> uint256:
    """
    @notice The account's bonded stake at the end of `timestamp` (0 before it staked).
    """
    return self._lookup(self._checkpoint_count[account], account, False, timestamp)


@external
@view
def total_stake_at(timestamp: uint256) -> uint256:
    """
    @notice All bonded stake (providers and validators) at the end of `timestamp`.
    """
    return self._lookup(self._total_checkpoint_count, empty(address), True, timestamp)


@external
@view
def role_stake_at(role: uint8, timestamp: uint256) -> uint256:
    """
    @notice Bonded stake of all accounts of `role` at the end of `timestamp`.
    """
    low: uint256 = 0
    high: uint256 = self._role_checkpoint_count[role]
    for _: uint256 in range(256):
        if low >= high:
            break
        mid: uint256 = (low + high) // 2
        if self._role_checkpoints[role][mid].at > timestamp:
            high = mid
        else:
            low = mid + 1
    if low == 0:
        return 0
    return self._role_checkpoints[role][low - 1].stake


@external
@view
def stake_held(account: address, start: uint256, end: uint256) -> uint256:
    """
    @notice The lowest bonded stake the account had at any moment from the end
            of `start` to the end of `end`: stake held through the whole window.
            0 if it changed its stake more than 128 times within the window.
    """
    count: uint256 = self._checkpoint_count[account]
    # the last checkpoint at or before `start`, then every one up to `end`
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
        return 0  # it had no stake at the window's start
    held: uint256 = self._checkpoints[account][low - 1].stake
    for i: uint256 in range(low, low + MAX_HELD_SCAN, bound=MAX_HELD_SCAN):
        if i >= count:
            return held
        checkpoint: Checkpoint = self._checkpoints[account][i]
        if checkpoint.at > end:
            return held
        held = min(held, checkpoint.stake)
    if low + MAX_HELD_SCAN < count and self._checkpoints[account][low + MAX_HELD_SCAN].at <= end:
        return 0
    return held


@internal
@view
def _lookup(count: uint256, account: address, total: bool, timestamp: uint256) -> uint256:
    # binary search for the last checkpoint with at <= timestamp
    low: uint256 = 0
    high: uint256 = count
    for _: uint256 in range(256):
        if low >= high:
            break
        mid: uint256 = (low + high) // 2
        at: uint256 = self._total_checkpoints[mid].at if total else self._checkpoints[account][mid].at
        if at > timestamp:
            high = mid
        else:
            low = mid + 1
    if low == 0:
        return 0
    if total:
        return self._total_checkpoints[low - 1].stake
    return self._checkpoints[account][low - 1].stake


@internal
def _record_stake(account: address, role: uint8, stake: uint256, total: uint256):
    self.total_staked = total
    r: uint256 = self._role_checkpoint_count[role]
    role_total: uint256 = self.role_stake[role]
    if r > 0 and self._role_checkpoints[role][r - 1].at == block.timestamp:
        self._role_checkpoints[role][r - 1].stake = role_total
    else:
        self._role_checkpoints[role][r] = Checkpoint(at=block.timestamp, stake=role_total)
        self._role_checkpoint_count[role] = r + 1
    n: uint256 = self._checkpoint_count[account]
    if n > 0 and self._checkpoints[account][n - 1].at == block.timestamp:
        self._checkpoints[account][n - 1].stake = stake
    else:
        self._checkpoints[account][n] = Checkpoint(at=block.timestamp, stake=stake)
        self._checkpoint_count[account] = n + 1
    m: uint256 = self._total_checkpoint_count
    if m > 0 and self._total_checkpoints[m - 1].at == block.timestamp:
        self._total_checkpoints[m - 1].stake = total
    else:
        self._total_checkpoints[m] = Checkpoint(at=block.timestamp, stake=total)
        self._total_checkpoint_count = m + 1


# --------------------------------------------------------------- internals


@internal
@view
def _receipt_digest(r: Receipt) -> bytes32:
    struct_hash: bytes32 = keccak256(
        abi_encode(
            RECEIPT_TYPEHASH,
            r.request_id,
            r.model_id,
            r.provider,
            r.input_hash,
            r.output_hash,
            r.proof_hash,
            r.tokens_in,
            r.tokens_out,
            r.amount,
            r.timestamp,
        )
    )
    return eip712._hash_typed_data_v4(struct_hash)


@internal
def _pull_stake(account: address, role: uint8, amount: uint256):
    assert extcall stake_token.transferFrom(account, self, amount, default_return_value=True), "registry: transfer failed"
    new_stake: uint256 = self.accounts[account].stake + amount
    self.accounts[account].stake = new_stake
    self.role_stake[role] += amount
    self.total_bonded += amount
    self._record_stake(account, role, new_stake, self.total_staked + amount)
    log Staked(account=account, amount=amount, stake=new_stake)


@internal
@view
def _min_stake(role: uint8) -> uint256:
    if role == ROLE_PROVIDER:
        return staticcall params.value(MIN_PROVIDER_STAKE_KEY)
    return staticcall params.value(MIN_VALIDATOR_STAKE_KEY)


@internal
@view
def _check_verdicts(account: address):
    # the current Verdicts contract, or a former one that still holds the account
    assert msg.sender == self.verdicts or self.holds_of[account][msg.sender] > 0, "registry: not verdicts"


@internal
@view
def _is_active(account: address) -> bool:
    acct: Account = self.accounts[account]
    if acct.role == ROLE_NONE or acct.paused:
        return False
    return acct.stake >= self._min_stake(acct.role)
