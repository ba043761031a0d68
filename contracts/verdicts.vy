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
        nobody can forge one. Opening a case holds the provider in Registry: it
        cannot withdraw anything until the case is resolved, and the slash is a
        share of everything it had at stake when the case opened (bonded and
        unbonding), so unbonding cannot outrun a case.
        Other staked validators re-check the evidence and vote, each weighted by
        its stake one second before the case opened; the quorum base is the
        validators' stake at that same snapshot, less the reporters' (reporters
        cannot vote). Stake added after a case opened weighs nothing in it.
        After the voting window, with q = Params `fraud_quorum_bps` as of opening:
        - guilty (more than q of the base voted guilty, and more guilty than
          not): Params `slash_bps` of the snapshot stake is slashed (once per
          receipt); `reporter_reward_bps` of it goes to the reporters in equal
          shares, the rest to the treasury; the bonds are returned and the
          provider is paused;
        - not guilty (at least q of the base voted, not guilty): the bonds go
          to the provider;
        - inconclusive (fewer votes): Params `fraud_forfeit_bps` of each bond
          goes to the treasury, the rest back to its reporter.
        So a false report always costs its reporter, and a coalition holding
        less than q of the validator stake cannot convict on its own.
        At most one case is open per (provider, fault), the fault being the
        receipt's model: a later report of it joins the open case (each reporter
        posting its own bond, at most MAX_REPORTS of them) instead of opening
        another, so reports cannot compound slashes or lock bond after bond. A
        joined report makes the case's evidence the union of its reports (guilty
        when any of them proves the fault): a validator that voted before it may
        vote again, its earlier vote withdrawn, so a junk report filed first (by
        a colluder of the provider) cannot pre-empt the real one. Reporters
        cannot vote (a juror that joins has its vote withdrawn), and their stake
        leaves the quorum base. A guilty verdict
        returns every bond and splits the reward equally between the reporters;
        not guilty gives every bond to the provider; inconclusive forfeits the
        same share of every bond. A receipt can be reported again in a new case
        once the case that held it has ended without a conviction.
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
MAX_REPORTS: constant(uint256) = 16

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
FORFEIT_KEY: constant(bytes32) = keccak256("fraud_forfeit_bps")

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
    total_stake: uint256  # quorum base: validator stake at the snapshot, less the reporter's
    guilty_weight: uint256
    innocent_weight: uint256
    status: uint8
    slashed: uint256
    snapshot: uint256  # the moment vote weights are read at (opened_at - 1)
    provider_stake: uint256  # bonded + unbonding when the case opened
    quorum_bps: uint256  # fraud_quorum_bps as of opening


event CaseOpened:
    case_id: indexed(uint256)
    provider: indexed(address)
    reporter: indexed(address)
    evidence_hash: bytes32
    evidence_uri: String[256]
    deadline: uint256


struct Report:
    reporter: address
    receipt_digest: bytes32
    evidence_hash: bytes32
    evidence_uri: String[256]


event CaseJoined:
    case_id: indexed(uint256)
    reporter: indexed(address)
    evidence_hash: bytes32
    evidence_uri: String[256]
    reports: uint256


