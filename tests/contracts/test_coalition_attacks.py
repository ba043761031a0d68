"""The eleven attacks of issue 30, each named after what the attacker tries, each refused:
colluders jamming the one open case, junk cases paid for by the provider's partner, copycat
reporters, a majority rented for the vote (fraud cases and governance), jurors voting with
the renter, a proposal front-run and cancelled, a model or dataset registration front-run,
offers blocking a royalty, royalties lost on old channels, governance locked by one
parameter or by the Timelock's own delay, and cases stranded by a Verdicts migration.
The look-alike names (rn/m, vv/w, cl/d) are in test_model_names.py."""

from __future__ import annotations

import boa
import pytest
from eth_utils import keccak

from allmende.core import Receipt, Voucher, sign_receipt, sign_voucher
from allmende.testing.inprocess import (
    ALM,
    USD,
    System,
    actor,
    deploy_system,
    load,
    next_block,
    register_derived_model,
    register_model,
)

PROVIDER = actor("ca-provider")
REPORTER, JUROR_A, JUROR_B = actor("ca-reporter"), actor("ca-juror-a"), actor("ca-juror-b")
PROVIDER_STAKE = 2_000 * ALM
MODEL = keccak(text="ca-model")
EVIDENCE = keccak(text="ca-real-evidence")
BPS = 10_000


def register_validator(system: System, who, stake: int) -> None:
    system.fund(who.address, alm=stake + 1_000 * ALM)
    with boa.env.prank(who.address):
        system.registry.register(2, "http://v", b"\x00" * 32, stake)
        system.token.approve(system.verdicts_contract.address, 2**256 - 1)


def lookback(system: System) -> None:
    boa.env.time_travel(seconds=system.params.get("unbonding_period") + 10)


@pytest.fixture(scope="module")
def court() -> System:
    """A provider with 2,000 ALM and three validators (5,000 / 6,000 / 7,000 ALM) whose stake
    has been held through the lookback."""
    system = deploy_system(with_verdicts=True)
    system.fund(PROVIDER.address, alm=10_000 * ALM)
    with boa.env.prank(PROVIDER.address):
        system.registry.register(1, "http://p", b"\x01" * 32, PROVIDER_STAKE)
    for who, stake in ((REPORTER, 5_000), (JUROR_A, 6_000), (JUROR_B, 7_000)):
        register_validator(system, who, stake * ALM)
    lookback(system)
    return system


@pytest.fixture
def system(court: System):
    with boa.env.anchor():
        yield court


def report(system: System, who, n: int, evidence: bytes | None = None, signer=PROVIDER) -> int:
    """`who` reports the provider with receipt number `n` (signed by the provider)."""
    r = Receipt(
        keccak(text=f"ca-req{n}"), MODEL, PROVIDER.address, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, 1, 2, 3, n
    )
    sig = sign_receipt(r, system.receipt_domain, signer.key).signature
    with boa.env.prank(who.address):
        return system.verdicts_contract.open_case(
            r.as_tuple(), sig, evidence or keccak(text=f"ca-junk-{n}"), "http://v/evidence"
        )


def vote(system: System, case: int, who, guilty: bool, proof: int = 0) -> None:
    with boa.env.prank(who.address):
        system.verdicts_contract.vote(case, guilty, proof)


def resolve(system: System, case: int) -> int:
    boa.env.time_travel(seconds=system.params.get("fraud_voting_period"))
    return system.verdicts_contract.resolve(case)


def claim(system: System, case: int, who) -> int:
    with boa.env.prank(who.address):
        return system.verdicts_contract.claim(case)


def share(amount: int, bps_name: str, system: System) -> int:
    return amount * system.params.get(bps_name) // BPS


# ------------------------------------------------------------- 1. jamming the case


