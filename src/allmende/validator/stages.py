"""Auditing stage providers: a validator as a mystery shopper of one stage of a model.

A stage provider serves only a slice of a model (`engine.stages`), so a validator cannot
send it a chat request: it calls the stage itself, as a gateway does. It finds the
Registry's offers of the model's stage ids (`stage_offers`, read back with
`chain.stages.stage_providers`, each provider's X25519 key from its account on chain),
opens a paid, sealed session with one provider (`gateway.stages.StageSession` with the
validator's own channels as its `SessionPayer`: the same wire, sealing, authorizations,
vouchers and receipt checks as a gateway's calls, so nothing tells the audit apart) and
generates through it: the stages before the audited one and after it run on the
validator's own copy of the model (`StageEngine`s of the registered slices), so the
provider gets a real prefix's activations, a prompt, then one row per token drawn.

Each call's receipt binds its input, its output and its proof (`core.stages.stage_receipt`).
After the session, every call's commitment is checked against the validator's re-run of the
stage on the committed input (`engine.stages.verify_stage`); the first call that fails is
the fault: its signed receipt is the case's anchor on chain (`Verdicts.open_case`), the
evidence (the stage's inputs up to that call, the proof, the receipt) stored where other
validators fetch it, as for whole models (`validator.service`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
import torch
from eth_utils import keccak
from safetensors import SafetensorError
from safetensors.numpy import load, save

from allmende.api.stages import Draw, activation_hash
from allmende.chain import Contracts
from allmende.chain.errors import ChainError
from allmende.chain.stages import stage_providers
from allmende.core.eip712 import Domain
from allmende.core.errors import InvalidInput, InvalidSignature, UpstreamError
from allmende.core.receipts import SignedReceipt
from allmende.core.stages import StageLayout, StagePrice, stage_call_id
from allmende.engine.base import SamplingParams
from allmende.engine.sampling import sample_token
from allmende.engine.stages import StageEngine, verify_stage
from allmende.payer.stage_payer import SessionPayer
from allmende.payer.stages import StageOffer, StageRouter, StageSession
from allmende.validator.evidence import STAGE_EVIDENCE, Evidence, EvidenceStore

log = logging.getLogger("allmende.validator")

TEMPERATURES = (0.0, 0.7)  # an audit's draw: greedy or sampled, as users ask


def stage_offers(contracts: Contracts, layout: StageLayout) -> list[StageOffer]:
    """Every active provider's offer of a stage of `layout` in the Registry, with the X25519
    key of its account on chain (what its calls are sealed to)."""
    offers = []
    for found in stage_providers(contracts, layout):
        key = contracts.registry.account(found.provider).x25519_key
        if not any(key):
            continue  # no key on chain: its calls cannot be sealed, no gateway calls it either
        price = StagePrice(found.price_in, found.price_out)
        offers.append(StageOffer(found.stage, found.endpoint, price, found.provider, key))
    return offers


@dataclass
class StageAudit:
    """One audit of one stage provider."""

    provider: str
    stage: bytes
    ok: bool | None  # None: unavailable (no answer to check), not scored
    reason: str
    calls: int  # calls the provider answered (and was paid for)
    receipts: list[SignedReceipt] = field(default_factory=list)
    failed: SignedReceipt | None = None  # the receipt of the first call whose commitment failed
    evidence: Evidence | None = None
    case_id: int | None = None


class StageAuditor:
    """Audits stage providers of one model, with the validator's own copy of its stages."""

    def __init__(
        self,
        engines: Sequence[StageEngine],  # the validator's copy of every stage of the layout, in order
        contracts: Contracts,
        evidence: EvidenceStore,
        endpoint: str,  # where this validator serves its evidence
        rng: random.Random | None = None,
    ) -> None:
        self.engines = list(engines)
        self.layout = StageLayout(tuple(e.spec for e in self.engines))
        self.contracts = contracts
        self.evidence = evidence
        self.endpoint = endpoint.rstrip("/")
        self.rng = rng or random.SystemRandom()
        self.domain = contracts.registry.receipt_domain()
        self.address = contracts.client.address

    def offers(self) -> list[StageOffer]:
        """The Registry's offers of this layout's stages, but this validator's own."""
        return [o for o in stage_offers(self.contracts, self.layout) if o.provider != self.address]

    async def audit(
        self, offer: StageOffer, client: httpx.AsyncClient, payer: SessionPayer, prompt: list[int], tokens: int
    ) -> StageAudit:
        """Generate `tokens` tokens from `prompt` with `offer`'s provider serving its stage
        and this validator's copy serving the others, paid by `payer` (its positions and drawn
        tokens must cover the session); then check every call's commitment."""
        index = self.layout.stages.index(offer.stage)  # ValueError: not a stage of this layout
        last = index == len(self.layout) - 1
        temperature, seed = self.rng.choice(TEMPERATURES), self.rng.getrandbits(31)
        params = SamplingParams(max_tokens=tokens, temperature=temperature, seed=seed)
        router = StageRouter(self.layout, [offer])
        session = StageSession(router, client, domain=self.domain, payer=payer, chain=[offer])
        local = f"audit-{session.session}"  # the session of this validator's own copies
        sent: list[np.ndarray] = []
        calls: list[tuple[int, int, bytes, SignedReceipt]] = []
        rows = np.asarray(prompt, dtype=np.int64)
        problem = None
        try:
            await session.reserve()
            for position in range(tokens):
                start = session.position
                x = rows
                for engine in self.engines[:index]:
                    x = (await asyncio.to_thread(engine.forward, local, start, torch.from_numpy(x))).hidden.numpy()
                reply = await session.send(0, x, Draw(position, temperature, 1.0, seed) if last else None)
                assert reply.receipt is not None  # a paid stage's reply is checked to carry it
                sent.append(x)
                calls.append((start, int(x.shape[0]), reply.proof, reply.receipt))
                if reply.token is not None:
                    token = reply.token
                else:
                    assert reply.hidden is not None
                    h, logits = reply.hidden, None
                    for engine in self.engines[index + 1 :]:
                        out = await asyncio.to_thread(engine.forward, local, start, torch.from_numpy(h))
                        h, logits = out.hidden.numpy(), out.logits
                    assert logits is not None
                    token = sample_token(logits, params, seed, position)
                session.position += int(rows.shape[0])
                rows = np.asarray([token], dtype=np.int64)
        except (httpx.HTTPError, UpstreamError, InvalidInput) as exc:
            problem = f"{type(exc).__name__}: {exc}"  # what it answered before is still checked
        finally:
            payer.release()
            await self._deliver(client, offer, payer)
            await session.close()
            for engine in self.engines:
                engine.close(local)
        return self._check(offer, index, session.session, prompt, sent, calls, problem)

    def _check(
        self,
        offer: StageOffer,
        index: int,
        session: str,
        prompt: list[int],
        sent: list[np.ndarray],
        calls: list[tuple[int, int, bytes, SignedReceipt]],
        problem: str | None,
    ) -> StageAudit:
        provider, stage = str(offer.provider), offer.stage.stage_id
        receipts = [c[3] for c in calls]
        if not calls:
            return StageAudit(provider, stage, None, f"unavailable: {problem or 'no call answered'}", 0, receipts)
        engine = self.engines[index]
        for k, (start, count, proof, receipt) in enumerate(calls):
            inputs = np.concatenate(sent[: k + 1], axis=0)  # the stage's input from position 0 to this call
            result = verify_stage(engine, torch.from_numpy(inputs), [(start, count, proof)])
            if not result.ok:
                reason = f"call {k + 1} of {len(calls)} (positions {start}-{start + count}): {result.reason}"
                evidence = Evidence(
                    kind=STAGE_EVIDENCE,
                    body={
                        "stage": "0x" + stage.hex(),
                        "session": session,  # the receipts' request ids name it (over by now)
                        "start": start,
                        "rows": count,
                        "inputs": base64.b64encode(save({"input": np.ascontiguousarray(inputs)})).decode(),
                        # the receipts of the calls before: they bind the inputs the call's KV cache holds
                        "before": [r.to_json() for r in receipts[:k]],
                    },
                    model_id="0x" + stage.hex(),
                    prompt_ids=list(prompt) if index == 0 else [],
                    token_ids=[],
                    text="",
                    proof="0x" + proof.hex(),
                    receipt=receipt.to_json(),
                    reason=reason,
                )
                return StageAudit(provider, stage, False, reason, len(calls), receipts, receipt, evidence)
        reason = f"{len(calls)} calls checked" + (f" (then {problem})" if problem else "")
        return StageAudit(provider, stage, True, reason, len(calls), receipts)

    async def _deliver(self, client: httpx.AsyncClient, offer: StageOffer, payer: SessionPayer) -> None:
        """The session's last cumulative vouchers to the provider, as a gateway delivers them
        (`POST /v1/vouchers` of its node); best effort: the next call on the channel carries them."""
        for vouchers in payer.last_vouchers().values():
            try:
                reply = await client.post(
                    f"{offer.url.rstrip('/')}/v1/vouchers", json={"vouchers": [v.to_json() for v in vouchers]}
                )
                reply.raise_for_status()
            except httpx.HTTPError as exc:
                log.info("vouchers of a stage audit not delivered to %s: %s", offer.provider, exc)

    def report(self, audit: StageAudit) -> int | None:
        """Open (or join) the case against a stage provider that failed its audit, its signed
        receipt the anchor and the evidence stored under its hash; the case id, or None."""
        if audit.ok is not False or audit.failed is None or audit.evidence is None:
            return None
        receipt = audit.failed
        r = receipt.receipt
        verdicts = self.contracts.verdicts
        existing = verdicts.open_case_of(r.provider, r.model_id)
        if existing and verdicts.is_reporter(existing, self.address):
            log.info("case %d against stage provider %s holds this validator's report already", existing, r.provider)
            audit.case_id = existing
            return existing
        if not self.contracts.registry.is_active(r.provider):
            return None  # paused by a verdict already, or gone: nobody routes to it
        digest = self.evidence.put(audit.evidence)
        uri = f"{self.endpoint}/v1/evidence/0x{digest.hex()}"
        try:
            case_id = verdicts.open_case(r.as_tuple(), receipt.signature, digest, uri)
        except ChainError as exc:
            log.warning("could not report stage provider %s: %s", r.provider, exc)
            return None
        log.warning("case %d against stage provider %s (stage 0x%s…): %s", case_id, r.provider, r.model_id.hex()[:12],
                    audit.reason)  # fmt: skip
        audit.case_id = case_id
        return case_id


