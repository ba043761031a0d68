"""Checking a completion: one forward pass of the claimed model over prompt + output.

Three checks, all needed:
1. the proof: the provider's commitments equal (within tolerance) the final hidden
   states the validator recomputes — this catches another model, quantised weights,
   skipped layers and a changed prompt;
2. the draw: each output token is the one the request's seeded draw picks from the
   validator's own logits — this catches output from a cheaper generator (another
   model, a skipped layer, random tokens) even when its proof was recomputed honestly
   by one prefill of the claimed model over that output;
3. the end: a completion ends exactly where the engine had to end it — `max_tokens`
   reached (that is what `length` means), a stop string completed by the last token, or
   EOS the drawn next token — and never later: no token after an EOS (the engine stops
   there and never outputs it), none after the token that completed the first stop string
   (found by the engine's own rule, engine.sampling.first_stop), none after the grammar of
   a structured-output request allows only the end. Truncated, empty and overrun
   completions fail.

The draw. Every row is first shaped as the engine shaped it (engine.sampling.shaped: the
request's logit bias, its presence and frequency penalties over the tokens drawn before).
Greedy (temperature 0): the token must be the argmax, or within `MARGIN` × the row's logit
scale of it. Sampling: token i is the argmax over the tokens top-k, top-p and min-p keep of
z/T + g(seed, i), with g the public Gumbel noise of allmende.engine.sampling and the seed
the request's (or the one bound to its request id). The validator recomputes the scores
from its logits; a token passes if it lies in the kept set widened by the tolerance (the
nucleus by `NUCLEUS_SLACK`) and its score is within `MARGIN` × scale / T of the best score
in the kept set narrowed by the same. A provider that ignores or alters a sampling
parameter draws from another distribution, and its tokens fail here. The tolerance is what honest machines differ by
(bf16 vs fp32, threads, batching, GPU vs CPU: bench/verify.py measures it); a cheaper
generator's token is almost never within it where the draw is not a near-tie.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from allmende.engine.base import SamplingParams
from allmende.engine.proofs import ProofCheck, check
from allmende.engine.sampling import first_stop, gumbel_noise, nucleus, rank_filters, shaped_rows

# bf16 and fp32 disagree on near-ties: a token whose score is within 6 % of the row's logit
# scale of the best one is accepted. Honest bf16 needed up to 1.2 % on the tiny model and just
# over 3 % once on SmolLM2-135M (30 layers); cheap generators miss by far more (bench/verify.py).
MARGIN = 0.06
NUCLEUS_SLACK = 0.02

NOTHING = ProofCheck(True, "nothing to check", 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    proof: ProofCheck
    bad_tokens: int


def draw_check(
    logits: torch.Tensor,
    params: SamplingParams,
    first_position: int,
    allowed: torch.Tensor | None = None,
    output_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, floor) of the draws at rows `logits` (positions first_position, …): a token
    `t` is a legitimate draw at row i iff scores[i, t] >= floor[i]. `allowed`: the grammar's
    masks of a structured-output request (one boolean row per row of logits); tokens outside
    them are never legitimate, and the draw is among the rest, as the provider drew it.
    `output_ids`: the completion's tokens (at least those before the last row), whose earlier
    draws the penalties count. The logit bias and the penalties are exact (the same numbers
    on every machine), so the tolerance stays the raw logits' scale; top-k and min-p, like
    the nucleus, are checked between a narrowed and a widened bound of that tolerance."""
    logits = logits.float()
    scale = logits.abs().max(dim=-1).values.clamp(min=1.0)
    logits = shaped_rows(logits, params, output_ids, first_position)
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
    if params.temperature == 0.0:
        return logits, logits.max(dim=-1).values - MARGIN * scale
    if params.seed is None:
        raise ValueError("a sampled completion can only be checked with its seed")
    scaled = logits / params.temperature
    tolerance = MARGIN * scale / params.temperature
    probs = torch.softmax(scaled, dim=-1)
    positions = range(first_position, first_position + logits.shape[0])
    noise = torch.stack([gumbel_noise(params.seed, p, logits.shape[-1]) for p in positions])
    scores = scaled + noise
    narrow = nucleus(probs, params.top_p - NUCLEUS_SLACK)
    certain = rank_filters(scaled, params, -tolerance)
    if certain is not None:
        narrow &= certain
    best = scores.masked_fill(~narrow, float("-inf")).max(dim=-1).values
    if params.top_p < 1.0:
        scores = scores.masked_fill(~nucleus(probs, params.top_p + NUCLEUS_SLACK), float("-inf"))
    possible = rank_filters(scaled, params, tolerance)
    if possible is not None:
        scores = scores.masked_fill(~possible, float("-inf"))
    return scores, best - tolerance


