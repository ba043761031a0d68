# pragma version ~=0.4.3
"""
@title Data: datasets, access grants with a privacy budget, the access log
@custom:contract-name data
@license Apache-2.0
@notice A dataset is identified by the keccak256 of its file manifest and
        stays with its owner: the owner's vault runs approved job templates
        next to the data and only aggregates leave. A dataset is registered
        by commit-reveal (`commit`, then `register_dataset` in a later block),
        so nobody who sees the registration can take the id first. The owner grants a
        grantee one job template over a set of model ids, until an expiry,
        with a differential-privacy budget (epsilon, in millionths). The
        vault key, and only it, records each access (job id, result hash,
        epsilon spent); the budget can never be exceeded. Job ids are unique
        per dataset: another dataset's log cannot take a vault's job id. Staked
        validators attest the held-out metrics of models trained on
        datasets, so lineage claims carry evidence.
"""

from interfaces import IRegistry

MAX_MODELS: constant(uint256) = 16
ROLE_VALIDATOR: constant(uint8) = 2

# job templates (the vault runs these and nothing else)
TEMPLATE_EVALUATE: constant(uint8) = 1
TEMPLATE_FEDERATED_ROUND: constant(uint8) = 2
TEMPLATE_AGGREGATE: constant(uint8) = 3


struct Dataset:
    owner: address
    vault: address
    license: String[64]
    policy_uri: String[256]
    registered_at: uint256
    accesses: uint256


struct Grant:
    dataset_id: bytes32
    grantee: address
    template: uint8
    model_ids: DynArray[bytes32, MAX_MODELS]
    expires_at: uint256
    epsilon_budget: uint256
    epsilon_spent: uint256
    revoked: bool


struct Access:
    grant_id: uint256
    job_id: bytes32
    model_id: bytes32
    result_hash: bytes32
    epsilon_spent: uint256
    at: uint256


struct Attestation:
    validator: address
    job_id: bytes32
    metric: String[32]
    value_ppm: uint256
    report_hash: bytes32
    at: uint256


event DatasetRegistered:
    dataset_id: indexed(bytes32)
    owner: indexed(address)
    vault: address
    license: String[64]
    policy_uri: String[256]


event VaultChanged:
    dataset_id: indexed(bytes32)
    vault: address


event AccessGranted:
    grant_id: indexed(uint256)
    dataset_id: indexed(bytes32)
    grantee: indexed(address)
    template: uint8
    model_ids: DynArray[bytes32, MAX_MODELS]
    expires_at: uint256
    epsilon_budget: uint256


event AccessRevoked:
    grant_id: indexed(uint256)
    dataset_id: indexed(bytes32)


event AccessLogged:
    grant_id: indexed(uint256)
    dataset_id: indexed(bytes32)
    job_id: indexed(bytes32)
    model_id: bytes32
    result_hash: bytes32
    epsilon_spent: uint256
    epsilon_total: uint256


event ModelAttested:
    model_id: indexed(bytes32)
    validator: indexed(address)
    job_id: bytes32
    metric: String[32]
    value_ppm: uint256
    report_hash: bytes32


registry: public(immutable(IRegistry))

_datasets: HashMap[bytes32, Dataset]
dataset_count: public(uint256)
dataset_at: public(HashMap[uint256, bytes32])
# @dev commitment -> block number it was made in (0: none)
commitments: public(HashMap[bytes32, uint256])

_grants: HashMap[uint256, Grant]
grant_count: public(uint256)

# the access log, per dataset, in order
_log: HashMap[bytes32, HashMap[uint256, Access]]
# @dev dataset id -> job id -> logged
job_logged: public(HashMap[bytes32, HashMap[bytes32, bool]])

_attestations: HashMap[bytes32, HashMap[uint256, Attestation]]
attestation_count: public(HashMap[bytes32, uint256])
_attested: HashMap[bytes32, HashMap[address, bool]]


@deploy
def __init__(registry_: IRegistry):
    registry = registry_


# ------------------------------------------------------------ datasets


@external
def commit(commitment: bytes32):
    """
    @notice First step of a dataset registration: hides the dataset id until
            `register_dataset` reveals it in a later block, so the reveal cannot
            be front-run by a squatter with its own vault.
    @param commitment keccak256(abi_encode(dataset_id, owner, salt)), owner being
           the account that will call `register_dataset`.
    """
    assert commitment != empty(bytes32), "data: empty commitment"
    # the earliest block counts; a copy of someone's commitment (it names its owner, so only
    # that owner can reveal it) neither fails that owner's commit nor moves it later
    if self.commitments[commitment] == 0:
        self.commitments[commitment] = block.number


