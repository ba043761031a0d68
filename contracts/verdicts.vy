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
        the stake it held through the lookback: the lowest stake it had at any
        moment from `unbonding_period` before the case opened until the second
        before (Registry `stake_held`), so a majority has to be held at risk for
        as long as stake takes to leave, not rented for the vote. The quorum base
        is the validators' stake at the lower of the window's two ends, less the
        reporters' held stake (reporters cannot vote).
        After the voting window, with q = Params `fraud_quorum_bps` as of opening:
        - guilty (more than q of the base voted guilty, and more guilty than
          not): Params `slash_bps` of the snapshot stake is slashed (once per
          receipt); `reporter_reward_bps` of it goes to the reporters, the rest
          to the treasury; the bonds are returned and the provider is paused;
        - not guilty (at least q of the base voted, not guilty): the bonds go to
          the treasury, not to the provider, so a junk case costs the coalition
          that filed it even when the provider is its partner;
        - inconclusive (fewer votes): Params `fraud_forfeit_bps` of each bond
          goes to the treasury, the rest back to its reporter.
        A juror whose vote went against a guilty or not-guilty verdict can be
        penalised by anyone (`penalize`): Params `juror_penalty_bps` of its vote
        weight is slashed to the treasury, so voting with a renter has a price.
        At most one case is open per (provider, fault), the fault being the
        receipt's model: a later report of it joins the open case (each reporter
        posting its own bond) instead of opening another, so reports cannot
        compound slashes. A case takes any number of reports: no coalition can
        fill it and turn the report of the real fault away. A report whose
        receipt or evidence is already in the case is refused (copies add
        nothing). A joined report makes the case's evidence the union of its
        reports: a validator that voted before it may vote again, its earlier
        vote withdrawn, so a junk report filed first cannot pre-empt the real one.
        A guilty vote names the report that proves the fault (the first one that
        does); the reporter reward is split in proportion to the guilty weight
        naming each report, so it goes to the reporter that proved the fault, and
        a copy, a junk report or a report joined after the proof earns nothing.
        Reporters take their bonds and rewards with `claim` once the case is
        resolved (there is no bound on their number, so nothing loops over them).
        A receipt can be reported again in a new case once the case that held it
        has ended without a conviction.
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
FORFEIT_KEY: constant(bytes32) = keccak256("fraud_forfeit_bps")
LOOKBACK_KEY: constant(bytes32) = keccak256("unbonding_period")
PENALTY_KEY: constant(bytes32) = keccak256("juror_penalty_bps")

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
    total_stake: uint256  # quorum base: validator stake over the lookback, less the reporters'
    guilty_weight: uint256
    innocent_weight: uint256
    status: uint8
    slashed: uint256
    snapshot: uint256  # the end of the lookback (opened_at - 1)
    provider_stake: uint256  # bonded + unbonding when the case opened
    quorum_bps: uint256  # fraud_quorum_bps as of opening
    held_from: uint256  # the start of the lookback: snapshot - unbonding_period
    reward: uint256  # the reporters' share of the slash, claimed in proportion to proof weight
    forfeit: uint256  # what each reporter's bond lost (inconclusive) or all of it (not guilty)


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


event Claimed:
    case_id: indexed(uint256)
    reporter: indexed(address)
    amount: uint256


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


