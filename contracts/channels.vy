# pragma version ~=0.4.3
"""
@title Payment channels payer -> provider, paid by cumulative vouchers
@custom:contract-name channels
@license Apache-2.0
@notice A payer (usually a gateway) opens a channel to a provider with a
        deposit of the payment token. For every request it signs an
        EIP-712 `Voucher(channelId, modelId, cumulativeAmount)`: the total
        it owes the provider for that model on that channel so far. The
        provider keeps only the latest voucher per (channel, model) and
        redeems many channels in one `redeem` call; each voucher pays only
        the increase over the last redeemed cumulative and never more than
        the deposit.
        Every paid amount is split: the model's royalty (Models) to the
        model owner, the protocol fee (Params) to the treasury, the rest to
        the provider. Royalty and fee are computed on the cumulative amount
        (each share is the difference of the rounded totals before and
        after), so splitting a redeem into many small ones changes nobody's
        total. A model's royalty applies to the service after its
        registration, through every channel, old or new, and never to the
        service before: an increment redeemed after the registration whose
        service began before it (since the (channel, model)'s last redeem, or
        the channel's opening) pays the royalty on the share of that time
        after the registration, as if the service was spread evenly over it.
        Shares accrue here and are pulled with `withdraw_earnings`, so a
        batch redeem moves no tokens.
        Relayed payments: a voucher for the zero model id (which Models never
        registers) is a payment to a relay, a gateway that pays providers with
        it, as an x402 session does. Its redeem takes no fee and no royalty and
        accrues to the redeemer's relay balance, not its earnings: the relay
        either funds its own channels with it (`fund`; the providers' redeems
        then take the fee as always) or takes it out as tokens with
        `withdraw_relay`, which takes the fee. So every unit a payer pays
        pays the protocol fee exactly once, on the hop where it leaves a
        relay's hands. What a channel funded from the relay balance does not
        spend goes back to that balance on `withdraw` (its spending counts
        against the relayed part first), never out as tokens.
        The payment token is fixed at deployment and must be approved by the
        owner (the Timelock) before channels open; a deposit whose balance
        change differs from the amount (a fee-on-transfer token) is refused.
        Closing: the payer calls `request_close`; the provider may redeem
        until Params `channel_close_delay` has passed; then the payer
        `withdraw`s what is left. The provider may also `release` the
        channel (it closes at once; then either of them may `withdraw`, to
        the payer), or redeem with `release` (a cooperative close: the last
        vouchers redeemed, the channel closed and the payer's rest sent back
        in one transaction). A relay's redeem may fund its own channel with
        what it pays (`fund_into`) instead of a `fund` transaction.
"""

from snekmate.auth import ownable
from snekmate.utils import ecdsa
from snekmate.utils import eip712_domain_separator as eip712
from ethereum.ercs import IERC20
from interfaces import IModels
from interfaces import IParams

initializes: ownable
initializes: eip712

exports: (ownable.owner, ownable.transfer_ownership, eip712.eip712Domain)


BPS: constant(uint256) = 10_000
# @dev the most vouchers one `redeem` takes. The EVM charges memory by the highest word touched
#      and Vyper lays a call's locals out after the largest its arguments can be: at 256 vouchers
#      (224 bytes each) every redeem, of one voucher or of 256, paid ~11,700 gas of memory
#      expansion; at 64, ~1,700. Bigger batches go in several transactions (core/vouchers.py
#      REDEEM_BATCH, the Python side's chunk).
MAX_BATCH: constant(uint256) = 64
MASK_64: constant(uint256) = 2**64 - 1
MASK_128: constant(uint256) = 2**128 - 1
MASK_160: constant(uint256) = 2**160 - 1
# @dev set in a relay's slot once it is used, so the slot never goes back to zero (a zero slot
#      costs 20,000 gas to write again at the next relayed redeem)
RELAY_USED: constant(uint256) = 2**255
MASK_127: constant(uint256) = 2**127 - 1
# @dev set in a channel's `_meta` (bit 64) at its first redeem of a real model's voucher; until
#      then the channel has paid only a relay, and its zero-model redeemed amount is its spent
MODELS_USED: constant(uint256) = 2**64

