"""Economic attacks on the contracts, each named after the attacker's move, each refused.

Slashing (unbonding away from a case), verdict votes (stake added after a case opened),
reporting (front-running a receipt, framing an honest provider, duplicate cases on one fault
to compound slashes or lock bonds), royalties (squatting a
served model, registering after the work, redirecting through `register_derived`),
governance (reviving a defeated proposal, queueing one long after it passed), rounding
(splitting a redeem into one-unit vouchers), the access log (taking another dataset's
job ids) and the payment token (fee on transfer).
"""

from __future__ import annotations

import boa
import pytest
from eth_utils import keccak

from allmende.chain.sources import contracts_dir
from allmende.core import Receipt, Voucher, sign_receipt, sign_voucher
from allmende.testing.inprocess import (
    ALM,
    USD,
    System,
    actor,
    deploy_system,
    load,
    register_dataset,
    register_derived_model,
    register_model,
)

PROVIDER = actor("ea-provider")
REPORTER, JUROR_A, JUROR_B = actor("ea-reporter"), actor("ea-juror-a"), actor("ea-juror-b")
SYBIL = actor("ea-sybil")
PROVIDER_STAKE = 2_000 * ALM
EVIDENCE = keccak(text="evidence")
MODEL = keccak(text="ea-model")
BPS = 10_000


def register_validator(system: System, who, stake: int) -> None:
    system.fund(who.address, alm=stake + 1_000 * ALM)
    with boa.env.prank(who.address):
        system.registry.register(2, "http://v", b"\x00" * 32, stake)
        system.token.approve(system.verdicts_contract.address, 2**256 - 1)


@pytest.fixture(scope="module")
def court() -> System:
    """A provider with 2,000 ALM and three validators (5,000 / 6,000 / 7,000 ALM)."""
    system = deploy_system(with_verdicts=True)
    system.fund(PROVIDER.address, alm=10_000 * ALM)
    with boa.env.prank(PROVIDER.address):
        system.registry.register(1, "http://p", b"\x01" * 32, PROVIDER_STAKE)
    for who, stake in ((REPORTER, 5_000), (JUROR_A, 6_000), (JUROR_B, 7_000)):
        register_validator(system, who, stake * ALM)
    held_through_the_lookback(system)
    return system


def held_through_the_lookback(system: System) -> None:
    """Votes weigh stake held through the lookback (the unbonding period) before a case opens."""
    boa.env.time_travel(seconds=system.params.get("unbonding_period") + 10)


@pytest.fixture
def system(court: System):
    with boa.env.anchor():
        yield court


def signed_receipt(system: System, n: int = 0) -> tuple[tuple, bytes]:
    r = Receipt(
        keccak(text=f"ea-req{n}"), MODEL, PROVIDER.address, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, 1, 2, 3, n
    )
    return r.as_tuple(), sign_receipt(r, system.receipt_domain, PROVIDER.key).signature


def open_case(system: System, reporter=REPORTER, n: int = 0) -> int:
    r, sig = signed_receipt(system, n)
    evidence = EVIDENCE if reporter == REPORTER else keccak(text=f"evidence-{reporter.address}-{n}")
    with boa.env.prank(reporter.address):
        return system.verdicts_contract.open_case(r, sig, evidence, "http://v/evidence")


def vote(system: System, case: int, who, guilty: bool, proof: int = 0) -> None:
    with boa.env.prank(who.address):
        system.verdicts_contract.vote(case, guilty, proof)


def claim(system: System, case: int, who) -> int:
    with boa.env.prank(who.address):
        return system.verdicts_contract.claim(case)


def resolve(system: System, case: int) -> int:
    boa.env.time_travel(seconds=system.params.get("fraud_voting_period"))
    return system.verdicts_contract.resolve(case)


def share(amount: int, bps_name: str, system: System) -> int:
    return amount * system.params.get(bps_name) // BPS


# ------------------------------------------------------- 1. slashing and unbonding


def test_guilty_provider_unbonds_everything_once_the_case_opens(system: System) -> None:
    case = open_case(system)
    with boa.env.prank(PROVIDER.address):
        system.registry.unbond(PROVIDER_STAKE)
    vote(system, case, JUROR_A, True)
    vote(system, case, JUROR_B, True)

    assert resolve(system, case) == 2

    slashed = share(PROVIDER_STAKE, "slash_bps", system)
    assert system.verdicts_contract.cases(case).slashed == slashed
    assert system.registry.slashable_of(PROVIDER.address) == PROVIDER_STAKE - slashed