def test_colluders_fill_the_open_case_so_the_real_fault_is_turned_away(system: System) -> None:
    """Before: 16 reports filled a case and the real report got `verdicts: case has all its
    reports`. Now a case takes any number of reports; the jurors name the real one."""
    colluders = [actor(f"ca-colluder-{i}") for i in range(16)]
    for i, colluder in enumerate(colluders):
        register_validator(system, colluder, system.params.get("min_validator_stake"))
        case = report(system, colluder, i)  # junk evidence on receipts the provider served honestly

    real = report(system, REPORTER, 100, EVIDENCE)  # the fault the reporter caught
    v = system.verdicts_contract
    index = v.report_count(case) - 1
    vote(system, case, JUROR_A, True, index)
    vote(system, case, JUROR_B, True, index)

    assert real == case and v.reports(case, index).reporter == REPORTER.address
    assert resolve(system, case) == 2
    slashed = v.cases(case).slashed
    assert slashed == share(PROVIDER_STAKE, "slash_bps", system)
    assert claim(system, case, REPORTER) == system.params.get("fraud_bond") + share(
        slashed, "reporter_reward_bps", system
    )
    assert all(v.claimable(case, c.address) == system.params.get("fraud_bond") for c in colluders)  # bond, no reward


def test_coalition_files_junk_cases_against_its_partner_and_the_bonds_go_back_to_it(system: System) -> None:
    """Before: not-guilty bonds went to the provider, so a coalition with the provider lost
    nothing by jamming. Now they go to the treasury."""
    colluders = [actor(f"ca-colluder-{i}") for i in range(4)]
    for colluder in colluders:
        register_validator(system, colluder, system.params.get("min_validator_stake"))
    coalition = [PROVIDER.address, *(c.address for c in colluders)]

    def wealth() -> int:
        return sum(system.token.balanceOf(m) + system.registry.slashable_of(m) for m in coalition)

    before, treasury = wealth(), system.token.balanceOf(system.treasury)
    for i, colluder in enumerate(colluders):
        case = report(system, colluder, i)
    vote(system, case, JUROR_A, False)
    vote(system, case, JUROR_B, False)

    assert resolve(system, case) == 3
    bonds = 4 * system.params.get("fraud_bond")
    assert wealth() == before - bonds
    assert system.token.balanceOf(system.treasury) == treasury + bonds


# ---------------------------------------------------------------- 2. copycats


def test_copycats_join_before_the_deadline_with_the_reporters_receipt_and_evidence(system: System) -> None:
    """Before: 15 copies (staked after the case opened, joined a second before the deadline)
    took 37.5 of the 40 ALM reward. Now a copy is refused, and the cheater's sybils (with
    receipts the cheater signed them and junk evidence) earn nothing: the jurors name the
    report that proved the fault."""
    case = report(system, REPORTER, 0, EVIDENCE)
    vote(system, case, JUROR_A, True, 0)
    vote(system, case, JUROR_B, True, 0)
    deadline = system.verdicts_contract.cases(case).deadline
    sybils = [actor(f"ca-sybil-{i}") for i in range(15)]
    for s in sybils:
        register_validator(system, s, system.params.get("min_validator_stake"))
    boa.env.time_travel(seconds=deadline - 1 - boa.env.evm.patch.timestamp)

    with boa.reverts("verdicts: receipt already in this case"):
        report(system, sybils[0], 0, keccak(text="a copy, rehashed"))
    with boa.reverts("verdicts: evidence already in this case"):
        report(system, sybils[0], 1, EVIDENCE)
    for i, s in enumerate(sybils):
        report(system, s, 50 + i)  # their own receipts, junk evidence

    assert resolve(system, case) == 2
    reward = share(system.verdicts_contract.cases(case).slashed, "reporter_reward_bps", system)
    assert reward == 40 * ALM
    assert claim(system, case, REPORTER) == system.params.get("fraud_bond") + reward
    for s in sybils:
        assert claim(system, case, s) == system.params.get("fraud_bond")  # the bond back, no reward
    assert system.verdicts_contract.rewards_of(REPORTER.address) == reward


# ------------------------------------------------------ 3. a majority rented for a week


