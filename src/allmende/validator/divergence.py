"""Per-token divergence statistics of one audited completion against the validator's own
forward pass: what the evidence ledger (ledger.py) accumulates per provider and model.

One request's check (checker.py) must tolerate whatever honest hardware differs by, so a
quantised or slightly moved model passes it: its logits and hidden states are off by about
as much as the worst honest machine's. Over many tokens the two separate (Token-DiFR,
TOPLOC's statistics): with the draw's seed fixed, an honest engine's token is the
validator's own draw on almost every position and its proof values sit at its engine's
usual error, while a cheaper model drifts measurably more often. Three numbers per audit:

- `gaps`, one per output token: how far the provider's token falls short of the validator's
  best draw score, in units of the row's logit scale (0 where it is the validator's draw,
  1.0 where it is outside the draw's nucleus altogether) — the draw's agreement and the logit
  margin in one figure: an honest mismatch is a near-tie (a tiny gap), a cheat's is not;
- `chunk_errors`, one per proof chunk of 32 tokens: the median relative error of the
  committed hidden-state values against the recomputed ones;
- the token count.

Everything is recomputable by anyone with the claimed model from the request, the answer
and the proof the provider signed for: a juror recomputes them itself (ledger.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from allmende.core.proofs import CHUNK_TOKENS, ProofFormatError, decode_proof
from allmende.engine.base import SamplingParams
from allmende.engine.sampling import gumbel_noise, nucleus

# the gap of a token outside the nucleus, or of a chunk whose proof cannot be read: the worst
OUTSIDE = 1.0


@dataclass(frozen=True)
class AuditStats:
    """The divergence of one audited completion (one choice)."""

    gaps: tuple[float, ...]  # per output token, in units of the row's logit scale
    chunk_errors: tuple[float, ...]  # per 32-token proof chunk, median relative error

    @property
    def tokens(self) -> int:
        return len(self.gaps)

    def to_json(self) -> dict[str, list[float]]:
        return {"gaps": [round(g, 6) for g in self.gaps], "chunk_errors": [round(e, 6) for e in self.chunk_errors]}

    @classmethod
    def from_json(cls, data: dict[str, list[float]]) -> AuditStats:
        return cls(tuple(float(g) for g in data["gaps"]), tuple(float(e) for e in data["chunk_errors"]))


def plain(params: SamplingParams) -> bool:
    """True if the draw is temperature, top-p and seed only: no grammar, logit bias, penalty
    or rank filter reshapes the logits. Only such audits are accumulated (the others are
    still checked per request): the calibration measured plain draws."""
    basic = SamplingParams(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        seed=params.seed,
        stop=params.stop,
        ignore_eos=params.ignore_eos,
        logprobs=params.logprobs,
    )
    return dataclasses.replace(params, max_tokens=basic.max_tokens) == basic


def draw_gaps(logits: torch.Tensor, output_ids: list[int], params: SamplingParams) -> list[float]:
    """Per output token: (best draw score − the token's score) ÷ the row's scale, ≥ 0.
    `logits[i]` is the row token i was drawn from. Greedy: the scores are the logits and the
    scale their largest magnitude; sampled: logits/T plus the public Gumbel noise of (seed,
    i), the scale divided by T too, the best taken over the top-p nucleus."""
    if not output_ids:
        return []
    rows = logits.detach().float().cpu()
    scale = rows.abs().max(dim=-1).values.clamp(min=1.0)
    chosen_ids = torch.tensor(output_ids, dtype=torch.long).unsqueeze(1)
    if params.temperature == 0.0:
        best = rows.max(dim=-1).values
        chosen = rows.gather(1, chosen_ids).squeeze(1)
        return [max(0.0, float(v)) for v in (best - chosen) / scale]
    if params.seed is None:
        raise ValueError("a sampled completion's draw can only be recomputed with its seed")
    scaled = rows / params.temperature
    inside = nucleus(torch.softmax(scaled, dim=-1), params.top_p)
    noise = torch.stack([gumbel_noise(params.seed, p, rows.shape[-1]) for p in range(rows.shape[0])])
    scores = (scaled + noise).masked_fill(~inside, float("-inf"))
    best = scores.max(dim=-1).values
    chosen = scores.gather(1, chosen_ids).squeeze(1)
    gaps = ((best - chosen) * params.temperature / scale).tolist()
    return [OUTSIDE if g != g or g == float("inf") else min(OUTSIDE, max(0.0, g)) for g in gaps]


def chunk_errors(proof: bytes, hidden: torch.Tensor) -> list[float]:
    """Per proof chunk: the median relative error of its committed values against `hidden`
    (the recomputed final hidden states that produced the output, one row per token). A
    proof that cannot be read, or covers other tokens, counts as `OUTSIDE` in every chunk."""
    rows = hidden.detach().float().cpu()
    expected = (rows.shape[0] + CHUNK_TOKENS - 1) // CHUNK_TOKENS
    try:
        chunks = decode_proof(proof, rows.shape[1])
    except ProofFormatError:
        return [OUTSIDE] * expected
    if len(chunks) != expected:
        return [OUTSIDE] * expected
    errors = []
    for n, chunk in enumerate(chunks):
        block = rows[n * CHUNK_TOKENS : (n + 1) * CHUNK_TOKENS].reshape(-1)
        if chunk.positions * rows.shape[1] != block.numel() or not chunk.indices:
            errors.append(OUTSIDE)
            continue
        actual = block[torch.tensor(chunk.indices)]
        rel = (torch.tensor(chunk.values) - actual).abs() / actual.abs().clamp(min=1e-3)
        errors.append(min(OUTSIDE, float(rel.median())))
    return errors


def audit_stats(
    hidden_and_logits: tuple[torch.Tensor, torch.Tensor],
    prompt_len: int,
    output_ids: list[int],
    proof: bytes,
    params: SamplingParams,
) -> AuditStats:
    """The statistics of one completion from the validator's prefill over prompt + output
    (the same pass the per-request check uses: nothing is computed twice)."""
    hidden, logits = hidden_and_logits
    producing = slice(prompt_len - 1, prompt_len - 1 + len(output_ids))
    gaps = draw_gaps(logits[producing], output_ids, params)
    errors = chunk_errors(proof, hidden[producing]) if output_ids else []
    return AuditStats(tuple(gaps), tuple(errors))