def test_guilty_provider_unbonds_in_the_same_block_the_case_opens(system: System) -> None:
    # no time passes between the unbond and the case: both are in one block
    with boa.env.prank(PROVIDER.address):
        system.registry.unbond(PROVIDER_STAKE)
    case = open_case(system)
    vote(system, case, JUROR_A, True)
    vote(system, case, JUROR_B, True)

    assert resolve(system, case) == 2
    assert system.verdicts_contract.cases(case).slashed == share(PROVIDER_STAKE, "slash_bps", system)


def test_guilty_provider_withdraws_matured_unbonding_while_the_case_is_open(system: System) -> None:
    with boa.env.prank(PROVIDER.address):
        system.registry.unbond(PROVIDER_STAKE)
    boa.env.time_travel(seconds=system.params.get("unbonding_period"))
    case = open_case(system)

    with boa.env.prank(PROVIDER.address), boa.reverts("registry: open case"):
        system.registry.withdraw()
    vote(system, case, JUROR_A, True)
    vote(system, case, JUROR_B, True)
    assert resolve(system, case) == 2

    slashed = share(PROVIDER_STAKE, "slash_bps", system)
    with boa.env.prank(PROVIDER.address):
        assert system.registry.withdraw() == PROVIDER_STAKE - slashed  # released once resolved


# --------------------------------------------------- 2. votes from one snapshot


def test_accused_provider_stakes_a_sybil_validator_to_acquit_itself(system: System) -> None:
    bond = system.params.get("fraud_bond")
    reporter_before = system.token.balanceOf(REPORTER.address)
    case = open_case(system)
    register_validator(system, SYBIL, 100_000 * ALM)  # after the case opened
    vote(system, case, JUROR_A, True)
    vote(system, case, JUROR_B, True)

    with boa.env.prank(SYBIL.address), boa.reverts("verdicts: no stake at snapshot"):
        system.verdicts_contract.vote(case, False, 0)

    assert resolve(system, case) == 2
    claim(system, case, REPORTER)
    reward = share(share(PROVIDER_STAKE, "slash_bps", system), "reporter_reward_bps", system)
    assert system.token.balanceOf(REPORTER.address) == reporter_before - bond + bond + reward


def test_sybil_stakes_in_the_same_block_before_the_case_opens(system: System) -> None:
    register_validator(system, SYBIL, 100_000 * ALM)
    case = open_case(system)  # same block: the snapshot is the second before

    assert system.verdicts_contract.vote_weight(case, SYBIL.address) == 0
    with boa.env.prank(SYBIL.address), boa.reverts("verdicts: no stake at snapshot"):
        system.verdicts_contract.vote(case, False, 0)


def test_griefer_stakes_late_to_slash_and_pause_an_honest_provider(system: System) -> None:
    provider_before = system.token.balanceOf(PROVIDER.address)
    treasury_before = system.token.balanceOf(system.treasury)
    case = open_case(system)  # junk evidence against an honest provider
    register_validator(system, SYBIL, 100_000 * ALM)
    vote(system, case, JUROR_A, False)
    vote(system, case, JUROR_B, False)
    with boa.env.prank(SYBIL.address), boa.reverts("verdicts: no stake at snapshot"):
        system.verdicts_contract.vote(case, True, 0)

    assert resolve(system, case) == 3
    assert system.registry.is_active(PROVIDER.address)
    assert system.registry.stake_of(PROVIDER.address) == PROVIDER_STAKE
    assert system.token.balanceOf(PROVIDER.address) == provider_before  # junk bonds go to the treasury
    assert system.token.balanceOf(system.treasury) == treasury_before + system.params.get("fraud_bond")


# ---------------------------------------------------------- 3. reporting a receipt


