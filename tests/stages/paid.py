"""Paid stage providers in process, on the session's anvil: each a real stage app with its own
key, X25519 key, SQLite store and payment gate (the provider node's parts), and a gateway's
channels (`gateway.payments.Payments`) paying a session through them (`SessionPayer`).

`Wire` sits between the caller and the apps and keeps every byte that went either way, so a
test can say what a relay between hops would have seen."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account

from allmende.api.stages import CallPayment, Draw, ForwardRequest, seal_call
from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import Anvil
from allmende.core.envelope import ResponseSealer, public_key_bytes
from allmende.core.stages import StageLayout, StagePrice
from allmende.core.vouchers import SignedVoucher
from allmende.engine.stages import StageEngine
from allmende.payer.payments import ChannelPolicy, Payments
from allmende.payer.stage_payer import SessionPayer
from allmende.payer.stages import StageOffer, StageRouter, StageSession
from allmende.payer.store import GatewayStore
from allmende.provider.payments import CreditPolicy, PaymentGate
from allmende.provider.stage_app import StageGate, StageSigner, create_stage_app
from allmende.provider.store import ProviderStore

GAS = hex(10**20)


def funded(anvil: Anvil, deployment: Deployment, admin: Contracts, stable: int = 0) -> tuple[bytes, Contracts]:
    """A new account with gas (and `stable` payment tokens): its key and its chain client."""
    key = bytes(Account.create().key)
    account = Contracts(ChainClient(anvil.url, key), deployment)
    admin.client.w3.provider.make_request("anvil_setBalance", [account.client.address, GAS])  # type: ignore[arg-type]
    if stable:
        admin.stable.mint(account.client.address, stable)
    return key, account


@dataclass
class PaidStage:
    url: str
    engine: StageEngine
    key: bytes
    x25519: X25519PrivateKey
    store: ProviderStore
    gate: PaymentGate
    signer: StageSigner
    contracts: Contracts  # the provider's own chain client (it redeems with it)

    @property
    def address(self) -> str:
        return self.signer.address

    def offer(self) -> StageOffer:
        key = public_key_bytes(self.x25519)
        return StageOffer(self.engine.spec, self.url, self.signer.price, self.address, key)

    def transport(self) -> httpx.ASGITransport:
        paid = StageGate(self.x25519, self.gate, self.store)
        return httpx.ASGITransport(create_stage_app(self.engine, signer=self.signer, paid=paid))

    def earned(self, channel: bytes) -> int:
        return sum(row.earned for row in self.store.ledger(channel) if row.model_id == self.engine.spec.stage_id)


def paid_stage(
    anvil: Anvil,
    deployment: Deployment,
    admin: Contracts,
    engine: StageEngine,
    price: StagePrice,
    url: str,
    root: Path,
    credit_limit: int = 1_000_000,
) -> PaidStage:
    key, contracts = funded(anvil, deployment, admin)
    store = ProviderStore(root / f"{url.removeprefix('http://')}.db")
    domain, me = admin.channels.voucher_domain(), contracts.client.address
    gate = PaymentGate(store, domain, me, contracts.channels.channel, policy=CreditPolicy(credit_limit=credit_limit))
    signer = StageSigner(key, admin.registry.receipt_domain(), price)
    return PaidStage(url, engine, key, X25519PrivateKey.generate(), store, gate, signer, contracts)


def gateway_payments(anvil: Anvil, deployment: Deployment, admin: Contracts, root: Path, deposit: int) -> Payments:
    key, contracts = funded(anvil, deployment, admin, stable=10 * deposit)
    return Payments(GatewayStore(root / "gateway.db"), contracts, key, ChannelPolicy(deposit=deposit))


class Wire(httpx.AsyncBaseTransport):
    """Every request body and response body that crossed, in order, around the real transports."""

    def __init__(self, mounts: dict[str, httpx.ASGITransport]) -> None:
        self.mounts = mounts
        self.sent: list[tuple[str, str, bytes]] = []  # (base url, path, body)
        self.received: list[tuple[str, str, bytes]] = []
        self.before: dict[str, list[object]] = {}  # url -> what `on_call` returned as each call arrived
        self.on_call: dict[str, object] = {}  # url -> a function of nothing, run as a call arrives
        self.tamper: dict[str, object] = {}  # url -> a function of (call number, reply bytes) -> bytes, as a relay

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}"
        body = await request.aread()
        self.sent.append((base, request.url.path, body))
        probe = self.on_call.get(base)
        if probe is not None and request.url.path.endswith("/forward"):
            self.before.setdefault(base, []).append(probe())  # type: ignore[operator]
        response = await self.mounts[base].handle_async_request(request)
        data = await response.aread()
        alter = self.tamper.get(base)
        if alter is not None and request.url.path.endswith("/forward"):
            calls = sum(1 for b, path, _ in self.sent if b == base and path.endswith("/forward"))
            data = alter(calls, data)  # type: ignore[operator]
        self.received.append((base, request.url.path, data))
        return httpx.Response(response.status_code, headers=response.headers, content=data)

    def bytes_seen(self) -> bytes:
        """Every byte of every request and reply that crossed (calls and closes)."""
        return b"".join(body for _, _, body in self.sent + self.received)


async def run_paid(
    stages: list[PaidStage],
    payer: SessionPayer,
    prompt: list[int],
    max_tokens: int,
    wire: Wire | None = None,
    offers: list[StageOffer] | None = None,
    during: object = None,  # called with (session, tokens so far) after every token
) -> tuple[list[int], StageSession]:
    """One greedy session through the paid stages (the first offer per stage is the cheapest)."""
    wire = wire or Wire({s.url: s.transport() for s in stages})
    offers = offers or [s.offer() for s in stages]
    layout = StageLayout(tuple(dict.fromkeys(o.stage for o in offers)))
    domain = stages[0].signer.domain
    async with httpx.AsyncClient(transport=wire) as client:
        session = StageSession(StageRouter(layout, offers), client, domain=domain, payer=payer)
        await session.reserve()
        tokens: list[int] = []
        try:
            async for token in session.generate(prompt, max_tokens):
                tokens.append(token)
                if during is not None:
                    during(session, tokens)  # type: ignore[operator]
        finally:
            payer.release()
        for provider, vouchers in payer.last_vouchers().items():  # what the gateway delivers at the end
            stage = next(s for s in stages if s.address == provider)
            for voucher in vouchers:
                stage.gate.accept(voucher)
        await session.close()
        return tokens, session


def sealed_call(
    stage: PaidStage,
    payer_key: bytes,
    channel: bytes,
    session: str,
    start: int,
    rows: np.ndarray,
    voucher: SignedVoucher | None = None,
    draw: Draw | None = None,
) -> tuple[bytes, ResponseSealer]:
    """A call to `stage` as a payer makes it: signed for `channel`, sealed to the stage's key."""
    call = ForwardRequest(stage.engine.spec.stage_id, session, start, rows, draw)
    signature = call.authorization(channel).sign(stage.gate.domain, payer_key)
    call = dataclasses.replace(call, payment=CallPayment(channel, signature, voucher))
    return seal_call(call, public_key_bytes(stage.x25519), stage.address)
