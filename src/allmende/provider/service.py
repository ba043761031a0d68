"""The provider's serving logic: open the envelope, check payment, run the engine,
sign the receipt, seal the answer. The HTTP layer (app.py) only moves bytes.

A stream is billed for what was sent: its progress (prompt tokens, the tokens whose
text went out, that text) is kept on the request, and a stream that ends before its
final chunk (the client went away, the engine failed, the task was cancelled) gets a
signed receipt for the prompt and the tokens sent so far when the HTTP layer calls
`end_stream`, so the credit rule counts every token served."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account

from allmende.api.canonical import CanonicalRequest, canonical
from allmende.api.protocol import input_hash
from allmende.core import Domain, InvalidInput, Receipt, RequestAuthorization, SignedVoucher, request_cost, sign_receipt
from allmende.core.codec import hex_bytes
from allmende.core.eip712 import keccak256 as keccak  # eth-utils' keccak, without its type dispatch
from allmende.core.endpoints import KINDS, endpoint
from allmende.core.envelope import ResponseSealer, open_request
from allmende.core.prompts import MAX_PROMPT_BYTES_PER_TOKEN, prompt_bytes
from allmende.engine import Engine, PromptTooLong, SamplingParams, collect, collect_choices
from allmende.engine.base import EmbeddingInput, EngineError
from allmende.provider.errors import BadRequest, PayerNotAuthenticated, ReplayedRequest, UnknownModelError
from allmende.provider.payments import PaymentGate
from allmende.provider.store import ProviderStore

ZERO32 = b"\x00" * 32
# A request whose decrypted plaintext is at most this many bytes (its body, prompt, tools and
# token ids included: a bound on all of them) has its prompt rendered and tokenized on the
# event loop (well under a millisecond); a larger one in a worker thread, so that it never
# stalls the other streams. Handing a short prompt to a thread and back cost more than
# tokenizing it: two thread switches, each waiting for a core when the machine is busy.
INLINE_REQUEST_BYTES = 8192


@dataclass(frozen=True)
class ServedModel:
    engine: Engine
    price_in: int  # per 1M input tokens, payment-token units (as offered on chain)
    price_out: int


@dataclass
class StreamProgress:
    """What a stream has handed to the HTTP layer so far."""

    prompt_tokens: int
    sent_tokens: int = 0  # generated tokens whose text went out
    parts: list[str] = dataclasses.field(default_factory=list)  # that text
    token_ids: list[int] = dataclasses.field(default_factory=list)  # every token generated
    seq: int = 0  # sealed chunks handed out (the next chunk's sequence number)
    billed: bool = False  # a receipt (final or cut) is recorded


@dataclass
class InferRequest:
    request_id: bytes
    model: ServedModel
    kind: str
    body: dict[str, Any]
    input_hash: bytes  # keccak of the canonical request: the payer signed it, the receipt binds it
    canonical: CanonicalRequest  # what is served: built once from the body (api.canonical)
    payer: str  # the account that signed the request (recovered, never taken from the plaintext)
    channel_id: bytes
    voucher: SignedVoucher | None
    sealer: ResponseSealer
    stream: bool
    # units reserved against the channel's credit at admission, released when the request ends
    reserved: int = 0
    # set once a stream starts generating (None: not a stream, or nothing generated yet)
    progress: StreamProgress | None = None
    size: int = 0  # bytes of the decrypted request


class ProviderService:
    def __init__(
        self,
        key: bytes,
        x25519: X25519PrivateKey,
        models: dict[bytes, ServedModel],
        store: ProviderStore,
        gate: PaymentGate,
        receipt_domain: Domain,
        stream_tokens_per_s: float | None = None,
    ) -> None:
        self.account = Account.from_key(key)
        self.key = key
        self.address = str(self.account.address)
        self.x25519 = x25519
        self.models = models
        self.store = store
        self.gate = gate
        self.receipt_domain = receipt_domain
        self.in_flight = 0
        # cap on tokens per second per stream, so one client cannot monopolise a shared machine
        self.stream_interval = 1.0 / stream_tokens_per_s if stream_tokens_per_s else 0.0

    # ------------------------------------------------------------- intake

    def open(self, envelope: object) -> InferRequest:
        request_id, plaintext, sealer = open_request(self.x25519, self.address, envelope)
        try:
            data = json.loads(plaintext)
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested deeper than allmende.MAX_RECURSION
            raise BadRequest("decrypted request is not JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("decrypted request must be a JSON object")
        if hex_bytes(data.get("request_id"), 32, "request_id") != request_id:
            raise BadRequest("request_id inside the envelope differs from the one outside")
        model_id = hex_bytes(data.get("model_id"), 32, "model_id")
        model = self.models.get(model_id)
        if model is None:
            raise UnknownModelError(f"model 0x{model_id.hex()} is not served here")
        kind = data.get("kind")
        if kind not in KINDS:
            raise BadRequest(f"kind must be one of {', '.join(KINDS)}")
        if endpoint(kind).model_kind != model.engine.kind:
            raise BadRequest(f"model {model.engine.name} does not serve {kind} requests")
        body = data.get("body")
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object (the OpenAI-style request)")
        raw_voucher = data.get("voucher")
        voucher = None
        if raw_voucher is not None:
            if not isinstance(raw_voucher, dict):
                raise BadRequest("voucher must be an object")
            voucher = SignedVoucher.from_json(raw_voucher)
        channel_id = hex_bytes(data.get("channel_id"), 32, "channel_id")
        self._check_size(model, str(kind), body)
        body_hash = input_hash(kind, body)
        authorization = RequestAuthorization(request_id, channel_id, model_id, body_hash)
        payer = self._signer(data.get("signature"), authorization)
        try:  # after the signature: only a payer's request is parsed (a grammar compiles here)
            request = canonical(kind, body, request_id)
        except InvalidInput as exc:
            raise BadRequest.of(exc) from None
        return InferRequest(
            request_id=request_id,
            model=model,
            kind=str(kind),
            body=body,
            input_hash=body_hash,
            canonical=request,
            payer=payer,
            channel_id=channel_id,
            voucher=voucher,
            sealer=sealer,
            stream=request.request.stream and kind != "embedding",
            size=len(plaintext),
        )

    def _signer(self, raw: object, authorization: RequestAuthorization) -> str:
        """Who signed the request (the plaintext's `payer` field proves nothing); `admit`
        then requires it to be the channel's payer."""
        if raw is None:
            raise PayerNotAuthenticated("the request carries no payer signature (core.authorization)")
        try:
            return authorization.signer(self.gate.domain, hex_bytes(raw, 65, "signature"))
        except InvalidInput as exc:
            raise PayerNotAuthenticated(f"the payer signature is invalid: {exc}") from None

    def admit(self, req: InferRequest) -> None:
        """Voucher and credit checks (vouchers stored durably, the request's maximum cost
        reserved), then the replay check. Every admitted request must end in `release`."""
        model = req.model
        try:
            bound = req.canonical.max_cost(model.engine.context_length, model.price_in, model.price_out)
        except InvalidInput as exc:
            raise BadRequest.of(exc) from None
        self.gate.admit(req.channel_id, model.engine.model_id, req.payer, req.voucher, reserve=bound)
        req.reserved = bound
        if not self.store.begin_request(req.request_id, req.channel_id, model.engine.model_id):
            self.release(req)
            raise ReplayedRequest(f"request 0x{req.request_id.hex()} was already received")

    def release(self, req: InferRequest) -> None:
        """End the request's reservation (idempotent)."""
        if req.reserved:
            self.gate.release(req.channel_id, req.reserved)
            req.reserved = 0

    # ------------------------------------------------------------ serving

    async def run(self, req: InferRequest) -> dict[str, Any]:
        """Serve a non-streaming request; returns the sealed reply."""
        engine = req.model.engine
        if isinstance(req.canonical.prompt, EmbeddingInput):
            vectors, tokens = await engine.embed(req.canonical.prompt)
            output: dict[str, Any] = {"embeddings": vectors}
            receipt = self._finish(req, tokens, 0, json.dumps(vectors).encode())
        else:
            prompt, params = await self._prepared(req)
            n = req.canonical.n
            if n == 1:
                gens = [await collect(engine.generate(prompt, params), len(prompt))]
            else:
                gens = await collect_choices(engine.generate_choices(prompt, params, n), len(prompt), n)
            outputs = []
            for gen in gens:
                one: dict[str, Any] = {
                    "text": gen.text,
                    "finish_reason": gen.finish_reason,
                    "token_ids": gen.token_ids,
                    "proof": "0x" + gen.proof.hex(),
                }
                if params.logprobs is not None:
                    one["logprobs"] = gen.logprobs or []
                outputs.append(one)
            output = dict(outputs[0])
            tokens_out = sum(g.completion_tokens for g in gens)
            if n == 1:
                receipt = self._finish(req, len(prompt), tokens_out, gens[0].text.encode(), gens[0].proof)
            else:  # the receipt binds every choice: their texts and their proofs, in order
                output["choices"] = outputs
                texts = json.dumps([g.text for g in gens]).encode()
                receipt = self._finish(req, len(prompt), tokens_out, texts, b"".join(g.proof for g in gens))
            # prompt tokens whose cache cells an earlier request left (OpenAI's usage field; priced as any)
            receipt["usage"]["prompt_tokens_details"] = {"cached_tokens": max(g.cached_tokens for g in gens)}
        reply = {"output": output, "usage": receipt["usage"], "receipt": receipt["receipt"]}
        return req.sealer.seal(0, json.dumps(reply).encode())

    async def stream(self, req: InferRequest) -> AsyncIterator[dict[str, Any]]:
        """Serve a streaming request: sealed chunks, the last with usage and receipt."""
        engine = req.model.engine
        prompt, params = await self._prepared(req)
        if req.canonical.n != 1:
            raise BadRequest("n above 1 is not offered with stream")
        progress = req.progress = StreamProgress(len(prompt))
        parts, produced, finish, proof, token_ids = progress.parts, 0, "length", b"", progress.token_ids
        unsent = 0  # tokens whose text has not gone out yet
        logprobs: list[dict[str, Any]] = []  # ... and their log-probabilities
        cached = 0  # prompt tokens from an earlier request's cache cells (on the final event)
        async for event in engine.generate(prompt, params):
            cached = max(cached, event.cached_tokens)
            if event.proof is not None:
                proof = event.proof
            if event.token_id is not None:
                produced += 1
                unsent += 1
                token_ids.append(event.token_id)
            if event.logprob is not None:
                logprobs.append(event.logprob)
            if event.finish_reason:
                finish = event.finish_reason
            if self.stream_interval:
                await asyncio.sleep(self.stream_interval)
            if event.text:
                parts.append(event.text)
                piece: dict[str, Any] = {"delta": event.text, "tokens": unsent}
                if params.logprobs is not None:
                    piece["logprobs"], logprobs = logprobs, []
                sealed = req.sealer.seal(progress.seq, json.dumps(piece).encode())
                # counted as sent when handed out: a cut from here on bills it
                progress.seq += 1
                progress.sent_tokens += unsent
                unsent = 0
                yield sealed
        text = "".join(parts)
        progress.billed = True
        receipt = self._finish(req, len(prompt), produced, text.encode(), proof)
        receipt["usage"]["prompt_tokens_details"] = {"cached_tokens": cached}
        final = {
            "done": True,
            "finish_reason": finish,
            "usage": receipt["usage"],
            "receipt": receipt["receipt"],
            "token_ids": token_ids,
            "proof": "0x" + proof.hex(),
        }
        if params.logprobs is not None:
            final["logprobs"] = logprobs  # of tokens whose text never went out (a cut stop string)
        yield req.sealer.seal(progress.seq, json.dumps(final).encode())

    def end_stream(self, req: InferRequest, failed: bool = False) -> dict[str, Any] | None:
        """Called by the HTTP layer when a stream's response ends, however it ends. A stream
        cut before its final receipt is billed for what was sent: the prompt plus the tokens
        whose text went out get a signed receipt (no proof: the engine commits at the end),
        recorded in `earned` before the reservation is released. A client that goes away pays
        the prompt once it was processed (a token was generated), even if no text went out
        yet, so cutting every stream before its first delta buys no free prefills; a stream
        the provider itself `failed` is billed only if text went out. Returns the sealed final
        chunk for a client still listening (`cut: true`), or None when nothing was billed
        here (the stream finished, or nothing is owed). Idempotent: the first call decides."""
        progress = req.progress
        try:
            if progress is None or progress.billed:
                return None
            progress.billed = True
            if progress.sent_tokens == 0 and (failed or not progress.token_ids):
                return None
            text = "".join(progress.parts)
            receipt = self._finish(req, progress.prompt_tokens, progress.sent_tokens, text.encode())
            sent_ids = progress.token_ids[: progress.sent_tokens]
            final = {"done": True, "cut": True, "finish_reason": "error", **receipt, "token_ids": sent_ids}
            return req.sealer.seal(progress.seq, json.dumps(final).encode())
        finally:
            self.release(req)

    async def _prepared(self, req: InferRequest) -> tuple[list[int], SamplingParams]:
        """`_prepare`, in a worker thread unless the request is short (INLINE_REQUEST_BYTES)."""
        if req.size <= INLINE_REQUEST_BYTES:
            return self._prepare(req)
        return await asyncio.to_thread(self._prepare, req)

    def _prepare(self, req: InferRequest) -> tuple[list[int], SamplingParams]:
        """Prompt ids (a failover continuation included) and sampling parameters, from the
        canonical request, length-checked. Tokenizing is CPU work: the serving paths run
        this in a worker thread for any but a short request (`_prepared`)."""
        try:
            prompt, params = req.canonical.generation
            ids = req.model.engine.prompt_ids(prompt)
        except InvalidInput as exc:
            raise BadRequest.of(exc) from None
        engine = req.model.engine
        params = engine.continued(prompt, params)  # a failover's streamed tokens count for the penalties
        try:
            engine.check_length(ids, params.max_tokens)
        except EngineError as exc:  # the prompt is what the client can shorten or fix: name its field
            raise type(exc)(str(exc), exc.param or endpoint(req.kind).prompt_field) from None
        engine.check_sampling(params)
        return ids, params

    @staticmethod
    def _check_size(model: ServedModel, kind: str, body: dict[str, Any]) -> None:
        """Refuse, before tokenizing (and before admission: nothing is reserved), a prompt of
        more bytes than could ever fit the context (core.prompts)."""
        engine = model.engine
        size, cap = prompt_bytes(kind, body), MAX_PROMPT_BYTES_PER_TOKEN * engine.context_length
        if size > cap:
            raise PromptTooLong(
                f"{endpoint(kind).prompt_name} is {size} bytes; {engine.name} takes at most {cap} "
                f"({MAX_PROMPT_BYTES_PER_TOKEN} per token of its {engine.context_length}-token context)",
                endpoint(kind).prompt_field,
            )

    def _finish(
        self, req: InferRequest, tokens_in: int, tokens_out: int, output: bytes, proof: bytes = b""
    ) -> dict[str, Any]:
        """Price the answer, sign its receipt and record both before the answer leaves."""
        amount = request_cost(tokens_in, tokens_out, req.model.price_in, req.model.price_out)
        receipt = Receipt(
            request_id=req.request_id,
            model_id=req.model.engine.model_id,
            provider=self.address,
            input_hash=req.input_hash,
            output_hash=keccak(output),
            proof_hash=keccak(proof) if proof else ZERO32,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            amount=amount,
            timestamp=int(time.time()),
        )
        signed = sign_receipt(receipt, self.receipt_domain, self.key).to_json()
        self.store.finish_request(req.request_id, req.channel_id, receipt.model_id, amount, json.dumps(signed))
        self.release(req)  # after the amount is in `earned`: the exposure never dips below the truth
        usage = {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}
        return {"receipt": signed, "usage": usage}