VOUCHER_TYPEHASH: constant(bytes32) = keccak256(
    "Voucher(bytes32 channelId,bytes32 modelId,uint256 cumulativeAmount)"
)
PROTOCOL_FEE_KEY: constant(bytes32) = keccak256("protocol_fee_bps")
ROYALTY_CAP_KEY: constant(bytes32) = keccak256("royalty_cap_bps")
CLOSE_DELAY_KEY: constant(bytes32) = keccak256("channel_close_delay")


struct Voucher:
    channel_id: bytes32
    model_id: bytes32
    cumulative_amount: uint256
    signature: Bytes[65]


struct Channel:
    payer: address
    provider: address
    deposit: uint256
    spent: uint256
    closes_at: uint256
    opened_at: uint256


event ChannelOpened:
    channel_id: indexed(bytes32)
    payer: indexed(address)
    provider: indexed(address)
    deposit: uint256


event ToppedUp:
    channel_id: indexed(bytes32)
    amount: uint256
    deposit: uint256


event CloseRequested:
    channel_id: indexed(bytes32)
    closes_at: uint256


event ChannelWithdrawn:
    channel_id: indexed(bytes32)
    payer: indexed(address)
    amount: uint256


event Redeemed:
    channel_id: indexed(bytes32)
    model_id: indexed(bytes32)
    amount: uint256
    cumulative_amount: uint256


event Funded:
    channel_id: indexed(bytes32)
    amount: uint256
    deposit: uint256


event RelayWithdrawn:
    account: indexed(address)
    amount: uint256
    fee: uint256


event EarningsWithdrawn:
    account: indexed(address)
    amount: uint256


event TreasurySet:
    treasury: indexed(address)


event PaymentTokenApproved:
    token: indexed(address)
    approved: bool


payment_token: public(immutable(IERC20))
params: public(immutable(IParams))
models: public(immutable(IModels))
treasury: public(address)
# @dev set by the owner (the Timelock): no channel opens or grows while unset
payment_token_approved: public(bool)

# @dev Channel state is packed to keep a redeem at three cold SLOADs per
#      channel: payer (bits 96..255) | MODELS_USED (bit 64) | closes_at (bits 0..63)
#      in `_meta`,
#      deposit (bits 128..255) | spent (bits 0..127) in `_funds`,
#      opened_at (bits 160..255) | provider (bits 0..159) in `_provider`.
_meta: HashMap[bytes32, uint256]
_provider: HashMap[bytes32, uint256]
_funds: HashMap[bytes32, uint256]

# @dev per (channel, model): when it was last redeemed (bits 128..191) | the last redeemed
#      cumulative amount (bits 0..127), one slot so a redeem writes it once
_redeemed: HashMap[bytes32, HashMap[bytes32, uint256]]
# @dev accrued, not yet withdrawn earnings (provider, model owner, treasury)
earnings: public(HashMap[address, uint256])
# @dev per relay: RELAY_USED (bit 255) | what it took out with `withdraw_relay`, cumulative
#      (bits 128..254) | its relay balance (bits 0..127): zero-model redeems, fee not yet paid
_relay: HashMap[address, uint256]
# @dev per channel: how much of its deposit came from its payer's relay balance
relayed: public(HashMap[bytes32, uint256])
# @dev channels opened per payer; part of the channel id
channel_nonce: public(HashMap[address, uint256])


@deploy
def __init__(payment_token_: IERC20, params_: IParams, models_: IModels, treasury_: address):
    ownable.__init__()
    eip712.__init__("Allmende", "1")
    assert treasury_ != empty(address), "channels: zero treasury"
    payment_token = payment_token_
    params = params_
    models = models_
    self.treasury = treasury_


