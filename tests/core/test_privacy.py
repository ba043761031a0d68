"""The grant ledger's maths (allmende.core.privacy): charges telescope to ε of what was logged,
whatever was reserved and forgotten meanwhile, and the worst case bounds every logging order."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allmende.core.privacy import MICRO, GrantLedger, epsilon_of, micro_epsilon

DELTA = 1e-5
RHOS = st.lists(st.floats(0.01, 5.0, allow_nan=False), min_size=1, max_size=6)


def log(ledger: GrantLedger, rho: float, extra: int = 0) -> GrantLedger:
    """The ledger after logging a release of `rho` (and `extra`) at its charge now."""
    charge = ledger.charge(rho, DELTA, extra)
    return GrantLedger(
        ledger.logged_rho + rho,
        ledger.logged_zcdp_micro + (charge - extra),
        ledger.logged_micro + charge,
        ledger.open_rho,
        ledger.open_micro,
    )


def test_epsilon_and_its_units() -> None:
    # Prepare / Execute / Assert
    assert epsilon_of(0.0, DELTA) == 0.0
    assert epsilon_of(1.0, DELTA) == pytest.approx(1.0 + 2.0 * math.sqrt(math.log(1e5)))
    assert micro_epsilon(0.1234567) == 123_457  # rounded up: never under-charged
    assert micro_epsilon(1.0) == MICRO
    with pytest.raises(ValueError, match="no finite epsilon"):
        micro_epsilon(math.inf)


@settings(max_examples=60, deadline=None)
@given(rhos=RHOS, forgotten=RHOS)
def test_charges_add_up_to_the_epsilon_of_what_was_logged(rhos: list[float], forgotten: list[float]) -> None:
    # Prepare: reservations that are made and forgotten never enter the ledger's logged part
    ledger = GrantLedger(open_rho=sum(forgotten))
    # Execute
    charges = []
    for rho in rhos:
        charges.append(ledger.charge(rho, DELTA))
        ledger = log(ledger, rho)
    # Assert: the first release is charged as a fresh one, the sum is ε of everything logged
    assert charges[0] == micro_epsilon(epsilon_of(rhos[0], DELTA))
    assert sum(charges) == ledger.logged_zcdp_micro == micro_epsilon(epsilon_of(ledger.logged_rho, DELTA))


@settings(max_examples=60, deadline=None)
@given(logged=RHOS, pending=RHOS, new=st.floats(0.01, 5.0), extra=st.integers(0, 10 * MICRO))
def test_the_worst_case_bounds_every_order_of_logging(
    logged: list[float], pending: list[float], new: float, extra: int
) -> None:
    # Prepare: some releases logged, some reservations open
    ledger = GrantLedger()
    for rho in logged:
        ledger = log(ledger, rho)
    ledger = GrantLedger(ledger.logged_rho, ledger.logged_zcdp_micro, ledger.logged_micro, sum(pending), 0)
    bound = ledger.worst_case(new, DELTA)
    # Execute: every open reservation and the new job logged, in every order
    for order in itertools.islice(itertools.permutations([*pending, new]), 24):
        final = ledger
        for rho in order:
            final = log(final, rho)
        # Assert: never more than the worst case (up to the rounding of one float sum)
        assert final.logged_micro <= bound + 1
    # a pure-ε job counts its extra and the open pure ε on top; the chain's figure wins if larger
    pure = GrantLedger(logged_micro=5, open_micro=7)
    assert pure.charge(0.0, DELTA, extra) == extra
    assert pure.worst_case(0.0, DELTA, extra) == 5 + 7 + extra
    assert pure.worst_case(0.0, DELTA, extra, chain_spent=9) == 9 + 7 + extra
    assert pure.left(100, DELTA) == 100 - 12


def test_a_reservation_estimate_bounds_its_later_charge() -> None:
    # Prepare: a reservation's charge estimated on an empty grant, then another round logged first
    ledger = GrantLedger()
    estimate = ledger.charge(2.0, DELTA)
    # Execute
    later = log(ledger, 2.0).charge(2.0, DELTA)
    # Assert: ε grows more slowly, so the estimate bounds the charge
    assert later < estimate
