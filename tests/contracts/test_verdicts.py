"""Verdicts: fraud cases with the provider's own signed receipt, votes weighted by the stake
held through the lookback, slashing, claims and juror penalties — every revert path, and as a
state machine: ALM conservation, a case always admits the real fault, and stake that votes was
held through the lookback."""

from __future__ import annotations

import os

import boa
import pytest
from eth_utils import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from allmende.core import Receipt, sign_receipt
from allmende.testing.inprocess import ALM, System, actor, deploy_system

PROVIDER = actor("v-provider")
VALIDATORS = [actor(f"v-validator-{i}") for i in range(3)]
STRANGER = actor("v-stranger")
STAKES = [5_000 * ALM, 6_000 * ALM, 7_000 * ALM]
EVIDENCE = keccak(text="evidence")


def setup_system() -> System:
    system = deploy_system(with_verdicts=True)
    system.fund(PROVIDER.address, alm=10_000 * ALM)
    with boa.env.prank(PROVIDER.address):
        system.registry.register(1, "http://p", b"\x01" * 32, 2_000 * ALM)
    for v, stake in zip(VALIDATORS, STAKES, strict=True):
        system.fund(v.address, alm=10_000 * ALM)
        with boa.env.prank(v.address):
            system.registry.register(2, "http://v", b"\x00" * 32, stake)
            system.token.approve(system.verdicts_contract.address, 2**256 - 1)
    # vote weights are the stake held through the lookback (the unbonding period) before a
    # case opens
    boa.env.time_travel(seconds=system.params.get("unbonding_period") + 1)
    return system


@pytest.fixture(scope="module")
def verdicts_system() -> System:
    return setup_system()


@pytest.fixture
def system(verdicts_system: System):
    with boa.env.anchor():
        yield verdicts_system


def receipt(system: System, n: int = 0, signer=PROVIDER) -> tuple[tuple, bytes]:
    r = Receipt(
        keccak(text=f"req{n}"),
        keccak(text="model"),
        PROVIDER.address,
        b"\x01" * 32,
        b"\x02" * 32,
        b"\x03" * 32,
        10,
        20,
        300,
        1_700_000_000 + n,
    )
    return r.as_tuple(), sign_receipt(r, system.receipt_domain, signer.key).signature


def open_case(system: System, n: int = 0, reporter=VALIDATORS[0]) -> int:
    r, sig = receipt(system, n)
    with boa.env.prank(reporter.address):
        evidence = EVIDENCE if n == 0 else keccak(text=f"evidence-{n}")  # each report its own evidence
        return system.verdicts_contract.open_case(r, sig, evidence, "http://v/evidence/1")


def vote(system: System, case: int, who, guilty: bool, proof: int = 0) -> None:
    with boa.env.prank(who.address):
        system.verdicts_contract.vote(case, guilty, proof)


def claim(system: System, case: int, who) -> int:
    with boa.env.prank(who.address):
        return system.verdicts_contract.claim(case)


def after_deadline(system: System) -> None:
    boa.env.time_travel(seconds=system.params.get("fraud_voting_period"))


# ------------------------------------------------------------------- paths


def test_receipt_digest_matches_python(system: System) -> None:
    r = Receipt(b"\x05" * 32, b"\x06" * 32, PROVIDER.address, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, 1, 2, 3, 4)
    assert system.verdicts_contract.receipt_digest(r.as_tuple()) == r.digest(system.receipt_domain)


def test_guilty_slashes_rewards_pauses(system: System) -> None:
    v = system.verdicts_contract
    before_reporter = system.token.balanceOf(VALIDATORS[0].address)
    case = open_case(system)
    vote(system, case, VALIDATORS[1], True)
    vote(system, case, VALIDATORS[2], True)
    after_deadline(system)

    status = v.resolve(case)
    claimed = claim(system, case, VALIDATORS[0])

    slashed = 2_000 * ALM * system.params.get("slash_bps") // 10_000
    reward = slashed * system.params.get("reporter_reward_bps") // 10_000
    assert status == 2 and v.cases(case).slashed == slashed
    assert claimed == system.params.get("fraud_bond") + reward
    assert system.registry.accounts(PROVIDER.address).stake == 2_000 * ALM - slashed
    assert system.token.balanceOf(VALIDATORS[0].address) == before_reporter + reward  # bond back + reward
    assert system.token.balanceOf(system.treasury) == slashed - reward
    assert not system.registry.is_active(PROVIDER.address)


