"""How one sequence picks its next token, and how its text is streamed.

Everything here belongs to one sequence and never looks at another: the batch
scheduler hands each sequence its own row of logits, and the sequence draws with its
own seed, temperature, top-p, stop strings and token budget. That keeps batch
composition out of every output (a sequence decodes the same tokens alone or among 63
others, up to floating-point noise).

The draw is verifiable: output token i is the argmax of z/T + g over the tokens the
filters keep, where g is Gumbel noise that is a public pseudo-random function of (seed, i)
and z the row's logits shaped by the request (all of it a function of the request and the
tokens drawn before i, so a validator recomputes it from its own logits):

    z = logits + logit_bias − frequency_penalty·c − presence_penalty·[c > 0]
        (c: how often each token was drawn before i in this completion, the tokens a
        provider that failed mid-stream drew included; a grammar's disallowed tokens are −inf)
    kept = top-k(z/T) ∩ nucleus(softmax(z/T), top_p) ∩ {t : softmax(z/T)_t ≥ min_p·max}
        (each filter on the same row, the most likely token always kept)

Greedy (T = 0) is the argmax of z. The provider takes the seed from the request, or from
the request id when the request has none, so the receipt binds it; a validator recomputes
g, applies it to its own logits and checks that each token is the one drawn (see
allmende.validator.checker).
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch

from allmende.engine.base import EngineError, SamplingParams

DRAW_DOMAIN = b"allmende/draw/v1"
TINY = float(np.finfo(np.float32).tiny)


def draw_seed(seed: int | None) -> int:
    """The seed a sequence draws with: the request's, or fresh randomness when it set none
    (the provider sets one from the request id, so its draws are verifiable)."""
    return seed if seed is not None else secrets.randbits(63)


def gumbel_noise(seed: int, position: int, size: int) -> torch.Tensor:
    """The Gumbel noise of output position `position`: a pseudo-random function of (seed,
    position) that anyone can recompute. Philox-4x64 (a counter-based generator with a
    published specification) keyed by BLAKE2b(seed, position) gives `size` uniform float32
    values u, and the noise is -log(-log(u))."""
    key = hashlib.blake2b(DRAW_DOMAIN + seed.to_bytes(8, "big") + position.to_bytes(8, "big"), digest_size=16)
    uniform = np.random.Generator(np.random.Philox(key=int.from_bytes(key.digest(), "big"))).random(
        size, dtype=np.float32
    )
    np.clip(uniform, TINY, 1.0 - TINY, out=uniform)
    return torch.from_numpy(-np.log(-np.log(uniform)))


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean mask of the top-p nucleus of each row of `probs` (the most likely tokens whose
    mass before them is below `top_p`; the most likely token is always in it)."""
    if top_p >= 1.0:
        return torch.ones_like(probs, dtype=torch.bool)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
    keep[..., 0] = True
    return torch.zeros_like(keep).scatter(-1, order, keep)


def shaped(logits: torch.Tensor, params: SamplingParams, drawn: Sequence[int] = ()) -> torch.Tensor:
    """One row of logits as the request shapes it before the draw (float32, on the CPU): its
    `logit_bias` added, and the tokens `drawn` before this position in the completion
    penalised, `frequency_penalty` per occurrence and `presence_penalty` once (OpenAI's
    formula), with the tokens an earlier provider drew (`params.carried`) counted before
    them. EngineError (param `logit_bias`) for a biased token id outside the row."""
    row = logits.detach().float().cpu()
    if not params.reshapes_logits:
        return row
    row = _biased(row.clone(), params)
    if drawn or params.carried:
        _penalise(row, Counter((*params.carried, *drawn)), params)
    return row


