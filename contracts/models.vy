# pragma version ~=0.4.3
"""
@title Model registry: provenance, license and royalties
@custom:contract-name models
@license Apache-2.0
@notice A model is identified by its content address (the keccak256 of
        its canonical file manifest, see `allmende.core.manifest`). The
        first account to register an id owns it: it receives the royalty
        share of every payment for that model and may transfer ownership.
        Lineage (parent models, training datasets) and the license are
        recorded once and never change. A second registration of an id
        is refused.

        Registration is commit-reveal, so the transaction that reveals a
        model id cannot be front-run by a squatter: the author first
        `commit`s keccak256(abi_encode(model_id, owner, salt)), then, in a
        later block, `register`s with the salt. A copy of the reveal needs a
        commitment of the copier's own made in an earlier block, when the id
        was still secret.

        Royalty terms apply to service after the registration, through every
        channel, old or new: Channels pays the royalty on every amount it
        redeems for service after `registered_at` (an increment that spans the
        registration pays the share of its time after it), and nothing on
        service before, so registering an id someone already serves redirects
        none of the income already earned. Offers in the Registry do not
        block a registration: a provider that offers an unregistered id
        cannot keep its author from registering it with a royalty.

        Royalties of derived models: a model registered with
        `register_derived` (e.g. trained by a federated run from a base
        model) pays its royalty, at the parent's bps, to whoever owns the
        root of its lineage when the payment is redeemed, not to its own
        owner. A model registered with `register` and parents only records
        the lineage and pays its own owner.
"""

from interfaces import IParams
from interfaces import IRegistry

MAX_PARENTS: constant(uint256) = 8
MAX_DATASETS: constant(uint256) = 8
BPS: constant(uint256) = 10_000
# @dev royalty slot: owner (bits 96..255) | registered_at (bits 32..95) |
#      DERIVED_FLAG (bit 31, the royalty goes to the lineage's root owner) | bps (bits 0..30)
DERIVED_FLAG: constant(uint256) = 1 << 31
BPS_MASK: constant(uint256) = (1 << 31) - 1
MASK_64: constant(uint256) = 2**64 - 1

ROYALTY_CAP_KEY: constant(bytes32) = keccak256("royalty_cap_bps")
MAX_NAME: constant(uint256) = 64


struct Model:
    owner: address
    license: String[64]
    royalty_bps: uint256
    parents: DynArray[bytes32, MAX_PARENTS]
    datasets: DynArray[bytes32, MAX_DATASETS]
    metadata_uri: String[256]
    registered_at: uint256


event ModelRegistered:
    model_id: indexed(bytes32)
    owner: indexed(address)
    license: String[64]
    royalty_bps: uint256
    parents: DynArray[bytes32, MAX_PARENTS]
    datasets: DynArray[bytes32, MAX_DATASETS]
    metadata_uri: String[256]


event ModelTransferred:
    model_id: indexed(bytes32)
    previous_owner: indexed(address)
    new_owner: indexed(address)


event ModelNamed:
    model_id: indexed(bytes32)
    owner: indexed(address)
    name: String[MAX_NAME]


params: public(immutable(IParams))
registry: public(immutable(IRegistry))

_models: HashMap[bytes32, Model]
# @dev owner, registration time and royalty bps in one slot, so that a redeem
#      pays one cold SLOAD per model instead of three.
_royalty_slot: HashMap[bytes32, uint256]
model_count: public(uint256)
model_at: public(HashMap[uint256, bytes32])
# @dev for derived models: the model whose owner receives the royalty
royalty_root: public(HashMap[bytes32, bytes32])
# @dev the model's public name, "" if it has none
name_of: public(HashMap[bytes32, String[MAX_NAME]])
# @dev skeleton key of a name (see `name_key`) -> the model holding that name
_name_holder: HashMap[bytes32, bytes32]
# @dev commitment -> block number it was made in (0: none)
commitments: public(HashMap[bytes32, uint256])


event Committed:
    commitment: indexed(bytes32)
    owner: indexed(address)