def test_not_guilty_gives_the_bond_to_the_treasury(system: System) -> None:
    provider_before = system.token.balanceOf(PROVIDER.address)
    treasury_before = system.token.balanceOf(system.treasury)
    case = open_case(system)
    vote(system, case, VALIDATORS[1], False)
    vote(system, case, VALIDATORS[2], False)
    after_deadline(system)

    assert system.verdicts_contract.resolve(case) == 3
    assert system.token.balanceOf(PROVIDER.address) == provider_before
    assert system.token.balanceOf(system.treasury) == treasury_before + system.params.get("fraud_bond")
    assert claim(system, case, VALIDATORS[0]) == 0
    assert system.registry.is_active(PROVIDER.address)


def test_no_quorum_is_inconclusive_and_forfeits_part_of_the_bond(system: System) -> None:
    before = system.token.balanceOf(VALIDATORS[0].address)
    treasury = system.token.balanceOf(system.treasury)
    case = open_case(system)
    after_deadline(system)

    assert system.verdicts_contract.resolve(case) == 4
    forfeit = system.params.get("fraud_bond") * system.params.get("fraud_forfeit_bps") // 10_000
    assert system.verdicts_contract.claimable(case, VALIDATORS[0].address) == system.params.get("fraud_bond") - forfeit
    claim(system, case, VALIDATORS[0])
    assert forfeit > 0
    assert system.token.balanceOf(VALIDATORS[0].address) == before - forfeit
    assert system.token.balanceOf(system.treasury) == treasury + forfeit


def test_scores_are_published(system: System) -> None:
    with boa.env.prank(VALIDATORS[1].address):
        system.verdicts_contract.publish_scores([PROVIDER.address], [9_500])
    assert system.verdicts_contract.score(VALIDATORS[1].address, PROVIDER.address) == 9_500


def test_open_case_reverts(system: System) -> None:
    v = system.verdicts_contract
    r, sig = receipt(system)
    with boa.env.prank(STRANGER.address), boa.reverts("verdicts: not a validator"):
        v.open_case(r, sig, EVIDENCE, "")
    with boa.env.prank(VALIDATORS[0].address), boa.reverts("verdicts: empty evidence"):
        v.open_case(r, sig, b"\x00" * 32, "")
    _, forged = receipt(system, signer=STRANGER)
    with boa.env.prank(VALIDATORS[0].address), boa.reverts("verdicts: bad receipt signature"):
        v.open_case(r, forged, EVIDENCE, "")
    bad = list(r)
    bad[2] = STRANGER.address
    with boa.env.prank(VALIDATORS[0].address), boa.reverts("verdicts: not a provider"):
        v.open_case(tuple(bad), sig, EVIDENCE, "")
    open_case(system)
    with boa.env.prank(VALIDATORS[0].address), boa.reverts("verdicts: already reported in this case"):
        v.open_case(r, sig, EVIDENCE, "")
    with boa.env.prank(VALIDATORS[2].address):
        system.token.approve(v.address, 0)
    with boa.env.prank(VALIDATORS[2].address), boa.reverts("erc20: insufficient allowance"):
        open_case(system, n=7, reporter=VALIDATORS[2])
    with boa.env.prank(VALIDATORS[1].address):
        system.registry.unbond(STAKES[1])
    with boa.env.prank(VALIDATORS[1].address), boa.reverts("verdicts: validator not active"):
        open_case(system, n=8, reporter=VALIDATORS[1])
    after_deadline(system)
    with boa.env.prank(VALIDATORS[2].address), boa.reverts("verdicts: open case past its deadline, resolve it first"):
        open_case(system, n=9, reporter=VALIDATORS[2])


