"""The Python fee split (allmende.core.fees) equals what Channels pays, to the unit, and a
redeem cut into several batches pays every party exactly what one redeem pays."""

from __future__ import annotations

import boa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allmende.core import Voucher, effective_royalty_bps, sign_voucher, split_increment, split_payment
from allmende.testing.inprocess import register_model
from tests.contracts.conftest import System, actor

PAYER, PROVIDER, OWNER = actor("fs-payer"), actor("fs-provider"), actor("fs-owner")
MODEL = b"\x42" * 32


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    amount=st.integers(1, 2**128 - 1),
    royalty_bps=st.integers(0, 3000),
    fee_bps=st.integers(0, 10_000),
    cap_bps=st.integers(0, 10_000),
)
def test_python_split_matches_contract(
    system_module: System, amount: int, royalty_bps: int, fee_bps: int, cap_bps: int
) -> None:
    system = system_module
    system.stable.mint(PAYER.address, amount)
    with boa.env.prank(PAYER.address):
        system.stable.approve(system.channels.address, amount)
        channel = system.channels.open(PROVIDER.address, amount)
    with boa.env.prank(OWNER.address):
        register_model(system.models, MODEL, "MIT", royalty_bps, [], [], "")
    system.params.set("protocol_fee_bps", fee_bps)
    system.params.set("royalty_cap_bps", cap_bps)
    signed = sign_voucher(Voucher(channel, MODEL, amount), system.voucher_domain, PAYER.key)

    with boa.env.prank(PROVIDER.address):
        system.channels.redeem([signed.as_tuple()])

    expected = split_payment(amount, effective_royalty_bps(royalty_bps, cap_bps, fee_bps), fee_bps)
    assert system.channels.earnings(OWNER.address) == expected.royalty
    assert system.channels.earnings(system.treasury) == expected.protocol_fee
    assert system.channels.earnings(PROVIDER.address) == expected.provider


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(st.lists(st.integers(1, 10**4) | st.integers(1, 3), min_size=1, max_size=5), min_size=1, max_size=4),
    royalty_bps=st.integers(0, 3000),
    fee_bps=st.integers(0, 500),
)
def test_split_redeems_match_python_and_the_whole(
    system_module: System, steps: list[list[int]], royalty_bps: int, fee_bps: int
) -> None:
    system = system_module
    deposit = sum(sum(batch) for batch in steps)
    system.params.set("protocol_fee_bps", fee_bps)
    with boa.env.prank(OWNER.address):
        register_model(system.models, MODEL, "MIT", royalty_bps, [], [], "")
    system.stable.mint(PAYER.address, deposit)
    with boa.env.prank(PAYER.address):
        system.stable.approve(system.channels.address, deposit)
        channel = system.channels.open(PROVIDER.address, deposit)
    cumulative, expected = 0, [0, 0, 0]

    for batch in steps:  # each batch: several vouchers of one (channel, model), redeemed at once
        vouchers = []
        for step in batch:
            part = split_increment(cumulative, cumulative + step, royalty_bps, fee_bps)
            expected = [expected[0] + part.royalty, expected[1] + part.protocol_fee, expected[2] + part.provider]
            cumulative += step
            vouchers.append(sign_voucher(Voucher(channel, MODEL, cumulative), system.voucher_domain, PAYER.key))
        with boa.env.prank(PROVIDER.address):
            system.channels.redeem([v.as_tuple() for v in vouchers])
        got = [system.channels.earnings(a) for a in (OWNER.address, system.treasury, PROVIDER.address)]
        assert got == expected

    whole = split_payment(cumulative, royalty_bps, fee_bps)
    assert expected == [whole.royalty, whole.protocol_fee, whole.provider]
