"""x402 at the gateway: clients with no API key pay each request from their own wallet with
the official `x402` SDK's `exact` EVM scheme (x402 v2), and the gateway is its own
facilitator against the chain (no outside service).

The flow of one request (`X402Gate.admit`, then `X402Gate.refund`):

1. The request is parsed as every request is. Its price is the most it can cost: the credit
   rule's bound (`core/credit.py`, `CanonicalRequest.max_cost`) at the dearest offer among the providers
   that serve its model. Without a `PAYMENT-SIGNATURE` header the answer is `402` with the
   SDK's `PAYMENT-REQUIRED` header: scheme `exact`, network `eip155:<chain id>`, asset dUSD
   (the deployment's payment token, with its EIP-712 name and version read on chain),
   amount, pay-to the gateway's address.
2. With a payment, the SDK matches it against the requirements of *this* request (a payment
   signed for a cheaper request is no match and gets a 402), verifies it, and settles it
   **before** the request is served (the scheme's `upfront` flow): the facilitator submits
   dUSD's `transferWithAuthorization` from the gateway's key, so a replayed authorization (its
   nonce is used on chain) is refused and no request is served on money that is not in.
3. The request is served and its receipt checked as every request's is; the gateway pays the
   provider the receipt's amount through its channel. Then it sends the payer back the part of
   the payment the receipt did not use (`paid − receipt.amount`, a dUSD transfer), so the
   payer's wallet falls by the receipt's amount; a request that no provider could serve is
   refunded whole. The answer's `allmende.x402` says what was paid, charged and refunded,
   next to the provider's signed receipt.

Why `exact` plus a refund and not the SDK's `upto` scheme: `upto` settles through Permit2 and
x402's upto proxy at their canonical addresses, contracts the devnet does not have (the SDK
ships no bytecode for them). The gateway carries the gas of both transactions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from fastapi import Request
from fastapi.responses import JSONResponse
from x402 import x402FacilitatorSync, x402ResourceServerSync
from x402.http import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    HTTPRequestContext,
    PaymentOption,
    RouteConfig,
    decode_payment_required_header,
    decode_payment_response_header,
    x402HTTPResourceServerSync,
)
from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme, ExactEvmServerScheme
from x402.mechanisms.evm.types import TransactionReceipt, TypedDataDomain

from allmende.api.canonical import CanonicalRequest
from allmende.chain import Contracts
from allmende.chain.bindings import Stable
from allmende.chain.client import ChainClient
from allmende.core import SignedReceipt
from allmende.core.x402_session import SCHEME, canonical_json, request_hash
from allmende.gateway.errors import GatewayError, error_body
from allmende.gateway.service import GatewayService
from allmende.gateway.x402_ledger import X402Ledger
from allmende.gateway.x402_sessions import SessionFacilitatorScheme, SessionGate, SessionServerScheme

log = logging.getLogger("allmende.gateway.x402")


class PaymentRequired(GatewayError):
    status, type, code = 402, "insufficient_quota", "payment_required"


@dataclass(frozen=True)
class X402Policy:
    # seconds a payment authorization may take to arrive (the requirements' maxTimeoutSeconds)
    max_timeout_seconds: int = 300
    # the x402 state (sessions, nonces, charges, refunds owed); None = in memory
    ledger: Path | None = None
    # session scheme: units an agent may owe beyond its last voucher (one request's most fits)
    session_credit: int = 1_000_000
    # seconds between the upkeeps: refunds that failed sent again, session vouchers redeemed
    redeem_every: float = 300.0
    # at an upkeep, a session's voucher is redeemed once this much of it is unredeemed (units;
    # a closing session's always)
    redeem_above: int = 10_000_000
    # seconds a session channel may pay for nothing before the gateway releases it and sends
    # its payer the unspent deposit (the agent's own `close` needs no expiry)
    session_expiry: float = 30 * 86_400.0


@dataclass
class Paid:
    """A request's payment, settled before it is served (`exact`: on chain; `session`: its
    nonce admitted and its most held on the agent's channel)."""

    payer: str
    amount: int  # exact: what the authorization moved to the gateway; session: what is held (the most)
    transaction: str  # exact: the settlement (transferWithAuthorization); session: the request's nonce
    headers: dict[str, str]  # PAYMENT-RESPONSE, for the answer
    scheme: str = "exact"
    channel: str | None = None  # session: the agent's channel

    def view(self, charged: int, refunded: int, refund_tx: str | None) -> dict[str, Any]:
        """What the answer's `allmende.x402` says (amounts as decimal strings of dUSD units)."""
        if self.scheme == SCHEME:
            return {
                "scheme": SCHEME,
                "payer": self.payer,
                "channel": self.channel,
                "nonce": self.transaction,
                "held": str(self.amount),
                "charged": str(charged),
            }
        return {
            "scheme": "exact",
            "payer": self.payer,
            "paid": str(self.amount),
            "charged": str(charged),
            "refunded": str(refunded),
            "settlement": self.transaction,
            "refund": refund_tx,
        }


