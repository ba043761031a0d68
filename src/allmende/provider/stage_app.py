"""A provider's HTTP API for one pipeline stage: /v1/stage/info, /v1/stage/forward,
/v1/stage/close, /healthz.

Hidden states travel as safetensors messages (`allmende.api.stages`); errors leave as
`{"error": {"code", "message"}}` with a 4xx status like every other node API. The last
stage draws the next token itself with the verifiable draw, so the token a session gets is
checkable from that stage's logits alone.

A paid stage (`StageSigner`) signs a receipt for every call (`allmende.core.stages.
stage_receipt`). On a provider node it also has a `StageGate`: it then takes only calls
sealed to the provider's X25519 key (`api.stages.seal_call`; its reply is sealed too), and
admits each one as it admits a whole-model request: signed by its channel's payer, its
voucher checked and stored, its cost (rows at the offer, plus the draw at the last stage)
reserved under the credit rule (`provider.payments.PaymentGate`), once per call id; its
receipt's amount goes into the channel's `earned` under the stage id before the reply
leaves, so the vouchers the provider redeems pay exactly what its receipts say.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from eth_account import Account
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from allmende import __version__
from allmende.api import wire
from allmende.api.body import read_limited
from allmende.api.guard import GuardConfig, protect
from allmende.api.stages import (
    CLOSE_PATH,
    FORWARD_PATH,
    INFO_PATH,
    MEDIA_TYPE,
    ForwardReply,
    ForwardRequest,
    activation_hash,
    close_id,
    is_sealed,
    open_call,
    open_close,
    seal_reply,
    token_array,
)
from allmende.core.eip712 import Domain
from allmende.core.errors import AllmendeError, InvalidInput
from allmende.core.receipts import sign_receipt
from allmende.core.stages import InvalidStage, StagePrice, stage_receipt
from allmende.engine.base import SamplingParams
from allmende.provider.errors import (
    BadRequest,
    PayerNotAuthenticated,
    PaymentRequired,
    ReplayedRequest,
    UnknownModelError,
)

if TYPE_CHECKING:  # torch and transformers load where a stage is served, not in every CLI process
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from allmende.engine.stages import StageBackend, StageOutput
    from allmende.provider.payments import PaymentGate
    from allmende.provider.store import ProviderStore

log = logging.getLogger("allmende.provider.stage")
MAX_BODY = 160 * 1024 * 1024  # a replay of 32,768 positions of a 1,024-wide model, with room


def error_response(exc: Exception) -> JSONResponse:
    return wire.error_response(exc, log)


@dataclass(frozen=True)
class StageSigner:
    """A paid stage: its provider key, the receipts' EIP-712 domain (the Registry's) and its
    offer. Without one a stage answers with no receipt (a free or private stage)."""

    key: bytes
    domain: Domain
    price: StagePrice

    @property
    def address(self) -> str:
        return str(Account.from_key(self.key).address)


@dataclass(frozen=True)
class StageGate:
    """A paid stage's intake on a provider node: its X25519 key (the one its signed /v1/info
    publishes and the chain holds), the node's payment gate and store (the credit rule and
    the ledger of its whole-model requests, per (channel, stage id) here)."""

    x25519: X25519PrivateKey
    gate: PaymentGate
    store: ProviderStore


def admit_paid_call(stage: StageBackend, call: ForwardRequest, signer: StageSigner, paid: StageGate) -> int:
    """A sealed call's payment checked and its cost reserved before the stage computes
    (blocking: the gate may read the chain). Returns the cost reserved, which the caller
    releases (`StageGate.gate.release`) once the receipt's amount is earned or the call failed."""
    spec = stage.spec
    if call.stage != spec.stage_id:
        raise UnknownModelError(f"this provider serves stage {spec.stage_id_hex}, not 0x{call.stage.hex()}")
    payment = call.payment
    if payment is None:
        raise PaymentRequired("a paid stage's call carries its channel, its payer's signature and a voucher when owed")
    try:
        payer = call.authorization(payment.channel).signer(paid.gate.domain, payment.signature)
    except InvalidInput as exc:
        raise PayerNotAuthenticated(f"the payer signature of the call is invalid: {exc}") from None
    if paid.store.receipt(call.call_id) is not None:  # served before: a replay, whatever the credit says
        raise ReplayedRequest(f"stage call 0x{call.call_id.hex()} was already served")
    cost = signer.price.amount(int(call.input.shape[0]), 1 if spec.range.heads else 0)
    paid.gate.admit(payment.channel, spec.stage_id, payer, payment.voucher, reserve=cost)
    try:
        if not paid.store.begin_request(call.call_id, payment.channel, spec.stage_id):
            raise ReplayedRequest(f"stage call 0x{call.call_id.hex()} was already received")
    except BaseException:
        paid.gate.release(payment.channel, cost)
        raise
    return cost