def test_a_report_of_an_open_fault_joins_its_case(system: System) -> None:
    v = system.verdicts_contract
    bond = system.params.get("fraud_bond")
    case = open_case(system)
    base = v.cases(case).total_stake
    before = system.token.balanceOf(VALIDATORS[1].address)

    joined = open_case(system, n=1, reporter=VALIDATORS[1])

    assert joined == case and v.case_count() == 1
    assert v.report_count(case) == 2 and v.reports(case, 1).reporter == VALIDATORS[1].address
    assert system.token.balanceOf(VALIDATORS[1].address) == before - bond
    assert v.cases(case).total_stake == base - STAKES[1]  # a reporter's stake leaves the quorum base
    assert v.vote_weight(case, VALIDATORS[1].address) == 0
    with boa.env.prank(VALIDATORS[1].address), boa.reverts("verdicts: reporter cannot vote"):
        v.vote(case, True, 0)
    assert system.registry.open_cases(PROVIDER.address) == 1


def test_a_juror_that_joins_has_its_vote_withdrawn(system: System) -> None:
    v = system.verdicts_contract
    case = open_case(system)
    vote(system, case, VALIDATORS[1], False)  # on junk evidence, before it caught the provider itself

    open_case(system, n=1, reporter=VALIDATORS[1])

    data = v.cases(case)
    assert (data.guilty_weight, data.innocent_weight) == (0, 0)
    assert not v.voted(case, VALIDATORS[1].address) and v.is_reporter(case, VALIDATORS[1].address)


def test_a_vote_may_be_cast_again_once_a_report_joined(system: System) -> None:
    v = system.verdicts_contract
    case = open_case(system)
    vote(system, case, VALIDATORS[2], False)
    assert v.vote_weight(case, VALIDATORS[2].address) == 0

    open_case(system, n=1, reporter=VALIDATORS[1])
    assert v.vote_weight(case, VALIDATORS[2].address) == STAKES[2]
    vote(system, case, VALIDATORS[2], True)

    data = v.cases(case)
    assert (data.guilty_weight, data.innocent_weight) == (STAKES[2], 0)  # moved, not counted twice
    with boa.env.prank(VALIDATORS[2].address), boa.reverts("verdicts: already voted"):
        v.vote(case, True, 0)


def test_join_refuses_copies_of_a_receipt_or_evidence_already_in_the_case(system: System) -> None:
    v = system.verdicts_contract
    case = open_case(system)
    r, sig = receipt(system)
    with boa.env.prank(VALIDATORS[1].address), boa.reverts("verdicts: receipt already in this case"):
        v.open_case(r, sig, keccak(text="other evidence"), "")
    r1, sig1 = receipt(system, 1)
    with boa.env.prank(VALIDATORS[1].address), boa.reverts("verdicts: evidence already in this case"):
        v.open_case(r1, sig1, EVIDENCE, "")
    assert v.report_count(case) == 1


def test_claim_and_penalize_revert(system: System) -> None:
    v = system.verdicts_contract
    case = open_case(system)
    with boa.env.prank(VALIDATORS[0].address), boa.reverts("verdicts: case not resolved"):
        v.claim(case)
    with boa.reverts("verdicts: no verdict"):
        v.penalize(case, VALIDATORS[1].address)
    vote(system, case, VALIDATORS[1], True)
    vote(system, case, VALIDATORS[2], False)
    after_deadline(system)
    assert v.resolve(case) == 3  # 7,000 against 6,000
    with boa.env.prank(VALIDATORS[1].address), boa.reverts("verdicts: not a reporter"):
        v.claim(case)
    claim(system, case, VALIDATORS[0])
    with boa.env.prank(VALIDATORS[0].address), boa.reverts("verdicts: already claimed"):
        v.claim(case)
    with boa.reverts("verdicts: not a juror"):
        v.penalize(case, VALIDATORS[0].address)
    with boa.reverts("verdicts: voted with the verdict"):
        v.penalize(case, VALIDATORS[2].address)
    penalty = STAKES[1] * system.params.get("juror_penalty_bps") // 10_000
    assert v.penalize(case, VALIDATORS[1].address) == penalty
    assert system.registry.stake_of(VALIDATORS[1].address) == STAKES[1] - penalty
    with boa.reverts("verdicts: already penalized"):
        v.penalize(case, VALIDATORS[1].address)