def token_check(
    logits: torch.Tensor, output_ids: list[int], params: SamplingParams, allowed: torch.Tensor | None = None
) -> int:
    """Number of output tokens that are not the request's draw. `logits[i]` is the row
    output token i was drawn from (`allowed[i]` its grammar mask, if any)."""
    if not output_ids:
        return 0
    scores, floor = draw_check(logits, params, 0, allowed, output_ids)
    chosen = scores.gather(1, torch.tensor(output_ids, dtype=torch.long).unsqueeze(1)).squeeze(1)
    return int((chosen < floor).sum())


def may_end(
    logits: torch.Tensor,
    params: SamplingParams,
    position: int,
    eos_ids: Collection[int],
    allowed: torch.Tensor | None = None,
    output_ids: Sequence[int] = (),
) -> bool:
    """True if EOS is a legitimate draw from `logits` (one row) at output `position`, after
    `output_ids` (the completion so far, for the penalties)."""
    if not eos_ids:
        return False
    mask = None if allowed is None else allowed.unsqueeze(0)
    scores, floor = draw_check(logits.unsqueeze(0), params, position, mask, output_ids)
    return bool((scores[0, sorted(eos_ids)] >= floor[0]).any())


def verify_completion(
    hidden_and_logits: tuple[torch.Tensor, torch.Tensor],
    prompt_len: int,
    output_ids: list[int],
    proof: bytes,
    params: SamplingParams,
    eos_ids: Collection[int] = (),
    stop_completed: bool = False,
    allowed: torch.Tensor | None = None,
    stop_at: int | None = None,
) -> Verdict:
    """Judge a completion from the validator's prefill over prompt + output.
    `stop_completed`: the last output token completes one of the request's stop strings.
    `allowed`: the grammar masks of a structured-output request (`len(output_ids) + 1` rows:
    one per output token, and one for the end). `stop_at`: the index of the token that
    completed the first stop string (engine.sampling.first_stop), if one did."""
    hidden, logits = hidden_and_logits
    n = len(output_ids)
    if n > params.max_tokens:
        return Verdict(False, f"{n} tokens for max_tokens {params.max_tokens}", NOTHING, n - params.max_tokens)
    if params.temperature > 0.0 and params.seed is None:
        return Verdict(False, "a sampled completion without a seed cannot be a verifiable draw", NOTHING, n)
    # the state at position p produced the token at position p + 1
    producing = slice(prompt_len - 1, prompt_len - 1 + n)
    proof_check = check(proof, hidden[producing]) if n else NOTHING
    bad = token_check(logits[producing], output_ids, params, None if allowed is None else allowed[:n])
    reasons = [] if proof_check.ok else [f"proof: {proof_check.reason}"]
    if bad:
        reasons.append(f"{bad} of {n} tokens are not the request's draw")
    past = overrun(output_ids, params, eos_ids, stop_at, allowed)
    if past:
        reasons.append(past)
    ended = n == params.max_tokens or stop_completed or (stop_at is not None and stop_at == n - 1)
    if not ended:
        if logits.shape[0] < prompt_len + n:
            raise ValueError("the prefill must cover prompt + output to check where the output ends")
        ended = may_end(
            logits[prompt_len - 1 + n], params, n, eos_ids, None if allowed is None else allowed[n], output_ids
        )
        if not ended:
            reasons.append(
                f"the completion ends after {n} of {params.max_tokens} tokens where the model does not end it"
            )
    return Verdict(not reasons, "; ".join(reasons) or "consistent", proof_check, bad)