event JurorPenalized:
    case_id: indexed(uint256)
    juror: indexed(address)
    amount: uint256


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
# @dev receipt digest -> the latest case holding it (a guilty one convicted it)
last_case_of: public(HashMap[bytes32, uint256])
# @dev provider -> fault (the receipt's model id) -> its open case (0: none)
open_case_of: public(HashMap[address, HashMap[bytes32, uint256]])
# @dev case -> index -> report (0: the opener's); the case's evidence is all of them
reports: public(HashMap[uint256, HashMap[uint256, Report]])
report_count: public(HashMap[uint256, uint256])
is_reporter: public(HashMap[uint256, HashMap[address, bool]])
# @dev case -> reporter -> its report's index
report_index: public(HashMap[uint256, HashMap[address, uint256]])
# @dev case -> evidence hash -> already in the case (a copy is refused)
evidence_in_case: public(HashMap[uint256, HashMap[bytes32, bool]])
# @dev case -> report index -> guilty weight naming that report as the proof
proof_weight: public(HashMap[uint256, HashMap[uint256, uint256]])
# @dev case -> voter -> the report count its vote saw, which way it voted and which report
#      it named; a vote may be cast again once more reports joined
seen_reports: public(HashMap[uint256, HashMap[address, uint256]])
voted_guilty: public(HashMap[uint256, HashMap[address, bool]])
named_report: public(HashMap[uint256, HashMap[address, uint256]])
# @dev case -> reporter -> took its bond and reward; case -> juror -> penalised
claimed: public(HashMap[uint256, HashMap[address, bool]])
penalized: public(HashMap[uint256, HashMap[address, bool]])
# @dev validator -> ALM it was paid as reporter rewards, over all cases
rewards_of: public(HashMap[address, uint256])
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
    assert not self._convicted(digest), "verdicts: receipt already convicted"
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
    # weights are stake held from `held_from` to the end of the second before this one, so
    # stake staked in this block (even before this transaction) or rented for less than the
    # unbonding period weighs nothing
    snapshot: uint256 = block.timestamp - 1
    held_from: uint256 = snapshot - min(staticcall params.value(LOOKBACK_KEY), snapshot)
    # every juror's held stake is at most its stake at either end of the window, so the sum
    # of the votes never exceeds the smaller of the two totals
    base: uint256 = min(
        staticcall registry.role_stake_at(ROLE_VALIDATOR, held_from),
        staticcall registry.role_stake_at(ROLE_VALIDATOR, snapshot),
    )
    base -= min(staticcall registry.stake_held(msg.sender, held_from, snapshot), base)
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
        held_from=held_from,
        reward=0,
        forfeit=0,
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
    assert self.last_case_of[digest] != case_id, "verdicts: receipt already in this case"
    assert not self.evidence_in_case[case_id][evidence_hash], "verdicts: evidence already in this case"
    count: uint256 = self.report_count[case_id]
    weight: uint256 = staticcall registry.stake_held(msg.sender, case.held_from, case.snapshot)
    if self.voted[case_id][msg.sender]:
        # a juror that voted on the evidence before it caught the provider itself: its vote
        # is withdrawn, as reporters do not vote
        self._withdraw_vote(case_id, msg.sender, weight)
        self.voted[case_id][msg.sender] = False
    self._pull(case.bond)
    self._add_report(case_id, count, digest, evidence_hash, evidence_uri)
    # a reporter cannot vote, so its stake leaves the quorum base; the votes are all from
    # non-reporters, so they stay within the base
    total: uint256 = self.cases[case_id].total_stake
    self.cases[case_id].total_stake = total - min(weight, total)
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
    self.report_index[case_id][msg.sender] = index
    self.evidence_in_case[case_id][evidence_hash] = True
    self.case_of_receipt[digest][msg.sender] = case_id
    self.last_case_of[digest] = case_id


@internal
def _withdraw_vote(case_id: uint256, voter: address, weight: uint256):
    # the same held weight it added before (the window never moves)
    if self.voted_guilty[case_id][voter]:
        self.cases[case_id].guilty_weight -= weight
        self.proof_weight[case_id][self.named_report[case_id][voter]] -= weight
    else:
        self.cases[case_id].innocent_weight -= weight


@internal
def _pull(bond: uint256):
    if bond > 0:
        assert extcall stake_token.transferFrom(msg.sender, self, bond, default_return_value=True), "verdicts: bond transfer failed"


