"""The x402 `session` scheme on a chain of its own (its clock is moved): the official SDK's
client with `SessionScheme` registered, the SDK's resource server and facilitator with the
gateway's session halves, and the gateway's statement routes in process. A provider
registered with an offer signs the receipts the gateway charges.

Money: the agent opens its channel on its first payment, signs vouchers only for charges it
checked, and on close the gateway redeems, releases the channel and sends the rest back in one
transaction (or, if it will not, the agent closes on chain and withdraws after the delay): its
dUSD falls by exactly the sum of the receipts. A later session of the same wallet pays from
the same channel with no transaction; two processes of one wallet pay from channels of their
own; the gateway redeems in batches; a session request pays the protocol fee once. Attacks:
a replayed payment, a payment for one body used on another, a voucher from another key, a
gateway that charges more than the receipt (or a receipt over the provider's offer), an
agent that stops paying, an old session's payment replayed in a new one, a gateway that
redeems more than the agent signed, an agent that closes with vouchers outstanding, a close
asked by another key, a second process taking a channel in use — each refused or settled exactly, and `exact`
refunds that fail are sent again."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from fastapi import FastAPI
from x402 import ResourceConfig, x402Client, x402ClientSync, x402FacilitatorSync, x402ResourceServerSync
from x402.schemas import AssetAmount, PaymentPayload, PaymentRequirements, ResourceInfo

from allmende.agent.transport import StreamingASGITransport, SyncBridge
from allmende.agent.x402 import Overcharged, Session, SessionScheme
from allmende.api.directory import Offer
from allmende.chain import ChainClient, Contracts, Deployment, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.chain.bindings import ROLE_PROVIDER
from allmende.chain.errors import ContractReverted
from allmende.core import Receipt, SignedReceipt, SignedVoucher, Voucher, request_cost, sign_receipt
from allmende.core.x402_session import SCHEME, SESSION_MODEL, close_headers, request_hash, statement_headers
from allmende.gateway.errors import GatewayError, openai_error
from allmende.gateway.x402_ledger import IN_USE, X402Ledger
from allmende.gateway.x402_payments import Refunds
from allmende.gateway.x402_sessions import SessionFacilitatorScheme, SessionGate, SessionServerScheme, mount_sessions
from allmende.payer.payments import ChannelPolicy, Payments
from allmende.payer.store import GatewayStore

MODEL = b"\x51" * 32
PRICE_IN, PRICE_OUT = 200_000, 400_000  # per 1M tokens
CREDIT = 50_000
STATEMENT = "http://gateway.test/v1/x402/sessions/"


@dataclass
class Chain:
    anvil: Anvil
    deployment: Deployment
    admin: Contracts
    gateway: Contracts
    provider_key: bytes

    def contracts(self, key: bytes) -> Contracts:
        return Contracts(ChainClient(self.anvil.url, key), self.deployment)


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    deployer, gateway, provider = devnet_accounts(3)
    with Anvil() as node:
        admin = ChainClient(node.url, deployer.key)
        deployment = deploy_all(admin, fund=[gateway.address, provider.address])
        as_provider = Contracts(ChainClient(node.url, provider.key), deployment)
        as_provider.token.approve(as_provider.registry.address)
        as_provider.registry.register(ROLE_PROVIDER, "http://provider.test", b"\x02" * 32, 1_000 * 10**18)
        as_provider.registry.set_offer(MODEL, PRICE_IN, PRICE_OUT)
        yield Chain(
            node,
            deployment,
            Contracts(admin, deployment),
            Contracts(ChainClient(node.url, gateway.key), deployment),
            provider.key,
        )


def fresh_key(chain: Chain, usd: int = 20 * 10**6) -> bytes:
    """A new key with dUSD and gas, nothing else."""
    key = Account.create()
    chain.admin.client.w3.provider.make_request("anvil_setBalance", [key.address, hex(10**19)])  # type: ignore[arg-type]
    chain.admin.stable.mint(key.address, usd)
    return bytes(key.key)


class Gateway:
    """The gateway's session halves in the SDK, its ledger and its statement routes."""

    def __init__(
        self,
        chain: Chain,
        tmp_path: Path,
        credit: int = CREDIT,
        redeem_above: int = 10**7,
        on_redeemed: Any = None,
        funding: Any = None,
        in_use: float = IN_USE,
    ) -> None:
        self.chain = chain
        self.ledger = X402Ledger(tmp_path / "x402.db", in_use)
        self.sessions = SessionGate(chain.gateway, self.ledger, redeem_above, on_redeemed, funding)
        self.receipts: list[SignedReceipt] = []
        self.network = f"eip155:{chain.gateway.client.chain_id}"
        facilitator = x402FacilitatorSync()
        facilitator.register([self.network], SessionFacilitatorScheme(chain.gateway, self.ledger, credit))
        self.server = x402ResourceServerSync(facilitator)
        self.server.register(self.network, SessionServerScheme())
        self.server.initialize()
        app = FastAPI()
        app.add_exception_handler(GatewayError, lambda _, exc: openai_error(exc))  # as create_app does

        async def sessions() -> SessionGate:
            return self.sessions

        mount_sessions(app, sessions)
        self.bridge = SyncBridge(StreamingASGITransport(app))

    def http(self, tamper: Any = None) -> httpx.Client:
        """The agent's HTTP to the statement routes (through `tamper`, a hostile middle)."""
        transport: httpx.BaseTransport = self.bridge if tamper is None else tamper(self.bridge)
        return httpx.Client(transport=transport)

    def requirements(self, body: bytes, most: int) -> PaymentRequirements:
        extra = {
            "channels": self.chain.gateway.channels.address,
            "statement": STATEMENT,
            "requestHash": "0x" + request_hash(body).hex(),
            "paymentFlow": "upfront",
        }
        price = AssetAmount(amount=str(most), asset=self.chain.gateway.stable.address, extra=extra)
        config = ResourceConfig(
            scheme=SCHEME, pay_to=self.chain.gateway.client.address, price=price, network=self.network
        )
        (requirements,) = self.server.build_payment_requirements(config)
        return requirements

    def pay(self, client: x402ClientSync, body: bytes, most: int) -> tuple[PaymentPayload, PaymentRequirements]:
        requirements = self.requirements(body, most)
        required = self.server.create_payment_required_response([requirements], ResourceInfo(url="test"))
        return client.create_payment_payload(required), requirements

    def admit(self, payload: PaymentPayload, requirements: PaymentRequirements) -> tuple[bool, str]:
        """verify then settle, as the gateway does before serving: (settled, why not)."""
        verified = self.server.verify_payment(payload, requirements)
        if not verified.is_valid:
            return False, str(verified.invalid_reason)
        settled = self.server.settle_payment(payload, requirements)
        return settled.success, str(settled.error_reason)

    def serve(self, payload: PaymentPayload, tokens_in: int, tokens_out: int, amount: int | None = None) -> int:
        """The provider answers: its signed receipt becomes the request's charge."""
        priced = request_cost(tokens_in, tokens_out, PRICE_IN, PRICE_OUT)
        provider = Account.from_key(self.chain.provider_key).address
        receipt = Receipt(
            os.urandom(32), MODEL, provider, os.urandom(32), os.urandom(32), os.urandom(32),
            tokens_in, tokens_out, priced if amount is None else amount, 1_700_000_000,
        )  # fmt: skip
        signed = sign_receipt(receipt, self.chain.gateway.registry.receipt_domain(), self.chain.provider_key)
        nonce = bytes.fromhex(payload.payload["nonce"][2:])
        self.ledger.charge(nonce, receipt.amount, json.dumps(signed.to_json()))
        self.receipts.append(signed)
        return receipt.amount