# ------------------------------------------------------------------ payer


@external
def open(provider: address, amount: uint256) -> bytes32:
    """
    @notice Opens a channel to `provider`, pulling `amount` payment tokens.
    @return bytes32 The channel id: keccak256(this, payer, provider, nonce).
    """
    assert provider != empty(address), "channels: zero provider"
    assert provider != msg.sender, "channels: payer is provider"
    assert amount > 0, "channels: zero amount"
    assert amount <= MASK_128, "channels: amount overflow"
    nonce: uint256 = self.channel_nonce[msg.sender]
    self.channel_nonce[msg.sender] = nonce + 1
    channel_id: bytes32 = keccak256(abi_encode(self, msg.sender, provider, nonce))
    self._meta[channel_id] = convert(convert(msg.sender, uint160), uint256) << 96
    self._provider[channel_id] = (block.timestamp << 160) | convert(convert(provider, uint160), uint256)
    self._funds[channel_id] = amount << 128
    self._pull(msg.sender, amount)
    log ChannelOpened(channel_id=channel_id, payer=msg.sender, provider=provider, deposit=amount)
    return channel_id


@external
def top_up(channel_id: bytes32, amount: uint256):
    """
    @notice Adds `amount` to the deposit of an open channel. Payer only.
    """
    payer: address = self._payer(channel_id)
    assert payer == msg.sender, "channels: not payer"
    assert self._meta[channel_id] & MASK_64 == 0, "channels: closing"
    assert amount > 0, "channels: zero amount"
    funds: uint256 = self._funds[channel_id]
    deposit: uint256 = (funds >> 128) + amount
    assert deposit <= MASK_128, "channels: amount overflow"
    self._funds[channel_id] = (deposit << 128) | (funds & MASK_128)
    self._pull(msg.sender, amount)
    log ToppedUp(channel_id=channel_id, amount=amount, deposit=deposit)


@external
def fund(channel_id: bytes32, amount: uint256):
    """
    @notice Adds `amount` of the caller's relay balance to the deposit of its
            open channel (no tokens move). What the channel does not spend
            of it comes back to the relay balance on `withdraw`. Payer only.
    """
    self._fund(channel_id, amount)
    relay: uint256 = self._relay[msg.sender]
    assert relay & MASK_128 >= amount, "channels: over relay balance"
    self._relay[msg.sender] = relay - amount


@external
def withdraw_relay() -> uint256:
    """
    @notice Sends the caller its relay balance as tokens, less the protocol
            fee it has not paid yet (computed on the cumulative amount taken
            out, as a redeem's: splitting a withdrawal saves nothing).
    @return uint256 The amount sent.
    """
    relay: uint256 = self._relay[msg.sender]
    amount: uint256 = relay & MASK_128
    assert amount > 0, "channels: no relay balance"
    before: uint256 = (relay >> 128) & MASK_127
    after: uint256 = before + amount
    assert after <= MASK_127, "channels: amount overflow"
    fee_bps: uint256 = min(staticcall params.value(PROTOCOL_FEE_KEY), BPS)
    fee: uint256 = after * fee_bps // BPS - before * fee_bps // BPS
    self._relay[msg.sender] = RELAY_USED | (after << 128)
    self.earnings[self.treasury] += fee
    assert extcall payment_token.transfer(msg.sender, amount - fee, default_return_value=True), "channels: transfer failed"
    log RelayWithdrawn(account=msg.sender, amount=amount - fee, fee=fee)
    return amount - fee


@external
def request_close(channel_id: bytes32) -> uint256:
    """
    @notice Starts closing: the provider may redeem until the returned
            time, then the payer may `withdraw` the rest. Payer only.
    @return uint256 The time the channel closes.
    """
    meta: uint256 = self._meta[channel_id]
    assert meta != 0, "channels: unknown channel"
    assert self._payer(channel_id) == msg.sender, "channels: not payer"
    assert meta & MASK_64 == 0, "channels: closing"
    closes_at: uint256 = block.timestamp + staticcall params.value(CLOSE_DELAY_KEY)
    assert closes_at <= MASK_64, "channels: delay overflow"
    self._meta[channel_id] = meta | closes_at
    log CloseRequested(channel_id=channel_id, closes_at=closes_at)
    return closes_at