@external
def vote(case_id: uint256, guilty: bool, proof: uint256):
    """
    @notice A validator's vote, weighted by the stake it held through the case's
            lookback. Not by a reporter, before the deadline, once per validator
            until another report joins the case: then it may vote again, and its
            earlier vote is withdrawn.
    @param guilty True when some report's evidence proves the fault.
    @param proof For a guilty vote, the index of the report that proves it (the
           first one that does): the reporter reward follows these names. Ignored
           for a not-guilty vote.
    """
    case: Case = self.cases[case_id]
    assert case.status == STATUS_OPEN, "verdicts: case not open"
    assert block.timestamp < case.deadline, "verdicts: voting closed"
    assert not self.is_reporter[case_id][msg.sender], "verdicts: reporter cannot vote"
    reports: uint256 = self.report_count[case_id]
    assert self.seen_reports[case_id][msg.sender] < reports, "verdicts: already voted"
    assert not guilty or proof < reports, "verdicts: no such report"
    assert staticcall registry.role_of(msg.sender) == ROLE_VALIDATOR, "verdicts: not a validator"
    weight: uint256 = staticcall registry.stake_held(msg.sender, case.held_from, case.snapshot)
    assert weight > 0, "verdicts: no stake at snapshot"
    if self.voted[case_id][msg.sender]:
        self._withdraw_vote(case_id, msg.sender, weight)
    self.voted[case_id][msg.sender] = True
    self.seen_reports[case_id][msg.sender] = reports
    self.voted_guilty[case_id][msg.sender] = guilty
    if guilty:
        self.cases[case_id].guilty_weight += weight
        self.proof_weight[case_id][proof] += weight
        self.named_report[case_id][msg.sender] = proof
    else:
        self.cases[case_id].innocent_weight += weight
    log Voted(case_id=case_id, validator=msg.sender, guilty=guilty, weight=weight)


@external
def resolve(case_id: uint256) -> uint8:
    """
    @notice Settles a case after its voting window; anyone may call it. Reporters
            then take their bonds and rewards with `claim`.
    @return uint8 2 guilty, 3 not guilty, 4 inconclusive.
    """
    case: Case = self.cases[case_id]
    assert case.status == STATUS_OPEN, "verdicts: case not open"
    assert block.timestamp >= case.deadline, "verdicts: voting still open"
    votes: uint256 = case.guilty_weight + case.innocent_weight
    status: uint8 = STATUS_INCONCLUSIVE
    slashed: uint256 = 0
    reward: uint256 = 0
    forfeit: uint256 = 0
    count: uint256 = self.report_count[case_id]
    # the weights and the base come from one window, so votes <= base
    if case.guilty_weight > case.innocent_weight and case.guilty_weight * BPS > case.total_stake * case.quorum_bps:
        status = STATUS_GUILTY
    elif votes > 0 and votes * BPS >= case.total_stake * case.quorum_bps:
        status = STATUS_NOT_GUILTY
    self.cases[case_id].status = status
    self.open_case_of[case.provider][case.model_id] = 0

    if status == STATUS_GUILTY:
        # every report's receipt was unconvicted when it joined, and while the case was open
        # no other case on this fault could convict one; its receipts are convicted now
        # (`convicted` reads the status of the last case that held each)
        amount: uint256 = case.provider_stake * staticcall params.value(SLASH_KEY) // BPS
        # the provider could not withdraw since the case opened; only an earlier
        # conviction can have taken part of the snapshot stake
        amount = min(amount, staticcall registry.slashable_of(case.provider))
        if amount > 0:
            slashed = extcall registry.slash(case.provider, amount, self)
            reward = slashed * staticcall params.value(REWARD_KEY) // BPS
            self._pay(treasury, slashed - reward)
        extcall registry.set_paused(case.provider, True)
    elif status == STATUS_NOT_GUILTY:
        # a junk case costs whoever filed it: the bonds go to the treasury, not to the
        # provider (which may be the filers' partner)
        forfeit = case.bond
        self._pay(treasury, case.bond * count)
    else:
        forfeit = case.bond * staticcall params.value(FORFEIT_KEY) // BPS
        self._pay(treasury, forfeit * count)
    extcall registry.release(case.provider)
    self.cases[case_id].slashed = slashed
    self.cases[case_id].reward = reward
    self.cases[case_id].forfeit = forfeit
    log CaseResolved(case_id=case_id, status=status, slashed=slashed, reporter_reward=reward)
    return status