@deploy
def __init__(params_: IParams, registry_: IRegistry):
    params = params_
    registry = registry_


@external
def commit(commitment: bytes32):
    """
    @notice First step of a registration: hides the model id until `register`
            reveals it in a later block.
    @param commitment keccak256(abi_encode(model_id, owner, salt)), owner being
           the account that will call `register`.
    """
    assert commitment != empty(bytes32), "models: empty commitment"
    # the earliest block counts; a copy of someone's commitment (it names its owner, so only
    # that owner can reveal it) neither fails that owner's commit nor moves it later
    if self.commitments[commitment] == 0:
        self.commitments[commitment] = block.number
    log Committed(commitment=commitment, owner=msg.sender)


@external
@pure
def commitment_of(model_id: bytes32, owner: address, salt: bytes32) -> bytes32:
    """
    @notice The commitment `owner` makes before registering `model_id` with `salt`.
    """
    return keccak256(abi_encode(model_id, owner, salt))


@external
def register(
    model_id: bytes32,
    license: String[64],
    royalty_bps: uint256,
    parents: DynArray[bytes32, MAX_PARENTS],
    datasets: DynArray[bytes32, MAX_DATASETS],
    metadata_uri: String[256],
    salt: bytes32,
) -> address:
    """
    @notice Registers a model id with the caller as its owner, revealing the
            commitment the caller made in an earlier block.
    @param model_id Content address of the model files.
    @param license SPDX id or short license name, e.g. "Apache-2.0".
    @param royalty_bps Share of each payment for this model paid to the
           owner, at most Params `royalty_cap_bps`.
    @param parents Model ids this model was derived from.
    @param datasets Dataset ids it was trained on.
    @param metadata_uri Where the model card lives.
    @param salt The salt of the caller's commitment.
    @return address The owner (the caller).
    """
    assert royalty_bps <= staticcall params.value(ROYALTY_CAP_KEY), "models: royalty above cap"
    self._reveal(model_id, salt)
    self._register(model_id, license, royalty_bps, parents, datasets, metadata_uri)
    self._royalty_slot[model_id] = self._pack(msg.sender, block.timestamp, royalty_bps)
    return msg.sender


@external
def register_derived(
    model_id: bytes32,
    parent: bytes32,
    license: String[64],
    datasets: DynArray[bytes32, MAX_DATASETS],
    metadata_uri: String[256],
    salt: bytes32,
) -> address:
    """
    @notice Registers a model derived from `parent` (fine-tuned, trained
            further) with the caller as its owner, revealing the caller's
            commitment as `register` does. Its royalty bps are the parent's,
            and they are paid to the owner of the lineage's root.
    @param model_id Content address of the model files.
    @param parent The model it was derived from.
    @param datasets Dataset ids it was trained on.
    @param salt The salt of the caller's commitment.
    @return address The owner (the caller).
    """
    packed: uint256 = self._royalty_slot[parent]
    assert self._models[parent].owner != empty(address), "models: unknown parent"
    self._reveal(model_id, salt)
    root: bytes32 = parent
    if packed & DERIVED_FLAG != 0:
        root = self.royalty_root[parent]
    bps: uint256 = packed & BPS_MASK
    self._register(model_id, license, bps, [parent], datasets, metadata_uri)
    self._royalty_slot[model_id] = self._pack(msg.sender, block.timestamp, bps) | DERIVED_FLAG
    self.royalty_root[model_id] = root
    return msg.sender


@internal
def _register(
    model_id: bytes32,
    license: String[64],
    royalty_bps: uint256,
    parents: DynArray[bytes32, MAX_PARENTS],
    datasets: DynArray[bytes32, MAX_DATASETS],
    metadata_uri: String[256],
):
    assert model_id != empty(bytes32), "models: empty id"
    assert self._models[model_id].owner == empty(address), "models: already registered"
    for parent: bytes32 in parents:
        assert parent != model_id, "models: own parent"
        assert self._models[parent].owner != empty(address), "models: unknown parent"
    self._models[model_id] = Model(
        owner=msg.sender,
        license=license,
        royalty_bps=royalty_bps,
        parents=parents,
        datasets=datasets,
        metadata_uri=metadata_uri,
        registered_at=block.timestamp,
    )
    self.model_at[self.model_count] = model_id
    self.model_count += 1
    log ModelRegistered(
        model_id=model_id,
        owner=msg.sender,
        license=license,
        royalty_bps=royalty_bps,
        parents=parents,
        datasets=datasets,
        metadata_uri=metadata_uri,
    )


