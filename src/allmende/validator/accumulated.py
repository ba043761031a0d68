"""Fraud cases on accumulated evidence: what a reporter sends and what a juror re-checks.

A provider that serves a quantised copy or a near sibling of the registered model passes
every single audit; its evidence ledger (ledger.py) tips to "cheating" after some hundreds
of audited tokens. The case then rests on the window's audits: each one's request, answer,
proof and the provider's signed receipt, with the statistics the reporter computed. On
chain it is an ordinary case (`Verdicts.open_case` with the last audit's receipt as its
anchor, the evidence document's hash and URL): the contract counts stake-weighted votes and
nothing else, so its gas does not grow with the number of audits.

A juror trusts none of the reporter's numbers (`recheck_accumulated`):
1. every audit's receipt is signed by the accused provider for the case's model, is one of a
   kind (no request id twice: a reporter cannot count one unlucky audit many times), and
   binds the audit's request and text (`Evidence.backs_receipt`);
2. it recomputes the statistics of a random sample of the audits with its own prefill (by
   default all of them, up to `JUROR_SAMPLE`), and finds the reporter's numbers for those
   no worse for the provider than its own (else the reporter inflated them: not guilty);
3. it runs the sequential test itself, with its own calibrated profiles for the model's
   registration (not the document's), its own numbers for the sampled audits and the
   reporter's (checked) numbers for the rest: guilty only if the test says "cheating".
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from allmende.api.canonical import canonical
from allmende.core.eip712 import Domain
from allmende.core.endpoints import request_kind
from allmende.core.errors import InvalidInput
from allmende.core.evidence_test import ALPHA, BETA, LEVEL_SHIFT, Decision, Profile, SequentialTest
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.validator.answers import Choice, answer_stats, choices_of
from allmende.validator.divergence import AuditStats
from allmende.validator.evidence import BadEvidence, Evidence
from allmende.validator.ledger import Standing, counts_of, standing_of

# audits a juror recomputes at most (each one prefill): all of a case's, up to this many
JUROR_SAMPLE = 64
# the most audits one case carries (a few KB each: within evidence.MAX_EVIDENCE_BYTES)
MAX_CASE_AUDITS = 128
PROFILES_FILE = "honest_profiles.json"


@dataclass(frozen=True)
class Calibration:
    """The honest profiles shipped with the validator (honest_profiles.json, made by
    bench/calibrate_evidence.py) and which of them each registration allows."""

    version: int
    profiles: dict[str, Profile]
    registrations: dict[str, list[str]]  # model id (0x…) → names of the honest profiles it allows

    def allowed(self, model_id: str) -> list[Profile]:
        return [self.profiles[n] for n in self.registrations.get(model_id.lower(), []) if n in self.profiles]

    def by_model(self) -> dict[str, list[Profile]]:
        return {m: self.allowed(m) for m in self.registrations}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        profiles = {name: Profile.from_json(p) for name, p in data["profiles"].items()}
        registrations = {str(k).lower(): [str(n) for n in v] for k, v in data.get("registrations", {}).items()}
        return cls(int(data["version"]), profiles, registrations)

    @classmethod
    def load(cls, path: Path | None = None) -> Calibration:
        """The shipped table, or the one at `path`."""
        text = path.read_text() if path else resources.files("allmende.validator").joinpath(PROFILES_FILE).read_text()
        return cls.from_json(json.loads(text))


def audit_record(evidence: Evidence, stats: AuditStats) -> dict[str, Any]:
    """One audit as the ledger keeps it and a case carries it."""
    return {**asdict(evidence), "stats": stats.to_json()}


def case_evidence(
    audits: list[dict[str, Any]], standing: Standing, profiles: list[Profile], calibration: int
) -> Evidence:
    """The evidence document of an accumulated case: the last audit at the top (its receipt
    is the case's anchor on chain), every audit of the window in `accumulated`."""
    kept = audits[-MAX_CASE_AUDITS:]
    last = {k: v for k, v in kept[-1].items() if k != "stats"}
    reason = (
        f"accumulated evidence: {standing.tokens} audited tokens in {standing.audits} audits, log-likelihood "
        f"ratio {standing.statistic:.1f} against every honest engine allowed ({', '.join(p.name for p in profiles)}); "
        f"the test says cheating at alpha {ALPHA:g}, beta {BETA:g}"
    )
    accumulated = {
        "audits": kept,
        "statistic": round(standing.statistic, 3),
        "ratios": {k: round(v, 3) for k, v in standing.ratios.items()},
        "profiles": [p.name for p in profiles],
        "calibration": calibration,
        "alpha": ALPHA,
        "beta": BETA,
    }
    return Evidence(**{**last, "reason": reason, "accumulated": accumulated})


@dataclass(frozen=True)
class Rechecked:
    """A juror's finding on an accumulated case."""

    guilty: bool
    reason: str
    standing: Standing | None = None


def recheck_accumulated(
    engine: CausalLMEngine,
    evidence: Evidence,
    provider: str,
    domain: Domain,
    profiles: list[Profile],
    test: SequentialTest | None = None,
    sample: int = JUROR_SAMPLE,
    rng: random.Random | None = None,
) -> Rechecked:
    """The juror's verdict on an accumulated case (see the module docstring). `profiles`: the
    honest engines the model's registration allows, from the juror's own calibration."""
    test = test or SequentialTest()
    if not profiles:
        return Rechecked(False, "no calibrated honest profile for this model: the test cannot convict")
    raw = (evidence.accumulated or {}).get("audits")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_CASE_AUDITS:
        return Rechecked(False, "the case carries no audits, or too many")
    audits: list[tuple[Evidence, AuditStats]] = []
    seen: set[bytes] = set()
    try:
        for item in raw:
            fields = {k: v for k, v in item.items() if k not in ("stats", "accumulated")}
            audit = Evidence.from_bytes(json.dumps(fields).encode())
            audits.append((audit, AuditStats.from_json(item["stats"])))
    except (BadEvidence, KeyError, TypeError, ValueError, AttributeError) as exc:
        return Rechecked(False, f"an audit does not follow the schema: {exc}")
    for audit, _ in audits:
        r = audit.signed_receipt.receipt
        if (
            r.provider != provider
            or "0x" + r.model_id.hex() != evidence.model_id
            or audit.model_id != evidence.model_id
        ):
            return Rechecked(False, "an audit is another provider's or another model's")
        if r.request_id in seen:
            return Rechecked(False, "an audit is counted twice")
        seen.add(r.request_id)
        try:
            audit.signed_receipt.verify(domain)
        except InvalidInput:
            return Rechecked(False, "an audit's receipt is not signed by the provider")
        if not audit.backs_receipt():
            return Rechecked(False, "an audit is not what the provider's receipt binds")
    rng = rng or random.SystemRandom()
    picked = set(rng.sample(range(len(audits)), min(sample, len(audits))))
    own: list[AuditStats] = []
    for i, (audit, claimed) in enumerate(audits):
        if i not in picked:
            own.append(claimed)
            continue
        try:
            mine = _stats_of(engine, audit)
        except InvalidInput as exc:
            return Rechecked(False, f"an audit cannot be checked: {exc}")
        if _worse(claimed, mine, profiles):
            return Rechecked(False, f"the reporter's statistics of audit {i + 1} are not what the juror recomputes")
        own.append(mine)
    standing = standing_of(own, profiles, test)
    if standing.decision is Decision.CHEATING:
        return Rechecked(True, f"recomputed: {standing.tokens} tokens, ratio {standing.statistic:.1f}", standing)
    return Rechecked(False, f"recomputed: the test says {standing.decision.value} ({standing.statistic:.1f})", standing)


def _stats_of(engine: CausalLMEngine, audit: Evidence) -> AuditStats:
    """The statistics of one audit from the request its receipt binds, recomputed here.
    InvalidInput for a draw the ledger never accumulates (a reporter may not add one)."""
    receipt = audit.signed_receipt
    kind = request_kind(audit.kind)  # InvalidInput for one that is not served
    prompt_ids = engine.prompt_ids(canonical(kind, audit.body, receipt.receipt.request_id).generation[0])
    choices: list[Choice] = choices_of({**asdict(audit), "choices": audit.choices})
    stats = answer_stats(engine, audit.body, prompt_ids, choices, receipt, kind)
    if stats is None:
        raise InvalidInput("its draw is not one the ledger accumulates")
    return stats


def _worse(claimed: AuditStats, mine: AuditStats, profiles: list[Profile]) -> bool:
    """True if the reporter's numbers count more against the provider than the juror's own,
    beyond one observation per stream (a threshold that float noise between machines moves),
    or beyond one design shift of the chunk errors' level (the reporter cannot inflate them)."""
    if claimed.tokens != mine.tokens or len(claimed.chunk_errors) != len(mine.chunk_errors):
        return True
    theirs, ours = counts_of([claimed], profiles), counts_of([mine], profiles)
    return any(
        theirs[p.name].mismatches > ours[p.name].mismatches + 1
        or theirs[p.name].exceeding > ours[p.name].exceeding + 1
        or theirs[p.name].level > ours[p.name].level + LEVEL_SHIFT
        for p in profiles
    )