def earn_paid_call(stage: StageBackend, call: ForwardRequest, reply: ForwardReply, paid: StageGate) -> None:
    """The receipt's amount into the channel's `earned` under the stage id, before the reply leaves."""
    assert reply.receipt is not None and call.payment is not None
    receipt = json.dumps(reply.receipt.to_json())
    amount = reply.receipt.receipt.amount
    paid.store.finish_request(call.call_id, call.payment.channel, stage.spec.stage_id, amount, receipt)


def serve_paid_call(stage: StageBackend, call: ForwardRequest, signer: StageSigner, paid: StageGate) -> ForwardReply:
    """A sealed call's payment checked and its cost reserved before the stage computes, its
    receipt's amount earned before the reply leaves (blocking: the gate may read the chain)."""
    cost = admit_paid_call(stage, call, signer, paid)
    assert call.payment is not None
    try:
        reply = serve_call(stage, call, signer)
        earn_paid_call(stage, call, reply, paid)
    finally:
        paid.gate.release(call.payment.channel, cost)  # after the amount is in `earned`, as for whole models
    return reply


async def serve_paid_call_async(
    stage: StageBackend, call: ForwardRequest, signer: StageSigner, paid: StageGate
) -> ForwardReply:
    """`serve_paid_call` for the event loop: the gate and the store in worker threads, the
    stage's pass awaited without holding one (`serve_call_async`)."""
    cost = await asyncio.to_thread(admit_paid_call, stage, call, signer, paid)
    assert call.payment is not None
    try:
        reply = await serve_call_async(stage, call, signer)
        await asyncio.to_thread(earn_paid_call, stage, call, reply, paid)
    finally:
        paid.gate.release(call.payment.channel, cost)  # after the amount is in `earned`, as for whole models
    return reply


def start_call(stage: StageBackend, call: ForwardRequest) -> Future[StageOutput]:
    """Check a call against the stage and queue it on the stage's engine, which batches it
    with other sessions' calls (`StageBackend.submit`); inputs the stage refuses raise here."""
    if call.stage != stage.spec.stage_id:
        raise UnknownModelError(f"this provider serves stage {stage.spec.stage_id_hex}, not 0x{call.stage.hex()}")
    heads = stage.spec.range.heads
    if heads != (call.draw is not None):
        raise InvalidStage("the last stage, and only it, is asked how to draw")
    import torch

    return stage.submit(call.session, call.start, torch.from_numpy(np.array(call.input, copy=True)))


def finish_call(
    stage: StageBackend, call: ForwardRequest, output: StageOutput, signer: StageSigner | None = None
) -> ForwardReply:
    """The reply to a computed call: the draw on the last stage and, for a paid stage, the
    signed receipt of the call."""
    from allmende.engine.sampling import sample_token

    in_hash = activation_hash(call.input)
    token = None
    if call.draw is None:
        out_hash = activation_hash(output.hidden.numpy())
    else:
        assert output.logits is not None
        d = call.draw
        params = SamplingParams(temperature=d.temperature, top_p=d.top_p, seed=d.seed)
        token = sample_token(output.logits, params, d.seed, d.position)
        out_hash = activation_hash(token_array(token))
    receipt = None
    if signer is not None:
        rows = int(call.input.shape[0])
        unsigned = stage_receipt(
            stage.spec, signer.address, call.session, call.start, rows, in_hash, out_hash, output.proof,
            signer.price, int(time.time()),
        )  # fmt: skip
        receipt = sign_receipt(unsigned, signer.domain, signer.key)
    hidden = output.hidden.numpy() if token is None else None
    return ForwardReply(output.proof, in_hash, out_hash, hidden=hidden, token=token, receipt=receipt)


def serve_call(stage: StageBackend, call: ForwardRequest, signer: StageSigner | None = None) -> ForwardReply:
    """One forward call of a session on `stage`, waited for in the calling thread."""
    return finish_call(stage, call, start_call(stage, call).result(), signer)