def test_renter_stakes_a_majority_the_second_before_a_case_to_frame_an_honest_provider(system: System) -> None:
    """Before: 20,000 ALM staked a second before the case outvoted 18,000 ALM of honest stake.
    Now a vote weighs the stake held through the lookback (the unbonding period)."""
    renter = actor("ca-renter")
    register_validator(system, renter, 20_000 * ALM)
    boa.env.time_travel(seconds=1)
    provider_before = system.token.balanceOf(PROVIDER.address)
    case = report(system, REPORTER, 0)  # the renter's partner files junk

    assert system.verdicts_contract.vote_weight(case, renter.address) == 0
    with boa.env.prank(renter.address), boa.reverts("verdicts: no stake at snapshot"):
        system.verdicts_contract.vote(case, True, 0)
    vote(system, case, JUROR_A, False)
    vote(system, case, JUROR_B, False)

    assert resolve(system, case) == 3
    assert system.registry.is_active(PROVIDER.address)
    assert system.registry.stake_of(PROVIDER.address) == PROVIDER_STAKE
    assert system.token.balanceOf(PROVIDER.address) == provider_before
    assert claim(system, case, REPORTER) == 0  # the junk cost its bond


def test_renter_unbonds_during_the_lookback_and_restakes_for_the_vote(system: System) -> None:
    """Stake held at both ends of the lookback but not in between weighs only what stayed."""
    with boa.env.prank(JUROR_A.address):
        system.registry.unbond(5_000 * ALM)
    boa.env.time_travel(seconds=3_600)
    with boa.env.prank(JUROR_A.address):
        system.registry.add_stake(1_000 * ALM)
    boa.env.time_travel(seconds=1)
    case = report(system, REPORTER, 0)

    assert system.verdicts_contract.vote_weight(case, JUROR_A.address) == 1_000 * ALM


def test_juror_votes_with_the_renter_against_the_verdict_and_pays_for_it(system: System) -> None:
    """Before: a wrong vote cost nothing. Now anyone can slash juror_penalty_bps of a losing
    juror's vote weight to the treasury."""
    case = report(system, REPORTER, 0)
    vote(system, case, JUROR_A, True)  # with the framer
    vote(system, case, JUROR_B, False)
    assert resolve(system, case) == 3
    treasury = system.token.balanceOf(system.treasury)

    penalty = system.verdicts_contract.penalize(case, JUROR_A.address)

    assert penalty == share(6_000 * ALM, "juror_penalty_bps", system) > 0
    assert system.registry.stake_of(JUROR_A.address) == 6_000 * ALM - penalty
    assert system.token.balanceOf(system.treasury) == treasury + penalty
    with boa.reverts("verdicts: voted with the verdict"):
        system.verdicts_contract.penalize(case, JUROR_B.address)


def test_juror_withdraws_everything_before_the_penalty(system: System) -> None:
    """A penalty reaches stake and unbonding stake; a juror that withdrew it all first (the
    unbonding period passed before anyone called `penalize`) has nothing left to take."""
    case = report(system, REPORTER, 0)
    vote(system, case, JUROR_A, True)
    vote(system, case, JUROR_B, False)
    with boa.env.prank(JUROR_A.address):
        system.registry.unbond(6_000 * ALM)
    assert resolve(system, case) == 3
    boa.env.time_travel(seconds=system.params.get("unbonding_period"))
    with boa.env.prank(JUROR_A.address):
        system.registry.withdraw()

    with boa.reverts("verdicts: nothing to penalize"):
        system.verdicts_contract.penalize(case, JUROR_A.address)


# ------------------------------------------------------------- 8. Verdicts migration


def test_governance_replaces_verdicts_while_a_case_is_open(system: System) -> None:
    """Before: the old contract could neither slash nor release (`registry: not verdicts`) and
    the provider's stake stayed locked for ever. Now the contract that holds a case settles it."""
    old = system.verdicts_contract
    case = report(system, REPORTER, 0, EVIDENCE)
    vote(system, case, JUROR_A, True)
    vote(system, case, JUROR_B, True)
    new = load("Verdicts", system.token.address, system.registry.address, system.params.address, system.treasury)
    system.registry.set_verdicts(new.address)  # the deployer is still the admin here
    with boa.env.prank(PROVIDER.address):
        system.registry.unbond(PROVIDER_STAKE)

    assert resolve(system, case) == 2

    slashed = share(PROVIDER_STAKE, "slash_bps", system)
    assert old.cases(case).slashed == slashed
    assert system.registry.open_cases(PROVIDER.address) == 0
    boa.env.time_travel(seconds=system.params.get("unbonding_period"))
    with boa.env.prank(PROVIDER.address):
        assert system.registry.withdraw() == PROVIDER_STAKE - slashed
    with boa.env.prank(old.address), boa.reverts("registry: not verdicts"):
        system.registry.hold(PROVIDER.address)  # a former contract opens nothing new


