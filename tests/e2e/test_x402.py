"""x402 at the gateway (issue 31, part 1): a fresh key funded only with dUSD and gas, and no
API key, pays each request with the official `x402` SDK's httpx client (scheme `exact`).
The gateway answers an unpaid request with 402 and the request's requirements (its most
by the credit rule at the dearest offer, dUSD, the chain id, the gateway's address),
settles the authorization on chain before it serves, and sends back what the provider's
signed receipt did not use: the wallet falls by exactly the sum of the receipts. Attacks: a
replayed payment and a payment for a cheaper request reused on a dearer one are refused,
and neither moves any money; a paid request no provider serves is refunded whole."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from typer.testing import CliRunner
from x402 import x402Client
from x402.http import PAYMENT_REQUIRED_HEADER, decode_payment_required_header
from x402.http.clients import x402_httpx_transport
from x402.http.x402_http_client import x402HTTPClient
from x402.mechanisms.evm.exact import ExactEvmClientScheme

from allmende.api.canonical import checked
from allmende.api.directory import Directory
from allmende.api.headers import PIN_HEADER
from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import free_port
from allmende.cli import app
from allmende.core.receipts import Receipt, SignedReceipt
from allmende.node.supervisor import Node, allmende_command
from tests.e2e.conftest import Network

MODEL = "allmende:tiny"
PASSWORD = "correct horse"


@dataclass
class Gateway:
    node: Node
    address: str  # its key's: the pay-to address

    @property
    def url(self) -> str:
        return self.node.url


@pytest.fixture(scope="module")
def x402_gateway(network: Network, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A second gateway on the session's chain, started with --x402 and a key of its own."""
    root = tmp_path_factory.mktemp("x402-gateway")
    key = Account.create()
    rpc = network.data["rpc_url"]
    ChainClient(rpc).w3.provider.make_request("anvil_setBalance", [key.address, hex(10**19)])  # type: ignore[arg-type]
    contracts = Contracts(ChainClient(rpc, bytes(key.key)), Deployment.load(Path(network.data["deployments"])))
    contracts.stable.mint(key.address, 100 * 10**6)  # its channels' deposits
    keyfile = root / "gateway.json"
    keyfile.write_text(json.dumps(Account.encrypt(key.key, PASSWORD)))
    port = free_port()
    args = allmende_command(
        "gateway", "--rpc", rpc, "--key", str(keyfile), "--deployments", network.data["deployments"],
        "--state-dir", str(root / "state"), "--port", str(port), "--deposit", "2000000", "--x402",
    )  # fmt: skip
    env = {**os.environ, "ALLMENDE_PASSWORD": PASSWORD}
    process = subprocess.Popen(args, stdout=(root / "gw.log").open("ab"), stderr=subprocess.STDOUT, env=env)
    node = Node("gateway", process, root / "gw.log", f"http://127.0.0.1:{port}")
    try:
        node.wait_healthy(120, ready=lambda health: health["providers"] >= len(network.data["providers"]))
        yield Gateway(node, key.address)
    finally:
        node.stop(timeout=10)


def fresh_payer(network: Network) -> LocalAccount:
    """A new key with 50 dUSD and gas from the devnet faucet: no ALM, no API key, no channel."""
    key: LocalAccount = Account.create()
    given = CliRunner().invoke(
        app, ["faucet", key.address, "--network", network.data["rpc_url"], "--alm", "0", "--usd", "50"]
    )
    assert given.exit_code == 0, given.output
    return key


def contracts_of(network: Network) -> Contracts:
    return Contracts(ChainClient(network.data["rpc_url"]), Deployment.load(Path(network.data["deployments"])))


def most(network: Network, body: dict[str, Any]) -> int:
    """What the credit rule bounds the request by, at the dearest provider offering MODEL."""
    directory = Directory(contracts_of(network), httpx.Client(timeout=10))
    directory.maybe_refresh()
    offer = directory.resolve(MODEL)
    assert offer is not None
    costs = [
        checked("chat", dict(body)).max_cost(o.context_length, o.price_in, o.price_out)
        for e in directory.candidates(offer.model_id)
        for o in [e.offers[offer.model_id]]
    ]
    return max(costs)


