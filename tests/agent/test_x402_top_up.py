"""The session scheme's top-up rule (`allmende.agent.x402.top_up_amount`): the channel doubles
with the spending, at least the first deposit and what the next request needs, never leaving
more than the agent's `max_locked` unspent; a request whose most alone passes the cap is
refused before anything is sent. (On a real chain: tests/chain/test_x402_session.py.)"""

from __future__ import annotations

import pytest

from allmende.agent.x402 import DEPOSIT, MAX_LOCKED, SessionScheme, top_up_amount
from allmende.core.errors import InvalidInput

USD = 10**6


def spend(total: int, charge: int, most: int, first: int, max_locked: int) -> tuple[list[int], list[int]]:
    """An agent that pays `total` in requests of `charge` (each authorised up to `most`), as
    `SessionScheme._cover` tops up: the top-ups and what was unspent after each."""
    deposit, paid, top_ups, unspent_after = first, 0, [], []
    while paid + charge <= total:
        need = paid + most - deposit
        if need > 0:
            amount = top_up_amount(deposit, deposit - paid, need, first=first, max_locked=max_locked)
            deposit += amount
            top_ups.append(amount)
            unspent_after.append(deposit - paid)
        paid += charge
    return top_ups, unspent_after


def test_the_top_ups_double_the_channel_up_to_the_cap() -> None:
    # 12.34 dUSD in requests of 1,234 units (the gas benchmark's lifecycle) at the defaults
    top_ups, unspent = spend(12_340_000, 1_234, 20_000, DEPOSIT, MAX_LOCKED)
    assert top_ups == [2 * USD, 4 * USD, 8 * USD]  # the channel: 2 → 4 → 8 → 16 dUSD
    # a long-lived channel: doubling until the cap, then at most the cap unspent after each
    top_ups, unspent = spend(200 * USD, 1_234, 20_000, DEPOSIT, MAX_LOCKED)
    assert top_ups[:4] == [2 * USD, 4 * USD, 8 * USD, 16 * USD]
    assert all(amount <= MAX_LOCKED for amount in top_ups)
    assert max(unspent) <= MAX_LOCKED
    assert all(u > MAX_LOCKED - 20_000 for u in unspent[5:])  # capped top-ups fill up to the cap
    assert len(top_ups) == 13  # a flat 2 dUSD each time: 99


def test_an_agent_that_spends_little_never_locks_more_than_its_deposit() -> None:
    top_ups, _ = spend(1_900_000, 1_234, 20_000, DEPOSIT, MAX_LOCKED)
    assert top_ups == []
    # and one that spends a little more than its deposit locks only one more deposit
    top_ups, unspent = spend(2_500_000, 1_234, 20_000, DEPOSIT, MAX_LOCKED)
    assert top_ups == [DEPOSIT] and max(unspent) <= 2 * DEPOSIT


def test_a_top_up_covers_the_next_request_and_the_cap_binds() -> None:
    # a request needing more than the doubling still gets covered, within the cap
    assert top_up_amount(100, 10, 500, first=100, max_locked=1_000) == 500
    # the doubling is cut to what keeps the unspent part within the cap
    assert top_up_amount(800, 300, 50, first=100, max_locked=1_000) == 700
    # the first deposit is the smallest top-up once the channel has taken less
    assert top_up_amount(50, 0, 10, first=100, max_locked=1_000) == 100


def test_a_request_whose_most_passes_the_cap_is_refused() -> None:
    with pytest.raises(InvalidInput, match="max_locked"):
        top_up_amount(1_000, 100, 1_000, first=100, max_locked=1_000)


def test_a_deposit_over_the_cap_is_refused_before_any_chain_call() -> None:
    with pytest.raises(InvalidInput, match="max_locked"):
        SessionScheme(b"\x01" * 32, network="http://127.0.0.1:9", deposit=30 * USD)
    with pytest.raises(InvalidInput, match="positive"):
        SessionScheme(b"\x01" * 32, network="http://127.0.0.1:9", deposit=0)