# ------------------------------------------------------------ 5. registrations


AUTHOR, SQUATTER, PAYER = actor("ca-author"), actor("ca-squatter"), actor("ca-payer")


def test_squatter_front_runs_the_authors_register_with_the_same_call(system: System) -> None:
    """Before: the squatter sent the author's `register` first and owned the model. Now the
    reveal needs the caller's own commitment from an earlier block."""
    salt = b"\x07" * 32
    m = system.models
    m.commit(m.commitment_of(MODEL, AUTHOR.address, salt), sender=AUTHOR.address)
    next_block()
    # the squatter sees the author's reveal in the mempool and sends it first, as itself
    with boa.reverts("models: not committed"):
        m.register(MODEL, "MIT", 500, [], [], "", salt, sender=SQUATTER.address)
    m.commit(m.commitment_of(MODEL, SQUATTER.address, salt), sender=SQUATTER.address)
    with boa.reverts("models: commitment too recent"):
        m.register(MODEL, "MIT", 500, [], [], "", salt, sender=SQUATTER.address)

    m.register(MODEL, "MIT", 500, [], [], "", salt, sender=AUTHOR.address)

    assert m.owner_of(MODEL) == AUTHOR.address
    next_block()
    with boa.reverts("models: already registered"):
        m.register(MODEL, "MIT", 500, [], [], "", salt, sender=SQUATTER.address)


def test_squatter_copies_the_authors_commitment_first_to_fail_its_commit(system: System) -> None:
    """A copy of a commitment neither fails the author's commit nor moves it later, and only the
    owner it names can reveal it."""
    salt = b"\x08" * 32
    m = system.models
    commitment = m.commitment_of(MODEL, AUTHOR.address, salt)
    m.commit(commitment, sender=SQUATTER.address)  # seen in the mempool, sent first
    m.commit(commitment, sender=AUTHOR.address)
    with boa.reverts("models: empty commitment"):
        m.commit(b"\x00" * 32, sender=AUTHOR.address)
    next_block()
    with boa.reverts("models: not committed"):
        m.register(MODEL, "MIT", 500, [], [], "", salt, sender=SQUATTER.address)

    m.register(MODEL, "MIT", 500, [], [], "", salt, sender=AUTHOR.address)

    assert m.owner_of(MODEL) == AUTHOR.address


def test_squatter_front_runs_register_dataset(system: System) -> None:
    dataset, vault = keccak(text="ca-dataset"), actor("ca-vault")
    salt = b"\x09" * 32
    d = system.data
    d.commit(d.commitment_of(dataset, AUTHOR.address, salt), sender=AUTHOR.address)
    next_block()
    with boa.reverts("data: not committed"):
        d.register_dataset(dataset, SQUATTER.address, "MIT", "", salt, sender=SQUATTER.address)
    d.commit(d.commitment_of(dataset, SQUATTER.address, salt), sender=SQUATTER.address)
    with boa.reverts("data: commitment too recent"):
        d.register_dataset(dataset, SQUATTER.address, "MIT", "", salt, sender=SQUATTER.address)

    with boa.reverts("data: empty commitment"):
        d.commit(b"\x00" * 32, sender=AUTHOR.address)
    d.register_dataset(dataset, vault.address, "CC-BY-4.0", "", salt, sender=AUTHOR.address)

    assert d.dataset(dataset).owner == AUTHOR.address and d.dataset(dataset).vault == vault.address


