"""The stages of federated rounds a vault takes part in, keyed by (grantee, grant, run, round).

A secure round's stages come in Flower SecAgg+'s order (setup, share keys, masked vectors,
unmask), a plain FedAvg round is one stage (fit); each is accepted once, in order, only for a
round whose own setup this vault ran, and not after the round failed, was aborted or finished.
A round's setup is accepted only if no round of the same run at or after it was set up (rounds
move forward). The SecAgg+ state of a round (its Flower context) lives here with it, so no other
grantee, grant, run or round can reach it. Rounds idle longer than `ttl` are forgotten (their
reservations expire in the vault's books at the same age).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from allmende.core.vault_requests import ROUND_FIT, ROUND_SETUP, SECURE_STAGES
from allmende.vault.errors import StageRefused


@dataclass(frozen=True, order=True)
class RoundKey:
    grantee: str  # lower-case address
    grant_id: int
    run_id: int
    round: int


@dataclass
class RoundState:
    stages: tuple[str, ...]  # the round's stages in order
    done: int = 0  # how many of them completed
    busy: bool = False  # a stage is running
    ended: str = ""  # "aborted", "failed" or "finished" once it can take no more stages
    context: Any = None  # Flower's per-round context (SecAgg+ secrets)
    touched: float = field(default_factory=time.monotonic)


class RoundBook:
    def __init__(self, ttl: float = 900.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._rounds: dict[RoundKey, RoundState] = {}
        self._lock = threading.Lock()

    def begin(self, key: RoundKey, stage: str) -> RoundState:
        """Start `stage` of the round, or raise StageRefused."""
        with self._lock:
            self._forget_idle()
            state = self._rounds.get(key)
            if stage in (ROUND_SETUP, ROUND_FIT):
                if state is not None:
                    raise StageRefused(f"round {key.round} of run {key.run_id} was set up already")
                later = [
                    k.round
                    for k in self._rounds
                    if (k.grantee, k.grant_id, k.run_id) == (key.grantee, key.grant_id, key.run_id)
                ]
                if any(r >= key.round for r in later):
                    raise StageRefused(f"run {key.run_id} is at round {max(later)} already; rounds move forward")
                state = RoundState((ROUND_SETUP, *SECURE_STAGES[1:]) if stage == ROUND_SETUP else (ROUND_FIT,))
                self._rounds[key] = state
            elif state is None:
                raise StageRefused(
                    f"{stage} for round {key.round} of run {key.run_id}, whose setup this vault never ran"
                )
            elif state.ended:
                raise StageRefused(f"round {key.round} of run {key.run_id} {state.ended}; it takes no more stages")
            elif state.busy:
                raise StageRefused(f"round {key.round} of run {key.run_id} is running a stage")
            elif state.done >= len(state.stages) or state.stages[state.done] != stage:
                raise StageRefused(
                    f"{stage} is out of order in round {key.round} of run {key.run_id} "
                    f"(next: {state.stages[state.done] if state.done < len(state.stages) else 'none'})"
                )
            state.busy = True
            state.touched = self.clock()
            return state

    def complete(self, key: RoundKey) -> None:
        """The stage begun last ran through."""
        with self._lock:
            state = self._rounds[key]
            state.busy, state.done, state.touched = False, state.done + 1, self.clock()
            if state.done == len(state.stages):
                state.ended, state.context = "finished", None

    def fail(self, key: RoundKey) -> None:
        """The stage begun last failed: the round is over (its coordinator aborts it)."""
        with self._lock:
            state = self._rounds[key]
            state.busy, state.ended, state.context = False, "failed", None

    def abort(self, key: RoundKey) -> bool:
        """End the round unless it finished; returns whether it had finished here (its unmask
        ran, so its charge is logged)."""
        with self._lock:
            state = self._rounds.get(key)
            if state is None:  # never set up here: no stage of it may run later either
                self._rounds[key] = RoundState((), ended="aborted", touched=self.clock())
                return False
            if state.ended == "finished":
                return True
            state.ended, state.context = "aborted", None
            return False

    def _forget_idle(self) -> None:
        now = self.clock()
        for key in [k for k, s in self._rounds.items() if now - s.touched > self.ttl and not s.busy]:
            del self._rounds[key]
