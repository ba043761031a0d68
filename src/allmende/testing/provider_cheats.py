"""Cheats at the level of the provider's service, for tests and demos (see
allmende.testing.cheats for how a cheating process is started):

- `recognise`: tries to tell audits from users' requests by every trick that worked against
  the first validators and serves what it takes for audits honestly, everyone else from a
  cheap generator with a recomputed proof and receipts inflated tenfold (`Recogniser`,
  `TwoFacedEngine`, `TwoFacedService`);
- `structure`: keyed on the request's structure alone: every request of the structure the
  first validators' audits had (allmende.testing.traffic: `old_audit_structure`) is served
  honestly, every other structure from the cheap generator with a recomputed proof, with
  honest token counts, so no gateway's receipt check sees it (`StructureRecogniser`):
  only audits drawn from the shapes users send catch it;
- `inflate`: honest work, receipts that claim ten times the tokens (`InflatingService`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

from allmende.chain.bindings import ROLE_VALIDATOR
from allmende.engine.base import Engine, SamplingParams, TokenEvent
from allmende.engine.proofs import commit
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.provider.service import InferRequest, ProviderService
from allmende.testing.traffic import old_audit_structure
from allmende.testing.weights import skip_last_layer

if TYPE_CHECKING:
    from allmende.chain import Contracts

# the prompts the first validators drew their audits from (public in their source code)
OLD_AUDIT_POOL = [
    "What is a commons and who looks after it?",
    "Erkläre mir bitte, wie ein Zahlungskanal funktioniert.",
    "Write two sentences about rivers.",
    "Give me three tips for learning a language.",
    "Was ist der Unterschied zwischen Wetter und Klima?",
    "Summarise why the sky is blue.",
    "Name a few uses of spare GPUs.",
    "How do I bake bread without yeast?",
    "Describe a quiet morning.",
    "List five animals that live in forests.",
    "Wie funktioniert eine Wahl?",
    "What is a hash function?",
]
log = logging.getLogger("allmende.cheat")


class Recogniser:
    """Guesses, per request, whether it is an audit; remembers the guess by prompt ids."""

    def __init__(self, contracts: Contracts) -> None:
        self.contracts = contracts
        self.roles: dict[str, int] = {}
        self.audits: set[tuple[int, ...]] = set()  # prompt ids of requests taken for audits
        self.audit_ids: set[bytes] = set()  # ... and their request ids

    def looks_like_audit(self, req: InferRequest) -> str | None:
        """The trick that gives the request away as an audit, or None."""
        if req.payer not in self.roles:
            self.roles[req.payer] = self.contracts.registry.account(req.payer).role
        if self.roles[req.payer] == ROLE_VALIDATOR:
            return "paid by a validator's key"
        if "model" not in req.body:
            return "a body without 'model'"
        text = json.dumps(req.body.get("messages", req.body.get("prompt", "")), ensure_ascii=False)
        if any(prompt in text for prompt in OLD_AUDIT_POOL):
            return "a prompt from the validators' pool"
        return None

    def hook(self, service: ProviderService, contracts: Contracts) -> None:
        opened = service.open

        def open_and_guess(envelope: object) -> InferRequest:
            req = opened(envelope)
            if req.kind != "embedding":
                trick = self.looks_like_audit(req)
                log.warning(
                    "request 0x%s looks like %s",
                    req.request_id.hex()[:12],
                    f"an audit ({trick})" if trick else "a user",
                )
                if trick:
                    self.audit_ids.add(req.request_id)
                    engine = req.model.engine
                    self.audits.add(tuple(engine.prompt_ids(req.canonical.generation[0])))
            return req

        service.open = open_and_guess  # type: ignore[method-assign]


class StructureRecogniser(Recogniser):
    """Takes for an audit every request of the old audits' structure, whatever its content."""

    def looks_like_audit(self, req: InferRequest) -> str | None:
        return "the old audits' structure" if old_audit_structure(req.kind, req.body) else None


class TwoFacedEngine:
    """The real engine for what looks like an audit; for everyone else a cheap copy whose
    output gets a proof recomputed by one prefill of the real model."""

    def __init__(self, real: CausalLMEngine, cheap: CausalLMEngine, recogniser: Recogniser) -> None:
        self.real, self.cheap, self.recogniser = real, cheap, recogniser

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        key = tuple(prompt_ids)
        if key in self.recogniser.audits:
            self.recogniser.audits.discard(key)
            async for event in self.real.generate(prompt_ids, params):
                yield event
            return
        produced: list[int] = []
        async for event in self.cheap.generate(prompt_ids, params):
            if event.token_id is not None:
                produced.append(event.token_id)
            if event.proof is not None and produced:
                hidden, _ = self.real.prefill(prompt_ids + produced)
                n_in = len(prompt_ids)
                event = dataclasses.replace(event, proof=commit(hidden[n_in - 1 : n_in - 1 + len(produced)]))
            yield event


def recognising(engine: Engine, recogniser: Recogniser) -> Engine:
    if not isinstance(engine, CausalLMEngine):
        return engine
    cheap = skip_last_layer(CausalLMEngine(engine.name, engine.path, model_id=engine.model_id, device=engine.device))
    return cast(Engine, TwoFacedEngine(engine, cheap, recogniser))


class InflatingService(ProviderService):
    """A provider that serves honestly but signs receipts for `factor` × the tokens it counted
    (prompt and completion), priced correctly for the inflated counts: the 12,112-units-per-
    request attack against 32 for an honest receipt."""

    factor = 10

    def _finish(
        self, req: InferRequest, tokens_in: int, tokens_out: int, output: bytes, proof: bytes = b""
    ) -> dict[str, Any]:
        return super()._finish(req, tokens_in * self.factor, tokens_out * self.factor, output, proof)


class TwoFacedService(InflatingService):
    """Honest receipts for what looks like an audit, inflated ones for everyone else."""

    recogniser: Recogniser

    def _finish(
        self, req: InferRequest, tokens_in: int, tokens_out: int, output: bytes, proof: bytes = b""
    ) -> dict[str, Any]:
        if req.request_id in self.recogniser.audit_ids:
            return ProviderService._finish(self, req, tokens_in, tokens_out, output, proof)
        return super()._finish(req, tokens_in, tokens_out, output, proof)


def install(mode: str) -> None:
    """Make the providers this process starts cheat in `mode` (recognise | structure | inflate)."""
    from allmende.provider import node

    if mode == "inflate":
        node.SERVICE_CLASS = InflatingService
        return
    recogniser = (StructureRecogniser if mode == "structure" else Recogniser)(cast("Contracts", None))

    def hook(service: ProviderService, contracts: Contracts) -> None:
        recogniser.contracts = contracts
        recogniser.hook(service, contracts)

    if mode != "structure":  # a structure-keyed cheater signs honest counts: only audits can catch it
        TwoFacedService.recogniser = recogniser
        node.SERVICE_CLASS = TwoFacedService
    node.ENGINE_WRAPPERS.append(lambda engine: recognising(engine, recogniser))
    node.SERVICE_HOOKS.append(hook)
