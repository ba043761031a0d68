"""Fraud cases against this provider, told in its own log: a case opened against it, and its
outcome with what was slashed and what that means for serving. Before, a slashed provider's
log said nothing; its operator learnt of the slash from `allmende status` or the explorer."""

from __future__ import annotations

import datetime
import logging

from allmende.chain import Contracts

log = logging.getLogger("allmende.provider")

OPEN, GUILTY, NOT_GUILTY, NO_QUORUM = 1, 2, 3, 4


def _alm(amount: int) -> str:
    whole, frac = divmod(amount, 10**18)
    return f"{whole:,}.{frac // 10**14:04d} ALM"


def _when(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class OwnCases:
    """Follows Verdicts for cases against `contracts.client.address`; `tick()` reads the cases
    opened since the last look and the open ones against this node, and logs what changed.
    Cases decided before the node started are not told again."""

    def __init__(self, contracts: Contracts) -> None:
        self.contracts = contracts
        self.me = contracts.client.address
        self.seen = contracts.verdicts.case_count()
        self.open = [
            i for i in range(1, self.seen + 1) if self._mine(i) and contracts.verdicts.case(i).status == OPEN
        ]  # fmt: skip

    def _mine(self, case_id: int) -> bool:
        return self.contracts.verdicts.case(case_id).provider.lower() == self.me.lower()

    def tick(self) -> None:
        verdicts = self.contracts.verdicts
        count = verdicts.case_count()
        for case_id in range(self.seen + 1, count + 1):
            case = verdicts.case(case_id)
            if case.provider.lower() != self.me.lower():
                continue
            log.warning(
                "fraud case %d opened against this provider by %s (model 0x%s…): voting until %s; "
                "the evidence is this node's own signed receipt",
                case_id, case.reporter, case.model_id.hex()[:12], _when(case.deadline),
            )  # fmt: skip
            self.open.append(case_id)
        self.seen = count
        for case_id in list(self.open):
            case = verdicts.case(case_id)
            if case.status == OPEN:
                continue
            self.open.remove(case_id)
            if case.status == GUILTY:
                account = self.contracts.registry.account(self.me)
                log.warning(
                    "fraud case %d against this provider: guilty; slashed %s, stake now %s%s",
                    case_id, _alm(case.slashed), _alm(account.stake),
                    "; paused: gateways no longer route here" if account.paused else "",
                )  # fmt: skip
            else:
                outcome = "not guilty" if case.status == NOT_GUILTY else "ended without a quorum"
                log.info("fraud case %d against this provider: %s; nothing slashed", case_id, outcome)