@external
def transfer(model_id: bytes32, new_owner: address):
    """
    @notice Transfers ownership (and future royalties) of a model.
    @param model_id The model.
    @param new_owner The new owner; not the zero address.
    """
    owner: address = self._models[model_id].owner
    assert owner != empty(address), "models: unknown model"
    assert owner == msg.sender, "models: not owner"
    assert new_owner != empty(address), "models: zero owner"
    self._models[model_id].owner = new_owner
    flag: uint256 = self._royalty_slot[model_id] & DERIVED_FLAG
    self._royalty_slot[model_id] = self._pack(new_owner, self._models[model_id].registered_at, self._models[model_id].royalty_bps) | flag
    log ModelTransferred(model_id=model_id, previous_owner=owner, new_owner=new_owner)


@external
@view
def get(model_id: bytes32) -> Model:
    """
    @notice Everything recorded about a model; reverts if unknown.
    """
    assert self._models[model_id].owner != empty(address), "models: unknown model"
    return self._models[model_id]


@external
@view
def owner_of(model_id: bytes32) -> address:
    """
    @notice The model's owner, or the zero address if unregistered.
    """
    return self._models[model_id].owner


@external
@view
def royalty_info(model_id: bytes32) -> (address, uint256):
    """
    @notice (payee, royalty bps): the owner, or for a derived model the
            owner of its lineage's root; (0, 0) for an unknown model, which
            then pays no royalty.
    """
    payee: address = empty(address)
    bps: uint256 = 0
    registered_at: uint256 = 0
    payee, bps, registered_at = self._terms(model_id)
    return payee, bps


@external
@view
def royalty_terms(model_id: bytes32) -> (address, uint256, uint256):
    """
    @notice (payee, royalty bps, registered_at): what Channels applies to the
            service after `registered_at`; (0, 0, 0) for an unknown model.
    """
    return self._terms(model_id)


@internal
@view
def _terms(model_id: bytes32) -> (address, uint256, uint256):
    packed: uint256 = self._royalty_slot[model_id]
    bps: uint256 = packed & BPS_MASK
    registered_at: uint256 = (packed >> 32) & MASK_64
    if packed & DERIVED_FLAG != 0:
        packed = self._royalty_slot[self.royalty_root[model_id]]
    return convert(convert(packed >> 96, uint160), address), bps, registered_at


@internal
def _reveal(model_id: bytes32, salt: bytes32):
    commitment: bytes32 = keccak256(abi_encode(model_id, msg.sender, salt))
    committed_at: uint256 = self.commitments[commitment]
    assert committed_at != 0, "models: not committed"
    # made in an earlier block, when the id was still secret: a front-runner that saw this
    # transaction cannot have one
    assert committed_at < block.number, "models: commitment too recent"
    self.commitments[commitment] = 0


@internal
@pure
def _pack(owner: address, registered_at: uint256, bps: uint256) -> uint256:
    # bps <= 10_000 fits 31 bits; a timestamp fits 64 bits for 5e11 years
    return (convert(convert(owner, uint160), uint256) << 96) | (registered_at << 32) | bps


# ------------------------------------------------------------------ names


