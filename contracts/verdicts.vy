# pragma version ~=0.4.3
"""
@title Fraud cases, stake-weighted votes and slashing
@custom:contract-name verdicts
@license Apache-2.0
@notice A staked validator that caught a provider (a proof that does not match the
        claimed model) opens a case with the provider's own signed EIP-712 receipt
        and the hash and location of the evidence (prompt, output, proof), posting
        a bond in ALM. The receipt's signature is checked here with ecrecover
        under the Registry's EIP-712 domain, so a provider cannot deny it and
        nobody can forge one. Other staked validators re-check the evidence and
        vote, weighted by their stake; the reporter cannot vote, nobody votes
        twice. After the voting window:
        - guilty (quorum reached, more weight guilty than not): Params `slash_bps`
          of the provider's stake is slashed; `reporter_reward_bps` of it goes to
          the reporter, the rest to the treasury; the bond is returned and the
          provider is paused;
        - not guilty (quorum reached, not more guilty weight): the bond goes to
          the provider;
        - no quorum: inconclusive, the bond is returned.
        Stake moves out of Registry only after an unbonding period longer than
        the voting window, so the same tokens cannot vote twice through two
        accounts within one case.
        Validators also publish per-provider reputation scores here; gateways
        take their stake-weighted median.
"""

from snekmate.utils import ecdsa
from ethereum.ercs import IERC20
from interfaces import IParams
from interfaces import IRegistry

BPS: constant(uint256) = 10_000
ROLE_PROVIDER: constant(uint8) = 1
ROLE_VALIDATOR: constant(uint8) = 2
MAX_SCORES: constant(uint256) = 64

RECEIPT_TYPEHASH: constant(bytes32) = keccak256(
    "Receipt(bytes32 requestId,bytes32 modelId,address provider,bytes32 inputHash,bytes32 outputHash,bytes32 proofHash,uint32 tokensIn,uint32 tokensOut,uint256 amount,uint64 timestamp)"
)
DOMAIN_TYPEHASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
SLASH_KEY: constant(bytes32) = keccak256("slash_bps")
QUORUM_KEY: constant(bytes32) = keccak256("fraud_quorum_bps")
REWARD_KEY: constant(bytes32) = keccak256("reporter_reward_bps")
BOND_KEY: constant(bytes32) = keccak256("fraud_bond")
PERIOD_KEY: constant(bytes32) = keccak256("fraud_voting_period")

STATUS_NONE: constant(uint8) = 0
STATUS_OPEN: constant(uint8) = 1
STATUS_GUILTY: constant(uint8) = 2
STATUS_NOT_GUILTY: constant(uint8) = 3
STATUS_INCONCLUSIVE: constant(uint8) = 4


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


struct Case:
    provider: address
    reporter: address
    model_id: bytes32
    receipt_digest: bytes32
    evidence_hash: bytes32
    evidence_uri: String[256]
    bond: uint256
    opened_at: uint256
    deadline: uint256
    total_stake: uint256
    guilty_weight: uint256
    innocent_weight: uint256
    status: uint8
    slashed: uint256


event CaseOpened:
    case_id: indexed(uint256)
    provider: indexed(address)
    reporter: indexed(address)
    evidence_hash: bytes32
    evidence_uri: String[256]
    deadline: uint256


event Voted:
    case_id: indexed(uint256)
    validator: indexed(address)
    guilty: bool
    weight: uint256


event CaseResolved:
    case_id: indexed(uint256)
    status: uint8
    slashed: uint256
    reporter_reward: uint256


event ScoresPublished:
    validator: indexed(address)
    count: uint256


stake_token: public(immutable(IERC20))
registry: public(immutable(IRegistry))
params: public(immutable(IParams))
treasury: public(immutable(address))
receipt_domain_separator: public(immutable(bytes32))

cases: public(HashMap[uint256, Case])
case_count: public(uint256)
voted: public(HashMap[uint256, HashMap[address, bool]])
case_of_receipt: public(HashMap[bytes32, uint256])
# @dev validator -> provider -> score in bps (0..10000) and when it was published
score: public(HashMap[address, HashMap[address, uint256]])
scored_at: public(HashMap[address, HashMap[address, uint256]])


@deploy
def __init__(stake_token_: IERC20, registry_: IRegistry, params_: IParams, treasury_: address):
    assert treasury_ != empty(address), "verdicts: zero treasury"
    stake_token = stake_token_
    registry = registry_
    params = params_
    treasury = treasury_
    receipt_domain_separator = keccak256(
        abi_encode(DOMAIN_TYPEHASH, keccak256("Allmende"), keccak256("1"), chain.id, registry_.address)
    )


# ------------------------------------------------------------------ cases


