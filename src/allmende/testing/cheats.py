"""Cheating providers for tests and demos of verification: never imported by production code.

A cheat is an engine wrapper (`Engine -> Engine`). Production code only offers the hook
(`allmende.provider.node.ENGINE_WRAPPERS`, applied to every engine a provider loads);
this module fills it in a process started as

    python -m allmende.testing.cheats MODE provider …   # a provider that cheats
    python -m allmende.testing.cheats N:MODE up …       # `allmende up` whose provider N cheats

MODE is `int8` (weights quantised per row: what a cheap provider might run),
`skip-layer` (the last transformer layer dropped) or `recognise`: a provider that tries to
tell audits from users' requests by every trick that worked against the first validators
(the payer is a staked validator, the body has no `model`, the prompt comes from their
public pool) and serves what it takes for audits honestly and everyone else from a cheap
generator (the last layer skipped) with the proof recomputed by one prefill of the real
model. It logs each guess ("looks like an audit" / "looks like a user"), so a test can
show that it never recognises an audit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, cast

import torch

from allmende.engine.base import Engine, SamplingParams, TokenEvent
from allmende.engine.proofs import commit
from allmende.engine.transformers_lm import CausalLMEngine

if TYPE_CHECKING:  # the calibration harness imports this module on machines without the chain libraries
    from allmende.chain import Contracts
    from allmende.provider.service import InferRequest, ProviderService

ROLE_VALIDATOR = 2  # allmende.chain.bindings.ROLE_VALIDATOR


def quantize_int8(engine: CausalLMEngine) -> CausalLMEngine:
    """Per-row symmetric int8 quantisation of every matrix (what a cheap provider might run)."""
    with torch.no_grad():
        for param in engine.model.parameters():
            if param.dim() == 2:
                scale = param.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
                param.copy_((param / scale).round().clamp(-127, 127) * scale)
    return engine


def skip_last_layer(engine: CausalLMEngine) -> CausalLMEngine:
    """Drop the last decoder layer (a cheaper, wrong model under the same id)."""
    engine.model.model.layers = engine.model.model.layers[:-1]
    engine.model.config.num_hidden_layers -= 1
    return engine


CHEATS: dict[str, Callable[[CausalLMEngine], CausalLMEngine]] = {"int8": quantize_int8, "skip-layer": skip_last_layer}
MODES = (*CHEATS, "recognise")

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
                    engine = req.model.engine
                    self.audits.add(tuple(engine.prompt_ids(req.kind, req.body)))  # type: ignore[arg-type]
            return req

        service.open = open_and_guess  # type: ignore[method-assign]


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


def wrapper(mode: str) -> Callable[[Engine], Engine]:
    """An engine wrapper that applies cheat `mode` to generative engines."""
    cheat = CHEATS[mode]

    def wrap(engine: Engine) -> Engine:
        return cheat(engine) if isinstance(engine, CausalLMEngine) else engine

    return wrap


def command(mode: str) -> list[str]:
    """The command line that starts an `allmende` process whose provider engines cheat."""
    return [sys.executable, "-m", "allmende.testing.cheats", mode]


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m allmende.testing.cheats MODE provider … | N:MODE up …")
    mode, rest = argv[0], argv[1:]
    if rest[0] == "up":
        number, _, provider_mode = mode.partition(":")
        if not number.isdigit() or provider_mode not in MODES:
            raise SystemExit(f"N:MODE with MODE one of {', '.join(MODES)}")
        from allmende.cli import up

        default, victim = up.provider_command, int(number)

        def provider_command(index: int) -> list[str]:
            return [*command(provider_mode), "provider"] if index == victim else default(index)

        up.provider_command = provider_command
    elif mode == "recognise":
        from allmende.provider import node

        holder: dict[str, Recogniser] = {}

        def hook(service: ProviderService, contracts: Contracts) -> None:
            holder["r"].contracts = contracts
            holder["r"].hook(service, contracts)

        holder["r"] = Recogniser(cast("Contracts", None))
        node.ENGINE_WRAPPERS.append(lambda engine: recognising(engine, holder["r"]))
        node.SERVICE_HOOKS.append(hook)
    else:
        if mode not in CHEATS:
            raise SystemExit(f"MODE must be one of {', '.join(MODES)}")
        from allmende.provider import node

        node.ENGINE_WRAPPERS.append(wrapper(mode))
    from allmende.cli import main as cli

    sys.argv = ["allmende", *rest]
    cli()


if __name__ == "__main__":
    main(sys.argv[1:])
