"""Checking a completion: one forward pass of the claimed model over prompt + output.

Two checks, both needed:
1. the proof: the provider's commitments equal (within tolerance) the final hidden
   states the validator recomputes — this catches another model, quantised weights,
   skipped layers and a changed prompt;
2. the tokens: each output token is one the sampling parameters allow given the
   validator's own logits — this catches fabricated output, which an honest-looking
   proof over fabricated tokens would not.

Token rule. Greedy (temperature 0): every token must be the argmax, or within
`GREEDY_MARGIN` logits of it (numerical ties). Sampling (temperature > 0): every token
must lie inside the top-p nucleus widened by `NUCLEUS_SLACK`, and have probability of
at least `MIN_TOKEN_PROB` under the validator's distribution. We do not try to replay
the seeded draw itself: tiny logit differences between honest machines move
multinomial boundaries, so a replay would raise false alarms. The rule we defend is
therefore "the token was a legitimate draw", which catches fabrication wherever the
model is confident, and is what any validator can check without the provider's RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from allmende.engine.base import SamplingParams
from allmende.engine.proofs import ProofCheck, check

# bf16 and fp32 may disagree on near-ties: a greedy token within 3 % of the logit scale
# of the validator's argmax is accepted (the proof check catches cheaper arithmetic).
GREEDY_MARGIN = 0.03
NUCLEUS_SLACK = 0.05
MIN_TOKEN_PROB = 1e-6


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    proof: ProofCheck
    bad_tokens: int


def token_check(logits: torch.Tensor, output_ids: list[int], params: SamplingParams) -> int:
    """Number of output tokens the sampling parameters could not have produced.
    `logits[i]` is the distribution output token i was drawn from (vectorised)."""
    tokens = torch.tensor(output_ids, dtype=torch.long).unsqueeze(1)
    if params.temperature == 0.0:
        top = logits.max(dim=-1).values
        chosen = logits.gather(1, tokens).squeeze(1)
        scale = logits.abs().max(dim=-1).values.clamp(min=1.0)
        return int(((top - chosen) > GREEDY_MARGIN * scale).sum())
    probs = torch.softmax(logits / params.temperature, dim=-1)
    chosen = probs.gather(1, tokens)
    bad = chosen.squeeze(1) < MIN_TOKEN_PROB
    if params.top_p < 1.0:
        higher = (probs * (probs > chosen)).sum(dim=-1)  # mass strictly more likely than the token
        bad |= higher >= min(1.0, params.top_p + NUCLEUS_SLACK)
    return int(bad.sum())


def verify_completion(
    hidden_and_logits: tuple[torch.Tensor, torch.Tensor],
    prompt_len: int,
    output_ids: list[int],
    proof: bytes,
    params: SamplingParams,
) -> Verdict:
    """Judge a completion from the validator's prefill over prompt + output."""
    hidden, logits = hidden_and_logits
    n = len(output_ids)
    if n == 0:
        return Verdict(True, "empty completion", ProofCheck(True, "nothing to check", 0.0, 0.0, 1.0), 0)
    # the state at position p produced the token at position p + 1
    producing = slice(prompt_len - 1, prompt_len - 1 + n)
    proof_check = check(proof, hidden[producing])
    bad = token_check(logits[producing], output_ids, params)
    reasons = [] if proof_check.ok else [f"proof: {proof_check.reason}"]
    if bad:
        reasons.append(f"{bad} of {n} tokens impossible under the sampling parameters")
    return Verdict(not reasons, "; ".join(reasons) or "consistent", proof_check, bad)
