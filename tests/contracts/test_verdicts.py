"""Verdicts: fraud cases with the provider's own signed receipt, stake-weighted votes,
slashing and rewards — every revert path, and ALM conservation as a state machine."""

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
    boa.env.time_travel(seconds=1)  # vote weights are read just before a case opens
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
        return system.verdicts_contract.open_case(r, sig, EVIDENCE, "http://v/evidence/1")


def vote(system: System, case: int, who, guilty: bool) -> None:
    with boa.env.prank(who.address):
        system.verdicts_contract.vote(case, guilty)


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

    slashed = 2_000 * ALM * system.params.get("slash_bps") // 10_000
    reward = slashed * system.params.get("reporter_reward_bps") // 10_000
    assert status == 2 and v.cases(case).slashed == slashed
    assert system.registry.accounts(PROVIDER.address).stake == 2_000 * ALM - slashed
    assert system.token.balanceOf(VALIDATORS[0].address) == before_reporter + reward  # bond back + reward
    assert system.token.balanceOf(system.treasury) == slashed - reward
    assert not system.registry.is_active(PROVIDER.address)


def test_not_guilty_gives_the_bond_to_the_provider(system: System) -> None:
    before = system.token.balanceOf(PROVIDER.address)
    case = open_case(system)
    vote(system, case, VALIDATORS[1], False)
    vote(system, case, VALIDATORS[2], False)
    after_deadline(system)

    assert system.verdicts_contract.resolve(case) == 3
    assert system.token.balanceOf(PROVIDER.address) == before + system.params.get("fraud_bond")
    assert system.registry.is_active(PROVIDER.address)


def test_no_quorum_is_inconclusive_and_forfeits_part_of_the_bond(system: System) -> None:
    before = system.token.balanceOf(VALIDATORS[0].address)
    treasury = system.token.balanceOf(system.treasury)
    case = open_case(system)
    after_deadline(system)

    assert system.verdicts_contract.resolve(case) == 4
    forfeit = system.params.get("fraud_bond") * system.params.get("fraud_forfeit_bps") // 10_000
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
        v.vote(case, True)
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
        v.vote(case, True)


def test_vote_reverts(system: System) -> None:
    v = system.verdicts_contract
    with boa.env.prank(VALIDATORS[1].address), boa.reverts("verdicts: case not open"):
        v.vote(99, True)
    case = open_case(system)
    with boa.env.prank(VALIDATORS[0].address), boa.reverts("verdicts: reporter cannot vote"):
        v.vote(case, True)
    with boa.env.prank(STRANGER.address), boa.reverts("verdicts: not a validator"):
        v.vote(case, True)
    vote(system, case, VALIDATORS[1], True)
    with boa.env.prank(VALIDATORS[1].address), boa.reverts("verdicts: already voted"):
        v.vote(case, False)
    after_deadline(system)
    with boa.env.prank(VALIDATORS[2].address), boa.reverts("verdicts: voting closed"):
        v.vote(case, True)


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
    """Random cases, votes, stake moves, time and resolutions: ALM is never created or lost,
    a guilty verdict always slashes slash_bps of the provider's snapshot stake (bonded and
    unbonding), the votes never weigh more than the snapshot base, nobody's vote counts
    twice, and nothing is withdrawn while a case is open."""

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
        opened = open_case(self.sys, self.n, VALIDATORS[reporter])
        assert opened == case or (not case and opened not in self.cases)  # one open case per fault
        if opened not in self.cases:
            self.cases.append(opened)

    @rule(voter=st.integers(0, 2), guilty=st.booleans(), pick=st.integers(0, 10))
    def vote(self, voter: int, guilty: bool, pick: int) -> None:
        if not self.cases:
            return
        case = self.cases[pick % len(self.cases)]
        data = self.sys.verdicts_contract.cases(case)
        who = VALIDATORS[voter]
        v = self.sys.verdicts_contract
        ok = (
            data.status == 1
            and boa.env.evm.patch.timestamp < data.deadline
            and not v.is_reporter(case, who.address)
            and v.seen_reports(case, who.address) < v.report_count(case)
        )
        with boa.env.prank(who.address):
            if ok:
                weight = self.sys.registry.stake_at(who.address, data.snapshot)
                if weight == 0:
                    with boa.reverts("verdicts: no stake at snapshot"):
                        v.vote(case, guilty)
                    return
                before = data.guilty_weight + data.innocent_weight
                again = v.voted(case, who.address)
                v.vote(case, guilty)
                after = v.cases(case)
                assert after.guilty_weight + after.innocent_weight == before + (0 if again else weight)
            else:
                with boa.reverts():
                    self.sys.verdicts_contract.vote(case, guilty)

    @rule(who=st.integers(0, 3), share=st.integers(1, 100))
    def unbond(self, who: int, share: int) -> None:
        account = PROVIDER if who == 3 else VALIDATORS[who]
        amount = self.sys.registry.stake_of(account.address) * share // 100
        if amount > 0:
            with boa.env.prank(account.address):
                self.sys.registry.unbond(amount)

    @rule(who=st.integers(0, 3), amount=st.integers(1, 3_000))
    def add_stake(self, who: int, amount: int) -> None:
        account = PROVIDER if who == 3 else VALIDATORS[who]
        if self.sys.token.balanceOf(account.address) >= amount * ALM:
            with boa.env.prank(account.address):
                self.sys.registry.add_stake(amount * ALM)

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

    @invariant()
    def votes_never_exceed_the_snapshot_base(self) -> None:
        for c in self.cases:
            data = self.sys.verdicts_contract.cases(c)
            assert data.guilty_weight + data.innocent_weight <= data.total_stake

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
        assert sum(self.sys.token.balanceOf(h) for h in self.holders) == self.total
        open_bonds = sum(
            self.sys.verdicts_contract.cases(c).bond * self.sys.verdicts_contract.report_count(c)
            for c in self.cases
            if self.sys.verdicts_contract.cases(c).status == 1
        )
        assert self.sys.token.balanceOf(self.sys.verdicts_contract.address) == open_bonds


VerdictsMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestVerdictsMachine = VerdictsMachine.TestCase
