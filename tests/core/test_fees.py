"""The fee split and request pricing: exact integer maths, nothing lost or created."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allmende.core import AmountOverflow, effective_royalty_bps, request_cost, split_increment, split_payment
from allmende.core.fees import relay_withdrawal_fee

bps = st.integers(0, 10_000)


@given(amount=st.integers(0, 2**200), fee=bps, royalty=bps)
def test_split_conserves_every_unit(amount: int, fee: int, royalty: int) -> None:
    royalty = effective_royalty_bps(royalty, 10_000, fee)

    split = split_payment(amount, royalty, fee)

    assert split.total == amount
    assert min(split.royalty, split.protocol_fee, split.provider) >= 0
    assert split.royalty == amount * royalty // 10_000


@given(
    steps=st.lists(st.integers(1, 10**9), min_size=1, max_size=20),
    fee=st.integers(0, 1_000),
    royalty=st.integers(0, 3_000),
)
def test_splitting_a_redeem_changes_no_partys_total(steps: list[int], fee: int, royalty: int) -> None:
    cumulative, paid = 0, [0, 0, 0]
    for step in steps:
        part = split_increment(cumulative, cumulative + step, royalty, fee)
        assert part.total == step and part.royalty >= 0 and part.protocol_fee >= 0 and part.provider >= -1
        paid = [paid[0] + part.royalty, paid[1] + part.protocol_fee, paid[2] + part.provider]
        cumulative += step

    whole = split_payment(cumulative, royalty, fee)
    assert paid == [whole.royalty, whole.protocol_fee, whole.provider]


def test_one_unit_increments_still_pay_fee_and_royalty() -> None:
    parts = [split_increment(c, c + 1, 1_000, 100) for c in range(200)]
    assert sum(p.royalty for p in parts) == 20 and sum(p.protocol_fee for p in parts) == 2


def test_split_increment_refuses_a_lower_cumulative() -> None:
    with pytest.raises(ValueError, match="below the previous"):
        split_increment(5, 4, 0, 100)


def test_split_example() -> None:
    split = split_payment(1_000_001, 1000, 100)
    assert (split.royalty, split.protocol_fee, split.provider) == (100_000, 10_000, 890_001)


def test_split_refuses_rates_over_100_percent() -> None:
    with pytest.raises(ValueError, match="exceed"):
        split_payment(1, 9_950, 100)


def test_effective_royalty_is_capped_twice() -> None:
    assert effective_royalty_bps(5000, 3000, 100) == 3000
    assert effective_royalty_bps(5000, 10_000, 9_000) == 1000


@given(
    tin=st.integers(0, 2**32 - 1),
    tout=st.integers(0, 2**32 - 1),
    pin=st.integers(0, 10**12),
    pout=st.integers(0, 10**12),
)
def test_request_cost_rounds_up_to_a_whole_unit(tin: int, tout: int, pin: int, pout: int) -> None:
    cost = request_cost(tin, tout, pin, pout)

    exact = tin * pin + tout * pout
    assert cost * 1_000_000 >= exact > (cost - 1) * 1_000_000 or exact == cost == 0


def test_request_cost_rejects_overflowing_usage() -> None:
    with pytest.raises(AmountOverflow, match="tokens_in"):
        request_cost(2**32, 0, 1, 1)


@given(pieces=st.lists(st.integers(0, 10**24), max_size=8), fee=bps)
def test_a_relay_withdrawal_in_pieces_pays_the_fee_on_the_total(pieces: list[int], fee: int) -> None:
    withdrawn, paid = 0, 0
    for amount in pieces:
        paid += relay_withdrawal_fee(withdrawn, amount, fee)
        withdrawn += amount
    assert paid == withdrawn * fee // 10_000


def test_a_relay_withdrawal_refuses_amounts_past_128_bits_and_caps_the_fee_rate() -> None:
    assert relay_withdrawal_fee(0, 10_000, 20_000) == 10_000  # the rate is capped at 100 %, as in the contract
    with pytest.raises(AmountOverflow):
        relay_withdrawal_fee(2**128, 1, 100)
    with pytest.raises(AmountOverflow):
        relay_withdrawal_fee(0, 2**128, 100)
