"""Grammar-constrained decoding with llguidance: structured output that is valid by
construction, and that a validator can check.

A request's `response_format` becomes an llguidance grammar (`allmende.api.protocol.grammar_of`,
a pure function of the request body, which the receipt's inputHash binds). At every output
position the grammar allows a set of tokens given the tokens drawn before; the engine sets
every other logit to -inf before the verifiable draw, and the checker recomputes the same
masks from the same grammar and output and applies them to its own logits before checking
each draw (`grammar_masks`). When the grammar is complete, only EOS is allowed, so a
completion ends where the grammar ends it.

llguidance (Rust, no dependencies, used by vLLM, SGLang and llama.cpp) was chosen over
xgrammar (pulls in triton and a TVM runtime) and outlines-core (slower index build per schema).
"""

from __future__ import annotations

from typing import Any

import llguidance
import llguidance.hf
import numpy as np
import torch

from allmende.engine.base import EngineError


def ll_tokenizer(hf_tokenizer: Any) -> llguidance.LLTokenizer:
    """llguidance's view of a (fast) Hugging Face tokenizer; build once per model."""
    try:
        return llguidance.hf.from_tokenizer(hf_tokenizer)
    except ValueError as exc:
        raise EngineError(f"structured output needs a fast tokenizer: {exc}") from None


class Constraint:
    """The grammar's state for one sequence: which tokens may come next."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str, vocab: int, eos_ids: set[int]) -> None:
        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise EngineError(f"response_format: {self.matcher.get_error()}")
        self.vocab = vocab
        self.eos_ids = sorted(eos_ids)

    def allowed(self) -> torch.Tensor:
        """Boolean mask over the model's vocabulary of the tokens the grammar allows next."""
        allowed = torch.zeros(self.vocab, dtype=torch.bool)
        if not self.matcher.is_stopped() and not self.matcher.is_error():
            bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
            size = min(self.vocab, bits.shape[0])
            allowed[:size] = torch.from_numpy(bits[:size].astype(bool))
        if self.matcher.is_stopped() or not allowed.any():
            allowed[self.eos_ids] = True  # the grammar is complete: only the end may follow
        return allowed

    def consume(self, token: int) -> None:
        if token not in self.eos_ids and not self.matcher.is_stopped():
            self.matcher.consume_token(token)


def grammar_masks(
    tokenizer: llguidance.LLTokenizer, grammar: str, vocab: int, eos_ids: set[int], output_ids: list[int]
) -> torch.Tensor:
    """The masks a sequence drew `output_ids` under: row i before output token i, and a last
    row for what may follow them (where the checker looks for the end)."""
    constraint = Constraint(tokenizer, grammar, vocab, eos_ids)
    rows = []
    for token in output_ids:
        rows.append(constraint.allowed())
        constraint.consume(token)
    rows.append(constraint.allowed())
    return torch.stack(rows)
