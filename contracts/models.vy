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

        Royalties of derived models: a model registered with
        `register_derived` (e.g. trained by a federated run from a base
        model) pays its royalty, at the parent's bps, to whoever owns the
        root of its lineage when the payment is redeemed, not to its own
        owner. A model registered with `register` and parents only records
        the lineage and pays its own owner.
"""

from interfaces import IParams

MAX_PARENTS: constant(uint256) = 8
MAX_DATASETS: constant(uint256) = 8
BPS: constant(uint256) = 10_000
# @dev set in a royalty slot when the royalty goes to the lineage's root owner
DERIVED_FLAG: constant(uint256) = 1 << 95

ROYALTY_CAP_KEY: constant(bytes32) = keccak256("royalty_cap_bps")


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


params: public(immutable(IParams))

_models: HashMap[bytes32, Model]
# @dev owner (high 160 bits) and royalty bps (low 96 bits) in one slot, so
#      that a redeem pays one cold SLOAD per model instead of two.
_royalty_slot: HashMap[bytes32, uint256]
model_count: public(uint256)
model_at: public(HashMap[uint256, bytes32])
# @dev for derived models: the model whose owner receives the royalty
royalty_root: public(HashMap[bytes32, bytes32])


@deploy
def __init__(params_: IParams):
    params = params_


@external
def register(
    model_id: bytes32,
    license: String[64],
    royalty_bps: uint256,
    parents: DynArray[bytes32, MAX_PARENTS],
    datasets: DynArray[bytes32, MAX_DATASETS],
    metadata_uri: String[256],
) -> address:
    """
    @notice Registers a model id with the caller as its owner.
    @param model_id Content address of the model files.
    @param license SPDX id or short license name, e.g. "Apache-2.0".
    @param royalty_bps Share of each payment for this model paid to the
           owner, at most Params `royalty_cap_bps`.
    @param parents Model ids this model was derived from.
    @param datasets Dataset ids it was trained on.
    @param metadata_uri Where the model card lives.
    @return address The owner (the caller).
    """
    assert royalty_bps <= staticcall params.value(ROYALTY_CAP_KEY), "models: royalty above cap"
    self._register(model_id, license, royalty_bps, parents, datasets, metadata_uri)
    self._royalty_slot[model_id] = self._pack(msg.sender, royalty_bps)
    return msg.sender


@external
def register_derived(
    model_id: bytes32,
    parent: bytes32,
    license: String[64],
    datasets: DynArray[bytes32, MAX_DATASETS],
    metadata_uri: String[256],
) -> address:
    """
    @notice Registers a model derived from `parent` (fine-tuned, trained
            further) with the caller as its owner. Its royalty bps are the
            parent's, and they are paid to the owner of the lineage's root.
    @param model_id Content address of the model files.
    @param parent The model it was derived from.
    @param datasets Dataset ids it was trained on.
    @return address The owner (the caller).
    """
    packed: uint256 = self._royalty_slot[parent]
    assert self._models[parent].owner != empty(address), "models: unknown parent"
    root: bytes32 = parent
    if packed & DERIVED_FLAG != 0:
        root = self.royalty_root[parent]
    bps: uint256 = packed & (DERIVED_FLAG - 1)
    self._register(model_id, license, bps, [parent], datasets, metadata_uri)
    self._royalty_slot[model_id] = self._pack(msg.sender, bps) | DERIVED_FLAG
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
    self._royalty_slot[model_id] = self._pack(new_owner, self._models[model_id].royalty_bps) | flag
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
    packed: uint256 = self._royalty_slot[model_id]
    bps: uint256 = packed & (DERIVED_FLAG - 1)
    if packed & DERIVED_FLAG != 0:
        packed = self._royalty_slot[self.royalty_root[model_id]]
    return convert(convert(packed >> 96, uint160), address), bps


@internal
@pure
def _pack(owner: address, bps: uint256) -> uint256:
    # bps <= 10_000 always fits the low 96 bits
    return (convert(convert(owner, uint160), uint256) << 96) | bps