def shaped_rows(
    logits: torch.Tensor, params: SamplingParams, output_ids: Sequence[int], first_position: int = 0
) -> torch.Tensor:
    """Rows of logits for output positions first_position, … shaped as `shaped` shapes each
    (the same operations, so the same numbers): row i penalises the tokens of `output_ids`
    before position first_position + i (and `params.carried`, drawn before position 0). What
    the checker applies to its prefill's rows."""
    if not params.reshapes_logits:
        return logits
    rows = _biased(logits.detach().float().cpu().clone(), params)
    if not (params.presence_penalty or params.frequency_penalty):
        return rows.to(logits.device)
    counts = Counter((*params.carried, *output_ids[:first_position]))
    for i in range(rows.shape[0]):
        if counts:
            _penalise(rows[i], counts, params)
        if first_position + i < len(output_ids):
            counts[output_ids[first_position + i]] += 1
    return rows.to(logits.device)


def _biased(rows: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """`rows` (one or many) with the request's logit bias added, in place."""
    if params.logit_bias:
        ids = torch.tensor([token for token, _ in params.logit_bias])
        if int(ids.max()) >= rows.shape[-1]:
            raise EngineError(f"logit_bias token ids must be below the vocabulary size {rows.shape[-1]}", "logit_bias")
        rows[..., ids] += torch.tensor([bias for _, bias in params.logit_bias], dtype=rows.dtype)
    return rows


def _penalise(row: torch.Tensor, counts: Counter[int], params: SamplingParams) -> None:
    """Subtract OpenAI's penalties from one row, in place: c·frequency + presence for each
    token drawn c > 0 times."""
    if not (params.presence_penalty or params.frequency_penalty):
        return
    ids = torch.tensor(list(counts))
    times = torch.tensor(list(counts.values()), dtype=row.dtype)
    row[ids] -= params.frequency_penalty * times + params.presence_penalty


def rank_filters(
    scaled: torch.Tensor, params: SamplingParams, widen: torch.Tensor | float = 0.0
) -> torch.Tensor | None:
    """Boolean mask of the tokens `top_k` and `min_p` leave in each row of `scaled` (shaped
    logits ÷ T), or None when neither is set. `widen`: how far (in scaled units, per row or
    for all) a row may be off: > 0 keeps every token a row that close could have kept, < 0
    only those it certainly kept (the checker's two bounds); the most likely token is always
    kept."""
    if not params.top_k and not params.min_p:
        return None
    top = scaled.max(dim=-1, keepdim=True).values
    margin = widen.unsqueeze(-1) if isinstance(widen, torch.Tensor) else torch.tensor(widen)
    keep = torch.ones_like(scaled, dtype=torch.bool)
    if params.top_k and params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[..., -1:]
        keep &= scaled >= kth - margin
    if params.min_p:  # p >= min_p * p_max  <=>  z/T >= max(z/T) + log(min_p)
        keep &= scaled >= top + math.log(params.min_p) - margin
    return keep | (scaled == top)


def draw_scores(
    logits: torch.Tensor, params: SamplingParams, seed: int, position: int, drawn: Sequence[int] = ()
) -> torch.Tensor:
    """Gumbel-max scores of one row: the token with the highest score is the draw. Outside
    the tokens top-k, top-p and min-p keep a score is -inf. Taking the argmax of z/T +
    Gumbel noise is an exact sample from softmax(z/T) restricted to those tokens."""
    row = shaped(logits, params, drawn)
    scaled = row / params.temperature
    keep = rank_filters(scaled, params)
    if params.top_p < 1.0:
        inside = nucleus(torch.softmax(scaled, dim=-1), params.top_p)
        keep = inside if keep is None else keep & inside
    if keep is not None:
        scaled = scaled.masked_fill(~keep, float("-inf"))
    return scaled + gumbel_noise(seed, position, row.shape[-1])


def sample_token(
    logits: torch.Tensor, params: SamplingParams, seed: int, position: int, drawn: Sequence[int] = ()
) -> int:
    """Output token `position` of a sequence, from its row of logits and the tokens it drew
    before (`drawn`, for the penalties): the argmax of the shaped logits at temperature 0;
    else the Gumbel-max draw of (seed, position) — the verifiable draw a validator
    recomputes from its own logits (allmende.validator.checker)."""
    if params.temperature == 0.0:
        row = shaped(logits, params, drawn) if params.reshapes_logits else logits
        if row.dtype == torch.float32 and row.device.type == "cpu" and not row.requires_grad:
            # the same argmax (the first of equal maxima) through numpy: a torch op on a CPU
            # row of 49,152 costs ten times the CPU of the scan (dispatch, its thread pool),
            # once per token of every greedy sequence
            return int(np.argmax(row.numpy()))
        return int(torch.argmax(row).item())
    return int(torch.argmax(draw_scores(logits, params, seed, position, drawn)).item())


def token_logprob(logits: torch.Tensor, token: int, top: int, decode: Callable[[list[int]], str]) -> dict[str, object]:
    """The log-probability of `token` and of the `top` most likely tokens under the model's
    distribution at this row (softmax of the raw logits: before temperature and top-p, as
    OpenAI reports them), in OpenAI's chat shape. The same row the draw used, so a
    validator's prefill reproduces these numbers within floating-point noise."""
    logprobs = torch.log_softmax(logits.detach().float().cpu(), dim=-1)

    def entry(token_id: int) -> dict[str, object]:
        text = decode([token_id])
        return {"token": text, "bytes": list(text.encode()), "logprob": float(logprobs[token_id])}

    out = entry(token)
    alternatives = torch.topk(logprobs, min(top, logprobs.shape[-1])).indices.tolist() if top else []
    out["top_logprobs"] = [entry(int(t)) for t in alternatives]
    return out


class StopWatch:
    """Where a sequence's stop strings end it, fed the text pieces of its tokens as they are
    streamed. The engine's sequences stop where it says, and the checker replays the same
    pieces through it, so the two agree on the token a completion had to end at.

    It keeps the last characters a stop string could still begin in, so a stop string split
    over several pieces is found in the piece that completes it."""

    def __init__(self, stop: tuple[str, ...] | list[str]) -> None:
        self.stop = tuple(s for s in stop if s)
        self._tail = ""
        self._window = max((len(s) for s in self.stop), default=1) - 1

    def cut(self, piece: str) -> int | None:
        """None if no stop string is complete yet; else the length of `piece` that is still
        text (the first stop string begins there, or began before it: 0)."""
        if not self.stop or not piece:
            return None
        window = self._tail + piece
        hits = [i for i in (window.find(s) for s in self.stop) if i >= 0]
        if hits:
            return max(0, min(hits) - len(self._tail))
        self._tail = window[len(window) - self._window :] if self._window else ""
        return None


def first_stop(
    decode: Callable[[list[int]], str], token_ids: list[int], stop: tuple[str, ...] | list[str], max_tokens: int
) -> int | None:
    """The index of the token at which a sequence drawing `token_ids` stops on one of its stop
    strings (the token whose text completes the first one), or None: the engine's rule
    (allmende.engine.sequence), replayed with the same detokenizer and StopWatch."""
    watch = StopWatch(stop)
    if not watch.stop:
        return None
    detokenizer = IncrementalDetokenizer(decode)
    for i, token in enumerate(token_ids):
        piece = detokenizer.push(token)
        if i + 1 == max_tokens:
            piece += detokenizer.flush()
        if watch.cut(piece) is not None:
            return i
    return None


class IncrementalDetokenizer:
    """Text of a growing list of token ids, one piece per token, in O(1) decodes per token.

    Decodes a short window (the previous token and the ones after it) instead of the whole
    output: the new text is what the window decodes to beyond what its first part decoded
    to, so tokenizers that render a token differently at the start of a text (leading
    spaces) stay right. A piece that ends in an incomplete UTF-8 character is held back
    until a later token completes it; `flush` releases whatever is held. The pieces always
    add up to `decode(all ids)`."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0  # the window starts here ...
        self._read = 0  # ... and everything before this index has been emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self.ids):
            return ""
        before = self._decode(self.ids[self._prefix : self._read])
        text = self._decode(self.ids[self._prefix :])
        if not final and (text.endswith("\ufffd") or len(text) <= len(before)):
            return ""  # incomplete character, or nothing visible yet: wait for more tokens
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(before) :]