class ChainSigner:
    """The SDK's FacilitatorEvmSigner over the gateway's own ChainClient: its transactions
    take nonces from the same counter as the gateway's channel transactions."""

    def __init__(self, client: ChainClient) -> None:
        self.client = client

    def get_addresses(self) -> list[str]:
        return [self.client.address]

    def get_chain_id(self) -> int:
        return self.client.chain_id

    def get_code(self, address: str) -> bytes:
        return bytes(self.client.w3.eth.get_code(self.client.w3.to_checksum_address(address)))

    def get_balance(self, address: str, token_address: str) -> int:
        abi = [
            {
                "name": "balanceOf",
                "type": "function",
                "stateMutability": "view",
                "inputs": [{"name": "a", "type": "address"}],
                "outputs": [{"name": "", "type": "uint256"}],
            }
        ]
        return int(self.read_contract(token_address, abi, "balanceOf", address))

    def read_contract(self, address: str, abi: list[dict[str, Any]], function_name: str, *args: Any) -> Any:
        # web3's own errors go back to the SDK: it reads revert reasons from their text
        fn = getattr(self.client.contract(address, abi).functions, function_name)(*args)
        return fn.call({"from": self.client.address})

    def verify_typed_data(
        self,
        address: str,
        domain: TypedDataDomain,
        types: dict[str, Any],
        primary_type: str,
        message: dict[str, Any],
        signature: bytes,
    ) -> bool:
        fields = {"name": "string", "version": "string", "chainId": "uint256", "verifyingContract": "address"}
        values = {
            "name": domain.name,
            "version": domain.version,
            "chainId": domain.chain_id,
            "verifyingContract": domain.verifying_contract,
        }
        present = {k: v for k, v in values.items() if v}
        full_types = {"EIP712Domain": [{"name": k, "type": fields[k]} for k in present]}
        for name, entries in types.items():
            full_types[name] = [e if isinstance(e, dict) else {"name": e.name, "type": e.type} for e in entries]
        typed = {"types": full_types, "primaryType": primary_type, "domain": present, "message": message}
        try:
            recovered = Account.recover_message(encode_typed_data(full_message=typed), signature=signature)
        except Exception:  # a malformed signature is no signature
            return False
        return bool(recovered.lower() == address.lower())

    def write_contract(
        self, address: str, abi: list[dict[str, Any]], function_name: str, *args: Any, data_suffix: str | None = None
    ) -> str:
        if data_suffix:
            raise ValueError("the gateway's facilitator sends no calldata suffix")
        fn = getattr(self.client.contract(address, abi).functions, function_name)(*args)
        return self.client.transact(fn).tx_hash  # mined (or raised) when it returns

    def send_transaction(self, to: str, data: bytes) -> str:
        raise ValueError("the gateway's facilitator deploys no smart wallets (ERC-6492)")

    def wait_for_transaction_receipt(self, tx_hash: str) -> TransactionReceipt:
        mined = self.client.wait(tx_hash, "x402 settlement")
        return TransactionReceipt(
            status=int(mined.receipt["status"]),
            block_number=mined.block_number,
            tx_hash=tx_hash,
            logs=list(mined.receipt.get("logs") or []),
        )


