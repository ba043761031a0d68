"""One generation inside the batch: its sampling state, its text and its proof rows.

A `Sequence` is fed one row of logits and the matching final hidden state per step
by the scheduler and decides on its own what happens next: which token (its own
seed and parameters), what text that adds (incremental detokenizer), and whether
it is finished (EOS, a stop string, its token budget). It hands events to its consumer
through `emit`, which must be safe to call from the scheduler thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

import torch

from allmende.engine.base import SamplingParams, TokenEvent
from allmende.engine.grammar import Constraint
from allmende.engine.proofs import commit
from allmende.engine.sampling import IncrementalDetokenizer, StopWatch, draw_seed, sample_token, token_logprob

Finish = Literal["stop", "length"]


class Sequence:
    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        emit: Callable[[TokenEvent | BaseException | None], None],
        decode: Callable[[list[int]], str],
        eos_ids: set[int],
        device: str,
        constraint: Constraint | None = None,  # the grammar of a structured-output request
    ) -> None:
        self.prompt_ids = prompt_ids
        self.params = params
        self.emit = emit  # TokenEvent, then None when finished, or the exception that ended it
        self.eos_ids = eos_ids
        self.seed = draw_seed(params.seed)
        self.drawn = 0  # tokens drawn so far (EOS included): the position of the next draw
        self.decode = decode
        self.constraint = constraint
        self.detokenizer = IncrementalDetokenizer(decode)
        self.hidden_rows: list[torch.Tensor] = []  # final hidden state that produced each output token
        self.cancelled = threading.Event()
        self.finished = False
        self.last_token = -1
        self.cached_tokens = 0  # prompt tokens whose cache cells came from another request (not prefilled)
        self.stops = StopWatch(params.stop)  # the checker replays the same rule (engine.sampling.first_stop)

    @property
    def token_ids(self) -> list[int]:
        return self.detokenizer.ids

    def advance(self, logits: torch.Tensor, hidden: torch.Tensor) -> bool:
        """Take one step from this sequence's row of logits and final hidden state;
        return True when the sequence is finished."""
        drawn_from = logits
        if self.constraint is not None:  # tokens the grammar does not allow cannot be drawn
            drawn_from = logits.float().cpu().masked_fill(~self.constraint.allowed(), float("-inf"))
        token = sample_token(drawn_from, self.params, self.seed, self.drawn, self.token_ids)
        self.drawn += 1
        if self.constraint is not None:
            self.constraint.consume(token)
        if token in self.eos_ids and not self.params.ignore_eos:
            return self._finish(self.detokenizer.flush(), None, "stop")
        self.hidden_rows.append(hidden)
        self.last_token = token
        logprob = None
        if self.params.logprobs is not None:
            logprob = token_logprob(logits, token, self.params.logprobs, self.decode)
        delta = self.detokenizer.push(token)
        last = len(self.token_ids) == self.params.max_tokens
        if last:
            delta += self.detokenizer.flush()
        cut = self.stops.cut(delta)
        if cut is not None:
            return self._finish(delta[:cut], token, "stop", logprob)
        if last:
            return self._finish(delta, token, "length", logprob)
        self.emit(TokenEvent(delta, token, logprob=logprob))
        return False

    def _finish(self, text: str, token: int | None, reason: Finish, logprob: dict[str, object] | None = None) -> bool:
        proof = commit(torch.stack(self.hidden_rows)) if self.hidden_rows else b""
        self.emit(TokenEvent(text, token, reason, proof, logprob, self.cached_tokens))
        self.emit(None)
        self.finished = True
        return True

    def fail(self, exc: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self.emit(exc)
