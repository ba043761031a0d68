"""How one sequence picks its next token, and how its text is streamed.

Everything here belongs to one sequence and never looks at another: the batch
scheduler hands each sequence its own row of logits, and the sequence draws with its
own generator, temperature, top-p, stop strings and token budget. That keeps batch
composition out of every output (a sequence decodes the same tokens alone or among 63
others, up to floating-point noise), and keeps the sampling rule in one function that
a verifiable draw can replace.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from allmende.engine.base import SamplingParams

SEED_MASK = (1 << 63) - 1


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Sampling parameters of choice `index` of an `n > 1` request: choice 0 is the request
    itself, choice i draws from seed + i (unseeded choices each draw fresh randomness)."""
    if index == 0 or params.seed is None:
        return params
    return SamplingParams(
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        seed=(params.seed + index) & SEED_MASK,
        stop=params.stop,
        ignore_eos=params.ignore_eos,
    )


def new_generator(params: SamplingParams, device: str) -> torch.Generator:
    """The sequence's own random stream: seeded when the request fixed a seed."""
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One draw from one sequence's logits (a 1-D row): greedy at temperature 0; else
    temperature, then the top-p nucleus, then a multinomial draw from `generator`."""
    if params.temperature == 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    choice = torch.multinomial(probs / probs.sum(), 1, generator=generator)
    return int(choice.item())


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