class _Adapter:
    """The SDK's HTTPAdapter over one admitted request; its body is the request's price."""

    def __init__(self, request: Request, price: dict[str, Any]) -> None:
        self.request = request
        self.price = price

    def get_header(self, name: str) -> str | None:
        return self.request.headers.get(name)

    def get_method(self) -> str:
        return self.request.method

    def get_path(self) -> str:
        return self.request.url.path

    def get_url(self) -> str:
        return str(self.request.url)

    def get_accept_header(self) -> str:
        return self.request.headers.get("accept", "")

    def get_user_agent(self) -> str:
        return self.request.headers.get("user-agent", "")

    def get_query_params(self) -> dict[str, str | list[str]] | None:
        return dict(self.request.query_params)

    def get_query_param(self, name: str) -> str | list[str] | None:
        return self.request.query_params.get(name)

    def get_body(self) -> dict[str, Any]:
        return self.price


class Refunds:
    """The `exact` scheme's refunds: written to the ledger before they are sent, so one that
    fails (the chain unreachable, the gateway's wallet short) is sent again by `retry` until
    it is mined, and none is sent twice."""

    def __init__(self, ledger: X402Ledger, stable: Stable) -> None:
        self.ledger = ledger
        self.stable = stable
        self._lock = threading.Lock()

    def send(self, settlement: str, payer: str, amount: int) -> str | None:
        """Send `amount` back to `payer` for `settlement`; its transaction, or None if it
        failed (it stays owed)."""
        self.ledger.owe_refund(settlement, payer, amount)
        with self._lock:
            return self._send(settlement, payer, amount)

    def _send(self, settlement: str, payer: str, amount: int) -> str | None:
        try:
            tx = self.stable.transfer(payer, amount).tx_hash
        except Exception as exc:
            self.ledger.refund_failed(settlement)
            log.error("x402 refund of %d to %s for %s failed (sent again later): %s", amount, payer, settlement, exc)
            return None
        self.ledger.refunded(settlement)
        return tx

    def retry(self) -> list[str]:
        """Send every refund still owed; the transactions that went through."""
        with self._lock:
            owed = self.ledger.refunds_owed()
            return [tx for s, p, a, _ in owed if (tx := self._send(s, p, a)) is not None]