@external
def claim(case_id: uint256) -> uint256:
    """
    @notice A reporter takes what a resolved case owes it: its bond (less what an
            inconclusive case forfeits; nothing after not guilty) and, after guilty,
            its share of the reporter reward: the reward times the guilty weight
            that named its report, over all guilty weight.
    @return uint256 The ALM paid.
    """
    case: Case = self.cases[case_id]
    assert case.status > STATUS_OPEN, "verdicts: case not resolved"
    assert self.is_reporter[case_id][msg.sender], "verdicts: not a reporter"
    assert not self.claimed[case_id][msg.sender], "verdicts: already claimed"
    self.claimed[case_id][msg.sender] = True
    share: uint256 = self._reward_share(case_id, case, msg.sender)
    amount: uint256 = case.bond - case.forfeit + share
    if share > 0:
        self.rewards_of[msg.sender] += share
        log ReporterRewarded(case_id=case_id, reporter=msg.sender, reward=share)
    self._pay(msg.sender, amount)
    log Claimed(case_id=case_id, reporter=msg.sender, amount=amount)
    return amount


@external
def penalize(case_id: uint256, juror: address) -> uint256:
    """
    @notice Slashes a juror that voted against a guilty or not-guilty verdict:
            Params `juror_penalty_bps` of its vote weight, to the treasury. Anyone
            may call it, once per juror and case, while the juror has stake left.
    @return uint256 The ALM slashed.
    """
    case: Case = self.cases[case_id]
    assert case.status == STATUS_GUILTY or case.status == STATUS_NOT_GUILTY, "verdicts: no verdict"
    assert self.voted[case_id][juror], "verdicts: not a juror"
    assert self.voted_guilty[case_id][juror] != (case.status == STATUS_GUILTY), "verdicts: voted with the verdict"
    assert not self.penalized[case_id][juror], "verdicts: already penalized"
    self.penalized[case_id][juror] = True
    weight: uint256 = staticcall registry.stake_held(juror, case.held_from, case.snapshot)
    amount: uint256 = min(
        weight * staticcall params.value(PENALTY_KEY) // BPS, staticcall registry.slashable_of(juror)
    )
    assert amount > 0, "verdicts: nothing to penalize"
    slashed: uint256 = extcall registry.slash(juror, amount, treasury)
    log JurorPenalized(case_id=case_id, juror=juror, amount=slashed)
    return slashed


@internal
@view
def _reward_share(case_id: uint256, case: Case, reporter: address) -> uint256:
    if case.reward == 0 or case.guilty_weight == 0:
        return 0
    named: uint256 = self.proof_weight[case_id][self.report_index[case_id][reporter]]
    # named <= guilty_weight and reward < 2**128 in practice: no overflow; rounding down
    # leaves at most one unit per report in this contract
    return case.reward * named // case.guilty_weight


@external
@view
def claimable(case_id: uint256, reporter: address) -> uint256:
    """
    @notice What `claim` would pay `reporter` now (0: nothing, or claimed).
    """
    case: Case = self.cases[case_id]
    if case.status <= STATUS_OPEN or not self.is_reporter[case_id][reporter] or self.claimed[case_id][reporter]:
        return 0
    return case.bond - case.forfeit + self._reward_share(case_id, case, reporter)


@external
@view
def convicted(digest: bytes32) -> bool:
    """
    @notice True once a case holding this receipt ended guilty: it is never slashed again.
    """
    return self._convicted(digest)


@internal
@view
def _convicted(digest: bytes32) -> bool:
    case_id: uint256 = self.last_case_of[digest]
    return case_id != 0 and self.cases[case_id].status == STATUS_GUILTY


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
    @notice What `validator`'s vote on the case would weigh now: the stake it held
            through the lookback (0: it cannot vote, or it voted and no report
            joined since).
    """
    case: Case = self.cases[case_id]
    if case.status != STATUS_OPEN or self.is_reporter[case_id][validator]:
        return 0
    if self.seen_reports[case_id][validator] >= self.report_count[case_id]:
        return 0  # voted, and no report joined since
    if staticcall registry.role_of(validator) != ROLE_VALIDATOR:
        return 0
    return staticcall registry.stake_held(validator, case.held_from, case.snapshot)


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
