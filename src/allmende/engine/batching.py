"""The step loop every batching engine shares: one scheduler thread per loaded model.

Requests queue as `Sequence`s. At each step boundary the scheduler lets cancelled sequences
leave (their room is free at once), admits waiting ones while the backend has room for them
and the step's prompt budget lasts (at least one prompt per step, so streams keep moving), and
runs one step of the backend over every active sequence. A failed step fails the sequences in
it, not the scheduler. What a step is (a transformers forward pass over a padded batch, a
`llama_decode` over several sequence ids) is the backend's: subclasses implement `_has_room`,
`_step` and `_leave`, nothing else.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque

from allmende.engine.handoff import one_wake_per_step
from allmende.engine.sequence import Sequence


class StepScheduler(ABC):
    def __init__(self, max_batch: int, name: str, prefill_tokens: int = 2048) -> None:
        self.max_batch = max_batch  # sequences one step advances at most
        self.prefill_tokens = prefill_tokens  # prompt tokens admitted per step (at least one prompt)
        self.name = name
        self._waiting: deque[Sequence] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._active: list[Sequence] = []  # in the batch, in the backend's row order
        self.steps = 0  # steps run (for tests and metrics)
        self.largest_batch = 0  # most sequences one step advanced
        self.prefilled_prompts = 0  # distinct prompts prefilled (n choices of one prompt count once)

    # ------------------------------------------------------------- intake

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue sequences; they join the batch at the next step boundary."""
        with self._wake:
            self._waiting.extend(sequences)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=f"batch-{self.name}", daemon=True)
                self._thread.start()
            self._wake.notify()

    def cancel(self, sequence: Sequence) -> None:
        """Stop a sequence: a waiting one is dropped now, an active one leaves at the next boundary."""
        sequence.cancelled.set()
        with self._wake:
            if sequence in self._waiting:
                self._waiting.remove(sequence)
            self._wake.notify()

    @property
    def active(self) -> int:
        """Sequences in the batch still generating (not finished, not cancelled)."""
        return sum(not s.finished and not s.cancelled.is_set() for s in list(self._active))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # --------------------------------------------------------------- loop

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._active:
                    self._wake.wait()
            joining: list[Sequence] = []
            with one_wake_per_step():  # the step's token events reach each event loop together
                try:
                    self._leave([s for s in self._active if s.cancelled.is_set()])  # their room is free now
                    with self._wake:
                        joining = self._admit()
                    self._step(joining)
                except Exception as exc:  # a failed step fails the sequences in it, not the scheduler
                    for sequence in [*self._active, *joining]:
                        sequence.fail(exc)
                    self._reset()

    def _admit(self) -> list[Sequence]:
        joining: list[Sequence] = []
        budget = self.prefill_tokens
        while self._waiting and len(self._active) + len(joining) < self.max_batch:
            head = self._waiting[0]
            if joining and len(head.prompt_ids) > budget:
                break
            if not self._has_room(head, joining):
                break
            budget -= len(head.prompt_ids)
            joining.append(self._waiting.popleft())
        return joining

    def _has_room(self, sequence: Sequence, joining: list[Sequence]) -> bool:
        """Whether the backend can take `sequence` besides the active and `joining` ones."""
        return True

    @abstractmethod
    def _step(self, joining: list[Sequence]) -> None:
        """Admit `joining` and advance every active sequence by one token (`Sequence.advance`
        with its own row of logits and final hidden state); finished ones leave."""

    @abstractmethod
    def _leave(self, leaving: list[Sequence]) -> None:
        """Take sequences out of the batch and free what they held."""

    def _reset(self) -> None:
        """After a failed step: drop the whole batch."""
        self._leave(list(self._active))
        self._active = []