def test_provider_offers_an_unregistered_id_to_block_its_royalty(system: System) -> None:
    """Before: set_offer then remove_offer made the id `models: already served` for ever."""
    with boa.env.prank(PROVIDER.address):
        system.registry.set_offer(MODEL, 1, 1)
        system.registry.remove_offer(MODEL)
    child = keccak(text="ca-child")
    with boa.env.prank(PROVIDER.address):
        system.registry.set_offer(child, 1, 1)

    register_model(system.models, MODEL, "MIT", 500, owner=AUTHOR.address)
    register_derived_model(system.models, child, MODEL, "MIT", owner=AUTHOR.address)

    assert system.models.royalty_info(MODEL) == (AUTHOR.address, 500)
    assert system.models.royalty_info(child) == (AUTHOR.address, 500)


# ------------------------------------------------------------- 6. old channels


def test_author_registers_a_model_that_providers_serve_through_old_channels(system: System) -> None:
    """Before: a channel opened before the registration paid its author nothing, for ever.
    Now every amount redeemed for service after the registration pays the royalty; an
    increment whose service began before it pays on the share of its time after it."""
    system.fund(PAYER.address, usd=100 * USD)
    with boa.env.prank(PAYER.address):
        channel = system.channels.open(PROVIDER.address, 100 * USD)

    def redeem(cumulative: int) -> None:
        voucher = sign_voucher(Voucher(channel, MODEL, cumulative), system.voucher_domain, PAYER.key)
        with boa.env.prank(PROVIDER.address):
            system.channels.redeem([voucher.as_tuple()])

    boa.env.time_travel(seconds=3_600)
    redeem(10 * USD)  # an hour of service before anyone registered the model
    boa.env.time_travel(seconds=1_800)
    register_model(system.models, MODEL, "MIT", 1_000, owner=AUTHOR.address)  # 10 %
    boa.env.time_travel(seconds=1_800)
    redeem(20 * USD)  # half an hour before the registration, half an hour after
    assert system.channels.earnings(AUTHOR.address) == 10 * USD * 1_000 // BPS // 2
    boa.env.time_travel(seconds=3_600)
    redeem(30 * USD)  # all after

    assert system.channels.earnings(AUTHOR.address) == USD // 2 + USD


# ---------------------------------------------------------------- governance

GOV_VOTERS = [actor(f"ca-gov-{i}") for i in range(2)]
GOV_STAKE = 150_000 * ALM  # each above the highest proposal threshold; together above any quorum


@pytest.fixture(scope="module")
def governed_system() -> System:
    system = deploy_system(governed=True)
    for v in GOV_VOTERS:
        system.fund(v.address, alm=GOV_STAKE * 2)
        with boa.env.prank(v.address):
            system.token.approve(system.votes.address, 2**256 - 1)
            system.votes.stake(GOV_STAKE)
    lookback(system)
    return system


@pytest.fixture
def gov(governed_system: System):
    with boa.env.anchor():
        yield governed_system


def fee_call(system: System, value: int = 150) -> tuple[list, list, list]:
    return [system.params.address], [0], [system.params.set.prepare_calldata("protocol_fee_bps", value)]


def pass_proposal(system: System, targets: list, values: list, payloads: list, description: str) -> int:
    """Propose, vote for with every voter, queue and execute; returns the proposal id."""
    g = system.governor
    with boa.env.prank(GOV_VOTERS[0].address):
        pid = g.propose(targets, values, payloads, description)
    boa.env.time_travel(seconds=system.params.get("voting_delay") + 1)
    for v in GOV_VOTERS:
        with boa.env.prank(v.address):
            g.cast_vote(pid, 1)
    boa.env.time_travel(seconds=system.params.get("voting_period") + 1)
    eta = g.queue(pid)
    boa.env.time_travel(seconds=eta - boa.env.evm.patch.timestamp)
    g.execute(pid)
    assert g.state(pid) == 5
    return pid