@external
@pure
def commitment_of(dataset_id: bytes32, owner: address, salt: bytes32) -> bytes32:
    """
    @notice The commitment `owner` makes before registering `dataset_id` with `salt`.
    """
    return keccak256(abi_encode(dataset_id, owner, salt))


@external
def register_dataset(dataset_id: bytes32, vault: address, license: String[64], policy_uri: String[256], salt: bytes32):
    """
    @notice Registers a dataset with the caller as its owner, revealing the
            commitment the caller made in an earlier block.
    @param dataset_id keccak256 of the dataset's file manifest.
    @param vault The key of the vault node that holds the data and logs accesses.
    @param license SPDX id or short license name.
    @param policy_uri Where the data-use policy lives.
    @param salt The salt of the caller's commitment.
    """
    assert dataset_id != empty(bytes32), "data: empty id"
    assert vault != empty(address), "data: zero vault"
    assert self._datasets[dataset_id].owner == empty(address), "data: already registered"
    commitment: bytes32 = keccak256(abi_encode(dataset_id, msg.sender, salt))
    committed_at: uint256 = self.commitments[commitment]
    assert committed_at != 0, "data: not committed"
    # made in an earlier block, while the id was secret: a front-runner cannot have one
    assert committed_at < block.number, "data: commitment too recent"
    self.commitments[commitment] = 0
    self._datasets[dataset_id] = Dataset(
        owner=msg.sender,
        vault=vault,
        license=license,
        policy_uri=policy_uri,
        registered_at=block.timestamp,
        accesses=0,
    )
    self.dataset_at[self.dataset_count] = dataset_id
    self.dataset_count += 1
    log DatasetRegistered(dataset_id=dataset_id, owner=msg.sender, vault=vault, license=license, policy_uri=policy_uri)


@external
def set_vault(dataset_id: bytes32, vault: address):
    """
    @notice Moves a dataset to another vault key (e.g. after a key rotation).
    """
    self._only_owner(dataset_id)
    assert vault != empty(address), "data: zero vault"
    self._datasets[dataset_id].vault = vault
    log VaultChanged(dataset_id=dataset_id, vault=vault)


@external
@view
def dataset(dataset_id: bytes32) -> Dataset:
    """
    @notice Everything recorded about a dataset; reverts if unknown.
    """
    assert self._datasets[dataset_id].owner != empty(address), "data: unknown dataset"
    return self._datasets[dataset_id]


# -------------------------------------------------------------- grants


@external
def grant(
    dataset_id: bytes32,
    grantee: address,
    template: uint8,
    model_ids: DynArray[bytes32, MAX_MODELS],
    expires_at: uint256,
    epsilon_budget: uint256,
) -> uint256:
    """
    @notice Lets `grantee` run one job template on the dataset.
    @param template 1 evaluate, 2 federated round, 3 aggregate statistics.
    @param model_ids The models the grantee may evaluate or train (at least
           one for templates 1 and 2; ignored for 3).
    @param expires_at Unix time after which no job runs.
    @param epsilon_budget Differential-privacy budget in millionths of epsilon.
    @return uint256 The grant id.
    """
    self._only_owner(dataset_id)
    assert grantee != empty(address), "data: zero grantee"
    assert template >= TEMPLATE_EVALUATE and template <= TEMPLATE_AGGREGATE, "data: unknown template"
    assert template == TEMPLATE_AGGREGATE or len(model_ids) > 0, "data: no models"
    assert expires_at > block.timestamp, "data: already expired"
    grant_id: uint256 = self.grant_count + 1
    self.grant_count = grant_id
    self._grants[grant_id] = Grant(
        dataset_id=dataset_id,
        grantee=grantee,
        template=template,
        model_ids=model_ids,
        expires_at=expires_at,
        epsilon_budget=epsilon_budget,
        epsilon_spent=0,
        revoked=False,
    )
    log AccessGranted(
        grant_id=grant_id,
        dataset_id=dataset_id,
        grantee=grantee,
        template=template,
        model_ids=model_ids,
        expires_at=expires_at,
        epsilon_budget=epsilon_budget,
    )
    return grant_id


@external
def revoke(grant_id: uint256):
    """
    @notice Ends a grant at once; no job runs under it afterwards.
    """
    dataset_id: bytes32 = self._grants[grant_id].dataset_id
    assert dataset_id != empty(bytes32), "data: unknown grant"
    self._only_owner(dataset_id)
    self._grants[grant_id].revoked = True
    log AccessRevoked(grant_id=grant_id, dataset_id=dataset_id)