def chat(content: str, max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


def payer_client(key: LocalAccount, asset: str) -> x402Client:
    """The SDK's own client and `exact` scheme; dUSD is no default asset of the SDK, so the
    payer allows it, with a cap of its own per payment (the SDK's spend controls)."""
    client = x402Client()
    client.register("eip155:*", ExactEvmClientScheme(key))
    allowed = {"network": "eip155:*", "asset": asset, "max_amount_per_payment": str(5 * 10**6)}
    client.set_spend_controls({"allowed_assets": [allowed]})  # type: ignore[typeddict-item]
    return client


def verified(network: Network, view: dict[str, Any]) -> Receipt:
    """The provider's signed receipt rebuilt from the answer, its signature checked."""
    receipt = Receipt(
        request_id=bytes.fromhex(view["request_id"][2:]),
        model_id=bytes.fromhex(view["model_id"][2:]),
        provider=view["provider"],
        input_hash=bytes.fromhex(view["input_hash"][2:]),
        output_hash=bytes.fromhex(view["output_hash"][2:]),
        proof_hash=bytes.fromhex(view["proof_hash"][2:]),
        tokens_in=view["tokens_in"],
        tokens_out=view["tokens_out"],
        amount=int(view["asked"]),
        timestamp=view["timestamp"],
    )
    SignedReceipt(receipt, bytes.fromhex(view["signature"][2:])).verify(contracts_of(network).registry.receipt_domain())
    return receipt


def test_an_unpaid_request_gets_402_with_what_it_can_cost(network: Network, x402_gateway: Gateway) -> None:
    # Prepare
    body = chat("Hello", 16)
    # Execute
    reply = httpx.post(f"{x402_gateway.url}/v1/chat/completions", json=body, timeout=30)
    # Assert
    assert reply.status_code == 402, reply.text
    assert reply.json()["error"]["code"] == "payment_required"
    accepted, session = decode_payment_required_header(reply.headers[PAYMENT_REQUIRED_HEADER]).accepts
    stable = contracts_of(network).stable
    assert accepted.scheme == "exact" and session.scheme == "session"
    assert (session.amount, session.asset, session.pay_to) == (accepted.amount, accepted.asset, accepted.pay_to)
    assert (session.extra or {})["channels"] == contracts_of(network).channels.address
    # both are bound to this request's body: a payment for another body matches neither
    assert (session.extra or {})["requestHash"] == (accepted.extra or {})["requestHash"]
    assert accepted.network == f"eip155:{network.data['chain_id']}"
    assert accepted.asset.lower() == stable.address.lower()
    assert accepted.pay_to.lower() == x402_gateway.address.lower()
    assert int(accepted.amount) == most(network, body)
    # a key the gateway never issued buys nothing either
    made_up = httpx.post(
        f"{x402_gateway.url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-made-up"}, timeout=30
    )
    assert made_up.status_code == 402, made_up.text
    extra = accepted.extra or {}
    assert (extra["name"], extra["version"]) == stable.eip712_domain() == ("Devnet USD", "1")


def test_a_fresh_wallet_pays_for_its_requests_with_the_official_x402_client(
    network: Network, x402_gateway: Gateway
) -> None:
    # Prepare
    key = fresh_payer(network)
    stable = contracts_of(network).stable
    before = stable.balance_of(key.address)
    prompts = [f"Say something about the number {i}" for i in range(6)]

    async def run() -> tuple[list[Any], dict[str, Any]]:
        http = httpx.AsyncClient(transport=x402_httpx_transport(payer_client(key, stable.address)), timeout=120)
        client = openai.AsyncOpenAI(base_url=f"{x402_gateway.url}/v1", api_key="none", http_client=http, max_retries=0)
        async with http:  # six at once, no retries; then a stream
            replies = await asyncio.gather(
                *[
                    client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=12
                    )
                    for p in prompts
                ]
            )
            streamed = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Count to five"}], max_tokens=12, stream=True
            )
            last = [
                chunk.model_extra["allmende"] async for chunk in streamed if (chunk.model_extra or {}).get("allmende")
            ]
            return replies, last[-1]

    # Execute
    replies, stream_view = asyncio.run(run())

    # Assert: every answer carries its provider's signed receipt and what the payment did
    charged = 0
    for prompt, reply in zip(prompts, replies, strict=True):
        view = reply.model_extra["allmende"]
        receipt = verified(network, view)
        x402 = view["x402"]
        assert x402["payer"].lower() == key.address.lower()
        assert int(x402["paid"]) == most(network, chat(prompt, 12))
        assert int(x402["charged"]) == receipt.amount > 0
        assert int(x402["refunded"]) == int(x402["paid"]) - receipt.amount
        charged += receipt.amount
    # a stream's receipt and payment come in its final chunk
    receipt = verified(network, stream_view)
    assert int(stream_view["x402"]["paid"]) == most(network, chat("Count to five", 12))
    assert int(stream_view["x402"]["charged"]) == receipt.amount > 0
    charged += receipt.amount
    # the wallet fell by exactly the sum of the receipts (the gateway paid the gas)
    assert stable.balance_of(key.address) == before - charged


