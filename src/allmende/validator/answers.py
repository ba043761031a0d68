"""What a validator checks of one answer, for audits and for jurors alike: every choice's
draw, proof and end (choice i of an `n > 1` request drawn with `choice_params(params, i)`),
and that the provider's receipt binds the request, the texts, the proofs and the token
counts exactly as the provider signs them (provider/service.py): for one choice the text and
its proof; for several the JSON list of their texts and their proofs joined in order, the
tokens of all of them.

A provider that serves the first choice honestly and the others from a cheap generator is
caught here: each choice is judged on its own."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from eth_utils import keccak

from allmende.api.canonical import canonical
from allmende.api.protocol import input_hash
from allmende.core import SignedReceipt
from allmende.core.endpoints import request_kind
from allmende.core.errors import InvalidInput
from allmende.engine.base import Kind, choice_params
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.validator.checker import NOTHING, Verdict, judge, text_of
from allmende.validator.divergence import AuditStats, audit_stats, plain
from allmende.validator.evidence import Evidence

Prefill = tuple[torch.Tensor, torch.Tensor]  # (final hidden states, logits) over prompt + output


@dataclass(frozen=True)
class Choice:
    """One completion of an answer, as the provider committed to it."""

    token_ids: list[int]
    proof: bytes
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"token_ids": self.token_ids, "proof": "0x" + self.proof.hex(), "text": self.text}


def choices_of(record: Mapping[str, Any]) -> list[Choice]:
    """The choices of evidence (the gateway's, or a case's): its `choices` when the answer
    has several, else the one at its top level. InvalidInput if they are malformed."""
    raw = record.get("choices")
    items = raw if isinstance(raw, list) and raw else [record]
    try:
        return [
            Choice([int(t) for t in c["token_ids"]], bytes.fromhex(str(c["proof"])[2:]), str(c["text"])) for c in items
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"the answer's choices are malformed: {exc}") from None


def output_bytes(choices: list[Choice]) -> bytes:
    """What the receipt's `outputHash` is the keccak of."""
    if len(choices) == 1:
        return choices[0].text.encode()
    return json.dumps([c.text for c in choices]).encode()


def proof_bytes(choices: list[Choice]) -> bytes:
    """What the receipt's `proofHash` is the keccak of (when not empty)."""
    return b"".join(c.proof for c in choices)


def check_answer(
    engine: CausalLMEngine,
    body: dict[str, Any],
    prompt_ids: list[int],
    choices: list[Choice],
    receipt: SignedReceipt,
    kind: Kind = "chat",
    prefills: list[Prefill] | None = None,
) -> Verdict:
    """The proof and token checks of every choice, plus: the receipt binds this request (its
    kind and body), these proofs, texts and token counts. InvalidInput if the request cannot
    be checked at all: a body the provider would have refused proves nothing against it.
    `prefills`: each choice's prefill over prompt + output, if the caller made them already
    (the evidence ledger uses the same passes: `answer_stats`)."""
    r = receipt.receipt
    request = canonical(kind, body, r.request_id)  # exactly what the provider built from the same request
    # without max_tokens a completion may run to the end of the context, as the engine that
    # served it fitted it (Engine.fitted): the same model's context here
    params = engine.fitted(prompt_ids, engine.continued(*request.generation))
    problems: list[str] = []
    wanted = request.n
    if len(choices) != wanted:
        problems.append(f"{len(choices)} choices for n={wanted}")
    proof_check, bad = NOTHING, 0
    for i, choice in enumerate(choices):
        made = prefills[i] if prefills is not None and i < len(prefills) else None
        verdict = judge(engine, prompt_ids, choice.token_ids, choice.proof, choice_params(params, i), made)
        where = f"choice {i + 1}: " if len(choices) > 1 else ""
        if not verdict.ok:
            problems.append(where + verdict.reason)
        if i == 0 or (proof_check.ok and not verdict.proof.ok):
            proof_check = verdict.proof
        bad += verdict.bad_tokens
        if text_of(engine.decode(choice.token_ids), params.stop) != choice.text:
            problems.append(where + "text does not match the token ids")
    if r.input_hash != input_hash(kind, body):
        problems.append("receipt inputHash does not match the request")
    if r.output_hash != keccak(output_bytes(choices)):
        problems.append("receipt outputHash does not match the text")
    proofs = proof_bytes(choices)
    if proofs and r.proof_hash != keccak(proofs):
        problems.append("receipt proof_hash does not match the proof")
    if r.tokens_out != sum(len(c.token_ids) for c in choices):
        problems.append("receipt token count does not match the output")
    if r.tokens_in != len(prompt_ids):
        problems.append("receipt tokensIn does not match the prompt")
    return Verdict(not problems, "; ".join(problems) or "consistent", proof_check, bad)


def prefills_of(engine: CausalLMEngine, prompt_ids: list[int], choices: list[Choice]) -> list[Prefill]:
    """One forward pass per choice over prompt + output: what both checks read."""
    return [engine.prefill(prompt_ids + c.token_ids) for c in choices]


def answer_stats(
    engine: CausalLMEngine,
    body: dict[str, Any],
    prompt_ids: list[int],
    choices: list[Choice],
    receipt: SignedReceipt,
    kind: Kind = "chat",
    prefills: list[Prefill] | None = None,
) -> AuditStats | None:
    """The divergence statistics of an answer (every choice's, in order) for the evidence
    ledger, drawn with the parameters the provider drew with (as `check_answer` rebuilds them);
    None for a draw the ledger does not accumulate (divergence.plain)."""
    request = canonical(kind, body, receipt.receipt.request_id)
    params = engine.fitted(prompt_ids, engine.continued(*request.generation))
    if not plain(params):
        return None
    made = prefills if prefills is not None else prefills_of(engine, prompt_ids, choices)
    gaps: list[float] = []
    errors: list[float] = []
    for i, (choice, prefill) in enumerate(zip(choices, made, strict=True)):
        stats = audit_stats(prefill, len(prompt_ids), choice.token_ids, choice.proof, choice_params(params, i))
        gaps += stats.gaps
        errors += stats.chunk_errors
    return AuditStats(tuple(gaps), tuple(errors))


def recheck(engine: CausalLMEngine, evidence: Evidence) -> Verdict | None:
    """A juror's re-check of a case's evidence, from nothing the reporter computed: None when
    the evidence is not what the provider's receipt binds (it then proves nothing against
    the provider), else the verdict on the request the receipt binds, rebuilt as the provider
    built it (api.canonical: its kind, the failover continuation, the sampling).
    InvalidInput if the request could not have been served."""
    if not evidence.backs_receipt():
        return None
    receipt = evidence.signed_receipt
    kind = request_kind(evidence.kind)  # backs_receipt bound the kind
    prompt_ids = engine.prompt_ids(canonical(kind, evidence.body, receipt.receipt.request_id).generation[0])
    choices = choices_of({**asdict(evidence), "choices": evidence.choices})
    return check_answer(engine, evidence.body, prompt_ids, choices, receipt, kind)