@external
@view
def get_grant(grant_id: uint256) -> Grant:
    """
    @notice A grant; reverts if unknown.
    """
    assert self._grants[grant_id].dataset_id != empty(bytes32), "data: unknown grant"
    return self._grants[grant_id]


@external
@view
def permits(grant_id: uint256, grantee: address, template: uint8, model_id: bytes32, epsilon_ppm: uint256) -> bool:
    """
    @notice Whether a job with these terms may run now under the grant.
    """
    g: Grant = self._grants[grant_id]
    if g.dataset_id == empty(bytes32) or g.revoked or block.timestamp >= g.expires_at:
        return False
    if g.grantee != grantee or g.template != template:
        return False
    if g.epsilon_spent + epsilon_ppm > g.epsilon_budget:
        return False
    return template == TEMPLATE_AGGREGATE or model_id in g.model_ids


# ---------------------------------------------------------- access log


@external
def record_access(grant_id: uint256, job_id: bytes32, model_id: bytes32, result_hash: bytes32, epsilon_ppm: uint256):
    """
    @notice Logs one job run under a grant and charges its epsilon.
            Only the dataset's vault key may call it; it reverts if the
            grant is revoked or expired, the model is not granted, the job
            id was logged for this dataset before, or the budget would be
            exceeded.
    """
    g: Grant = self._grants[grant_id]
    assert g.dataset_id != empty(bytes32), "data: unknown grant"
    assert msg.sender == self._datasets[g.dataset_id].vault, "data: not the vault"
    assert not g.revoked, "data: grant revoked"
    assert block.timestamp < g.expires_at, "data: grant expired"
    assert job_id != empty(bytes32), "data: empty job id"
    assert not self.job_logged[g.dataset_id][job_id], "data: job already logged"
    assert g.template == TEMPLATE_AGGREGATE or model_id in g.model_ids, "data: model not granted"
    spent: uint256 = g.epsilon_spent + epsilon_ppm
    assert spent <= g.epsilon_budget, "data: privacy budget exceeded"
    self._grants[grant_id].epsilon_spent = spent
    self.job_logged[g.dataset_id][job_id] = True
    index: uint256 = self._datasets[g.dataset_id].accesses
    self._log[g.dataset_id][index] = Access(
        grant_id=grant_id,
        job_id=job_id,
        model_id=model_id,
        result_hash=result_hash,
        epsilon_spent=epsilon_ppm,
        at=block.timestamp,
    )
    self._datasets[g.dataset_id].accesses = index + 1
    log AccessLogged(
        grant_id=grant_id,
        dataset_id=g.dataset_id,
        job_id=job_id,
        model_id=model_id,
        result_hash=result_hash,
        epsilon_spent=epsilon_ppm,
        epsilon_total=spent,
    )


@external
@view
def access_at(dataset_id: bytes32, index: uint256) -> Access:
    """
    @notice The dataset's `index`-th logged access (0-based).
    """
    assert index < self._datasets[dataset_id].accesses, "data: no such access"
    return self._log[dataset_id][index]


# -------------------------------------------------------- attestations


@external
def attest(model_id: bytes32, job_id: bytes32, metric: String[32], value_ppm: uint256, report_hash: bytes32):
    """
    @notice A staked validator attests a model's metric (in millionths) on a
            held-out evaluation job it checked. One attestation per validator
            and model.
    """
    assert staticcall registry.role_of(msg.sender) == ROLE_VALIDATOR, "data: not a validator"
    assert staticcall registry.is_active(msg.sender), "data: validator not active"
    assert not self._attested[model_id][msg.sender], "data: already attested"
    self._attested[model_id][msg.sender] = True
    index: uint256 = self.attestation_count[model_id]
    self._attestations[model_id][index] = Attestation(
        validator=msg.sender,
        job_id=job_id,
        metric=metric,
        value_ppm=value_ppm,
        report_hash=report_hash,
        at=block.timestamp,
    )
    self.attestation_count[model_id] = index + 1
    log ModelAttested(
        model_id=model_id,
        validator=msg.sender,
        job_id=job_id,
        metric=metric,
        value_ppm=value_ppm,
        report_hash=report_hash,
    )


@external
@view
def attestation_at(model_id: bytes32, index: uint256) -> Attestation:
    """
    @notice The model's `index`-th attestation (0-based).
    """
    assert index < self.attestation_count[model_id], "data: no such attestation"
    return self._attestations[model_id][index]


@internal
@view
def _only_owner(dataset_id: bytes32):
    owner: address = self._datasets[dataset_id].owner
    assert owner != empty(address), "data: unknown dataset"
    assert owner == msg.sender, "data: not the owner"