def test_a_replayed_payment_is_refused(network: Network, x402_gateway: Gateway) -> None:
    # Prepare: one payment, signed for one request
    key = fresh_payer(network)
    stable = contracts_of(network).stable
    url = f"{x402_gateway.url}/v1/chat/completions"
    body = chat("Hello", 8)
    header = signed_payment(key, stable.address, httpx.post(url, json=body, timeout=30))
    before = stable.balance_of(key.address)

    async def racing() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(*[http.post(url, json=body, headers=header) for _ in range(3)])

    # Execute: the payment three times at once, then once more
    first = asyncio.run(racing())
    again = httpx.post(url, json=body, headers=header, timeout=120)

    # Assert: served once, refused every other time; the wallet paid one receipt
    assert sorted(r.status_code for r in first) == [200, 402, 402], [r.text for r in first]
    assert again.status_code == 402 and again.json()["error"]["code"] == "payment_required"
    (served,) = [r for r in first if r.status_code == 200]
    # the chain said why: the nonce is used (checked before settling), or the settlement racing
    # the served one's reverted when mined
    for refused in [r for r in first if r.status_code == 402]:
        assert any(why in refused.json()["error"]["message"] for why in ("nonce_already_used", "transaction_failed"))
    assert "nonce_already_used" in again.json()["error"]["message"], again.text
    assert stable.balance_of(key.address) == before - int(served.json()["allmende"]["x402"]["charged"])


def test_a_payment_for_a_cheaper_request_cannot_buy_a_dearer_one(network: Network, x402_gateway: Gateway) -> None:
    # Prepare: a payment for a request of at most 4 tokens
    key = fresh_payer(network)
    stable = contracts_of(network).stable
    url = f"{x402_gateway.url}/v1/chat/completions"
    cheap, dear = chat("Hello", 4), chat("Hello", 64)
    assert most(network, dear) > most(network, cheap)
    header = signed_payment(key, stable.address, httpx.post(url, json=cheap, timeout=30))
    before = stable.balance_of(key.address)

    # Execute: the same payment on a request that may cost more
    reply = httpx.post(url, json=dear, headers=header, timeout=120)

    # Assert: refused before anything moved; the authorization is still unused
    assert reply.status_code == 402, reply.text
    assert "No matching payment requirements" in reply.json()["error"]["message"]
    assert stable.balance_of(key.address) == before
    nonce = json.loads(json_of_header(header))["payload"]["authorization"]["nonce"]
    assert not stable.authorization_used(key.address, bytes.fromhex(nonce[2:]))


def signed_payment(key: LocalAccount, asset: str, required: httpx.Response) -> dict[str, str]:
    """The PAYMENT-SIGNATURE header the official client makes for a 402 answer."""
    assert required.status_code == 402, required.text
    client = payer_client(key, asset)
    http = x402HTTPClient(client)
    payment_required = http.get_payment_required_response(required.headers.get, required.json())
    payload = asyncio.run(client.create_payment_payload(payment_required))
    return dict(http.encode_payment_signature_header(payload))


def json_of_header(header: dict[str, str]) -> str:
    import base64

    (value,) = header.values()
    return base64.b64decode(value).decode()


def test_a_paid_request_no_provider_serves_is_refunded_whole(network: Network, x402_gateway: Gateway) -> None:
    # Prepare: a request pinned to an address that serves nothing (valid, so it is admitted and paid)
    key = fresh_payer(network)
    stable = contracts_of(network).stable
    url = f"{x402_gateway.url}/v1/chat/completions"
    body, pin = chat("Hello", 8), {PIN_HEADER: Account.create().address}
    header = signed_payment(key, stable.address, httpx.post(url, json=body, headers=pin, timeout=30))
    before = stable.balance_of(key.address)

    # Execute
    reply = httpx.post(url, json=body, headers={**pin, **header}, timeout=120)

    # Assert: settled, not served, all of it sent back
    assert reply.status_code == 503, reply.text
    x402 = reply.json()["allmende"]["x402"]
    assert int(x402["paid"]) == most(network, body) == int(x402["refunded"]) and x402["charged"] == "0"
    assert x402["settlement"] and x402["refund"]
    assert stable.balance_of(key.address) == before