async def serve_call_async(
    stage: StageBackend, call: ForwardRequest, signer: StageSigner | None = None
) -> ForwardReply:
    """One forward call for the event loop: queued and finished in worker threads (short), its
    pass awaited without holding one, so the calls in flight (and the engine's batches) are
    not capped by the loop's thread pool (min(32, cores + 4) threads by default)."""
    queued = await asyncio.to_thread(start_call, stage, call)
    output = await asyncio.wrap_future(queued)
    return await asyncio.to_thread(finish_call, stage, call, output, signer)


def stage_listing(stage: StageBackend, signer: StageSigner | None) -> dict[str, Any]:
    """The stage as a provider's signed /v1/info lists it among its models: kind "stage", its
    prices per position and per token drawn (what its offer on chain holds), so a gateway's
    directory finds stage providers as it finds model providers."""
    price = signer.price if signer else StagePrice()
    return {
        "model_id": stage.spec.stage_id_hex,
        "name": stage.spec.descriptor,
        "kind": "stage",
        "price_in": str(price.per_position),
        "price_out": str(price.per_token),
        "context_length": stage.context_length,
    }


def create_stage_app(
    stage: StageBackend,
    guard: GuardConfig | None = None,
    signer: StageSigner | None = None,
    max_body: int = MAX_BODY,
    paid: StageGate | None = None,
) -> FastAPI:
    """A node that serves one stage and nothing else (`allmende stage serve`)."""
    app = FastAPI(title="Allmende stage provider", version=__version__, docs_url=None, redoc_url=None)
    protect(app, guard, error_response)

    @app.exception_handler(AllmendeError)  # answered by the app itself, never re-raised to the server
    async def _ours(_: Request, exc: AllmendeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)  # a bug: a 500 that says only "internal error"
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "stage": stage.spec.stage_id_hex}

    add_stage_routes(app, stage, signer, max_body, paid)
    return app


def add_stage_routes(
    app: FastAPI,
    stage: StageBackend,
    signer: StageSigner | None,
    max_body: int = MAX_BODY,
    paid: StageGate | None = None,
) -> None:
    """The stage wire API on `app`: a stage-only node's, or a provider node's beside its
    OpenAI-style API (`allmende provider --stage`, with its `StageGate`)."""
    spec = stage.spec
    if paid is not None and signer is None:
        raise ValueError("a paid stage signs its receipts: give its StageSigner")

    @app.get(INFO_PATH)
    async def info() -> dict[str, Any]:
        r = spec.range
        return {
            "stage": spec.stage_id_hex,
            "descriptor": spec.descriptor,
            "base": "0x" + spec.base.hex(),
            "blocks": [r.start, r.end, r.n_blocks],
            "hidden_size": stage.hidden_size,
            "media_type": MEDIA_TYPE,
            "version": __version__,
            "provider": signer.address if signer else None,
            "price": dataclasses.asdict(signer.price) if signer else None,
            "sessions": int(getattr(stage, "sessions", 0)),  # sessions it holds a KV cache for now
            "sealed": paid is not None,  # takes only sealed, paid calls (its key: the provider's /v1/info)
        }

    @app.post(FORWARD_PATH)
    async def forward(request: Request) -> Response:
        try:
            raw = await read_limited(request, max_body, 30.0)
            if paid is None:
                if is_sealed(raw):
                    raise InvalidStage("this stage has no key: it takes plain calls")
                reply = await serve_call_async(stage, ForwardRequest.decode(raw), signer)
                return Response(reply.encode(), media_type=MEDIA_TYPE)
            assert signer is not None
            if not is_sealed(raw):
                raise InvalidStage("a paid stage takes only calls sealed to its key (allmende.api.stages.seal_call)")
            call, sealer = open_call(paid.x25519, signer.address, raw)
            reply = await serve_paid_call_async(stage, call, signer, paid)
            return Response(seal_reply(sealer, reply), media_type=MEDIA_TYPE)
        except Exception as exc:  # JSON errors on a node whose own handlers may not be these
            return error_response(exc)

    @app.post(CLOSE_PATH)
    async def close(request: Request) -> Response:
        try:
            raw = await read_limited(request, 4096, 10.0)
            if paid is not None:  # sealed like its calls: the session id never crosses in the clear
                assert signer is not None
                session = open_close(paid.x25519, signer.address, raw)
            else:
                try:
                    session = json.loads(raw)["session"]
                except (ValueError, KeyError, TypeError):
                    raise BadRequest('body must be {"session": "<id>"}') from None
                if not isinstance(session, str):
                    raise BadRequest("session must be a string")
            stage.close(session)
        except Exception as exc:
            return error_response(exc)
        return JSONResponse({"closed": session if paid is None else "0x" + close_id(session).hex()})