def test_colluder_front_runs_the_report_with_junk_evidence(system: System) -> None:
    """The provider's partner files the fault first, with junk evidence, so the jurors acquit
    before the validator that caught it reports: its report (its own receipt) joins the case,
    the jurors vote again on all the evidence naming the real report, and the provider is
    slashed in full; the whole reward goes to the real reporter, the coalition loses the slash."""
    colluder = actor("ea-colluder")
    register_validator(system, colluder, 5_000 * ALM)
    boa.env.time_travel(seconds=1)
    coalition = [colluder.address, PROVIDER.address]

    def wealth() -> int:
        return sum(system.token.balanceOf(m) + system.registry.slashable_of(m) for m in coalition)

    before = wealth()
    r, sig = signed_receipt(system)
    with boa.env.prank(colluder.address):
        junk = system.verdicts_contract.open_case(r, sig, keccak(text="junk"), "http://nowhere")
    for juror in (JUROR_A, JUROR_B):
        vote(system, junk, juror, False)  # the junk proves nothing

    honest = open_case(system, n=1)  # its own receipt of the fault, and the real evidence
    for juror in (JUROR_A, JUROR_B):
        vote(system, honest, juror, True, 1)  # a vote again, on the real evidence, naming it

    assert honest == junk
    assert resolve(system, honest) == 2
    claim(system, honest, colluder)
    claim(system, honest, REPORTER)
    slashed = system.verdicts_contract.cases(honest).slashed
    assert slashed == share(PROVIDER_STAKE, "slash_bps", system)
    reward = share(slashed, "reporter_reward_bps", system)
    assert system.verdicts_contract.rewards_of(REPORTER.address) == reward
    assert system.verdicts_contract.rewards_of(colluder.address) == 0
    assert wealth() == before - slashed
    with boa.env.prank(colluder.address), boa.reverts("verdicts: receipt already convicted"):
        system.verdicts_contract.open_case(r, sig, EVIDENCE, "")


def test_validator_reports_a_cheater_again_and_again_to_compound_slashes(system: System) -> None:
    """Before: every audit round opened another case on the same fault, each slashing
    slash_bps of the stake and locking another bond."""
    bond = system.params.get("fraud_bond")
    before = system.token.balanceOf(REPORTER.address)
    case = open_case(system, n=0)
    for n in (1, 2, 3):
        with boa.reverts("verdicts: already reported in this case"):
            open_case(system, n=n)
    assert system.verdicts_contract.case_count() == 1
    assert system.token.balanceOf(REPORTER.address) == before - bond  # one bond locked, not four
    vote(system, case, JUROR_A, True)
    vote(system, case, JUROR_B, True)

    assert resolve(system, case) == 2
    slashed = share(PROVIDER_STAKE, "slash_bps", system)
    assert system.registry.slashable_of(PROVIDER.address) == PROVIDER_STAKE - slashed


def test_validators_each_open_a_case_on_one_fault_to_compound_slashes(system: System) -> None:
    """Two validators caught the same cheat on different requests: one case, one slash, the
    reward to the report the jurors named (the first that proves it), every bond returned."""
    bond = system.params.get("fraud_bond")
    balances = [system.token.balanceOf(v.address) for v in (REPORTER, JUROR_A)]
    first = open_case(system, reporter=REPORTER, n=0)
    second = open_case(system, reporter=JUROR_A, n=1)
    assert second == first and system.verdicts_contract.case_count() == 1
    assert system.token.balanceOf(system.verdicts_contract.address) == 2 * bond
    vote(system, first, JUROR_B, True, 0)  # 7,000 of the 7,000 ALM that can still vote

    assert resolve(system, first) == 2
    slashed = system.verdicts_contract.cases(first).slashed
    assert slashed == share(PROVIDER_STAKE, "slash_bps", system)
    assert system.registry.slashable_of(PROVIDER.address) == PROVIDER_STAKE - slashed
    reward = share(slashed, "reporter_reward_bps", system)
    for who, balance, earned in zip((REPORTER, JUROR_A), balances, (reward, 0), strict=True):
        claim(system, first, who)
        assert system.token.balanceOf(who.address) == balance + earned  # its bond back, and the named one the reward
        assert system.verdicts_contract.rewards_of(who.address) == earned
    assert system.token.balanceOf(system.verdicts_contract.address) == 0


def test_reporter_reports_the_receipt_again_after_an_inconclusive_case(system: System) -> None:
    first = open_case(system)
    assert resolve(system, first) == 4  # nobody voted

    second = open_case(system)
    vote(system, second, JUROR_A, True)
    vote(system, second, JUROR_B, True)

    assert resolve(system, second) == 2
    assert system.verdicts_contract.cases(second).slashed == share(PROVIDER_STAKE, "slash_bps", system)


def test_two_reports_of_one_receipt_slash_it_once(system: System) -> None:
    first = open_case(system, reporter=REPORTER)
    with boa.reverts("verdicts: receipt already in this case"):
        open_case(system, reporter=JUROR_A)  # a copy of a receipt the case holds adds nothing
    vote(system, first, JUROR_B, True)
    vote(system, first, JUROR_A, True)

    assert resolve(system, first) == 2
    assert system.registry.slashable_of(PROVIDER.address) == PROVIDER_STAKE - share(PROVIDER_STAKE, "slash_bps", system)
    for reporter in (REPORTER, JUROR_A):
        r, sig = signed_receipt(system)
        with boa.env.prank(reporter.address), boa.reverts("verdicts: receipt already convicted"):
            system.verdicts_contract.open_case(r, sig, EVIDENCE, "")