PROMPT_DRAWS = 4  # prompts drawn for a stage audit before a long one is cut to fit


def fit_prompt(draw: Callable[[], list[int]], most: int, draws: int = PROMPT_DRAWS) -> list[int]:
    """A prompt from `draw` of at most `most` positions: drawn again up to `draws` times, then
    the last draw's last `most` positions. A stage audit keeps its session within what jurors
    download (`evidence.stage_positions_within`), so a fault it finds on a long prompt of a
    wide model is not one no juror can check."""
    prompt: list[int] = []
    for _ in range(draws):
        prompt = draw()
        if len(prompt) <= most:
            return prompt
    return prompt[-max(1, most) :]


def recheck_stage(engines: dict[bytes, StageEngine], evidence: Evidence, provider: str, domain: Domain) -> bool | None:
    """A juror's re-check of a stage case's evidence, from nothing the reporter computed: True
    guilty; False not guilty, also when the evidence is not what the provider signed for (then it
    proves nothing against it); None when this validator holds no copy of the stage.

    The accused call's output depends on every input of the session before it (its KV cache), so
    the evidence carries the receipts of the calls before it too: all signed by the provider, all
    naming the same session and the stage, their input hashes covering the inputs from position 0
    to the accused call's last row without a gap. Only then are the inputs the provider's, and the
    stage is re-run on them (`verify_stage`)."""
    engine = engines.get(bytes.fromhex(evidence.model_id.removeprefix("0x")))
    if engine is None:
        return None
    body = evidence.body
    try:
        session, start, rows = str(body["session"]), int(body["start"]), int(body["rows"])
        inputs = load(base64.b64decode(body["inputs"], validate=True))["input"]
        before = [SignedReceipt.from_json(r) for r in body["before"]]
        proof = bytes.fromhex(evidence.proof.removeprefix("0x"))
    except (KeyError, TypeError, ValueError, AttributeError, InvalidInput, SafetensorError):
        return False
    accused = evidence.signed_receipt
    if accused.receipt.proof_hash != keccak(proof) or inputs.shape[0] != start + rows:
        return False
    at = 0
    for signed in [*before, accused]:
        r = signed.receipt
        try:
            signed.verify(domain)
        except InvalidSignature:
            return False
        covered = inputs[at : at + r.tokens_in]
        if (
            r.provider != provider
            or r.model_id != engine.spec.stage_id
            or r.tokens_in < 1
            or r.request_id != stage_call_id(session, at, r.tokens_in)
            or r.input_hash != activation_hash(covered)
        ):
            return False
        at += r.tokens_in
    if at != start + rows:
        return False
    try:
        return not verify_stage(engine, torch.from_numpy(np.array(inputs, copy=True)), [(start, rows, proof)]).ok
    except InvalidInput:  # inputs the stage does not take: the provider could not have served them
        return False


__all__ = ["StageAudit", "StageAuditor", "fit_prompt", "recheck_stage", "stage_offers"]
