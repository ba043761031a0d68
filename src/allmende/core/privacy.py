"""A grant's privacy ledger: what a release is charged, exact by construction.

A vault charges a grant, on chain, for what it released under it: the growth of ε of the
grant's zero-concentrated DP (ρ-zCDP, converted to (ε, δ)) for DP-trained rounds, and the pure
ε of ε-DP answers. A charge is computed when the release is *logged*, from what is already
logged and nothing else:

    charge = micro(ε(ρ_logged + ρ)) − (the zCDP charges already logged)  [+ pure ε]

so the logged zCDP charges always add up to exactly micro(ε(ρ of every logged release)),
whatever was reserved, forgotten or undone meanwhile. A reservation (a secure round that
trained and waits for its unmask) is never part of a charge; it only counts against the
budget: a new job runs only if the grant's ε would stay within its budget were every open
reservation, and the new job, logged (`GrantLedger.worst_case`). Since ε(ρ) grows ever more
slowly in ρ, a reservation's charge estimated when it is made is an upper bound of what it
is charged when it is logged later.

ε is counted in millionths on chain, rounded up (never under-charged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MICRO = 1_000_000  # epsilon is counted in millionths on chain


def epsilon_of(rho: float, delta: float) -> float:
    """(ε, δ)-DP implied by ρ-zCDP."""
    if rho == 0:
        return 0.0
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


def micro_epsilon(eps: float) -> int:
    """Epsilon in the chain's integer units, rounded up (never under-charge)."""
    if math.isinf(eps):
        raise ValueError("training without noise has no finite epsilon")
    return math.ceil(eps * MICRO - 1e-9)


@dataclass(frozen=True)
class GrantLedger:
    """One grant's books at one vault: what is logged on chain, and what is open (reserved, or
    written and not yet known to be logged)."""

    logged_rho: float = 0.0  # zCDP of the logged releases
    logged_zcdp_micro: int = 0  # the logged charges of those (they add up to micro(ε(logged_rho)))
    logged_micro: int = 0  # every logged charge (zCDP and pure ε): the grant's ε spent on chain
    open_rho: float = 0.0  # zCDP of the open jobs
    open_micro: int = 0  # pure ε of the open jobs

    def charge(self, rho: float, delta: float, extra: int = 0) -> int:
        """What logging a release of `rho` more zCDP and `extra` pure-ε millionths costs now."""
        if not rho:
            return extra
        grown = micro_epsilon(epsilon_of(self.logged_rho + rho, delta)) - self.logged_zcdp_micro
        return extra + max(grown, 0)

    def worst_case(self, rho: float, delta: float, extra: int = 0, chain_spent: int = 0) -> int:
        """The grant's ε spent (millionths) were every open job and this one logged, in any order.
        `chain_spent` is what the chain says is spent (the larger of it and the books counts)."""
        zcdp = self.open_rho + rho
        grown = micro_epsilon(epsilon_of(self.logged_rho + zcdp, delta)) - self.logged_zcdp_micro if zcdp else 0
        return max(self.logged_micro, chain_spent) + max(grown, 0) + self.open_micro + extra

    def left(self, budget: int, delta: float, chain_spent: int = 0) -> int:
        """ε (millionths) the budget has left were every open job logged."""
        return budget - self.worst_case(0.0, delta, chain_spent=chain_spent)