# 50,000 ALM of validator stake: a 49 % coalition (the reporter and a partner) and 51 % honest
PARTNER, HONEST_EXTRA = actor("ea-coalition-partner"), actor("ea-honest-extra")


@pytest.mark.parametrize(
    "honest_voters",
    [[JUROR_A, JUROR_B, HONEST_EXTRA], [JUROR_A], []],
    ids=["all-honest-vote", "small-honest-turnout", "honest-stay-away"],
)
def test_49_percent_coalition_frames_an_honest_provider_and_loses_money(system: System, honest_voters: list) -> None:
    register_validator(system, PARTNER, 19_500 * ALM)
    register_validator(system, HONEST_EXTRA, 12_500 * ALM)
    coalition = [REPORTER.address, PARTNER.address]
    total = system.registry.role_stake(2)
    assert total == 50_000 * ALM
    assert sum(system.registry.stake_of(m) for m in coalition) * 100 // total == 49

    def wealth() -> int:
        return sum(system.token.balanceOf(m) + system.registry.slashable_of(m) for m in coalition)

    held_through_the_lookback(system)
    before = wealth()
    case = open_case(system)  # junk evidence against an honest provider
    vote(system, case, PARTNER, True)
    for who in honest_voters:
        vote(system, case, who, False)

    status = resolve(system, case)
    claim(system, case, REPORTER)

    assert status in (3, 4)  # never guilty
    assert system.registry.stake_of(PROVIDER.address) == PROVIDER_STAKE
    assert system.registry.is_active(PROVIDER.address)
    assert wealth() < before


# ------------------------------------------------------------------- 4. royalties


PAYER, SQUATTER, AUTHOR = actor("ea-payer"), actor("ea-squatter"), actor("ea-author")


def open_channel(system: System, amount: int = 100 * USD) -> bytes:
    system.fund(PAYER.address, usd=amount)
    with boa.env.prank(PAYER.address):
        return system.channels.open(PROVIDER.address, amount)


def redeem(system: System, channel: bytes, cumulatives: list[int], model: bytes = MODEL) -> int:
    vouchers = [
        sign_voucher(Voucher(channel, model, c), system.voucher_domain, PAYER.key).as_tuple() for c in cumulatives
    ]
    with boa.env.prank(PROVIDER.address):
        return system.channels.redeem(vouchers)


def test_squatter_registers_a_served_model_at_the_royalty_cap(system: System) -> None:
    """Offers no longer block a registration (a provider could block an author with them),
    but a registration redirects none of the income earned before it."""
    with boa.env.prank(PROVIDER.address):
        system.registry.set_offer(MODEL, 1, 1)  # an open model providers already serve
    channel = open_channel(system)
    boa.env.time_travel(seconds=3_600)  # an hour of service, not yet redeemed
    cap = system.params.get("royalty_cap_bps")

    with boa.env.prank(SQUATTER.address):
        register_model(system.models, MODEL, "MIT", cap, [], [], "")
    redeem(system, channel, [10 * USD])

    assert system.channels.earnings(SQUATTER.address) == 0


def test_squatter_registers_a_model_after_the_work_was_done(system: System) -> None:
    channel = open_channel(system)  # serving MODEL, not (yet) registered or offered on chain
    boa.env.time_travel(seconds=60)
    with boa.env.prank(SQUATTER.address):
        register_model(system.models, MODEL, "MIT", system.params.get("royalty_cap_bps"), [], [], "")

    redeem(system, channel, [10 * USD])

    assert system.channels.earnings(SQUATTER.address) == 0
    assert system.channels.earnings(PROVIDER.address) == 10 * USD - share(10 * USD, "protocol_fee_bps", system)


def test_register_derived_claims_a_served_model_for_the_squatters_root(system: System) -> None:
    own_root = keccak(text="squatter-root")
    with boa.env.prank(SQUATTER.address):
        register_model(system.models, own_root, "MIT", system.params.get("royalty_cap_bps"), [], [], "")
    with boa.env.prank(PROVIDER.address):
        system.registry.set_offer(MODEL, 1, 1)
    channel = open_channel(system)
    boa.env.time_travel(seconds=3_600)

    with boa.env.prank(SQUATTER.address):
        register_derived_model(system.models, MODEL, own_root, "MIT", [], "")
    redeem(system, channel, [10 * USD])

    assert system.channels.earnings(SQUATTER.address) == 0