def agent_client(
    chain: Chain, gateway: Gateway, key: bytes, tamper: Any = None
) -> tuple[x402ClientSync, SessionScheme]:
    scheme = SessionScheme(key, network=chain.anvil.url, deposit=300_000, http=gateway.http(tamper))
    client = x402ClientSync()
    client.register("eip155:*", scheme)  # the one line
    client.set_spend_controls(False)  # dUSD is no default asset of the SDK
    return client, scheme


def test_a_session_pays_exactly_its_receipts_and_the_rest_comes_back(chain: Chain, tmp_path: Path) -> None:
    # Prepare
    gateway = Gateway(chain, tmp_path)
    key = fresh_key(chain)
    stable, channels = chain.gateway.stable, chain.gateway.channels
    address = Account.from_key(key).address
    before = stable.balance_of(address)
    client, scheme = agent_client(chain, gateway, key)

    # Execute: 12 requests (the deposit of 300,000 is topped up on the way), then close
    charged = 0
    for step in range(12):
        body = json.dumps({"step": step, "max_tokens": 64}).encode()
        payload, requirements = gateway.pay(client, body, 40_000)
        assert gateway.admit(payload, requirements) == (True, "None"), step
        charged += gateway.serve(payload, 100_000 + step, 20_000 + step)  # ~28,000 units each
    (channel_id,) = closing = scheme.close()

    # Assert: the vouchers paid exactly the receipts, which all verify
    state = channels.channel(channel_id)
    assert state.payer == address and state.provider == chain.gateway.client.address
    assert scheme.paid() == charged == state.spent > 0
    assert state.deposit > 300_000  # topped up by the agent's own key
    domain = chain.gateway.registry.receipt_domain()
    assert len(scheme.receipts()) == 12
    for receipt in scheme.receipts():
        receipt.verify(domain)
    # the unspent deposit came back at the (cooperative) close: the wallet paid the receipts, no
    # more, and nothing is left to withdraw
    assert stable.balance_of(address) == before - charged
    assert state.closes_at and state.deposit == state.spent
    assert scheme.withdraw(closing) == 0


def test_the_top_ups_double_with_the_spending_and_never_lock_past_the_cap(chain: Chain, tmp_path: Path) -> None:
    # Prepare: a first deposit of 100,000 and a cap of 350,000 unspent; requests of ~28,000
    gateway = Gateway(chain, tmp_path)
    key = fresh_key(chain)
    scheme = SessionScheme(key, network=chain.anvil.url, deposit=100_000, max_locked=350_000, http=gateway.http())
    client = _client_of(scheme)
    channels = chain.gateway.channels

    # Execute: 40 requests, the channel's deposit and what is owed on it read after each payment
    top_ups, unspent_after = [], []
    deposit = 0
    for step in range(40):
        payload, requirements = gateway.pay(client, json.dumps({"step": step}).encode(), 40_000)
        assert gateway.admit(payload, requirements) == (True, "None"), step
        session = scheme.sessions[chain.gateway.client.address.lower()]
        now = channels.channel(session.channel_id).deposit
        if deposit and now > deposit:
            top_ups.append(now - deposit)
            unspent_after.append(now - session.paid - sum(session.unsettled.values()))
        deposit = now
        gateway.serve(payload, 100_000, 20_000)  # 28,000 units each
    (channel_id,) = scheme.close()

    # Assert: each top-up doubled the channel (100,000, then 200,000: what it had taken so far)
    # until the cap held it (the 3rd and later: 350,000 less what was still unspent); never more
    # than 350,000 unspent after a top-up; the 1.12M spent in 5 top-ups (a flat 100,000: 11)
    assert top_ups == [100_000, 200_000, 314_000, 336_000, 336_000], top_ups
    assert max(unspent_after) <= 350_000, unspent_after
    assert scheme.paid() == channels.channel(channel_id).spent == 40 * 28_000


def test_a_replayed_session_payment_is_refused(chain: Chain, tmp_path: Path) -> None:
    gateway = Gateway(chain, tmp_path)
    client, _ = agent_client(chain, gateway, fresh_key(chain))
    body = b'{"messages": "hi"}'
    payload, requirements = gateway.pay(client, body, 10_000)
    assert gateway.admit(payload, requirements) == (True, "None")

    again = gateway.admit(payload, requirements)

    assert again == (False, "nonce_already_used")