def test_holder_stakes_in_votes_the_second_before_proposing(gov: System) -> None:
    """Before: ALM staked in Votes a second before proposing (and voting) weighed in full."""
    renter = actor("ca-gov-renter")
    gov.fund(renter.address, alm=500_000 * ALM)
    with boa.env.prank(renter.address):
        gov.token.approve(gov.votes.address, 2**256 - 1)
        gov.votes.stake(500_000 * ALM)
    boa.env.time_travel(seconds=1)
    with boa.env.prank(renter.address), boa.reverts("governor: stake below proposal threshold"):
        gov.governor.propose(*fee_call(gov), "rented")
    with boa.env.prank(GOV_VOTERS[0].address):
        pid = gov.governor.propose(*fee_call(gov), "honest")
    boa.env.time_travel(seconds=gov.params.get("voting_delay") + 1)
    with boa.env.prank(renter.address), boa.reverts("governor: no stake at snapshot"):
        gov.governor.cast_vote(pid, 0)
    assert gov.governor.vote_weight(pid, renter.address) == 0


def test_holder_front_runs_an_honest_proposal_and_cancels_it(gov: System) -> None:
    """Before: the copy took the id, was cancelled, and the honest `propose` reverted with
    `governor: proposal exists` for ever. Now the id includes the proposer."""
    g = gov.governor
    with boa.env.prank(GOV_VOTERS[1].address):
        copy = g.propose(*fee_call(gov), "fund the commons")
        g.cancel(copy)

    with boa.env.prank(GOV_VOTERS[0].address):
        honest = g.propose(*fee_call(gov), "fund the commons")

    assert honest != copy and g.state(honest) == 0 and g.state(copy) == 7


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("proposal_threshold", 2**200),
        ("quorum_bps", 10_000),
        ("voting_period", 10**12),
        ("voting_delay", 10**12),
        ("timelock_delay", 10**12),
        ("proposal_grace_period", 10**12),
        ("unbonding_period", 10**12),
        ("fraud_quorum_bps", 10_000),
        ("min_validator_stake", 2**200),
    ],
)
def test_proposal_sets_a_parameter_that_locks_governance(gov: System, name: str, value: int) -> None:
    """Before: Params had no upper bounds, and one passed proposal could make every later
    proposal impossible (a threshold nobody holds, a quorum no turnout meets, a period that
    never ends)."""
    payload = gov.params.set.prepare_calldata(name, value)
    with boa.env.prank(GOV_VOTERS[0].address), boa.reverts("params: above bound"):
        gov.governor.propose([gov.params.address], [0], [payload], f"lock {name}")
    with boa.env.prank(gov.timelock.address), boa.reverts("params: above bound"):
        gov.params.set(name, value)


def test_proposal_sets_the_timelock_delay_to_zero(gov: System) -> None:
    """Before: `Timelock.update_delay(0)` passed and bypassed `timelock_delay`'s bound (Params
    still showed 2 days). Now the Governor refuses a delay outside the bound, and queues with
    Params' delay even where the Timelock's own is lower."""
    t = gov.timelock
    zero = t.update_delay.prepare_calldata(0)
    with boa.env.prank(GOV_VOTERS[0].address), boa.reverts("params: below bound"):
        gov.governor.propose([t.address], [0], [zero], "no delay")
    with boa.env.prank(GOV_VOTERS[0].address), boa.reverts("governor: update_delay calldata does not decode"):
        gov.governor.propose([t.address], [0], [zero[:20]], "garbled")
    hour = t.update_delay.prepare_calldata(3_600)  # within the bound: allowed
    pass_proposal(gov, [t.address], [0], [hour], "an hour")
    assert t.get_minimum_delay() == 3_600

    g = gov.governor
    with boa.env.prank(GOV_VOTERS[0].address):
        pid = g.propose(*fee_call(gov), "after the change")
    boa.env.time_travel(seconds=gov.params.get("voting_delay") + 1)
    for v in GOV_VOTERS:
        with boa.env.prank(v.address):
            g.cast_vote(pid, 1)
    boa.env.time_travel(seconds=gov.params.get("voting_period") + 1)
    eta = g.queue(pid)

    assert eta == boa.env.evm.patch.timestamp + gov.params.get("timelock_delay")  # 2 days, not an hour