def test_vote_reverts(system: System) -> None:
    v = system.verdicts_contract
    with boa.env.prank(VALIDATORS[1].address), boa.reverts("verdicts: case not open"):
        v.vote(99, True, 0)
    case = open_case(system)
    with boa.env.prank(VALIDATORS[0].address), boa.reverts("verdicts: reporter cannot vote"):
        v.vote(case, True, 0)
    with boa.env.prank(STRANGER.address), boa.reverts("verdicts: not a validator"):
        v.vote(case, True, 0)
    with boa.env.prank(VALIDATORS[1].address), boa.reverts("verdicts: no such report"):
        v.vote(case, True, 1)
    vote(system, case, VALIDATORS[1], True)
    with boa.env.prank(VALIDATORS[1].address), boa.reverts("verdicts: already voted"):
        v.vote(case, False, 0)
    after_deadline(system)
    with boa.env.prank(VALIDATORS[2].address), boa.reverts("verdicts: voting closed"):
        v.vote(case, True, 0)


def test_resolve_and_scores_revert(system: System) -> None:
    v = system.verdicts_contract
    with boa.reverts("verdicts: case not open"):
        v.resolve(42)
    case = open_case(system)
    with boa.reverts("verdicts: voting still open"):
        v.resolve(case)
    after_deadline(system)
    v.resolve(case)
    with boa.reverts("verdicts: case not open"):
        v.resolve(case)
    with boa.env.prank(STRANGER.address), boa.reverts("verdicts: not a validator"):
        v.publish_scores([PROVIDER.address], [1])
    with boa.env.prank(VALIDATORS[0].address), boa.reverts("verdicts: length mismatch"):
        v.publish_scores([PROVIDER.address], [])
    with boa.env.prank(VALIDATORS[0].address), boa.reverts("verdicts: score above 10000"):
        v.publish_scores([PROVIDER.address], [10_001])


def test_only_verdicts_may_slash_and_pause(system: System) -> None:
    with boa.env.prank(STRANGER.address), boa.reverts("registry: not verdicts"):
        system.registry.slash(PROVIDER.address, 1, STRANGER.address)
    with boa.env.prank(STRANGER.address), boa.reverts("registry: not verdicts"):
        system.registry.set_paused(PROVIDER.address, True)


# ------------------------------------------------------------ state machine

SYSTEM: System | None = None
EXAMPLES = int(os.environ.get("ALLMENDE_FUZZ_EXAMPLES", "30"))


def machine_system() -> System:
    global SYSTEM
    if SYSTEM is None:
        SYSTEM = setup_system()
    return SYSTEM


@pytest.fixture(scope="module", autouse=True)
def _deployed() -> None:
    machine_system()


