"""What a model's royalty payee was paid, recomputed from the chain exactly as `Channels.redeem`
pays it: the one read of royalties and protocol fees that `allmende status`, `allmende models
earnings` and the explorer share (each redeem with the rates in force at its block, the
contract's cumulative rounding, and its rule for service before a model's registration)."""

from __future__ import annotations

from dataclasses import dataclass, field

from allmende.chain.bindings import Contracts
from allmende.core.fees import BPS, effective_royalty_bps, split_increment


@dataclass(frozen=True)
class Paid:
    """One redeem of a model as `Channels.redeem` split it (the provider got the rest)."""

    at: int  # block time
    channel_id: bytes
    amount: int
    royalty: int
    fee: int


@dataclass
class RoyaltyHistory:
    """A model's redeems on chain and the royalty each paid, with what was not paid and why."""

    redeemed: int = 0
    royalties: int = 0
    redeems: int = 0
    channels: int = 0
    before_registration: int = 0  # amount redeemed before the model was registered: no royalty
    before_registration_redeems: int = 0
    spanning_unpaid: int = 0  # royalty not paid on the part of an increment served before registration
    spanning_redeems: int = 0
    capped_unpaid: int = 0  # royalty above the cap (royalty_cap_bps, and 100 % less the protocol fee)
    bps: int = 0
    cap_bps: int = 0
    fees: int = 0  # protocol fees these redeems paid the treasury
    payee: str = ""  # who the royalty goes to now
    paid: list[Paid] = field(default_factory=list)  # every redeem, oldest first


def _block_time(c: Contracts, block: int) -> int:
    return c.client.rpc(lambda: int(c.client.w3.eth.get_block(block)["timestamp"]), "get_block")


def royalty_history(c: Contracts, model_id: bytes) -> RoyaltyHistory:
    """Every redeem of a model and the royalty each paid, recomputed with the rates in force
    at that block and the same rounding as `Channels.redeem`: nothing for a redeem before the
    registration; for an increment whose service began before it (at the channel's last
    redeem of the model, or its opening) the share of its time after the registration."""
    _, _, registered_at = c.models.royalty_terms(model_id)
    client = c.client
    h = RoyaltyHistory(payee=c.models.royalty_info(model_id)[0])
    since: dict[bytes, int] = {}  # channel -> when the service the next increment pays began
    times: dict[int, int] = {}
    for event in client.events(
        c.channels.contract, "Redeemed", c.deployment.deploy_block, argument_filters={"model_id": model_id}
    ):
        cid, block = bytes(event["args"]["channel_id"]), int(event["blockNumber"])
        amount, cumulative = int(event["args"]["amount"]), int(event["args"]["cumulative_amount"])
        h.redeemed += amount
        h.redeems += 1
        if cid not in since:
            since[cid] = c.channels.channel(cid).opened_at
        if block not in times:
            times[block] = _block_time(c, block)
        now, began = times[block], since[cid]
        since[cid] = now
        fee_bps = int(client.call(c.params.contract.functions.get("protocol_fee_bps"), block))
        fee = cumulative * fee_bps // BPS - (cumulative - amount) * fee_bps // BPS  # as Channels.redeem
        h.fees += fee
        if registered_at == 0 or now < registered_at:
            h.before_registration += amount
            h.before_registration_redeems += 1
            h.paid.append(Paid(now, cid, amount, 0, fee))
            continue
        cap = int(client.call(c.params.contract.functions.get("royalty_cap_bps"), block))
        _, bps_then = client.call(c.models.contract.functions.royalty_info(model_id), block)
        h.bps, h.cap_bps = int(bps_then), min(cap, BPS - fee_bps)
        rate = effective_royalty_bps(int(bps_then), cap, fee_bps)
        full = split_increment(cumulative - amount, cumulative, rate, fee_bps).royalty
        if rate < int(bps_then):
            h.capped_unpaid += split_increment(cumulative - amount, cumulative, int(bps_then), 0).royalty - full
        royalty = full
        if registered_at > began:
            royalty = full * (now - registered_at) // (now - began)
            h.spanning_unpaid += full - royalty
            h.spanning_redeems += 1
        h.royalties += royalty
        h.paid.append(Paid(now, cid, amount, royalty, fee))
    h.channels = len(since)
    return h