event ReporterRewarded:
    case_id: indexed(uint256)
    reporter: indexed(address)
    reward: uint256


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
# @dev receipt digest -> reporter -> its latest case on that receipt
case_of_receipt: public(HashMap[bytes32, HashMap[address, uint256]])
# @dev provider -> fault (the receipt's model id) -> its open case (0: none)
open_case_of: public(HashMap[address, HashMap[bytes32, uint256]])
# @dev case -> index -> report (0: the opener's); the case's evidence is all of them
reports: public(HashMap[uint256, HashMap[uint256, Report]])
report_count: public(HashMap[uint256, uint256])
is_reporter: public(HashMap[uint256, HashMap[address, bool]])
# @dev case -> voter -> the report count its vote saw, and which way it voted; a vote
#      may be cast again once more reports joined
seen_reports: public(HashMap[uint256, HashMap[address, uint256]])
voted_guilty: public(HashMap[uint256, HashMap[address, bool]])
# @dev validator -> ALM it was paid as reporter rewards, over all cases
rewards_of: public(HashMap[address, uint256])
# @dev a receipt that already led to a slash is never slashed again
convicted: public(HashMap[bytes32, bool])
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
    @notice Reports the receipt's provider, pulling the bond: opens a fraud case, or,
            when one is already open for this provider and model, joins it.
    @param receipt The provider's signed receipt for the audited request.
    @param signature Its 65-byte EIP-712 signature.
    @param evidence_hash keccak256 of the evidence document (prompt, output, proof).
    @param evidence_uri Where other validators fetch the evidence.
    @return uint256 The case id (from 1), opened or joined.
    """
    assert staticcall registry.role_of(msg.sender) == ROLE_VALIDATOR, "verdicts: not a validator"
    assert staticcall registry.is_active(msg.sender), "verdicts: validator not active"
    assert staticcall registry.role_of(receipt.provider) == ROLE_PROVIDER, "verdicts: not a provider"
    digest: bytes32 = self._receipt_digest(receipt)
    assert ecdsa._recover_sig(digest, signature) == receipt.provider, "verdicts: bad receipt signature"
    assert not self.convicted[digest], "verdicts: receipt already convicted"
    assert evidence_hash != empty(bytes32), "verdicts: empty evidence"
    existing: uint256 = self.open_case_of[receipt.provider][receipt.model_id]
    if existing != 0:
        self._join(existing, digest, evidence_hash, evidence_uri)
        return existing
    bond: uint256 = staticcall params.value(BOND_KEY)
    self._pull(bond)
    case_id: uint256 = self.case_count + 1
    self.case_count = case_id
    self.open_case_of[receipt.provider][receipt.model_id] = case_id
    self._add_report(case_id, 0, digest, evidence_hash, evidence_uri)
    deadline: uint256 = block.timestamp + staticcall params.value(PERIOD_KEY)
    # one snapshot for every weight: the end of the second before this one, so stake
    # staked in this block (even before this transaction) weighs nothing
    snapshot: uint256 = block.timestamp - 1
    base: uint256 = staticcall registry.role_stake_at(ROLE_VALIDATOR, snapshot)
    base -= staticcall registry.stake_at(msg.sender, snapshot)
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
        total_stake=base,
        guilty_weight=0,
        innocent_weight=0,
        status=STATUS_OPEN,
        slashed=0,
        snapshot=snapshot,
        provider_stake=staticcall registry.slashable_of(receipt.provider),
        quorum_bps=staticcall params.value(QUORUM_KEY),
    )
    extcall registry.hold(receipt.provider)
    log CaseOpened(
        case_id=case_id,
        provider=receipt.provider,
        reporter=msg.sender,
        evidence_hash=evidence_hash,
        evidence_uri=evidence_uri,
        deadline=deadline,
    )
    return case_id


@internal
def _join(case_id: uint256, digest: bytes32, evidence_hash: bytes32, evidence_uri: String[256]):
    case: Case = self.cases[case_id]
    assert block.timestamp < case.deadline, "verdicts: open case past its deadline, resolve it first"
    assert not self.is_reporter[case_id][msg.sender], "verdicts: already reported in this case"
    count: uint256 = self.report_count[case_id]
    assert count < MAX_REPORTS, "verdicts: case has all its reports"
    if self.voted[case_id][msg.sender]:
        # a juror that voted on the evidence before it caught the provider itself: its vote
        # is withdrawn, as reporters do not vote
        weight: uint256 = staticcall registry.stake_at(msg.sender, case.snapshot)
        if self.voted_guilty[case_id][msg.sender]:
            case.guilty_weight -= weight
            self.cases[case_id].guilty_weight = case.guilty_weight
        else:
            case.innocent_weight -= weight
            self.cases[case_id].innocent_weight = case.innocent_weight
        self.voted[case_id][msg.sender] = False
    self._pull(case.bond)
    self._add_report(case_id, count, digest, evidence_hash, evidence_uri)
    # a reporter cannot vote, so its stake leaves the quorum base; the votes are all from
    # non-reporters, so they stay within the base
    self.cases[case_id].total_stake = case.total_stake - min(
        staticcall registry.stake_at(msg.sender, case.snapshot), case.total_stake
    )
    log CaseJoined(
        case_id=case_id, reporter=msg.sender, evidence_hash=evidence_hash, evidence_uri=evidence_uri, reports=count + 1
    )


@internal
def _add_report(case_id: uint256, index: uint256, digest: bytes32, evidence_hash: bytes32, evidence_uri: String[256]):
    self.reports[case_id][index] = Report(
        reporter=msg.sender, receipt_digest=digest, evidence_hash=evidence_hash, evidence_uri=evidence_uri
    )
    self.report_count[case_id] = index + 1
    self.is_reporter[case_id][msg.sender] = True
    self.case_of_receipt[digest][msg.sender] = case_id


@internal
def _pull(bond: uint256):
    if bond > 0:
        assert extcall stake_token.transferFrom(msg.sender, self, bond, default_return_value=True), "verdicts: bond transfer failed"


@external
def vote(case_id: uint256, guilty: bool):
    """
    @notice A validator's vote, weighted by its stake at the case's snapshot (just
            before it opened). Not by a reporter, before the deadline, once per
            validator until another report joins the case: then it may vote
            again, and its earlier vote is withdrawn.
    """
    case: Case = self.cases[case_id]
    assert case.status == STATUS_OPEN, "verdicts: case not open"
    assert block.timestamp < case.deadline, "verdicts: voting closed"
    assert not self.is_reporter[case_id][msg.sender], "verdicts: reporter cannot vote"
    reports: uint256 = self.report_count[case_id]
    assert self.seen_reports[case_id][msg.sender] < reports, "verdicts: already voted"
    assert staticcall registry.role_of(msg.sender) == ROLE_VALIDATOR, "verdicts: not a validator"
    weight: uint256 = staticcall registry.stake_at(msg.sender, case.snapshot)
    assert weight > 0, "verdicts: no stake at snapshot"
    if self.voted[case_id][msg.sender]:
        # the same snapshot weight it added before (the snapshot never moves)
        if self.voted_guilty[case_id][msg.sender]:
            case.guilty_weight -= weight
        else:
            case.innocent_weight -= weight
    self.voted[case_id][msg.sender] = True
    self.seen_reports[case_id][msg.sender] = reports
    self.voted_guilty[case_id][msg.sender] = guilty
    if guilty:
        case.guilty_weight += weight
    else:
        case.innocent_weight += weight
    self.cases[case_id].guilty_weight = case.guilty_weight
    self.cases[case_id].innocent_weight = case.innocent_weight
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
    status: uint8 = STATUS_INCONCLUSIVE
    slashed: uint256 = 0
    reward: uint256 = 0
    # the weights and the base come from one snapshot, so votes <= base
    if case.guilty_weight > case.innocent_weight and case.guilty_weight * BPS > case.total_stake * case.quorum_bps:
        status = STATUS_GUILTY
    elif votes > 0 and votes * BPS >= case.total_stake * case.quorum_bps:
        status = STATUS_NOT_GUILTY
    self.cases[case_id].status = status
    self.open_case_of[case.provider][case.model_id] = 0
    extcall registry.release(case.provider)
    count: uint256 = self.report_count[case_id]

    if status == STATUS_GUILTY:
        # every report's receipt was unconvicted when it joined, and while the case was open
        # no other case on this fault could convict one; the opener's is checked as before
        fresh: bool = not self.convicted[case.receipt_digest]
        for i: uint256 in range(count, bound=MAX_REPORTS):
            self.convicted[self.reports[case_id][i].receipt_digest] = True
        share: uint256 = 0
        if fresh:
            amount: uint256 = case.provider_stake * staticcall params.value(SLASH_KEY) // BPS
            # the provider could not withdraw since the case opened; only an earlier
            # conviction can have taken part of the snapshot stake
            amount = min(amount, staticcall registry.slashable_of(case.provider))
            if amount > 0:
                slashed = extcall registry.slash(case.provider, amount, self)
                # split equally; what division leaves over goes to the treasury with the rest
                share = slashed * staticcall params.value(REWARD_KEY) // BPS // count
                reward = share * count
                self._pay(treasury, slashed - reward)
        extcall registry.set_paused(case.provider, True)
        for i: uint256 in range(count, bound=MAX_REPORTS):
            reporter: address = self.reports[case_id][i].reporter
            self._pay(reporter, case.bond + share)
            if share > 0:
                self.rewards_of[reporter] += share
                log ReporterRewarded(case_id=case_id, reporter=reporter, reward=share)
    elif status == STATUS_NOT_GUILTY:
        self._pay(case.provider, case.bond * count)
    else:
        forfeit: uint256 = case.bond * staticcall params.value(FORFEIT_KEY) // BPS
        self._pay(treasury, forfeit * count)
        for i: uint256 in range(count, bound=MAX_REPORTS):
            self._pay(self.reports[case_id][i].reporter, case.bond - forfeit)
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
def vote_weight(case_id: uint256, validator: address) -> uint256:
    """
    @notice What `validator`'s vote on the case would weigh now (0: it cannot vote,
            or it voted and no report joined since).
    """
    case: Case = self.cases[case_id]
    if case.status != STATUS_OPEN or self.is_reporter[case_id][validator]:
        return 0
    if self.seen_reports[case_id][validator] >= self.report_count[case_id]:
        return 0  # voted, and no report joined since
    if staticcall registry.role_of(validator) != ROLE_VALIDATOR:
        return 0
    return staticcall registry.stake_at(validator, case.snapshot)


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
