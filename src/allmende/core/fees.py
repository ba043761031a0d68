"""Prices and the split of every paid amount — the same integer maths as channels.vy.

All amounts are integers in the payment token's smallest unit (dUSD: 6 decimals).
Prices are per 1,000,000 tokens. Nothing here uses floats.
"""

from __future__ import annotations

from dataclasses import dataclass

from allmende.core.eip712 import check_uint

BPS = 10_000
TOKENS_PER_PRICE_UNIT = 1_000_000


@dataclass(frozen=True)
class FeeSplit:
    """How one redeemed amount is paid out."""

    royalty: int  # to the model owner
    protocol_fee: int  # to the treasury
    provider: int  # to the provider

    @property
    def total(self) -> int:
        return self.royalty + self.protocol_fee + self.provider


def effective_royalty_bps(royalty_bps: int, royalty_cap_bps: int, protocol_fee_bps: int) -> int:
    """The royalty rate Channels applies: registered bps, capped by Params and by
    what the protocol fee leaves (royalty + fee never exceed 100 %)."""
    return min(royalty_bps, royalty_cap_bps, BPS - min(protocol_fee_bps, BPS))


def split_payment(amount: int, royalty_bps: int, protocol_fee_bps: int) -> FeeSplit:
    """Split `amount` as `Channels.redeem` does: royalty and fee are floored, the
    provider gets the remainder, so no unit is lost or created.

    `royalty_bps` must already be the effective rate (see effective_royalty_bps).
    """
    check_uint(amount, 256, "amount")
    if not 0 <= protocol_fee_bps <= BPS or not 0 <= royalty_bps <= BPS - protocol_fee_bps:
        raise ValueError(f"fee {protocol_fee_bps} bps + royalty {royalty_bps} bps exceed {BPS} bps")
    royalty = amount * royalty_bps // BPS
    fee = amount * protocol_fee_bps // BPS
    return FeeSplit(royalty=royalty, protocol_fee=fee, provider=amount - royalty - fee)


def split_increment(previous: int, cumulative: int, royalty_bps: int, protocol_fee_bps: int) -> FeeSplit:
    """Split one redeem of a (channel, model) from `previous` to `cumulative` as
    `Channels.redeem` does: royalty and fee are the increase of their rounded
    cumulative totals, so redeeming 0 → a → b pays every party exactly what 0 → b pays.

    The provider gets the rest of the increment. In the rare step where both rounded
    totals go up by one unit more than the increment carries, that rest is -1: the unit was
    credited to the provider on an earlier redeem of the same (channel, model).
    """
    check_uint(previous, 256, "previous")
    if cumulative < previous:
        raise ValueError(f"cumulative {cumulative} is below the previous {previous}")
    before = split_payment(previous, royalty_bps, protocol_fee_bps)
    after = split_payment(cumulative, royalty_bps, protocol_fee_bps)
    return FeeSplit(
        royalty=after.royalty - before.royalty,
        protocol_fee=after.protocol_fee - before.protocol_fee,
        provider=after.provider - before.provider,
    )


RELAY_MODEL = bytes(32)  # a voucher for the zero model id pays a relay (Channels: fee-deferred)


def relay_withdrawal_fee(withdrawn: int, amount: int, protocol_fee_bps: int) -> int:
    """The protocol fee `Channels.withdraw_relay` takes when a relay that has taken out
    `withdrawn` so far takes out `amount` more: the increase of the rounded fee on the
    cumulative amount, so splitting a withdrawal saves nothing. Zero-model (relayed)
    redeems pay no fee; this and the providers' redeems of what the relay `fund`s its
    channels with are where the fee on relayed money is paid, once."""
    check_uint(withdrawn, 128, "withdrawn")
    check_uint(amount, 128, "amount")
    bps = min(protocol_fee_bps, BPS)
    return (withdrawn + amount) * bps // BPS - withdrawn * bps // BPS


def request_cost(tokens_in: int, tokens_out: int, price_in: int, price_out: int) -> int:
    """What a request costs: usage × price per 1M tokens, rounded up to a whole unit
    so that a provider is never paid less than its posted price."""
    check_uint(tokens_in, 32, "tokens_in")
    check_uint(tokens_out, 32, "tokens_out")
    check_uint(price_in, 256, "price_in")
    check_uint(price_out, 256, "price_out")
    numerator = tokens_in * price_in + tokens_out * price_out
    return -(-numerator // TOKENS_PER_PRICE_UNIT)