def overrun(
    output_ids: list[int],
    params: SamplingParams,
    eos_ids: Collection[int],
    stop_at: int | None = None,
    allowed: torch.Tensor | None = None,
) -> str | None:
    """Why the completion runs past a place where the engine had to end it, or None. Each
    token past that place is billed and was never the request's answer: a provider that
    keeps drawing after EOS or a stop string, up to `max_tokens`, bills ×3.7 on average."""
    n = len(output_ids)
    if not params.ignore_eos:  # (never set by a request: benchmarks only)
        eos = next((i for i, t in enumerate(output_ids) if t in eos_ids), None)
        if eos is not None:
            return f"runs past its end: EOS drawn as token {eos + 1}, then {n - eos - 1} more tokens"
    if stop_at is not None and stop_at < n - 1:
        return f"runs past its end: a stop string completed by token {stop_at + 1}, then {n - stop_at - 1} more tokens"
    if allowed is not None and n:
        rows = allowed[:n].clone()
        rows[:, sorted(eos_ids)] = False
        complete = (~rows.any(dim=-1)).nonzero()
        if complete.numel():
            end = int(complete[0, 0])
            return f"runs past its end: the grammar allows only the end after {end} tokens, then {n - end} more tokens"
    return None


def stop_completed(full_text: str, before_last: str, stop: Collection[str]) -> bool:
    """True if the text of all output tokens contains a stop string that the text without
    the last token does not (the last token completed it)."""
    return any(s and s in full_text and s not in before_last for s in stop)


def text_of(full_text: str, stop: Collection[str]) -> str:
    """The text a provider returns for the tokens' text: cut before the first stop string."""
    cuts = [i for i in (full_text.find(s) for s in stop if s) if i >= 0]
    return full_text[: min(cuts)] if cuts else full_text


class Checkable(Protocol):
    """What the checker needs of the claimed model (a CausalLMEngine)."""

    eos_ids: set[int]

    def prefill(self, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, token_ids: list[int]) -> str: ...


def judge(
    engine: Checkable,
    prompt_ids: list[int],
    output_ids: list[int],
    proof: bytes,
    params: SamplingParams,
    hidden_and_logits: tuple[torch.Tensor, torch.Tensor] | None = None,
    masks: Callable[[str, list[int]], torch.Tensor] | None = None,
) -> Verdict:
    """`verify_completion` with everything taken from the claimed model: its prefill over
    prompt + output (unless given), its EOS ids, whether the last token completed a stop
    string, and for a request with a grammar (`params.grammar`) the masks the output was
    drawn under (`masks`, by default the engine's `grammar_masks`)."""
    allowed = None
    if params.grammar is not None:
        masks = masks or getattr(engine, "grammar_masks", None)
        if masks is None:
            raise ValueError("a structured-output completion can only be checked with its grammar's masks")
        allowed = masks(params.grammar, output_ids)
    if hidden_and_logits is None:
        hidden_and_logits = engine.prefill(prompt_ids + output_ids)
    # where the engine stops on a stop string, by its own rule (not by re-decoding the
    # whole text: a completion that runs past its first stop string must not pass)
    stop_at = first_stop(engine.decode, output_ids, params.stop, params.max_tokens)
    return verify_completion(
        hidden_and_logits,
        len(prompt_ids),
        output_ids,
        proof,
        params,
        engine.eos_ids,
        allowed=allowed,
        stop_at=stop_at,
    )
