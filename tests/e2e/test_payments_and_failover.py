"""Money end to end: receipts → vouchers → redeem → split on chain. (Killing providers
mid-stream is in tests/faults, on a network of its own, so that this module's shared
network stays whole whatever order tests run in.)"""

from __future__ import annotations

from typer.testing import CliRunner

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.cli import app
from allmende.core import split_payment
from allmende.payer.store import GatewayStore
from allmende.provider.store import ProviderStore
from tests.e2e.conftest import Network


def _earnings(reader: Contracts, account: str, block: int) -> int:
    return int(reader.client.call(reader.channels.contract.functions.earnings(account), block))


CHAT = [{"role": "user", "content": "Erzähl eine lange Geschichte."}]


def test_redeemed_amounts_and_split_match_the_receipts(network: Network) -> None:
    for _ in range(6):
        network.client.chat.completions.create(model="allmende:tiny", messages=CHAT, max_tokens=8)
    network.client.embeddings.create(model="minilm", input="noch eins")
    deployment = Deployment.load(network.data["deployments"])
    reader = Contracts(ChainClient(network.data["rpc_url"]), deployment)
    treasury = reader.channels.treasury()
    addresses = [p["address"] for p in network.data["providers"]]
    # balances at one block: every redeem after it (this test's, the providers' own settlement
    # runs, other payers' channels to these providers, other tests' gateways) is in the window
    start = reader.client.w3.eth.block_number
    before = {a: _earnings(reader, a, start) for a in [*addresses, treasury]}
    store = GatewayStore(network.root / "run" / "gateway" / "gateway.db")
    # the channels to `up`'s own providers (other tests of this network add providers of their own)
    ours = [(p, c, x) for p, c, x in store.all_channels() if p.lower() in {a.lower() for a in addresses}]
    pairs = [
        (channel_id, model_id)
        for provider, channel_id, _ in ours
        for model_id in reader.registry.models_of(reader.client.w3.to_checksum_address(provider))
    ]
    # what was redeemed already: the providers' own settlement runs every 10 s, and a test that
    # ran earlier may have closed a channel (providers redeem on seeing a close)
    redeemed_before = {pair: reader.channels.redeemed(*pair) for pair in pairs}

    for i in range(1, len(network.data["providers"]) + 1):  # in this process: ~1.5 s less CPU a call
        done = CliRunner().invoke(app, [
            "provider-redeem", "--rpc", network.data["rpc_url"], "--key", f"devnet:{i}",
            "--deployments", network.data["deployments"], "--state-dir", str(network.root / "run" / f"provider-{i}"),
        ])  # fmt: skip
        assert done.exit_code == 0, done.output + repr(done.exception)

    held: dict[tuple[bytes, bytes], int] = {}  # the highest voucher each provider holds, by (channel, model)
    for i in range(1, len(network.data["providers"]) + 1):
        provider_store = ProviderStore(network.root / "run" / f"provider-{i}" / "provider.db")
        held.update({(row.channel_id, row.model_id): row.cumulative for row in provider_store.all_ledger()})
        provider_store.close()
    fee_bps = reader.params.get("protocol_fee_bps")
    redeemed_total, expected_fee = 0, 0
    for provider, channel_id, _ in ours:
        for model_id in reader.registry.models_of(reader.client.w3.to_checksum_address(provider)):
            owed, signed = store.owed(channel_id, model_id)
            on_chain = reader.channels.redeemed(channel_id, model_id)
            # every voucher a provider holds was redeemed, and none above what the gateway signed,
            # nor did the gateway sign above what the receipts say is owed. (A provider may hold less
            # than was signed: a voucher sent with a request that failed before the provider took
            # it, in an earlier test, is sent again with the next request to that provider.)
            assert on_chain == held.get((channel_id, model_id), 0) <= signed <= owed
            redeemed_total += on_chain
    # the fee of each (channel, model) is the increase of its floored cumulative fee since `before`
    for pair in pairs:
        now, then = reader.channels.redeemed(*pair), redeemed_before[pair]
        expected_fee += split_payment(now, 0, fee_bps).protocol_fee - split_payment(then, 0, fee_bps).protocol_fee
    end = reader.client.w3.eth.block_number
    gained = {a: _earnings(reader, a, end) - before[a] for a in before}
    # every redeem in the window, as the chain logged it: its fee (Channels' floored cumulative
    # rule) went to the treasury, the rest to the channel's provider (the models of `up`'s
    # providers were registered with royalty 0)
    fees, to_ours = 0, 0
    ours_lower = {a.lower() for a in addresses}
    for event in reader.client.events(reader.channels.contract, "Redeemed", start + 1, end):
        amount, cumulative = int(event["args"]["amount"]), int(event["args"]["cumulative_amount"])
        fee = (
            split_payment(cumulative, 0, fee_bps).protocol_fee
            - split_payment(cumulative - amount, 0, fee_bps).protocol_fee
        )
        fees += fee
        if reader.channels.channel(bytes(event["args"]["channel_id"])).provider.lower() in ours_lower:
            to_ours += amount - fee
    redeemed_now = redeemed_total - sum(redeemed_before.values())
    assert redeemed_total > 0
    assert gained[treasury] == fees >= expected_fee  # this test's own redeems are among them
    assert sum(gained[a] for a in addresses) == to_ours >= redeemed_now - expected_fee
    assert store.receipt_count() >= 7