@external
def open_case(receipt: Receipt, signature: Bytes[65], evidence_hash: bytes32, evidence_uri: String[256]) -> uint256:
    """
    @notice Opens a fraud case against the receipt's provider, pulling the bond.
    @param receipt The provider's signed receipt for the audited request.
    @param signature Its 65-byte EIP-712 signature.
    @param evidence_hash keccak256 of the evidence document (prompt, output, proof).
    @param evidence_uri Where other validators fetch the evidence.
    @return uint256 The case id (from 1).
    """
    assert staticcall registry.role_of(msg.sender) == ROLE_VALIDATOR, "verdicts: not a validator"
    assert staticcall registry.is_active(msg.sender), "verdicts: validator not active"
    assert staticcall registry.role_of(receipt.provider) == ROLE_PROVIDER, "verdicts: not a provider"
    digest: bytes32 = self._receipt_digest(receipt)
    assert ecdsa._recover_sig(digest, signature) == receipt.provider, "verdicts: bad receipt signature"
    assert self.case_of_receipt[digest] == 0, "verdicts: receipt already reported"
    assert evidence_hash != empty(bytes32), "verdicts: empty evidence"
    bond: uint256 = staticcall params.value(BOND_KEY)
    if bond > 0:
        assert extcall stake_token.transferFrom(msg.sender, self, bond, default_return_value=True), "verdicts: bond transfer failed"
    case_id: uint256 = self.case_count + 1
    self.case_count = case_id
    self.case_of_receipt[digest] = case_id
    deadline: uint256 = block.timestamp + staticcall params.value(PERIOD_KEY)
    self.cases[case_id] = Case(
        provider=receipt.provider,
        reporter=msg.sender,
        model_id=receipt.model_id,
        receipt_digest=digest,
        evidence_hash=evidence_hash,
        evidence_uri=evidence_uri,
        bond=bond,
        opened_at=block.timestamp,
        deadline=deadline,
        total_stake=staticcall registry.role_stake(ROLE_VALIDATOR),
        guilty_weight=0,
        innocent_weight=0,
        status=STATUS_OPEN,
        slashed=0,
    )
    log CaseOpened(
        case_id=case_id,
        provider=receipt.provider,
        reporter=msg.sender,
        evidence_hash=evidence_hash,
        evidence_uri=evidence_uri,
        deadline=deadline,
    )
    return case_id


@external
def vote(case_id: uint256, guilty: bool):
    """
    @notice A staked validator's vote, weighted by its stake. Not by the reporter,
            once per validator, before the deadline.
    """
    case: Case = self.cases[case_id]
    assert case.status == STATUS_OPEN, "verdicts: case not open"
    assert block.timestamp < case.deadline, "verdicts: voting closed"
    assert msg.sender != case.reporter, "verdicts: reporter cannot vote"
    assert not self.voted[case_id][msg.sender], "verdicts: already voted"
    assert staticcall registry.role_of(msg.sender) == ROLE_VALIDATOR, "verdicts: not a validator"
    assert staticcall registry.is_active(msg.sender), "verdicts: validator not active"
    weight: uint256 = staticcall registry.stake_of(msg.sender)
    self.voted[case_id][msg.sender] = True
    if guilty:
        self.cases[case_id].guilty_weight = case.guilty_weight + weight
    else:
        self.cases[case_id].innocent_weight = case.innocent_weight + weight
    log Voted(case_id=case_id, validator=msg.sender, guilty=guilty, weight=weight)


@external
def resolve(case_id: uint256) -> uint8:
    """
    @notice Settles a case after its voting window; anyone may call it.
    @return uint8 2 guilty, 3 not guilty, 4 inconclusive.
    """
    case: Case = self.cases[case_id]
    assert case.status == STATUS_OPEN, "verdicts: case not open"
    assert block.timestamp >= case.deadline, "verdicts: voting still open"
    votes: uint256 = case.guilty_weight + case.innocent_weight
    quorum: uint256 = staticcall params.value(QUORUM_KEY)
    status: uint8 = STATUS_INCONCLUSIVE
    slashed: uint256 = 0
    reward: uint256 = 0
    if votes * BPS >= case.total_stake * quorum and votes > 0:
        status = STATUS_NOT_GUILTY
        if case.guilty_weight > case.innocent_weight:
            status = STATUS_GUILTY
    self.cases[case_id].status = status

    if status == STATUS_GUILTY:
        amount: uint256 = staticcall registry.stake_of(case.provider) * staticcall params.value(SLASH_KEY) // BPS
        if amount > 0:
            slashed = extcall registry.slash(case.provider, amount, self)
            reward = slashed * staticcall params.value(REWARD_KEY) // BPS
            self._pay(case.reporter, reward)
            self._pay(treasury, slashed - reward)
        extcall registry.set_paused(case.provider, True)
        self._pay(case.reporter, case.bond)
    elif status == STATUS_NOT_GUILTY:
        self._pay(case.provider, case.bond)
    else:
        self._pay(case.reporter, case.bond)
    self.cases[case_id].slashed = slashed
    log CaseResolved(case_id=case_id, status=status, slashed=slashed, reporter_reward=reward)
    return status


# ------------------------------------------------------------- reputation


@external
def publish_scores(providers: DynArray[address, MAX_SCORES], scores: DynArray[uint256, MAX_SCORES]):
    """
    @notice A staked validator publishes reputation scores (bps, 0..10000) for providers
            it audited; gateways use the stake-weighted median over validators.
    """
    assert staticcall registry.role_of(msg.sender) == ROLE_VALIDATOR, "verdicts: not a validator"
    assert staticcall registry.is_active(msg.sender), "verdicts: validator not active"
    assert len(providers) == len(scores), "verdicts: length mismatch"
    for i: uint256 in range(len(providers), bound=MAX_SCORES):
        assert scores[i] <= BPS, "verdicts: score above 10000"
        self.score[msg.sender][providers[i]] = scores[i]
        self.scored_at[msg.sender][providers[i]] = block.timestamp
    log ScoresPublished(validator=msg.sender, count=len(providers))


# ------------------------------------------------------------------ views


@external
@view
def receipt_digest(receipt: Receipt) -> bytes32:
    """
    @notice The EIP-712 digest of a receipt under the Registry's domain.
    """
    return self._receipt_digest(receipt)


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
    return keccak256(concat(b"\x19\x01", receipt_domain_separator, struct_hash))


@internal
def _pay(to: address, amount: uint256):
    if amount > 0:
        assert extcall stake_token.transfer(to, amount, default_return_value=True), "verdicts: transfer failed"