@external
def set_name(model_id: bytes32, name: String[MAX_NAME]):
    """
    @notice Gives a model its public name, replacing its old one (which
            becomes free); "" releases the name. Only the owner may name a
            model, and a name (or a look-alike of it) another model holds is
            refused: the first to claim a name keeps it.
    @param model_id The model, registered, owned by the caller.
    @param name The canonical name, e.g. "smollm2-135m-instruct"; "" for none.
    """
    owner: address = self._models[model_id].owner
    assert owner != empty(address), "models: unknown model"
    assert owner == msg.sender, "models: not owner"
    old: String[MAX_NAME] = self.name_of[model_id]
    if len(old) > 0:
        self._name_holder[self._skeleton_key(old)] = empty(bytes32)
    if len(name) > 0:
        key: bytes32 = self._skeleton_key(name)
        assert key != empty(bytes32), "models: bad name"
        assert self._name_holder[key] == empty(bytes32), "models: name taken"
        self._name_holder[key] = model_id
    self.name_of[model_id] = name
    log ModelNamed(model_id=model_id, owner=msg.sender, name=name)


@external
@view
def model_by_name(name: String[MAX_NAME]) -> bytes32:
    """
    @notice The model that holds exactly this name; empty for a free,
            invalid or merely look-alike name.
    """
    key: bytes32 = self._skeleton_key(name)
    if key == empty(bytes32):
        return empty(bytes32)
    model_id: bytes32 = self._name_holder[key]
    if model_id == empty(bytes32) or keccak256(self.name_of[model_id]) != keccak256(name):
        return empty(bytes32)
    return model_id


@external
@pure
def name_key(name: String[MAX_NAME]) -> bytes32:
    """
    @notice The key on which names must be unique: keccak256 of the name's
            skeleton (look-alike characters folded), left-aligned in four
            32-byte words. Reverts for a name that is not canonical.
    """
    key: bytes32 = self._skeleton_key(name)
    assert key != empty(bytes32), "models: bad name"
    return key


@internal
@pure
def _skeleton_key(name: String[MAX_NAME]) -> bytes32:
    # empty(bytes32) for a name that is not canonical (keccak256 never yields 0 in practice).
    # The fold is `allmende.core.model_names`' byte for byte: Unicode's confusables
    # (UTS #39) within the alphabet, 0 -> o, 1 -> l, m -> rn; the sequences UTS #39 cannot
    # list, w -> vv, d -> cl; i -> l; every separator -> "-". Each character becomes its
    # prototype, so the skeleton is at most 128 bytes.
    n: uint256 = len(name)
    if n == 0:
        return empty(bytes32)
    raw: Bytes[MAX_NAME] = convert(name, Bytes[MAX_NAME])
    words: uint256[4] = [0, 0, 0, 0]
    j: uint256 = 0  # bytes of skeleton written
    previous_separator: bool = True  # a name may not begin with a separator
    for i: uint256 in range(n, bound=MAX_NAME):
        c: uint256 = convert(slice(raw, i, 1), uint256)
        folded: uint256 = c
        second: uint256 = 0  # the second byte of a two-letter prototype
        separator: bool = False
        if c == 45 or c == 46 or c == 47 or c == 58 or c == 95:  # - . / : _
            separator = True
            folded = 45
        elif c == 48:  # 0 reads as o
            folded = 111
        elif c == 49 or c == 105:  # 1 and i read as l
            folded = 108
        elif c == 109:  # m reads as rn
            folded = 114
            second = 110
        elif c == 119:  # w reads as vv
            folded = 118
            second = 118
        elif c == 100:  # d reads as cl
            folded = 99
            second = 108
        elif not ((c >= 97 and c <= 122) or (c >= 50 and c <= 57)):  # other letters, digits 2-9
            return empty(bytes32)
        if separator and previous_separator:
            return empty(bytes32)
        previous_separator = separator
        # j < 128: byte j of the 128-byte skeleton, in word j // 32, big-endian
        words[j // 32] |= folded << (8 * (31 - j % 32))
        j += 1
        if second != 0:
            words[j // 32] |= second << (8 * (31 - j % 32))
            j += 1
    if previous_separator:  # nor end with one
        return empty(bytes32)
    return keccak256(
        concat(convert(words[0], bytes32), convert(words[1], bytes32), convert(words[2], bytes32), convert(words[3], bytes32))
    )