class VerdictsMachine(RuleBasedStateMachine):
    """Random cases, votes, stake moves, time, resolutions, claims and penalties: ALM is never
    created or lost, a guilty verdict always slashes slash_bps of the provider's snapshot
    stake (bonded and unbonding), the votes never weigh more than the base, nobody's vote
    counts twice, nothing is withdrawn while a case is open, a case always admits the real
    fault, and every vote weighs exactly the stake its validator held through the lookback
    (recomputed here from the stake history, not from the contract's own scan)."""

    def __init__(self) -> None:
        super().__init__()
        self.sys = machine_system()
        self.holders = [
            PROVIDER.address,
            *(v.address for v in VALIDATORS),
            self.sys.treasury,
            self.sys.registry.address,
            self.sys.verdicts_contract.address,
        ]
        self.total = sum(self.sys.token.balanceOf(h) for h in self.holders)
        self.cases: list[int] = []
        self.n = 0
        # ghost: every moment a validator's stake changed (and the start)
        self.changes: dict[str, list[int]] = {v.address: [0] for v in VALIDATORS}

    def _changed(self, who: str) -> None:
        if who in self.changes:
            self.changes[who].append(boa.env.evm.patch.timestamp)

    def _held(self, who: str, start: int, end: int) -> int:
        """The lowest stake from the end of `start` to the end of `end`, from stake_at at the
        window's start and at every change inside it."""
        moments = [start] + [t for t in self.changes[who] if start < t <= end]
        return min(self.sys.registry.stake_at(who, t) for t in moments)

    @rule(reporter=st.integers(0, 2))
    def open(self, reporter: int) -> None:
        who = VALIDATORS[reporter].address
        if not self.sys.registry.is_active(who):
            return
        if self.sys.token.balanceOf(who) < self.sys.params.get("fraud_bond"):
            return  # it staked what it had: no bond left
        self.n += 1
        if self.sys.registry.role_of(PROVIDER.address) != 1:
            return
        v = self.sys.verdicts_contract
        case = v.open_case_of(PROVIDER.address, keccak(text="model"))
        if case and (boa.env.evm.patch.timestamp >= v.cases(case).deadline or v.is_reporter(case, who)):
            with boa.reverts():
                open_case(self.sys, self.n, VALIDATORS[reporter])
            return
        r, sig = receipt(self.sys, self.n)
        with boa.env.prank(who):
            opened = v.open_case(r, sig, keccak(text=f"evidence-{self.n}"), "http://v/evidence")
        assert opened == case or (not case and opened not in self.cases)  # one open case per fault
        if opened not in self.cases:
            self.cases.append(opened)

    @rule(voter=st.integers(0, 2), guilty=st.booleans(), pick=st.integers(0, 10), proof=st.integers(0, 3))
    def vote(self, voter: int, guilty: bool, pick: int, proof: int) -> None:
        if not self.cases:
            return
        case = self.cases[pick % len(self.cases)]
        data = self.sys.verdicts_contract.cases(case)
        who = VALIDATORS[voter]
        v = self.sys.verdicts_contract
        proof %= max(v.report_count(case), 1)
        ok = (
            data.status == 1
            and boa.env.evm.patch.timestamp < data.deadline
            and not v.is_reporter(case, who.address)
            and v.seen_reports(case, who.address) < v.report_count(case)
        )
        with boa.env.prank(who.address):
            if ok:
                weight = self._held(who.address, data.held_from, data.snapshot)
                assert v.vote_weight(case, who.address) == weight
                if weight == 0:
                    with boa.reverts("verdicts: no stake at snapshot"):
                        v.vote(case, guilty, proof)
                    return
                before = data.guilty_weight + data.innocent_weight
                again = v.voted(case, who.address)
                v.vote(case, guilty, proof)
                after = v.cases(case)
                assert after.guilty_weight + after.innocent_weight == before + (0 if again else weight)
            else:
                with boa.reverts():
                    self.sys.verdicts_contract.vote(case, guilty, proof)

    @rule(who=st.integers(0, 3), share=st.integers(1, 100))
    def unbond(self, who: int, share: int) -> None:
        account = PROVIDER if who == 3 else VALIDATORS[who]
        amount = self.sys.registry.stake_of(account.address) * share // 100
        if amount > 0:
            with boa.env.prank(account.address):
                self.sys.registry.unbond(amount)
            self._changed(account.address)

    @rule(who=st.integers(0, 3), amount=st.integers(1, 3_000))
    def add_stake(self, who: int, amount: int) -> None:
        account = PROVIDER if who == 3 else VALIDATORS[who]
        if self.sys.token.balanceOf(account.address) >= amount * ALM:
            with boa.env.prank(account.address):
                self.sys.registry.add_stake(amount * ALM)
            self._changed(account.address)

    @rule()
    def provider_withdraws(self) -> None:
        account = self.sys.registry.accounts(PROVIDER.address)
        ready = account.unbonding > 0 and boa.env.evm.patch.timestamp >= account.unbond_at
        with boa.env.prank(PROVIDER.address):
            if not ready or self.sys.registry.open_cases(PROVIDER.address) > 0:
                with boa.reverts():
                    self.sys.registry.withdraw()
                return
            self.sys.registry.withdraw()

    @rule(days=st.sampled_from([0, 1, 8]))
    def time_passes(self, days: int) -> None:
        boa.env.time_travel(seconds=max(days * 86400, self.sys.params.get("fraud_voting_period") // 2))

    @rule(pick=st.integers(0, 10))
    def resolve(self, pick: int) -> None:
        if not self.cases:
            return
        case = self.cases[pick % len(self.cases)]
        data = self.sys.verdicts_contract.cases(case)
        if data.status != 1 or boa.env.evm.patch.timestamp < data.deadline:
            with boa.reverts():
                self.sys.verdicts_contract.resolve(case)
            return
        slashable = self.sys.registry.slashable_of(PROVIDER.address)
        status = self.sys.verdicts_contract.resolve(case)
        slashed = self.sys.verdicts_contract.cases(case).slashed
        share = data.provider_stake * self.sys.params.get("slash_bps") // 10_000
        if status == 2:
            assert slashed == min(share, slashable)
        else:
            assert slashed == 0

    @rule(pick=st.integers(0, 10), who=st.integers(0, 2))
    def claim(self, pick: int, who: int) -> None:
        if not self.cases:
            return
        case = self.cases[pick % len(self.cases)]
        v = self.sys.verdicts_contract
        reporter = VALIDATORS[who].address
        owed = v.claimable(case, reporter)
        with boa.env.prank(reporter):
            if v.cases(case).status > 1 and v.is_reporter(case, reporter) and not v.claimed(case, reporter):
                assert v.claim(case) == owed
            else:
                with boa.reverts():
                    v.claim(case)

    @rule(pick=st.integers(0, 10), who=st.integers(0, 2))
    def penalize(self, pick: int, who: int) -> None:
        if not self.cases:
            return
        case = self.cases[pick % len(self.cases)]
        v = self.sys.verdicts_contract
        juror = VALIDATORS[who].address
        data = v.cases(case)
        against = (
            data.status in (2, 3)
            and v.voted(case, juror)
            and v.voted_guilty(case, juror) != (data.status == 2)
            and not v.penalized(case, juror)
        )
        held = self._held(juror, data.held_from, data.snapshot) if data.status else 0
        due = min(held * self.sys.params.get("juror_penalty_bps") // 10_000, self.sys.registry.slashable_of(juror))
        if against and due > 0:
            stake = self.sys.registry.stake_of(juror)
            assert v.penalize(case, juror) == due
            self._changed(juror)
            assert self.sys.registry.stake_of(juror) == stake - min(due, stake)
        else:
            with boa.reverts():
                v.penalize(case, juror)

    @invariant()
    def votes_never_exceed_the_snapshot_base(self) -> None:
        for c in self.cases:
            data = self.sys.verdicts_contract.cases(c)
            assert data.guilty_weight + data.innocent_weight <= data.total_stake

    @invariant()
    def a_case_always_admits_the_real_fault(self) -> None:
        """Whatever the case holds, a validator that caught the fault (its own receipt, its
        own evidence) can report it: it joins the open case, or opens one."""
        if self.sys.registry.role_of(PROVIDER.address) != 1:
            return
        v = self.sys.verdicts_contract
        case = v.open_case_of(PROVIDER.address, keccak(text="model"))
        if case and boa.env.evm.patch.timestamp >= v.cases(case).deadline:
            return  # due: it is resolved first, then the report opens a new case
        honest = actor("v-honest-reporter")
        with boa.env.anchor():
            self.sys.fund(honest.address, alm=10_000 * ALM)
            with boa.env.prank(honest.address):
                self.sys.registry.register(2, "http://h", b"\x00" * 32, 5_000 * ALM)
                self.sys.token.approve(v.address, 2**256 - 1)
                r, sig = receipt(self.sys, 10_000 + self.n)
                joined = v.open_case(r, sig, keccak(text=f"real-{self.n}"), "http://h/evidence")
            assert joined == (case or v.case_count())
            assert v.is_reporter(joined, honest.address)

    @invariant()
    def one_open_case_per_fault(self) -> None:
        opened = [c for c in self.cases if self.sys.verdicts_contract.cases(c).status == 1]
        assert len(opened) <= 1
        assert self.sys.verdicts_contract.open_case_of(PROVIDER.address, keccak(text="model")) == (
            opened[0] if opened else 0
        )

    @invariant()
    def open_cases_hold_the_provider(self) -> None:
        opened = sum(1 for c in self.cases if self.sys.verdicts_contract.cases(c).status == 1)
        assert self.sys.registry.open_cases(PROVIDER.address) == opened

    @invariant()
    def alm_is_conserved(self) -> None:
        v = self.sys.verdicts_contract
        assert sum(self.sys.token.balanceOf(h) for h in self.holders) == self.total
        owed = 0
        reports = 0
        for c in self.cases:
            data = v.cases(c)
            count = v.report_count(c)
            if data.status == 1:
                owed += data.bond * count
            else:
                owed += sum(v.claimable(c, v.reports(c, i).reporter) for i in range(count))
                reports += count
        # rounding the reward shares down leaves at most one unit per report
        assert owed <= self.sys.token.balanceOf(v.address) <= owed + reports


VerdictsMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestVerdictsMachine = VerdictsMachine.TestCase
