"""The validator's prometheus metrics, one registry per validator (several run in one test
process), served at /metrics: audits (passed, failed, unavailable, by provider and kind of
fault), reports (cases opened and joined), votes, resolutions with slashes and rewards, and
score publications."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

ALM = 10**18

# What kind of fault an audit found, from the checker's reason (a short, bounded label).
FAULTS = (
    ("unavailable", "unavailable"),
    ("cannot be checked", "unchecked"),
    ("proof", "proof"),
    ("draw", "tokens"),
    ("runs past", "overrun"),
    ("ends after", "length"),
    ("max_tokens", "length"),
    ("seed", "sampling"),
    ("receipt", "receipt"),
    ("text does not match", "text"),
)


def fault_kind(ok: bool, reason: str) -> str:
    """`none` for a passed audit, else the first kind of fault its reason names."""
    if ok and not reason.startswith("unavailable"):
        return "none"
    return next((kind for key, kind in FAULTS if key in reason), "other")


class ValidatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.audits = Counter(
            "allmende_validator_audits",
            "Audits by provider and result (passed, failed, unavailable) and kind of fault",
            ["provider", "result", "fault"],
            registry=r,
        )
        self.reports = Counter(
            "allmende_validator_reports",
            "Fraud reports: a case opened, an open case joined, or a report not sent (already in the case)",
            ["provider", "action"],
            registry=r,
        )
        self.votes = Counter(
            "allmende_validator_votes", "Votes cast on other validators' cases", ["provider", "vote"], registry=r
        )
        self.resolutions = Counter(
            "allmende_validator_resolutions",
            "Outcomes of cases this validator reported, voted on or resolved",
            ["outcome"],
            registry=r,
        )
        self.slashed = Counter(
            "allmende_validator_slashed_alm", "ALM slashed in the cases counted in resolutions", registry=r
        )
        self.rewards = Gauge(
            "allmende_validator_rewards_alm", "ALM this validator was paid as reporter rewards", registry=r
        )
        self.stake = Gauge("allmende_validator_stake_alm", "This validator's bonded stake", registry=r)
        self.open_cases = Gauge("allmende_validator_open_cases", "Fraud cases open on chain", registry=r)
        self.publications = Counter(
            "allmende_validator_score_publications", "Reputation score publications", registry=r
        )
        self.score = Gauge(
            "allmende_validator_published_score_bps", "Last published score per provider", ["provider"], registry=r
        )
        self.evidence = Gauge(
            "allmende_validator_evidence_ratio",
            "Log-likelihood ratio of the open evidence window per provider (cheating at the test's upper bound)",
            ["provider"],
            registry=r,
        )


__all__ = ["ALM", "ValidatorMetrics", "fault_kind"]