@external
def withdraw(channel_id: bytes32) -> uint256:
    """
    @notice Returns the unspent deposit to the payer once the channel has
            closed. The payer, or the provider (after `release`: an expired
            session's deposit goes back with no help from its payer); the
            refund always goes to the payer.
    @return uint256 The amount returned.
    """
    meta: uint256 = self._meta[channel_id]
    assert meta != 0, "channels: unknown channel"
    payer: address = self._payer(channel_id)
    if payer != msg.sender:
        provider: uint256 = self._provider[channel_id] & MASK_160
        assert provider == convert(convert(msg.sender, uint160), uint256), "channels: not payer"
    closes_at: uint256 = meta & MASK_64
    assert closes_at != 0, "channels: close not requested"
    assert block.timestamp >= closes_at, "channels: not closed yet"
    funds: uint256 = self._funds[channel_id]
    assert (funds >> 128) > funds & MASK_128, "channels: nothing to withdraw"
    return self._refund(channel_id, payer, funds)


# --------------------------------------------------------------- provider


@external
def release(channel_id: bytes32):
    """
    @notice The provider gives up redeeming on the channel: it closes now
            (what it redeemed before stays paid) and its payer's unspent
            deposit may be withdrawn at once, by the payer or the provider.
            What a gateway does when an agent's session channel has been
            idle past its expiry. Provider only.
    """
    meta: uint256 = self._meta[channel_id]
    assert meta != 0, "channels: unknown channel"
    provider: uint256 = self._provider[channel_id] & MASK_160
    assert provider == convert(convert(msg.sender, uint160), uint256), "channels: not provider"
    closes_at: uint256 = meta & MASK_64
    assert closes_at == 0 or block.timestamp < closes_at, "channels: channel closed"
    self._meta[channel_id] = (meta & ~MASK_64) | block.timestamp
    log CloseRequested(channel_id=channel_id, closes_at=block.timestamp)