def test_author_registered_before_serving_is_paid_on_new_channels(system: System) -> None:
    with boa.env.prank(AUTHOR.address):
        register_model(system.models, MODEL, "MIT", 1_000, [], [], "")
    with boa.env.prank(PROVIDER.address):
        system.registry.set_offer(MODEL, 1, 1)
    channel = open_channel(system)

    redeem(system, channel, [10 * USD])

    assert system.channels.earnings(AUTHOR.address) == USD


# -------------------------------------------------------------------- 6. rounding


def test_provider_splits_a_redeem_into_one_unit_vouchers_to_dodge_fee_and_royalty(system: System) -> None:
    with boa.env.prank(AUTHOR.address):
        register_model(system.models, MODEL, "MIT", 1_000, [], [], "")
    channel = open_channel(system)

    # 200 vouchers of one unit each, in batches of at most 64 (Channels' MAX_BATCH)
    paid = sum(redeem(system, channel, list(range(start, min(start + 64, 201)))) for start in range(1, 201, 64))

    assert paid == 200
    assert system.channels.earnings(AUTHOR.address) == 20  # 10 % of 200
    assert system.channels.earnings(system.treasury) == 2  # 1 % of 200
    assert system.channels.earnings(PROVIDER.address) == 178


# --------------------------------------------------------------- 7. the access log


def test_dummy_dataset_logs_the_vaults_job_id_first(system: System) -> None:
    owner, vault, attacker = actor("ea-data-owner"), actor("ea-vault"), actor("ea-data-attacker")
    victim_ds, dummy_ds, job = keccak(text="real-dataset"), keccak(text="dummy"), keccak(text="predictable-job-1")
    expires = boa.env.evm.patch.timestamp + 86_400
    with boa.env.prank(owner.address):
        register_dataset(system.data, victim_ds, vault.address, "CC-BY-4.0", "")
        grant = system.data.grant(victim_ds, owner.address, 3, [], expires, 10**6)
    with boa.env.prank(attacker.address):
        register_dataset(system.data, dummy_ds, attacker.address, "MIT", "")
        dummy_grant = system.data.grant(dummy_ds, attacker.address, 3, [], expires, 10**6)
        system.data.record_access(dummy_grant, job, b"\x00" * 32, b"\x01" * 32, 0)

    with boa.env.prank(vault.address):
        system.data.record_access(grant, job, b"\x00" * 32, b"\x02" * 32, 10)

    assert system.data.job_logged(victim_ds, job) and system.data.job_logged(dummy_ds, job)
    assert system.data.access_at(victim_ds, 0).result_hash == b"\x02" * 32
    with boa.env.prank(vault.address), boa.reverts("data: job already logged"):
        system.data.record_access(grant, job, b"\x00" * 32, b"\x02" * 32, 10)


# ------------------------------------------------------------- 8. the payment token


def test_payer_deposits_a_fee_on_transfer_token(system: System) -> None:
    fee_token = boa.load(str(contracts_dir() / "mocks" / "mock_fee_token.vy"))
    channels = load("Channels", fee_token.address, system.params.address, system.models.address, system.treasury)
    channels.set_payment_token_approved(True)
    fee_token.mint(PAYER.address, 100 * USD)
    with boa.env.prank(PAYER.address):
        fee_token.approve(channels.address, 100 * USD)
        with boa.reverts("channels: token moved a different amount"):
            channels.open(PROVIDER.address, 100 * USD)
    assert fee_token.balanceOf(channels.address) == 0


def test_channels_refuse_a_payment_token_governance_did_not_approve(system: System) -> None:
    channels = load("Channels", system.stable.address, system.params.address, system.models.address, system.treasury)
    system.stable.mint(PAYER.address, USD)
    with boa.env.prank(PAYER.address):
        system.stable.approve(channels.address, USD)
        with boa.reverts("channels: payment token not approved"):
            channels.open(PROVIDER.address, USD)
    with boa.env.prank(PAYER.address), boa.reverts("ownable: caller is not the owner"):
        channels.set_payment_token_approved(True)
    channels.set_payment_token_approved(True)
    with boa.env.prank(PAYER.address):
        channels.open(PROVIDER.address, USD)
    assert system.stable.balanceOf(channels.address) == USD