def test_a_payment_for_one_body_buys_no_other(chain: Chain, tmp_path: Path) -> None:
    # Prepare: a payment for a cheap request, the same most offered for a dearer body
    gateway = Gateway(chain, tmp_path)
    client, _ = agent_client(chain, gateway, fresh_key(chain))
    payload, _ = gateway.pay(client, b'{"max_tokens": 4}', 10_000)
    dearer = gateway.requirements(b'{"max_tokens": 4000}', 10_000)

    # Execute: the SDK matches the payment against the dearer request's requirements
    matched = gateway.server.find_matching_requirements([dearer], payload)
    # ... and a payload rewritten to claim them is checked against the signature
    forged = payload.model_copy(update={"accepted": dearer})
    admitted = gateway.admit(forged, dearer)

    # Assert
    assert matched is None
    assert admitted == (False, "invalid_session_signature")


def test_a_session_voucher_from_another_key_is_refused(chain: Chain, tmp_path: Path) -> None:
    # Prepare: the agent's channel exists (its first payment opened it)
    gateway = Gateway(chain, tmp_path)
    client, scheme = agent_client(chain, gateway, fresh_key(chain))
    body = b'{"hello": 1}'
    payload, requirements = gateway.pay(client, body, 10_000)
    assert gateway.admit(payload, requirements)[0]
    # an outsider signs a payment of its own naming the agent's (public) channel
    outsider = SessionScheme(fresh_key(chain), network=chain.anvil.url, http=gateway.http())
    (session,) = scheme.sessions.values()
    outsider.sessions[chain.gateway.client.address.lower()] = Session(session.channel_id, 10**6, session.statement)
    outsider._read_statement = lambda session: None  # type: ignore[method-assign]  # it is the payer's to read
    stolen, _ = gateway.pay(_client_of(outsider), body, 10_000)

    # Execute
    admitted = gateway.admit(stolen, requirements)

    # Assert
    assert stolen.payload["channelId"] == "0x" + session.channel_id.hex()
    assert admitted == (False, "invalid_session_signature")


def _client_of(scheme: SessionScheme) -> x402ClientSync:
    client = x402ClientSync()
    client.register("eip155:*", scheme)
    client.set_spend_controls(False)
    return client