@external
def redeem(
    vouchers: DynArray[Voucher, MAX_BATCH],
    fund_into: bytes32 = empty(bytes32),
    fund_most: uint256 = 0,
    release: bool = False,
) -> uint256:
    """
    @notice Redeems the latest vouchers of any number of the caller's
            channels. Each pays the increase over the last redeemed
            cumulative for its (channel, model), split into royalty, protocol
            fee and provider share: royalty and fee are the increase of their
            rounded cumulative totals. Reverts as a whole if any voucher is
            invalid.
            A relay (a gateway redeeming session vouchers) may put what the
            zero-model vouchers pay, up to `fund_most`, straight into the
            deposit of its own open channel `fund_into`, as `fund` would from
            its relay balance, with no second transaction; the rest goes to
            the relay balance.
            With `release`, the caller also gives up every redeemed channel
            (as `release`) and its payer's unspent deposit goes back to it at
            once: a cooperative close, one transaction where the payer's
            `request_close`, the close delay and `withdraw` would be three.
    @return uint256 The total amount paid by all vouchers.
    """
    # read from Params at the first voucher that needs them (a batch of relayed ones does not)
    fee_bps: uint256 = 0
    royalty_cap: uint256 = 0
    params_read: bool = False
    total: uint256 = 0
    total_fee: uint256 = 0
    total_royalty: uint256 = 0
    total_relayed: uint256 = 0
    last_model: bytes32 = empty(bytes32)
    model_owner: address = empty(address)
    royalty_bps: uint256 = 0
    registered_at: uint256 = 0
    for v: Voucher in vouchers:
        meta: uint256 = self._meta[v.channel_id]
        assert meta != 0, "channels: unknown channel"
        provider_slot: uint256 = self._provider[v.channel_id]
        assert provider_slot & MASK_160 == convert(convert(msg.sender, uint160), uint256), "channels: not provider"
        closes_at: uint256 = meta & MASK_64
        assert closes_at == 0 or block.timestamp < closes_at, "channels: channel closed"
        funds: uint256 = self._funds[v.channel_id]
        # a channel that has paid nothing but a relay keeps no zero-model slot: what its
        # zero-model vouchers redeemed is what it spent
        relay_only: bool = v.model_id == empty(bytes32) and meta & MODELS_USED == 0
        last: uint256 = 0
        if not relay_only:
            last = self._redeemed[v.channel_id][v.model_id]
        previous: uint256 = funds & MASK_128 if relay_only else last & MASK_128
        assert v.cumulative_amount > previous, "channels: voucher not above last"
        amount: uint256 = v.cumulative_amount - previous
        # spent + amount <= deposit < 2**128, so the packed add cannot carry
        assert (funds & MASK_128) + amount <= funds >> 128, "channels: over deposit"
        digest: bytes32 = eip712._hash_typed_data_v4(
            keccak256(abi_encode(VOUCHER_TYPEHASH, v.channel_id, v.model_id, v.cumulative_amount))
        )
        payer: address = convert(convert(meta >> 96, uint160), address)
        assert ecdsa._recover_sig(digest, v.signature) == payer, "channels: bad signature"
        if not relay_only:
            # cumulative <= deposit < 2**128: it fits below the timestamp
            self._redeemed[v.channel_id][v.model_id] = (block.timestamp << 128) | v.cumulative_amount
        if v.model_id != empty(bytes32) and meta & MODELS_USED == 0:
            # the channel's first model voucher: from now on its zero-model redeems are kept
            # in their own slot, which starts at what they redeemed so far (all it spent)
            self._meta[v.channel_id] = meta | MODELS_USED
            if funds & MASK_128 > 0:
                self._redeemed[v.channel_id][empty(bytes32)] = funds & MASK_128
        self._funds[v.channel_id] = funds + amount
        log Redeemed(channel_id=v.channel_id, model_id=v.model_id, amount=amount, cumulative_amount=v.cumulative_amount)
        total += amount

        if v.model_id == empty(bytes32):
            # a payment to a relay: no royalty, and the fee is paid where the relay spends it
            total_relayed += amount
            continue
        if not params_read:
            params_read = True
            fee_bps = staticcall params.value(PROTOCOL_FEE_KEY)
            # royalty is capped so that royalty + fee never exceed the amount
            royalty_cap = min(staticcall params.value(ROYALTY_CAP_KEY), BPS - min(fee_bps, BPS))
        if v.model_id != last_model:
            last_model = v.model_id
            model_owner, royalty_bps, registered_at = staticcall models.royalty_terms(v.model_id)
            royalty_bps = min(royalty_bps, royalty_cap)
        if royalty_bps > 0:
            # cumulative < 2**128, so the products cannot overflow
            royalty: uint256 = v.cumulative_amount * royalty_bps // BPS - previous * royalty_bps // BPS
            # the service this increment pays for began at the last redeem (or the opening)
            since: uint256 = last >> 128 if previous > 0 else provider_slot >> 160
            if registered_at > since:
                # registered during that service: only the share of its time after the
                # registration pays (now > since, as registered_at <= now); at most the full
                # royalty, so the provider's share below cannot shrink further
                royalty = royalty * (block.timestamp - registered_at) // (block.timestamp - since)
            if royalty > 0:
                self.earnings[model_owner] += royalty
                total_royalty += royalty
        total_fee += v.cumulative_amount * fee_bps // BPS - previous * fee_bps // BPS

    # per (channel, model) the rounded totals never exceed the cumulative amount, but one
    # increment may round both shares up: the provider's share of it is then -1 unit,
    # taken from what it was credited on the same (channel, model) before
    if total > total_relayed:
        earned: uint256 = self.earnings[msg.sender] + total - total_relayed
        assert earned >= total_fee + total_royalty, "channels: increment too small to split"
        self.earnings[self.treasury] += total_fee
        self.earnings[msg.sender] = earned - total_fee - total_royalty
    if total_relayed > 0:
        funded: uint256 = 0
        if fund_into != empty(bytes32):
            funded = min(total_relayed, fund_most)
            if funded > 0:
                self._fund(fund_into, funded)
        if total_relayed > funded:
            relay: uint256 = self._relay[msg.sender]
            assert (relay & MASK_128) + total_relayed - funded <= MASK_128, "channels: relay overflow"
            self._relay[msg.sender] = (relay + total_relayed - funded) | RELAY_USED
    if release:
        for v: Voucher in vouchers:
            meta: uint256 = self._meta[v.channel_id]
            # open until now (the loop above checked it: not closing, or closing later); a
            # second voucher of the same channel finds it closed and refunded already
            if meta & MASK_64 == 0 or meta & MASK_64 > block.timestamp:
                self._meta[v.channel_id] = (meta & ~MASK_64) | block.timestamp
                log CloseRequested(channel_id=v.channel_id, closes_at=block.timestamp)
                funds: uint256 = self._funds[v.channel_id]
                if funds >> 128 > funds & MASK_128:
                    self._refund(v.channel_id, convert(convert(meta >> 96, uint160), address), funds)
    return total