class X402Gate:
    """The resource server and facilitator of x402 payments for one gateway."""

    def __init__(self, service: GatewayService, contracts: Contracts, policy: X402Policy | None = None) -> None:
        self.service = service
        self.stable = contracts.stable
        self.client = contracts.client
        self.policy = policy or X402Policy()
        self.network = f"eip155:{self.client.chain_id}"
        self.ledger = X402Ledger(self.policy.ledger)
        self.refunds = Refunds(self.ledger, self.stable)
        self.sessions = SessionGate(contracts, self.ledger, self.policy.redeem_above, funding=service.payments)
        self.channels = contracts.channels.address
        name, version = self.stable.eip712_domain()
        self.extra = {"name": name, "version": version, "paymentFlow": "upfront"}
        facilitator = x402FacilitatorSync()
        facilitator.register([self.network], ExactEvmFacilitatorScheme(ChainSigner(self.client)))
        facilitator.register(
            [self.network], SessionFacilitatorScheme(contracts, self.ledger, self.policy.session_credit)
        )
        server = x402ResourceServerSync(facilitator)
        # the SDK's scheme class is untyped and its payment_flows table wider than its own Protocol
        server.register(self.network, ExactEvmServerScheme())  # type: ignore[no-untyped-call, arg-type]
        server.register(self.network, SessionServerScheme())
        options = [
            PaymentOption(
                scheme=scheme,
                pay_to=self.client.address,
                price=lambda context, scheme=scheme: context.adapter.get_body()[scheme],  # type: ignore[misc]
                network=self.network,
                max_timeout_seconds=self.policy.max_timeout_seconds,
            )
            for scheme in ("exact", SCHEME)
        ]
        self.http = x402HTTPResourceServerSync(
            server, RouteConfig(accepts=options, description="Allmende inference", mime_type="application/json")
        )
        self.http.initialize()
        self._upkept = time.monotonic()

    def prices(self, request: Request, body_hash: bytes, amount: int) -> dict[str, Any]:
        """Each scheme's price of this request: its most, bound to its body's hash."""
        bound = {"requestHash": "0x" + body_hash.hex()}
        session = {
            "channels": self.channels,
            "credit": str(self.policy.session_credit),
            "statement": str(request.base_url) + "v1/x402/sessions/",
            "paymentFlow": "upfront",
        }
        asset = self.stable.address
        return {
            "exact": {"amount": str(amount), "asset": asset, "extra": {**self.extra, **bound}},
            SCHEME: {"amount": str(amount), "asset": asset, "extra": {**session, **bound}},
        }

    async def admit(self, request: Request, served: CanonicalRequest) -> Paid | JSONResponse:
        """The payment for `served` (the request `request` carries), settled; or the 402 to
        answer (requirements, or why not)."""
        _, amount = self.service.most_cost(served)
        prices = self.prices(request, request_hash(canonical_json(served.body)), amount)
        context = HTTPRequestContext(
            adapter=_Adapter(request, prices),
            path=request.url.path,
            method=request.method,
            payment_header=request.headers.get(PAYMENT_SIGNATURE_HEADER),
        )
        # verification and settlement are chain calls and transactions: off the event loop
        result = await asyncio.to_thread(self.http.process_http_request, context)
        if result.type != "payment-verified":
            return self._refusal(result.response, amount)
        settled = result.before_handler_settlement
        if settled is None or result.payment_payload is None:  # the upfront flow always settles first
            raise PaymentRequired("the payment was not settled")
        headers = self.http.create_completed_settlement_headers(settled)
        scheme = result.payment_payload.accepted.scheme
        channel = (settled.result.extra or {}).get("channelId") if scheme == SCHEME else None
        return Paid(str(settled.result.payer), amount, settled.result.transaction, headers, scheme, channel)

    def _refusal(self, response: Any, amount: int) -> JSONResponse:
        headers = {k: v for k, v in (response.headers if response else {}).items() if k.lower() != "content-type"}
        reason = "Payment required"
        if headers.get(PAYMENT_REQUIRED_HEADER):
            reason = decode_payment_required_header(headers[PAYMENT_REQUIRED_HEADER]).error or reason
        elif headers.get(PAYMENT_RESPONSE_HEADER):  # verified, but its settlement failed (a replay racing)
            reason = decode_payment_response_header(headers[PAYMENT_RESPONSE_HEADER]).error_reason or reason
        message = (
            f"{reason}: this request costs at most {amount} dUSD units; pay with x402 (scheme exact or "
            f"session, {self.network}, asset {self.stable.address}); you pay what the provider's receipt says"
        )
        status = response.status if response is not None else 402
        error = PaymentRequired(message)
        return JSONResponse(error_body(error), status_code=status, headers=headers)

    async def refund(self, paid: Paid, receipt: SignedReceipt | None) -> dict[str, Any]:
        """Charge `paid` what its receipt says (None: nothing was served) and give back the
        rest: `exact` sends the payer what the receipt did not use, `session` turns the hold
        into the receipt's charge. Returns the answer's `allmende.x402`."""
        charged = 0 if receipt is None else receipt.receipt.amount
        if paid.scheme == SCHEME:
            nonce = bytes.fromhex(paid.transaction[2:])
            if receipt is None:
                self.ledger.release(nonce)
            else:
                self.ledger.charge(nonce, charged, json.dumps(receipt.to_json()))
            return paid.view(charged, 0, None)
        back = max(0, paid.amount - charged)
        if not back:
            return paid.view(min(charged, paid.amount), 0, None)
        tx = await asyncio.to_thread(self.refunds.send, paid.transaction, paid.payer, back)
        if tx is None:  # the answer goes out all the same; the refund is sent again at the next upkeep
            view = paid.view(min(charged, paid.amount), 0, None)
            view["refund_failed"] = str(back)
            return view
        return paid.view(min(charged, paid.amount), back, tx)

    def upkeep(self) -> None:
        """Every `redeem_every` seconds: refunds owed are sent again, session vouchers redeemed."""
        if time.monotonic() - self._upkept < self.policy.redeem_every:
            return
        self._upkept = time.monotonic()
        self.refunds.retry()
        try:
            self.sessions.redeem_due(above=self.policy.redeem_above)
        except Exception as exc:  # tried again at the next upkeep
            log.warning("redeeming the x402 sessions' vouchers failed: %s", exc)
        try:
            self.sessions.expire(self.policy.session_expiry)
        except Exception as exc:  # tried again at the next upkeep
            log.warning("releasing expired x402 sessions failed: %s", exc)
