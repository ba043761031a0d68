"""What an agent lets itself spend, checked before anything is signed: a cap per request, per
day and per model, and the models it may use. A request whose most it could cost would break
a cap is refused in the agent's own process (`SpendingCapReached`, HTTP 402 to the client) and
nothing is sent or signed. What was spent comes from the receipts the agent checked and kept
(its SQLite store); requests in flight count with their most."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from allmende.core.errors import AllmendeError

DAY = 86_400.0


class SpendingCapReached(AllmendeError):
    """A request that could cost more than the agent's spending policy allows (nothing was sent)."""

    code = "spending_cap_reached"
    status = 402


@dataclass(frozen=True)
class SpendingPolicy:
    """Caps in payment-token units (dUSD: 10**6 per dollar); None = no cap."""

    per_request: int | None = None  # the most one request may cost (its max cost by the credit rule)
    per_day: int | None = None  # over the last 24 hours, all models
    per_model: dict[str, int] = field(default_factory=dict)  # model name or 0x-id → cap per 24 hours
    models: frozenset[str] | None = None  # the models it may use (names or 0x-ids); None = any

    @property
    def unlimited(self) -> bool:
        """No cap and no allow-list: nothing to check before a request is signed."""
        return self.per_request is None and self.per_day is None and not self.per_model and self.models is None


class Budget:
    """The agent's spending ledger between its policy and the requests it sends."""

    def __init__(self, policy: SpendingPolicy, spent_since: Callable[[float, bytes | None], int]) -> None:
        self.policy = policy
        self.spent_since = spent_since  # (since, model id or None for all) → units paid since then
        self._lock = threading.Lock()
        self._held: dict[int, tuple[bytes, int]] = {}  # hold id → (model id, units) in flight
        self._next = 0

    def hold(self, name: str, model_id: bytes, most: int) -> int:
        """Reserve `most` units for a request to model `name`; SpendingCapReached if a cap
        would be broken. Returns the hold to `release` when the request ends."""
        policy = self.policy
        ident = "0x" + model_id.hex()
        if policy.models is not None and name not in policy.models and ident not in policy.models:
            raise SpendingCapReached(f"model {name} is not in this agent's allowed models")
        if policy.per_request is not None and most > policy.per_request:
            raise SpendingCapReached(
                f"this request could cost {most} units, above the per-request cap of {policy.per_request}"
            )
        since = time.time() - DAY
        with self._lock:
            held_all = sum(units for _, units in self._held.values())
            held_model = sum(units for m, units in self._held.values() if m == model_id)
            if policy.per_day is not None:
                spent = self.spent_since(since, None)
                if spent + held_all + most > policy.per_day:
                    raise SpendingCapReached(
                        f"the daily cap of {policy.per_day} units would be passed: {spent} spent in the last "
                        f"24 hours, {held_all} in flight, this request up to {most}"
                    )
            cap = policy.per_model.get(name, policy.per_model.get(ident))
            if cap is not None:
                spent = self.spent_since(since, model_id)
                if spent + held_model + most > cap:
                    raise SpendingCapReached(
                        f"the cap of {cap} units for {name} would be passed: {spent} spent on it in the last "
                        f"24 hours, {held_model} in flight, this request up to {most}"
                    )
            self._next += 1
            self._held[self._next] = (model_id, most)
            return self._next

    def release(self, hold: int) -> None:
        with self._lock:
            self._held.pop(hold, None)