@external
def withdraw_earnings() -> uint256:
    """
    @notice Sends the caller everything it has earned (provider share,
            royalties, or protocol fees for the treasury).
    @return uint256 The amount sent.
    """
    amount: uint256 = self.earnings[msg.sender]
    assert amount > 0, "channels: no earnings"
    self.earnings[msg.sender] = 0
    assert extcall payment_token.transfer(msg.sender, amount, default_return_value=True), "channels: transfer failed"
    log EarningsWithdrawn(account=msg.sender, amount=amount)
    return amount


# ------------------------------------------------------------------ views


@external
@view
def channel(channel_id: bytes32) -> Channel:
    """
    @notice The channel's parties and balances; reverts if unknown.
    """
    meta: uint256 = self._meta[channel_id]
    assert meta != 0, "channels: unknown channel"
    funds: uint256 = self._funds[channel_id]
    provider_slot: uint256 = self._provider[channel_id]
    return Channel(
        payer=self._payer(channel_id),
        provider=convert(convert(provider_slot & MASK_160, uint160), address),
        deposit=funds >> 128,
        spent=funds & MASK_128,
        closes_at=meta & MASK_64,
        opened_at=provider_slot >> 160,
    )


@external
@view
def relay_balance(account: address) -> uint256:
    """
    @notice What zero-model (relayed) vouchers paid `account`, not yet spent
            or taken out: its protocol fee is still to be paid.
    """
    return self._relay[account] & MASK_128


@external
@view
def relay_withdrawn(account: address) -> uint256:
    """
    @notice What `account` took out of its relay balance as tokens, cumulative
            (before the fee).
    """
    return (self._relay[account] >> 128) & MASK_127


@external
@view
def redeemed(channel_id: bytes32, model_id: bytes32) -> uint256:
    """
    @notice The last redeemed cumulative amount of (channel, model).
    """
    if model_id == empty(bytes32) and self._meta[channel_id] & MODELS_USED == 0:
        return self._funds[channel_id] & MASK_128  # a channel that paid nothing but a relay
    return self._redeemed[channel_id][model_id] & MASK_128


@external
@view
def redeemed_at(channel_id: bytes32, model_id: bytes32) -> uint256:
    """
    @notice When (channel, model) was last redeemed (0: never; and for the zero
            model of a channel that has paid nothing but a relay, which keeps no
            time for it: relayed payments take no royalty).
    """
    return self._redeemed[channel_id][model_id] >> 128