def overcharge(bridge: httpx.BaseTransport) -> httpx.BaseTransport:
    """A gateway whose statement charges one unit more than each receipt."""

    class Overcharging(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            reply = bridge.handle_request(request)
            if request.method != "GET":
                return reply
            statement = json.loads(reply.read())
            for line in statement["charges"]:
                line["amount"] = str(int(line["amount"]) + 1)
            return httpx.Response(200, json=statement)

    return Overcharging()


@pytest.mark.parametrize(
    ("tamper", "receipt_over_offer", "why"),
    [(overcharge, False, "charged .* for a receipt of"), (None, True, "at the provider's offer")],
    ids=["charge-above-the-receipt", "receipt-above-the-offer"],
)
def test_a_gateway_that_charges_more_than_the_receipt_gets_no_voucher(
    chain: Chain, tmp_path: Path, tamper: Any, receipt_over_offer: bool, why: str
) -> None:
    # Prepare: one request served and charged
    gateway = Gateway(chain, tmp_path)
    client, scheme = agent_client(chain, gateway, fresh_key(chain), tamper)
    payload, requirements = gateway.pay(client, b'{"n": 1}', 20_000)
    assert gateway.admit(payload, requirements)[0]
    fair = request_cost(10, 10, PRICE_IN, PRICE_OUT)
    gateway.serve(payload, 10, 10, amount=fair + 1 if receipt_over_offer else None)

    # Execute: the next payment reads the statement first
    with pytest.raises(Exception, match=why) as refused:
        gateway.pay(client, b'{"n": 2}', 20_000)

    # Assert: nothing signed for it; the agent still owes nothing
    assert isinstance(refused.value, Overcharged) or isinstance(refused.value.__cause__, Overcharged)
    assert scheme.paid() == 0


def test_an_agent_that_stops_paying_is_refused_past_its_credit(chain: Chain, tmp_path: Path) -> None:
    # Prepare: an agent whose vouchers never rise (it ignores the statement)
    gateway = Gateway(chain, tmp_path, credit=30_000)
    client, scheme = agent_client(chain, gateway, fresh_key(chain))
    scheme._read_statement = lambda session: None  # type: ignore[method-assign]
    first, requirements = gateway.pay(client, b'{"n": 1}', 20_000)
    assert gateway.admit(first, requirements)[0]
    gateway.serve(first, 1_000, 40)  # 216 units unpaid after this

    # Execute: its second request would leave more than the credit unpaid
    second, requirements = gateway.pay(client, b'{"n": 2}', 30_000)

    # Assert
    assert gateway.admit(second, requirements) == (False, "voucher_too_low")


def test_an_exact_refund_that_failed_is_sent_again_once(chain: Chain, tmp_path: Path) -> None:
    # Prepare: a gateway wallet too short to refund (its dUSD went into channel deposits)
    key = fresh_key(chain, usd=1_000)
    wallet = chain.contracts(key)
    ledger = X402Ledger(tmp_path / "x402.db")
    refunds = Refunds(ledger, wallet.stable)
    payer = Account.create().address

    # Execute: the refund fails, the wallet is refilled, the upkeep sends it, and again
    failed = refunds.send("0xsettlement", payer, 5_000)
    chain.admin.stable.mint(wallet.client.address, 10_000)
    sent = refunds.retry()
    again = refunds.retry()

    # Assert: the payer got it exactly once
    assert failed is None
    assert len(sent) == 1 and again == []
    assert wallet.stable.balance_of(payer) == 5_000
    assert ledger.refunds_owed() == []


def test_the_session_routes_refuse_bad_input_in_openai_shape(chain: Chain, tmp_path: Path) -> None:
    gateway = Gateway(chain, tmp_path)
    http = gateway.http()

    bad_id = http.get(STATEMENT + "0x1234")
    bad_voucher = http.post(STATEMENT + "0x" + "11" * 32 + "/voucher", json={"cumulative": "x"})
    unknown = http.post(
        STATEMENT + "0x" + "11" * 32 + "/voucher", json={"cumulative": "5", "signature": "0x" + "00" * 65}
    )

    for reply in (bad_id, bad_voucher, unknown):
        assert reply.status_code == 400, reply.text
        assert set(reply.json()["error"]) >= {"message", "type", "code"}


def test_a_restarted_agent_keeps_its_session_and_pays_every_receipt(chain: Chain, tmp_path: Path) -> None:
    # Prepare: two requests paid and served, one paid and not yet charged, then the agent stops
    gateway = Gateway(chain, tmp_path)
    key = fresh_key(chain)
    state = tmp_path / "agent" / "sessions.json"
    first = SessionScheme(key, network=chain.anvil.url, deposit=300_000, http=gateway.http(), state=state)
    charged = 0
    for step in range(3):
        payload, requirements = gateway.pay(_client_of(first), json.dumps({"step": step}).encode(), 40_000)
        assert gateway.admit(payload, requirements)[0]
        if step < 2:
            charged += gateway.serve(payload, 1_000, 100)
    charged += gateway.serve(payload, 2_000, 200)  # answered while the agent was down

    # Execute: a new process with the same state file pays on and closes
    again = SessionScheme(key, network=chain.anvil.url, deposit=300_000, http=gateway.http(), state=state)
    payload, requirements = gateway.pay(_client_of(again), b'{"step": 3}', 40_000)
    assert gateway.admit(payload, requirements)[0]
    charged += gateway.serve(payload, 1_000, 100)
    closing = again.close()

    # Assert: one channel for all four requests, which paid exactly their receipts
    (channel_id,) = closing
    assert [s.channel_id for s in first.sessions.values()] == [channel_id]
    assert again.paid() == charged == chain.gateway.channels.channel(channel_id).spent


def test_the_gateway_redeems_closing_sessions_and_drops_closed_ones(chain: Chain, tmp_path: Path) -> None:
    # Prepare: three sessions, each with a voucher for one charged request
    gateway = Gateway(chain, tmp_path)
    agents = []
    for _ in range(3):
        client, scheme = agent_client(chain, gateway, fresh_key(chain))
        payload, requirements = gateway.pay(client, b'{"n": 1}', 20_000)
        assert gateway.admit(payload, requirements)[0]
        gateway.serve(payload, 1_000, 100)
        payload, requirements = gateway.pay(client, b'{"n": 2}', 20_000)  # its voucher pays the first
        assert gateway.admit(payload, requirements)[0]
        (session,) = scheme.sessions.values()
        agents.append((scheme, session.channel_id))
    (active, _), (closing, closing_id), (closed, closed_id) = agents
    channels = chain.gateway.channels
    closed.contracts.channels.request_close(closed_id)
    chain.admin.client.increase_time(chain.admin.params.get("channel_close_delay") + 1)
    closing.contracts.channels.request_close(closing_id)

    # Execute: an upkeep's redeem, with a threshold none of them reaches
    sent = gateway.sessions.redeem_due(above=10**9)

    # Assert: the closing session was redeemed, the active one left for later, the closed one
    # dropped without reverting the batch
    assert len(sent) == 1
    assert channels.channel(closing_id).spent == closing.paid() > 0
    assert channels.channel(agents[0][1]).spent == 0 and active.paid() > 0
    assert channels.channel(closed_id).spent == 0
    assert gateway.sessions.redeem_due(above=10**9) == []  # nothing due twice


def test_a_session_request_pays_the_protocol_fee_once(chain: Chain, tmp_path: Path) -> None:
    """Agent → gateway (session) → provider (the gateway's real `Payments`): the treasury gets
    exactly what one payment straight to the provider pays it (it was 2 %: the session's own
    redeem took the fee too); the gateway neither keeps nor loses a unit."""
    # Prepare: the gateway pays the provider for each request through its own channel
    gateway_key = devnet_accounts(3)[1].key
    payments = Payments(GatewayStore(tmp_path / "gateway.db"), chain.gateway, gateway_key, ChannelPolicy(2_000_000))
    gateway = Gateway(chain, tmp_path, funding=payments)
    client, scheme = agent_client(chain, gateway, fresh_key(chain))
    channels, as_provider = chain.gateway.channels, chain.contracts(chain.provider_key)
    provider, operator, treasury = as_provider.client.address, chain.gateway.client.address, channels.treasury()
    offer = Offer(MODEL, "0x" + MODEL.hex(), "generate", PRICE_IN, PRICE_OUT, 4096)
    fee_bps = chain.admin.params.get("protocol_fee_bps")
    before = {
        "treasury": channels.earnings(treasury),
        "provider": channels.earnings(provider),
        "relay": channels.relay_balance(operator),
        "tokens": chain.gateway.stable.balance_of(operator),
    }
    provider_channel = payments.channel_for(provider)
    charged = 0
    for step in range(3):
        payload, requirements = gateway.pay(client, json.dumps({"step": step}).encode(), 20_000)
        assert gateway.admit(payload, requirements)[0]
        charged += gateway.serve(payload, 1_000 + step, 100)
        payments.settle(provider, provider_channel, offer, gateway.receipts[-1], None)

    # Execute: the provider redeems the gateway's voucher; the agent closes (the gateway redeems
    # the session's last voucher into its provider channel and releases the session); the
    # gateway closes its provider channel and takes its deposit back
    voucher = payments.voucher(provider_channel, MODEL)
    assert voucher is not None
    as_provider.channels.redeem([voucher])
    scheme.close()
    relayed = channels.relayed(provider_channel)
    channels.request_close(provider_channel)
    chain.admin.client.increase_time(chain.admin.params.get("channel_close_delay"))
    channels.withdraw(provider_channel)

    # Assert: one fee, on the provider's redeem; the session's redeem paid none
    fee = charged * fee_bps // 10_000
    assert fee_bps > 0 and fee > 0
    assert channels.earnings(treasury) - before["treasury"] == fee
    assert channels.earnings(provider) - before["provider"] == charged - fee
    assert relayed == charged  # the session's payment backs what the gateway paid
    assert channels.relay_balance(operator) == before["relay"]
    assert chain.gateway.stable.balance_of(operator) == before["tokens"]  # every token of its deposit back


def test_a_later_session_of_the_same_wallet_reuses_its_channel_with_no_transaction(
    chain: Chain, tmp_path: Path
) -> None:
    # Prepare: a first session (no state file) pays two requests and ends
    gateway = Gateway(chain, tmp_path)
    key = fresh_key(chain)
    address = Account.from_key(key).address
    w3, stable = chain.admin.client.w3, chain.gateway.stable
    wallet = stable.balance_of(address)
    first = SessionScheme(key, network=chain.anvil.url, deposit=300_000, http=gateway.http())
    charged = 0
    for step in range(2):
        payload, requirements = gateway.pay(_client_of(first), json.dumps({"a": step}).encode(), 40_000)
        assert gateway.admit(payload, requirements)[0]
        charged += gateway.serve(payload, 100_000, 20_000)
    first.end()
    transactions = w3.eth.get_transaction_count(address)  # type: ignore[arg-type]

    # Execute: another process of the same wallet, with no state, runs a session of three
    second = SessionScheme(key, network=chain.anvil.url, deposit=300_000, http=gateway.http())
    for step in range(3):
        payload, requirements = gateway.pay(_client_of(second), json.dumps({"b": step}).encode(), 40_000)
        assert gateway.admit(payload, requirements)[0]
        charged += gateway.serve(payload, 100_000, 20_000)
    second.end()

    # Assert: the same channel, no transaction of the agent's, a new window at the gateway; the
    # vouchers pay every receipt of both sessions, once
    (one,), (two,) = first.sessions.values(), second.sessions.values()
    assert one.channel_id == two.channel_id
    assert w3.eth.get_transaction_count(address) == transactions  # type: ignore[arg-type]
    assert second.paid() == charged == gateway.ledger.session(one.channel_id).cumulative  # type: ignore[union-attr]
    windows = gateway.ledger._db.execute("SELECT ended FROM windows WHERE channel_id=?", (one.channel_id,))
    assert sorted(ended for (ended,) in windows.fetchall()) == [1, 1]  # two windows, each ended by its end()
    # and the channel's close returns the rest: the wallet paid the five receipts, no more
    closing = second.close()
    chain.admin.client.increase_time(chain.admin.params.get("channel_close_delay"))
    second.withdraw(closing)
    assert stable.balance_of(address) == wallet - charged


def test_an_old_sessions_payment_replayed_in_a_new_session_is_refused(chain: Chain, tmp_path: Path) -> None:
    # Prepare: a payment of session 1, admitted and served; session 2 begins on the same channel
    gateway = Gateway(chain, tmp_path)
    client, scheme = agent_client(chain, gateway, fresh_key(chain))
    old, old_requirements = gateway.pay(client, b'{"n": 1}', 20_000)
    assert gateway.admit(old, old_requirements)[0]
    charged = gateway.serve(old, 1_000, 100)
    scheme.end()
    new, requirements = gateway.pay(client, b'{"n": 2}', 20_000)
    assert gateway.admit(new, requirements)[0]
    assert new.payload["sessionId"] != old.payload["sessionId"]
    (session,) = scheme.sessions.values()
    state = gateway.ledger.session(session.channel_id)

    # Execute: the old payment replayed as it was, and relabelled into the new session
    replayed = gateway.admit(old, old_requirements)
    relabelled = old.model_copy(update={"payload": {**old.payload, "sessionId": new.payload["sessionId"]}})
    moved = gateway.admit(relabelled, old_requirements)

    # Assert: refused; nothing held or charged for them, the channel's voucher not lowered
    assert replayed == (False, "session_ended")
    assert moved == (False, "invalid_session_signature")
    assert gateway.ledger.session(session.channel_id) == state
    assert state is not None and state.cumulative == charged == scheme.paid()


def test_a_gateway_cannot_redeem_more_than_the_agent_signed(chain: Chain, tmp_path: Path) -> None:
    # Prepare: two requests charged; the session ends, its voucher held by the gateway unredeemed
    gateway = Gateway(chain, tmp_path)
    client, scheme = agent_client(chain, gateway, fresh_key(chain))
    for step in range(2):
        payload, requirements = gateway.pay(client, json.dumps({"s": step}).encode(), 20_000)
        assert gateway.admit(payload, requirements)[0]
        gateway.serve(payload, 1_000, 100)
    signed = scheme.end()
    (session,) = scheme.sessions.values()
    state = gateway.ledger.session(session.channel_id)
    assert state is not None and state.voucher is not None and state.redeemed == 0
    channels = chain.gateway.channels

    # Execute: a voucher for one unit more under the agent's signature; one the gateway made up
    # on its own route; then the honest redeem, and the same voucher again
    with pytest.raises(ContractReverted, match="bad signature"):
        channels.redeem([SignedVoucher(Voucher(session.channel_id, SESSION_MODEL, signed + 1), state.voucher)])
    above = gateway.http().post(
        session.statement + "/voucher", json={"cumulative": str(signed + 1), "signature": "0x" + state.voucher.hex()}
    )
    gateway.sessions.redeem_due(above=0)
    with pytest.raises(ContractReverted, match="not above last"):
        channels.redeem([SignedVoucher(Voucher(session.channel_id, SESSION_MODEL, signed), state.voucher)])

    # Assert: the channel paid exactly what the agent signed
    assert above.status_code == 400
    assert channels.channel(session.channel_id).spent == signed == scheme.paid() > 0


def test_an_agent_that_closes_with_vouchers_outstanding_pays_them_and_gets_the_rest(
    chain: Chain, tmp_path: Path
) -> None:
    # Prepare: three requests; the third payment's voucher pays the first two (held by the
    # gateway, not redeemed: below its threshold), the third's charge is vouched for by nothing
    gateway = Gateway(chain, tmp_path)
    key = fresh_key(chain)
    client, scheme = agent_client(chain, gateway, key)
    charges = []
    for step in range(3):
        payload, requirements = gateway.pay(client, json.dumps({"c": step}).encode(), 20_000)
        assert gateway.admit(payload, requirements)[0]
        charges.append(gateway.serve(payload, 1_000, 100 + step))
    (session,) = scheme.sessions.values()
    stable, channels = chain.gateway.stable, chain.gateway.channels
    wallet, deposit = stable.balance_of(scheme.address), channels.channel(session.channel_id).deposit

    # Execute: the agent asks the channel to close on chain, sending no last voucher; the
    # gateway's upkeep sees it closing; after the delay the agent withdraws
    scheme.contracts.channels.request_close(session.channel_id)
    with pytest.raises(ContractReverted, match="not closed yet"):
        scheme.contracts.channels.withdraw(session.channel_id)
    redeemed = gateway.sessions.redeem_due(above=10**12)
    chain.admin.client.increase_time(chain.admin.params.get("channel_close_delay"))
    back = scheme.withdraw([session.channel_id])

    # Assert: the gateway redeemed exactly the voucher it held (the first two receipts), the
    # agent got the rest of its deposit; the unvouched third is the gateway's loss (≤ credit)
    assert len(redeemed) == 1
    assert channels.channel(session.channel_id).spent == charges[0] + charges[1]
    assert back == deposit - charges[0] - charges[1]
    assert stable.balance_of(scheme.address) == wallet + back
    assert charges[2] <= CREDIT


def test_an_expired_session_gives_the_deposit_back_with_no_transaction_of_the_agents(
    chain: Chain, tmp_path: Path
) -> None:
    # Prepare: a session of two requests ends; the agent is not heard of again
    gateway = Gateway(chain, tmp_path)
    key = fresh_key(chain)
    client, scheme = agent_client(chain, gateway, key)
    stable, channels, w3 = chain.gateway.stable, chain.gateway.channels, chain.admin.client.w3
    wallet = stable.balance_of(scheme.address)
    charged = 0
    for step in range(2):
        payload, requirements = gateway.pay(client, json.dumps({"e": step}).encode(), 20_000)
        assert gateway.admit(payload, requirements)[0]
        charged += gateway.serve(payload, 1_000, 100)
    scheme.end()
    (session,) = scheme.sessions.values()
    transactions = w3.eth.get_transaction_count(scheme.address)  # type: ignore[arg-type]

    # Execute: an hour's expiry, looked at now (nothing) and an hour and a second later
    early = gateway.sessions.expire(idle=3_600)
    expired = gateway.sessions.expire(idle=3_600, now=time.time() + 3_601)
    again = gateway.sessions.expire(idle=3_600, now=time.time() + 7_200)

    # Assert: the voucher redeemed, the channel released, the rest in the agent's wallet; it
    # sent nothing for it
    assert early == [] and expired == [session.channel_id] and again == []
    assert channels.channel(session.channel_id).spent == charged == scheme.paid()
    assert stable.balance_of(scheme.address) == wallet - charged
    assert w3.eth.get_transaction_count(scheme.address) == transactions  # type: ignore[arg-type]
    # the agent's next session sees its channel closed and opens another
    payload, requirements = gateway.pay(client, b'{"e": "later"}', 20_000)
    assert gateway.admit(payload, requirements)[0]
    (later,) = scheme.sessions.values()
    assert later.channel_id != session.channel_id


def test_a_sessions_vouchers_are_redeemed_in_batches(chain: Chain, tmp_path: Path) -> None:
    # Prepare: a gateway that redeems once more than 60,000 units are unredeemed
    gateway = Gateway(chain, tmp_path, redeem_above=60_000)
    client, scheme = agent_client(chain, gateway, fresh_key(chain))
    channels = chain.gateway.channels

    def session_of(requests: int) -> None:
        for _ in range(requests):
            payload, requirements = gateway.pay(client, os.urandom(8).hex().encode(), 40_000)
            assert gateway.admit(payload, requirements)[0]
            gateway.serve(payload, 100_000, 20_000)  # 28,000 units
        scheme.end()

    # Execute: a session of two (56,000: held), then one of one (84,000: redeemed)
    session_of(2)
    (session,) = scheme.sessions.values()
    after_first = channels.channel(session.channel_id).spent
    session_of(1)

    # Assert
    assert after_first == 0
    assert channels.channel(session.channel_id).spent == 84_000 == scheme.paid()


def test_a_sessions_statement_is_read_by_its_payer_only(chain: Chain, tmp_path: Path) -> None:
    # Prepare: one request served and charged on the agent's session
    gateway = Gateway(chain, tmp_path)
    key = fresh_key(chain)
    client, scheme = agent_client(chain, gateway, key)
    payload, requirements = gateway.pay(client, b'{"n": 1}', 20_000)
    assert gateway.admit(payload, requirements)[0]
    gateway.serve(payload, 1_000, 100)
    (session,) = scheme.sessions.values()
    url, channel, domain = session.statement, session.channel_id, chain.gateway.channels.voucher_domain()
    now, outsider = int(time.time()), bytes(Account.create().key)
    http = gateway.http()

    # Execute: an adversary who knows the (public) channel id reads without a signature, with
    # its own key's, with the payer's read signature of an hour ago, and for an unknown channel
    anonymous = http.get(url)
    forged = http.get(url, headers=statement_headers(channel, now, domain, outsider))
    replayed = http.get(url, headers=statement_headers(channel, now - 3_600, domain, key))
    unknown = http.get(STATEMENT + "0x" + "22" * 32, headers=statement_headers(b"\x22" * 32, now, domain, outsider))
    own = http.get(url, headers=statement_headers(channel, now, domain, key))

    # Assert: refused in OpenAI's shape, nothing of the statement shown; the payer reads its charge
    for reply in (anonymous, forged, replayed, unknown):
        assert reply.status_code == 401, reply.text
        assert reply.json()["error"]["code"] == "invalid_session_signature"
        assert "charges" not in reply.json()
    assert own.status_code == 200 and len(own.json()["charges"]) == 1


def test_an_async_client_does_the_sessions_chain_work_off_its_event_loop(chain: Chain, tmp_path: Path) -> None:
    # Prepare: the SDK's async client, the scheme registered with its before-payment hook;
    # the agent's channel transactions and statement reads note the thread they run on
    gateway = Gateway(chain, tmp_path)
    scheme = SessionScheme(fresh_key(chain), network=chain.anvil.url, deposit=300_000, http=gateway.http())
    client = x402Client()
    scheme.register_with(client)
    client.set_spend_controls(False)
    threads: list[tuple[str, int]] = []
    for name, owner in (("open", scheme.contracts.channels), ("_read_statement", scheme)):
        real = getattr(owner, name)
        setattr(owner, name, lambda *a, real=real, name=name: threads.append((name, threading.get_ident())) or real(*a))
    paid = []

    async def two_payments() -> int:
        for step in range(2):
            requirements = gateway.requirements(json.dumps({"step": step}).encode(), 20_000)
            required = gateway.server.create_payment_required_response([requirements], ResourceInfo(url="test"))
            payload = await client.create_payment_payload(required)
            paid.append(gateway.admit(payload, requirements))
            gateway.serve(payload, 1_000, 100)
        return threading.get_ident()

    # Execute
    loop_thread = asyncio.run(two_payments())

    # Assert: both payments admitted; the open and every statement read ran on another thread
    assert paid == [(True, "None"), (True, "None")]
    assert [name for name, _ in threads] == ["open", "_read_statement", "_read_statement"]
    assert all(thread != loop_thread for _, thread in threads)
    assert scheme.paid() > 0  # the second payment's voucher pays the first request's charge


def test_a_cooperative_close_gives_the_rest_back_at_once_with_no_transaction_of_the_agents(
    chain: Chain, tmp_path: Path
) -> None:
    # Prepare: a session of three requests, the gateway funding its provider channel from them
    gateway_key = devnet_accounts(3)[1].key
    payments = Payments(GatewayStore(tmp_path / "gateway.db"), chain.gateway, gateway_key, ChannelPolicy(2_000_000))
    provider = Account.from_key(chain.provider_key).address
    provider_channel = payments.channel_for(provider)
    offer = Offer(MODEL, "0x" + MODEL.hex(), "generate", PRICE_IN, PRICE_OUT, 4096)
    gateway = Gateway(chain, tmp_path, funding=payments)
    key = fresh_key(chain)
    client, scheme = agent_client(chain, gateway, key)
    charged = 0
    for step in range(3):
        payload, requirements = gateway.pay(client, json.dumps({"coop": step}).encode(), 20_000)
        assert gateway.admit(payload, requirements)[0]
        charged += gateway.serve(payload, 1_000, 100 + step)
        payments.settle(provider, provider_channel, offer, gateway.receipts[-1], None)  # the gateway pays
    (session,) = scheme.sessions.values()
    stable, channels, w3 = chain.gateway.stable, chain.gateway.channels, chain.admin.client.w3
    wallet = stable.balance_of(scheme.address)
    deposit = channels.channel(session.channel_id).deposit
    transactions = w3.eth.get_transaction_count(scheme.address)  # type: ignore[arg-type]
    relayed = channels.relayed(provider_channel)

    # Execute: the agent closes; no clock moved
    (closed,) = scheme.close()

    # Assert: the channel paid exactly the receipts, closed now, and the rest is in the wallet;
    # the agent sent no transaction; the redeem put what it paid into the provider channel
    record = channels.channel(closed)
    assert closed == session.channel_id
    assert record.spent == record.deposit == charged == scheme.paid()
    assert stable.balance_of(scheme.address) == wallet + deposit - charged
    assert w3.eth.get_transaction_count(scheme.address) == transactions  # type: ignore[arg-type]
    assert channels.relayed(provider_channel) - relayed == charged
    assert scheme.withdraw([closed]) == 0


def test_a_close_request_not_signed_by_the_payer_is_refused(chain: Chain, tmp_path: Path) -> None:
    # Prepare: one request served and charged
    gateway = Gateway(chain, tmp_path)
    key = fresh_key(chain)
    client, scheme = agent_client(chain, gateway, key)
    payload, requirements = gateway.pay(client, b'{"close": 1}', 20_000)
    assert gateway.admit(payload, requirements)[0]
    gateway.serve(payload, 1_000, 100)
    (session,) = scheme.sessions.values()
    url, channel, domain = session.statement + "/close", session.channel_id, chain.gateway.channels.voucher_domain()
    now, http = int(time.time()), gateway.http()

    # Execute: an adversary who knows the (public) channel id asks the gateway to close it: with
    # no signature, its own key's, the payer's statement-read signature, an hour-old one
    replies = [
        http.post(url, json={}),
        http.post(url, json={}, headers=close_headers(channel, now, domain, bytes(Account.create().key))),
        http.post(url, json={}, headers=statement_headers(channel, now, domain, key)),
        http.post(url, json={}, headers=close_headers(channel, now - 3_600, domain, key)),
    ]

    # Assert: all refused in OpenAI's shape; the channel is still open and the session pays on
    for reply in replies:
        assert reply.status_code == 401, reply.text
        assert reply.json()["error"]["code"] == "invalid_session_signature"
    assert chain.gateway.channels.channel(channel).closes_at == 0
    payload, requirements = gateway.pay(client, b'{"close": 2}', 20_000)
    assert gateway.admit(payload, requirements)[0]


def test_an_agent_whose_gateway_will_not_close_closes_on_chain(chain: Chain, tmp_path: Path) -> None:
    # Prepare: a gateway whose close route fails (a hostile or broken middle), two requests
    def no_close(bridge: httpx.BaseTransport) -> httpx.BaseTransport:
        class NoClose(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                if request.url.path.endswith("/close"):
                    return httpx.Response(503, json={"error": "down"})
                return bridge.handle_request(request)

        return NoClose()

    gateway = Gateway(chain, tmp_path)
    client, scheme = agent_client(chain, gateway, fresh_key(chain), no_close)
    charged = 0
    for step in range(2):
        payload, requirements = gateway.pay(client, json.dumps({"nc": step}).encode(), 20_000)
        assert gateway.admit(payload, requirements)[0]
        charged += gateway.serve(payload, 1_000, 100)
    stable, channels = chain.gateway.stable, chain.gateway.channels
    wallet = stable.balance_of(scheme.address)

    # Execute: close (on chain, the last voucher sent: the gateway redeems it at once), then
    # withdraw after the close delay
    (closed,) = scheme.close()
    record = channels.channel(closed)
    chain.admin.client.increase_time(chain.admin.params.get("channel_close_delay"))
    back = scheme.withdraw([closed])

    # Assert: the receipts paid, the rest back after the delay, as before cooperative closes
    assert record.closes_at > 0 and record.spent == charged == scheme.paid()
    assert back == record.deposit - charged > 0
    assert stable.balance_of(scheme.address) == wallet + back


def processes_of_one_wallet(
    chain: Chain, gateway: Gateway, n: int
) -> tuple[str, int, list[tuple[x402ClientSync, SessionScheme]]]:
    """A fresh wallet's address, its dUSD, and `n` processes of it (a client and a scheme each,
    no shared state) paying `gateway`."""
    key = fresh_key(chain)
    address = Account.from_key(key).address
    processes = []
    for _ in range(n):
        scheme = SessionScheme(key, network=chain.anvil.url, deposit=300_000, http=gateway.http())
        processes.append((_client_of(scheme), scheme))
    return address, chain.gateway.stable.balance_of(address), processes


def test_two_processes_of_one_wallet_pay_from_channels_of_their_own(chain: Chain, tmp_path: Path) -> None:
    """Two processes with the same key and no shared state paying one gateway: before, the
    second's first payment ended the first's session (`session_ended` from then on), and
    their cumulative vouchers, each counting only its own requests, fought over one channel.
    Now the second passes the first's channel over (its statement says `in_use`) and opens
    its own; a process that loses a race to a channel is refused (`channel_in_use`), never the
    winner, and takes a channel of its own at its next payment."""
    # Prepare: process A pays a request on the channel it opens
    gateway = Gateway(chain, tmp_path)
    address, wallet, ((a_client, a), (b_client, b), (c_client, c)) = processes_of_one_wallet(chain, gateway, 3)
    stable, channels = chain.gateway.stable, chain.gateway.channels
    charged = 0
    payload, requirements = gateway.pay(a_client, b'{"a": 0}', 40_000)
    assert gateway.admit(payload, requirements)[0]
    charged += gateway.serve(payload, 1_000, 100)

    # Execute: B starts while A's session is live; then C and A race to A's channel after A's
    # session has ended (C signs its first payment on it before A's next is admitted);
    # everybody pays on, alternately
    results = []
    payload, requirements = gateway.pay(b_client, b'{"b": 0}', 40_000)
    results.append(("b0", gateway.admit(payload, requirements)))
    charged += gateway.serve(payload, 1_000, 100) if results[-1][1][0] else 0
    a.end()
    c_payload, c_requirements = gateway.pay(c_client, b'{"c": 0}', 40_000)
    a_payload, a_requirements = gateway.pay(a_client, b'{"a": 1}', 40_000)
    results.append(("a1", gateway.admit(a_payload, a_requirements)))
    charged += gateway.serve(a_payload, 1_000, 100) if results[-1][1][0] else 0
    results.append(("c0", gateway.admit(c_payload, c_requirements)))  # lost the race
    for step in range(1, 3):
        for name, client in (("a", a_client), ("b", b_client), ("c", c_client)):
            payload, requirements = gateway.pay(client, json.dumps({name: step + 1}).encode(), 40_000)
            results.append((f"{name}{step + 1}", gateway.admit(payload, requirements)))
            charged += gateway.serve(payload, 1_000, 100) if results[-1][1][0] else 0

    # Assert: every payment admitted but the race loser's first, refused as channel_in_use (not
    # the winner's); three channels, one per process; each channel's vouchers pay exactly its
    # process's receipts, and the three together every receipt, once
    refused = [(name, why) for name, (ok, why) in results if not ok]
    assert refused == [("c0", "channel_in_use")], results
    own = {s.channel_id: s for scheme in (a, b, c) for s in scheme.sessions.values()}
    assert len(own) == 3
    for scheme in (a, b, c):
        scheme.end()
    closed = [channel_id for scheme in (a, b, c) for channel_id in scheme.close()]
    assert sorted(closed) == sorted(own)
    for channel_id, session in own.items():
        assert channels.channel(channel_id).spent == session.paid > 0
    assert sum(channels.channel(channel_id).spent for channel_id in closed) == charged
    assert stable.balance_of(address) == wallet - charged


def test_a_process_whose_quiet_channel_another_took_up_pays_on_from_the_wallets_voucher(
    chain: Chain, tmp_path: Path
) -> None:
    """Process A of a wallet goes quiet with its last answer not yet vouched for; process B of
    the same wallet (no shared state) finds A's channel no longer in use, takes it up, pays two
    requests and ends its session; then A comes back. Before, A read B's charges as charges for
    no request of its own and raised `Overcharged`: a wallet that had paid every receipt
    stopped paying. Now A pays on from the wallet's voucher on that channel, checks and pays
    its own last answer, and the channel pays exactly every receipt, once."""
    # Prepare: a gateway whose sessions are quiet at once (in use 0 s: anyone may take a channel
    # up, as after 600 s), and A paying two requests on the channel it opens
    gateway = Gateway(chain, tmp_path, in_use=0.0)
    address, wallet, ((a_client, a), (b_client, b)) = processes_of_one_wallet(chain, gateway, 2)
    stable, channels = chain.gateway.stable, chain.gateway.channels
    charged, results = 0, []

    def pay(client: x402ClientSync, body: bytes) -> None:
        nonlocal charged
        payload, requirements = gateway.pay(client, body, 40_000)
        results.append(gateway.admit(payload, requirements))
        charged += gateway.serve(payload, 1_000, 100) if results[-1][0] else 0

    pay(a_client, b'{"a": 0}')
    pay(a_client, b'{"a": 1}')  # its charge is vouched for by A's next payment, which comes late

    # Execute: B takes A's channel up and pays twice, then ends; A pays again, then closes
    pay(b_client, b'{"b": 0}')
    pay(b_client, b'{"b": 1}')
    b.end()
    pay(a_client, b'{"a": 2}')  # raised Overcharged before
    (closed,) = a.close()

    # Assert: one channel, both processes' on it; every payment admitted; the channel paid
    # exactly every receipt (A's late-vouched one included), the wallet short by exactly that
    (a_channel,) = {s.channel_id for s in a.closed}
    (b_channel,) = {s.channel_id for s in [*b.sessions.values(), *b.closed]}
    assert closed == a_channel == b_channel
    assert results == [(True, "None")] * 5, results
    record = channels.channel(closed)
    assert record.spent == charged == sum(r.receipt.amount for r in gateway.receipts)
    assert record.closes_at and record.deposit == record.spent  # the rest went back at once
    assert stable.balance_of(address) == wallet - charged
