"""API-key budgets, reserved before a request and settled after it, so they are never
overshot however many requests a key has in flight.

At admission the request's most possible cost (the credit rule, CanonicalRequest.max_cost, at the
dearest price any provider of its model asks, with its largest context) is reserved
against the key's budget: the request is refused (402 insufficient_quota) when what the key
has spent (its receipts, in the gateway's store) plus what its requests in flight hold plus
this request's most would pass the budget. When the request ends, its reservation is
released; what it was charged is already in the store, from its receipts. Reservations are
taken and checked on the event loop without an await between them: 32 concurrent requests
see each other's reservations.

Budgets are set per key (`allmende gateway --budget KEY=UNITS`, GatewayLimits.budgets).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from allmende.api.canonical import CanonicalRequest
from allmende.gateway.errors import InsufficientFunds
from allmende.gateway.service import GatewayService


@dataclass(frozen=True)
class Reservation:
    key: str
    amount: int
    ident: int


class Budgets:
    """The budgets of API keys and what their requests in flight hold."""

    def __init__(self, budgets: dict[str, int]) -> None:
        self.budgets = budgets
        self.held: dict[int, Reservation] = {}
        self._ids = itertools.count(1)

    def reserve(self, service: GatewayService, key: str | None, request: CanonicalRequest) -> Reservation | None:
        """Hold the request's most cost against `key`'s budget (None: the key has none);
        InsufficientFunds when that would pass it."""
        if key is None or key not in self.budgets:
            return None
        _, most = service.most_cost(request)
        spent = service.payments.store.spent(key)
        held = sum(r.amount for r in self.held.values() if r.key == key)
        budget = self.budgets[key]
        if spent + held + most > budget:
            raise InsufficientFunds(
                f"this API key's budget is {budget} units: {spent} spent, {held} held by requests in flight, "
                f"and this request may cost up to {most}" + ("" if spent + held < budget else "; the budget is spent")
            )
        reservation = Reservation(key, most, next(self._ids))
        self.held[reservation.ident] = reservation
        return reservation

    def release(self, reservation: Reservation | None) -> None:
        """The request ended: what it was charged is in the store (its receipts)."""
        if reservation is not None:
            self.held.pop(reservation.ident, None)


__all__ = ["Budgets", "Reservation"]