@external
@view
def voucher_digest(channel_id: bytes32, model_id: bytes32, cumulative_amount: uint256) -> bytes32:
    """
    @notice The EIP-712 digest a payer signs for a voucher.
    """
    return eip712._hash_typed_data_v4(keccak256(abi_encode(VOUCHER_TYPEHASH, channel_id, model_id, cumulative_amount)))


# ----------------------------------------------------------------- admin


@external
def set_treasury(treasury_: address):
    """
    @notice Where protocol fees accrue. Owner (Timelock) only; fees accrued
            before the change stay with the previous treasury.
    """
    ownable._check_owner()
    assert treasury_ != empty(address), "channels: zero treasury"
    self.treasury = treasury_
    log TreasurySet(treasury=treasury_)


@external
def set_payment_token_approved(approved: bool):
    """
    @notice Approves (or suspends) the payment token for new deposits: while it
            is not approved no channel opens or is topped up. Owner (Timelock)
            only; redeems and withdrawals of existing channels go on.
    """
    ownable._check_owner()
    self.payment_token_approved = approved
    log PaymentTokenApproved(token=payment_token.address, approved=approved)


# -------------------------------------------------------------- internals


@internal
@view
def _payer(channel_id: bytes32) -> address:
    return convert(convert(self._meta[channel_id] >> 96, uint160), address)


@internal
def _refund(channel_id: bytes32, payer: address, funds: uint256) -> uint256:
    """
    @dev Pays a closed channel's unspent deposit (`funds`: its `_funds` slot, deposit > spent)
         back to its payer.
    """
    spent: uint256 = funds & MASK_128
    refund: uint256 = (funds >> 128) - spent
    # the deposit shrinks to what was spent: nothing is left to pay out
    self._funds[channel_id] = (spent << 128) | spent
    # spending counts against the relayed part first; what is left of it goes back to the
    # relay balance (its fee still unpaid), only the rest leaves as tokens
    relayed: uint256 = self.relayed[channel_id]
    back: uint256 = 0
    if relayed > spent:
        back = relayed - spent
        self.relayed[channel_id] = spent
        relay: uint256 = self._relay[payer]
        # back <= this channel's deposit < 2**128, and the balance it adds to is another part
        assert (relay & MASK_128) + back <= MASK_128, "channels: relay overflow"
        self._relay[payer] = (relay + back) | RELAY_USED
    if refund > back:
        assert extcall payment_token.transfer(payer, refund - back, default_return_value=True), "channels: transfer failed"
    log ChannelWithdrawn(channel_id=channel_id, payer=payer, amount=refund)
    return refund


@internal
def _fund(channel_id: bytes32, amount: uint256):
    """
    @dev Adds `amount` of relayed money (taken from the caller's relay balance, or paid to it
         by the redeem at hand) to the deposit of the caller's own open channel.
    """
    assert self._payer(channel_id) == msg.sender, "channels: not payer"
    assert self._meta[channel_id] & MASK_64 == 0, "channels: closing"
    assert amount > 0, "channels: zero amount"
    assert self.payment_token_approved, "channels: payment token not approved"
    funds: uint256 = self._funds[channel_id]
    deposit: uint256 = (funds >> 128) + amount
    assert deposit <= MASK_128, "channels: amount overflow"
    self._funds[channel_id] = (deposit << 128) | (funds & MASK_128)
    self.relayed[channel_id] += amount
    log Funded(channel_id=channel_id, amount=amount, deposit=deposit)


@internal
def _pull(payer: address, amount: uint256):
    assert self.payment_token_approved, "channels: payment token not approved"
    before: uint256 = staticcall payment_token.balanceOf(self)
    assert extcall payment_token.transferFrom(payer, self, amount, default_return_value=True), "channels: transfer failed"
    # a fee-on-transfer (or otherwise odd) token would leave deposits unbacked
    assert staticcall payment_token.balanceOf(self) == before + amount, "channels: token moved a different amount"
