"""The validator's logic: a mystery shopper that audits providers (auditor), opens fraud
cases with the provider's own receipt as evidence, re-checks and votes on other
validators' cases (juror), resolves due cases and publishes reputation scores.

Audits are user traffic: the validator sends them to a gateway's OpenAI API like any
app, asking it to use one provider (`x-allmende-provider`, a header the provider never
sees) and to return what the provider committed to (`x-allmende-evidence`). The provider
gets the gateway's envelope, paid from the gateway's channel, with a body the gateway
built like every other, a prompt composed fresh from the validator's private randomness
(prompts.py) and ordinary parameters — nothing that tells it apart from a user's request.
Users' prompts never need to be shared for auditing.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from allmende.api.canonical import canonical
from allmende.api.client import DEFAULT_CREDIT_LIMIT
from allmende.api.directory import Directory, ProviderEntry
from allmende.api.headers import EVIDENCE_HEADER, PIN_HEADER
from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.bindings import ROLE_VALIDATOR, CaseRecord, CaseReport
from allmende.chain.errors import ChainError
from allmende.chain.stages import covering_layouts, registered_stages
from allmende.core import SignedReceipt
from allmende.core.endpoints import endpoint
from allmende.core.errors import InvalidInput
from allmende.core.evidence_test import Decision
from allmende.engine import load_engine
from allmende.engine.base import ChatPrompt, Kind
from allmende.engine.stages import StageEngine
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.payer.payments import ChannelPolicy, Payments
from allmende.payer.stage_payer import SessionPayer
from allmende.payer.stages import StageOffer
from allmende.payer.store import GatewayStore
from allmende.validator.accumulated import (
    MAX_CASE_AUDITS,
    Calibration,
    audit_record,
    case_evidence,
    recheck_accumulated,
)
from allmende.validator.answers import Choice, answer_stats, check_answer, choices_of, prefills_of, recheck
from allmende.validator.checker import NOTHING, Verdict
from allmende.validator.evidence import (
    MAX_EVIDENCE_BYTES,
    MAX_STAGE_EVIDENCE_BYTES,
    BadEvidence,
    Evidence,
    EvidenceStore,
    stage_positions_within,
)
from allmende.validator.fetcher import EvidenceFetcher
from allmende.validator.ledger import EvidenceLedger, standing_of
from allmende.validator.metrics import ALM, ValidatorMetrics, fault_kind
from allmende.validator.prompts import AuditTraffic
from allmende.validator.stages import StageAudit, StageAuditor, fit_prompt, recheck_stage
from allmende.validator.store import AuditRecord, ValidatorStore

log = logging.getLogger("allmende.validator")


@dataclass(frozen=True)
class ValidatorConfig:
    rpc_url: str
    key: bytes
    deployments: Path
    state_dir: Path
    models: list[str]  # models this validator can audit
    endpoint: str = "http://127.0.0.1:9500"  # where its evidence is served
    gateways: tuple[str, ...] = ()  # audits go through these gateways' APIs, as user requests
    gateway_key: str | None = None  # API key for them, if they require one
    seed: int | None = None  # fixes the audit traffic and pacing (tests); None: system randomness
    prompts: Path | None = None  # the operator's own audit prompts, one per line, mixed in
    # the honest engines' calibrated profiles (validator/accumulated.py); None: the shipped table
    evidence_profiles: Path | None = None
    # open and convict fraud cases on accumulated evidence (on by default: the shipped profiles
    # cover fp32, bf16, 1 and 2 threads, batches 1-48 and the llama.cpp paths, none accused in
    # 10,000 honest requests each, README). Off, the ledger still accumulates (status, metrics)
    # and this validator, as a juror, votes not guilty on a case resting on accumulated evidence.
    accumulated_cases: bool = True
    # audit stage providers of its models directly (validator/stages.py), paying them from its own
    # channels with this deposit each (payment-token units); 0: stage providers are not audited
    stage_deposit: int = 0
    stage_tokens: int = 8  # tokens drawn in a stage audit (a prompt call, then one call per token)
    # the account its stage audits pay from: one not linked to its validator account (None: that
    # account, whose channels a provider can tell apart, as it is registered as a validator)
    stage_payer_key: bytes | None = None


@dataclass
class Validator:
    config: ValidatorConfig
    contracts: Contracts = field(init=False)
    engines: dict[bytes, CausalLMEngine] = field(init=False)
    directory: Directory = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        client = ChainClient(cfg.rpc_url, cfg.key)
        self.contracts = Contracts(client, Deployment.load(cfg.deployments))
        self.address = client.address
        self.rng: random.Random = random.Random(cfg.seed) if cfg.seed is not None else random.SystemRandom()
        self.traffic = AuditTraffic(cfg.seed, cfg.prompts)
        self.engines = {}
        for name in cfg.models:
            engine = load_engine(name)
            if isinstance(engine, CausalLMEngine):
                self.engines[engine.model_id] = engine  # the id is computed from the files it loaded
        self.http = httpx.Client(timeout=120)
        self.directory = Directory(self.contracts, httpx.Client(timeout=5))
        self.store = ValidatorStore(cfg.state_dir / "audits.db")
        self.evidence = EvidenceStore(cfg.state_dir / "evidence")
        self.calibration = Calibration.load(cfg.evidence_profiles)
        by_model = {"0x" + m.hex(): self.calibration.allowed("0x" + m.hex()) for m in self.engines}
        self.ledger = EvidenceLedger(cfg.state_dir / "ledger.db", {m: p for m, p in by_model.items() if p})
        self.fetcher = EvidenceFetcher()  # case evidence is downloaded off this validator's thread
        self.metrics = ValidatorMetrics()
        self.involved: set[int] = set()  # cases it reported or voted on: their outcomes are logged
        self.settled: set[int] = set()  # cases whose outcome it logged
        self.abstained: set[int] = set()  # cases it could not check the evidence of
        self.shape_cache: dict[str, tuple[float, dict[str, Any] | None]] = {}  # gateway: (read at, its shapes)
        self.stage_engines: dict[bytes, StageEngine] = {}  # its copy of its models' registered stages, by id
        self.stage_payments: Payments | None = None
        if cfg.stage_deposit:
            store = GatewayStore(cfg.state_dir / "stage-channels.db")
            payer_key = cfg.stage_payer_key or cfg.key
            payer = Contracts(ChainClient(cfg.rpc_url, payer_key), self.contracts.deployment)
            self.stage_payments = Payments(store, payer, payer_key, ChannelPolicy(deposit=cfg.stage_deposit))

    # ------------------------------------------------------------ chain

    def stake(self) -> None:
        """Register as a validator with the minimum stake (idempotent)."""
        account = self.contracts.registry.account(self.address)
        minimum = self.contracts.params.get("min_validator_stake")
        add = max(0, minimum - account.stake)
        if add:
            self.contracts.token.ensure_allowance(self.contracts.registry.address, add)
        if account.role == 0 or add or account.endpoint != self.config.endpoint:
            self.contracts.registry.register(ROLE_VALIDATOR, self.config.endpoint, b"\x00" * 32, add)
        self.contracts.token.ensure_allowance(self.contracts.verdicts.address, 2**255)
        staked = self.contracts.registry.account(self.address).stake
        self.metrics.stake.set(staked / ALM)
        log.info(
            "validator %s staked %s ALM%s, evidence endpoint %s",
            self.address,
            f"{staked / ALM:g}",
            f" (added {add / ALM:g})" if add else "",
            self.config.endpoint,
        )

    def withdraw_endpoint(self) -> None:
        """On stop: publish no evidence endpoint, so the network sees it stopped (the stake
        stays bonded; `allmende stake unbond` takes it out). Re-published on the next start."""
        try:
            self.contracts.registry.register(ROLE_VALIDATOR, "", b"\x00" * 32, 0)
            log.info("validator %s stopped: evidence endpoint withdrawn from the Registry", self.address)
        except ChainError as exc:
            log.warning("could not withdraw the evidence endpoint: %s", exc)

    # ------------------------------------------------------------ audits

    def audit(self, entry: ProviderEntry, model_id: bytes) -> AuditRecord:
        """One mystery-shopper request to `entry` through a gateway, checked; opens a case if
        it fails. Unavailable (the gateway or provider did not answer): recorded, not scored."""
        engine = self.engines[model_id]
        gateway = self.rng.choice(self.config.gateways)
        started = time.monotonic()
        began = self.contracts.client.block_number()  # a verdict from here on covers this audit's fault
        if not self.contracts.registry.is_active(entry.address):
            # paused by a verdict or gone since the directory was read: nobody routes to it,
            # and a case for what it serves now would punish the same fault twice
            record = AuditRecord(entry.address, True, "unavailable: not an active provider on chain", 0.0)
            self._score(record, counted=False)
            return record
        try:
            name = self._model_name(gateway, model_id)
            kind, body = self.traffic.draw(self._shapes(gateway), name)  # a shape users send, fresh content
            evidence = ask_gateway(self.http, gateway, body, entry.address, self.config.gateway_key, kind)
            receipt = SignedReceipt.from_json(evidence["receipt"])
            receipt.verify(self.contracts.registry.receipt_domain())
        except (AuditUnavailable, InvalidInput, KeyError, TypeError) as exc:
            record = AuditRecord(entry.address, True, f"unavailable: {exc}", time.monotonic() - started)
            self._score(record, counted=False)
            return record
        latency = time.monotonic() - started
        if receipt.receipt.provider != entry.address or receipt.receipt.model_id != model_id:
            record = AuditRecord(entry.address, True, "unavailable: the gateway used another provider", latency)
            self._score(record, counted=False)
            return record
        sent = evidence["request"]
        prompt_ids: list[int] = []
        choices: list[Choice] = []
        accused = None  # the case opened on accumulated evidence after this audit, if one was
        try:
            choices = choices_of(evidence)
            prompt_ids = engine.prompt_ids(canonical(kind, sent, receipt.receipt.request_id).generation[0])
            prefills = prefills_of(engine, prompt_ids, choices)  # one pass each, read by both checks
            verdict = check_answer(engine, sent, prompt_ids, choices, receipt, kind, prefills)
            if verdict.ok:
                found = Found(sent, prompt_ids, choices[0].token_ids, choices[0].proof, choices[0].text, receipt,
                              choices if len(choices) > 1 else None, began, kind)  # fmt: skip
                accused = self._accumulate(entry, engine, found, prefills)
        except InvalidInput as exc:
            verdict = Verdict(False, f"the answer cannot be checked: {exc}", NOTHING, 0)
            choices = choices or [Choice([], b"", "")]
        record = AuditRecord(entry.address, verdict.ok, verdict.reason, latency)
        if not verdict.ok:
            first = choices[0]
            several = choices if len(choices) > 1 else None
            found = Found(sent, prompt_ids, first.token_ids, first.proof, first.text, receipt, several, began, kind)
            record.case_id = self.report(entry, found, verdict)
        else:
            record.case_id = accused
        self._score(record)
        return record

    def _accumulate(
        self, entry: ProviderEntry, engine: CausalLMEngine, found: Found, prefills: list[Any]
    ) -> int | None:
        """Add a passed audit's divergence statistics to the evidence ledger and act on the
        sequential test: "honest" closes the window, "cheating" reports the window's audits
        (the case id is returned)."""
        choices = found.choices or [Choice(found.token_ids, found.proof, found.text)]
        stats = answer_stats(engine, found.request, found.prompt_ids, choices, found.receipt, found.kind, prefills)
        if stats is None:
            return None  # a reshaped draw: checked per request, not accumulated
        model = "0x" + found.receipt.receipt.model_id.hex()
        record = audit_record(self._evidence_of(found, "audited: passed the per-request checks"), stats)
        standing = self.ledger.add(entry.address, model, stats, record)
        self.metrics.evidence.labels(entry.address).set(standing.statistic)
        if standing.decision is Decision.HONEST:
            self.ledger.close(entry.address, model, standing)
            log.info("evidence on %s (model %s…): honest after %d tokens (ratio %.1f), new window", entry.address,
                     model[:14], standing.tokens, standing.statistic)  # fmt: skip
        elif standing.decision is Decision.CHEATING and not self.config.accumulated_cases:
            log.warning("evidence on %s (model %s…) says cheating after %d tokens (ratio %.1f); no case: "
                        "--no-accumulated-cases", entry.address, model[:14], standing.tokens,
                        standing.statistic)  # fmt: skip
            self.ledger.close(entry.address, model, standing)
        elif standing.decision is Decision.CHEATING:
            profiles = self.ledger.profiles[model]
            window = self.ledger.window_audits(entry.address, model)[-MAX_CASE_AUDITS:]
            carried = standing_of([s for s, _ in window], profiles, self.ledger.test, standing.window)
            if carried.decision is not Decision.CHEATING:
                # the audits a case can carry do not prove it on their own: a juror would vote
                # not guilty on them, so audit on (the newest audits will)
                log.info("evidence on %s says cheating, but not its last %d audits alone: auditing on",
                         entry.address, MAX_CASE_AUDITS)  # fmt: skip
                return None
            document = case_evidence([a for _, a in window], carried, profiles, self.calibration.version)
            case_id = self._open_case(entry, document, found.receipt, found.block, document.reason)
            if case_id is not None or not self.contracts.registry.is_active(entry.address):
                self.ledger.close(entry.address, model, standing, case_id)  # else: reported in a later audit
            return case_id
        return None

    def _model_name(self, gateway: str, model_id: bytes) -> str:
        """The name `gateway` lists `model_id` under (what users ask for)."""
        try:
            reply = self.http.get(f"{gateway}/v1/models", headers=auth(self.config.gateway_key), timeout=10)
            listing = reply.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise AuditUnavailable(f"gateway {gateway} did not list its models: {exc}") from None
        for model in listing:
            if model.get("allmende", {}).get("model_id") == "0x" + model_id.hex():
                return str(model["id"])
        raise AuditUnavailable(f"gateway {gateway} does not list model 0x{model_id.hex()}")

    def _shapes(self, gateway: str) -> dict[str, Any] | None:
        """The request shapes `gateway` counted (`GET /v1/shapes`), read at most once a
        minute; None if it publishes none (audits then take the chat apps' shapes)."""
        cached = self.shape_cache.get(gateway)
        if cached is not None and time.monotonic() - cached[0] < SHAPES_MAX_AGE:
            return cached[1]
        try:
            reply = self.http.get(f"{gateway}/v1/shapes", headers=auth(self.config.gateway_key), timeout=10)
            published = reply.json() if reply.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            published = None
        published = published if isinstance(published, dict) else None
        self.shape_cache[gateway] = (time.monotonic(), published)
        return published

    def report(self, entry: ProviderEntry, found: Found, verdict: Verdict) -> int | None:
        """Store the evidence where other validators can fetch it and open a case."""
        return self._open_case(entry, self._evidence_of(found, verdict.reason), found.receipt, found.block,
                               verdict.reason)  # fmt: skip

    @staticmethod
    def _evidence_of(found: Found, reason: str) -> Evidence:
        r = found.receipt.receipt
        return Evidence(
            kind=found.kind,
            body=found.request,
            model_id="0x" + r.model_id.hex(),
            prompt_ids=found.prompt_ids,
            token_ids=found.token_ids,
            text=found.text,
            proof="0x" + found.proof.hex(),
            receipt=found.receipt.to_json(),
            reason=reason,
            choices=[c.to_json() for c in found.choices] if found.choices else None,
        )

    def _open_case(
        self, entry: ProviderEntry, evidence: Evidence, receipt: SignedReceipt, block: int | None, reason: str
    ) -> int | None:
        """Open (or join, or vote in) the case against `entry` with `evidence`, `receipt` its
        anchor on chain (see `report`)."""
        r = receipt.receipt
        model_id = r.model_id
        verdicts = self.contracts.verdicts
        existing = verdicts.open_case_of(entry.address, model_id)
        if existing:
            # one open case per (provider, model): report in it only what it does not prove yet
            if verdicts.is_reporter(existing, self.address):
                self.metrics.reports.labels(entry.address, "already_reported").inc()
                log.info("case %d against %s holds this validator's report already: not reported again",
                         existing, entry.address)  # fmt: skip
                return existing
            # whether the open case proves this fault already decides between a vote and a
            # report: its evidence is waited for here, at most the fetcher's deadline (a
            # server that sends nothing in time proves nothing, and this validator reports)
            limit = self._evidence_limit(model_id)
            for sent_report in verdicts.reports(existing):
                self.fetcher.wait(sent_report.evidence_uri, sent_report.evidence_hash, limit)
            if self.contracts.client.timestamp() >= verdicts.case(existing).deadline:
                self._resolve(existing)  # due: settle it, then report in a new case
                existing = 0
            elif (judged := self._judge_reports(verdicts.reports(existing), entry.address, model_id))[0] is True:
                # its evidence proves the fault already: this validator's part is a guilty vote
                self.metrics.reports.labels(entry.address, "proven_already").inc()
                log.info("case %d against %s already proves this fault: voting, not reporting", existing,
                         entry.address)  # fmt: skip
                weight = verdicts.vote_weight(existing, self.address)
                if weight and not verdicts.voted_guilty(existing, self.address):
                    self._vote(existing, entry.address, True, weight, judged[1])
                return existing
        punished = self._punished(entry.address, model_id, block)
        if punished:  # one fault, one slash: this receipt's fault was punished already
            self.metrics.reports.labels(entry.address, "punished_already").inc()
            log.info("not reporting %s: %s", entry.address, punished)
            return None
        digest = self.evidence.put(evidence)
        uri = f"{self.config.endpoint}/v1/evidence/0x{digest.hex()}"
        try:
            case_id = verdicts.open_case(r.as_tuple(), receipt.signature, digest, uri)
        except ChainError as exc:
            log.warning("could not report %s: %s", entry.address, exc)
            return None
        self.involved.add(case_id)
        action = "joined" if existing else "opened"
        self.metrics.reports.labels(entry.address, action).inc()
        case = verdicts.case(case_id)
        log.warning(
            "%s case %d against %s (model 0x%s…, bond %s ALM, voting until %s): %s",
            action,
            case_id,
            entry.address,
            model_id.hex()[:12],
            f"{case.bond / ALM:g}",
            _when(case.deadline),
            reason,
        )
        return case_id

    def _punished(self, provider: str, model_id: bytes, since_block: int | None) -> str | None:
        """Why a fault found in an audit that began at `since_block` must not be reported, or
        None: the provider is no longer active (a verdict paused it, perhaps this validator's
        own resolution a moment ago), or a case found it guilty on this model after the audit
        began (its receipt is older than that verdict: the fault was punished once)."""
        if not self.contracts.registry.is_active(provider):
            return "not an active provider on chain (paused by a verdict, or gone)"
        if since_block is None:
            return None
        verdicts = self.contracts.verdicts
        for event in self.contracts.client.events(verdicts.contract, "CaseResolved", since_block):
            if int(event["args"]["status"]) == 2:
                case = verdicts.case(int(event["args"]["case_id"]))
                if case.provider == provider and case.model_id == model_id:
                    return f"case {case.case_id} found it guilty after this audit began"
        return None

    def _score(self, record: AuditRecord, counted: bool = True) -> None:
        self.store.record(record, counted)
        result = "unavailable" if not counted else "passed" if record.ok else "failed"
        self.metrics.audits.labels(record.provider, result, fault_kind(record.ok and counted, record.reason)).inc()
        log.info(
            "audit of %s: %s (%s, %.2fs)%s",
            record.provider,
            "unavailable" if not counted else "passed" if record.ok else "FAILED",
            record.reason,
            record.latency,
            f", case {record.case_id}" if record.case_id else "",
        )

    def audit_round(self) -> list[AuditRecord]:
        """Audit every provider that offers a model this validator can check, once."""
        if not self.config.gateways:
            return []  # no gateway to send audits through: this validator only reviews cases
        self.directory.maybe_refresh()
        records = []
        for entry in self.directory.entries():
            if entry.address == self.address:
                continue
            for model_id in entry.offers:
                if model_id in self.engines:
                    records.append(self.audit(entry, model_id))
        return records

    def stage_auditors(self) -> list[StageAuditor]:
        """An auditor per layout of stages registered on chain for a model this validator holds,
        its copy of each stage loaded once (`stage_engines`: also what it re-checks a stage
        case's evidence with, as a juror)."""
        auditors = []
        for model_id, engine in self.engines.items():
            try:
                layouts = covering_layouts(registered_stages(self.contracts, model_id))
            except (ChainError, InvalidInput):
                continue  # not registered, or no stages: nothing to audit
            for layout in layouts:
                try:
                    for spec in layout.stages:
                        if spec.stage_id not in self.stage_engines:
                            self.stage_engines[spec.stage_id] = StageEngine(engine.path, spec)
                except InvalidInput as exc:  # a slice hash its copy of the model does not match
                    log.warning("cannot audit stages of 0x%s…: %s", model_id.hex()[:12], exc)
                    continue
                copy = [self.stage_engines[s.stage_id] for s in layout.stages]
                auditors.append(StageAuditor(copy, self.contracts, self.evidence, self.config.endpoint, self.rng))
        return auditors

    def stage_round(self) -> list[AuditRecord]:
        """Audit every provider of a stage of a model this validator holds, once, directly:
        a paid, sealed session from its own channels (validator/stages.py). Only with a
        deposit for those channels (`stage_deposit`)."""
        if self.stage_payments is None:
            return []
        self.directory.maybe_refresh()
        return [self.audit_stage(auditor, offer) for auditor in self.stage_auditors() for offer in auditor.offers()]

    def _stage_prompt(self, engine: CausalLMEngine, auditor: StageAuditor, tokens: int) -> list[int]:
        """A user-like prompt for a stage audit whose evidence jurors will take (`fit_prompt`)."""
        most = stage_positions_within(max(e.hidden_size for e in auditor.engines), tokens) - tokens
        return fit_prompt(lambda: engine.prompt_ids(ChatPrompt.of(self.traffic.body(engine.name)["messages"])), most)

    def audit_stage(self, auditor: StageAuditor, offer: StageOffer) -> AuditRecord:
        """One audit of a stage provider; a case opened if it fails. Unavailable (no answer to
        check): recorded, not scored."""
        assert self.stage_payments is not None
        engine = self.engines[auditor.layout.base]
        tokens = self.config.stage_tokens
        prompt = self._stage_prompt(engine, auditor, tokens)
        entry = self.directory.entry(str(offer.provider))
        credit = entry.info.credit_limit if entry else DEFAULT_CREDIT_LIMIT  # nonsense published: the default
        payer = SessionPayer(self.stage_payments, lambda _: credit, len(prompt) + tokens, tokens, None)
        started = time.monotonic()

        async def run() -> StageAudit:
            async with httpx.AsyncClient(timeout=120) as client:
                return await auditor.audit(offer, client, payer, prompt, tokens)

        found = asyncio.run(run())
        record = AuditRecord(str(offer.provider), found.ok is not False, found.reason, time.monotonic() - started)
        if found.ok is None:
            self._score(record, counted=False)
            return record
        if found.ok is False:
            record.case_id = auditor.report(found)
        self._score(record)
        return record

    # ------------------------------------------------------------ cases

    def review_cases(self) -> list[tuple[int, bool]]:
        """Vote on every open case this validator did not report in, after re-checking all of
        its evidence; again when another report joined since it voted not guilty."""
        votes = []
        verdicts = self.contracts.verdicts
        now = self.contracts.client.timestamp()
        for case_id in range(1, verdicts.case_count() + 1):
            case = verdicts.case(case_id)
            if case.status != 1 or now >= case.deadline:
                continue
            weight = verdicts.vote_weight(case_id, self.address)
            if weight == 0:
                continue  # a reporter, voted with no report joined since, or no stake at the snapshot
            if verdicts.voted(case_id, self.address) and verdicts.voted_guilty(case_id, self.address):
                continue  # more evidence cannot make a proven fault unproven
            guilty, proof = self._judge_reports(verdicts.reports(case_id), case.provider, case.model_id)
            if guilty is None:  # evidence unavailable: abstain rather than guess (said once per case)
                if case_id not in self.abstained:
                    self.abstained.add(case_id)
                    log.info("abstaining on case %d against %s: its evidence is unavailable", case_id, case.provider)
                    self.metrics.votes.labels(case.provider, "abstain").inc()
                continue
            self._vote(case_id, case.provider, guilty, weight, proof)
            votes.append((case_id, guilty))
        return votes

    def _vote(self, case_id: int, provider: str, guilty: bool, weight: int, proof: int = 0) -> None:
        self.contracts.verdicts.vote(case_id, guilty, proof)
        self.involved.add(case_id)
        self.metrics.votes.labels(provider, "guilty" if guilty else "not_guilty").inc()
        log.info(
            "voted %s on case %d against %s (weight %s ALM)",
            "guilty" if guilty else "not guilty",
            case_id,
            provider,
            _alm(weight),
        )

    def _judge_reports(self, reports: list[CaseReport], provider: str, model_id: bytes) -> tuple[bool | None, int]:
        """Guilty when any report proves the fault, with the index of the first that does (the
        vote names it: the reporter reward follows); not guilty when every report was checked
        and none does; None (abstain) otherwise. `model_id`: the case's model (or stage)."""
        limit = self._evidence_limit(model_id)
        found = [self._recheck(r.evidence_uri, r.evidence_hash, provider, limit) for r in reports]
        if True in found:
            return True, found.index(True)
        if any(f is None for f in found):
            return None, 0
        return False, 0

    def _evidence_limit(self, model_id: bytes) -> int:
        """The most bytes of a case's evidence this validator downloads: a stage's case carries
        the stage's inputs, so for a stage it holds a copy of, MAX_STAGE_EVIDENCE_BYTES (it
        would abstain on any other stage anyway); MAX_EVIDENCE_BYTES for whole models."""
        if model_id not in self.engines and model_id not in self.stage_engines:
            self.stage_auditors()  # loads its copy of the stages registered for its models
        return MAX_STAGE_EVIDENCE_BYTES if model_id in self.stage_engines else MAX_EVIDENCE_BYTES

    def _recheck(self, uri: str, digest: bytes, provider: str, limit: int = MAX_EVIDENCE_BYTES) -> bool | None:
        """True: guilty; False: not guilty (including evidence the receipt does not back);
        None: abstain (evidence unavailable, or a model this validator cannot check)."""
        try:
            evidence = self.fetcher.poll(uri, digest, limit)  # never waits: None until it has arrived
        except BadEvidence as exc:
            log.warning("case evidence at %s is not evidence: %s", uri, exc)
            return False
        if evidence is None:
            return None
        if evidence.of_stage:  # a stage provider's case: re-run with its copy of the stage
            self.stage_auditors()
            return recheck_stage(self.stage_engines, evidence, provider, self.contracts.registry.receipt_domain())
        engine = self.engines.get(bytes.fromhex(evidence.model_id[2:]))
        if engine is None:
            return None
        receipt = evidence.signed_receipt
        r = receipt.receipt
        if r.provider != provider:
            return False
        if evidence.accumulated is not None and not self.config.accumulated_cases:
            log.info("case evidence at %s rests on accumulated audits, which this validator does not judge "
                     "(--no-accumulated-cases): voting not guilty", uri)  # fmt: skip
            return False
        if evidence.accumulated is not None:  # a case on many audits: re-checked audit by audit
            found = recheck_accumulated(
                engine, evidence, provider, self.contracts.registry.receipt_domain(),
                self.calibration.allowed(evidence.model_id), rng=self.rng,
            )  # fmt: skip
            log.info("accumulated evidence at %s: %s", uri, found.reason)
            return found.guilty
        try:  # recomputed from the request the receipt binds: the reporter's ids are not trusted
            verdict = recheck(engine, evidence)
        except InvalidInput as exc:
            log.warning("case evidence at %s cannot be checked: %s", uri, exc)
            return False
        if verdict is None:  # the evidence must be what the provider signed for, or it proves nothing
            log.warning("case evidence at %s does not match the provider's receipt: voting not guilty", uri)
            return False
        return not verdict.ok

    def resolve_due(self) -> list[int]:
        """Resolve cases whose voting window is over (anyone may), then log the outcome of
        every case it reported or voted on that someone resolved."""
        done = []
        now = self.contracts.client.timestamp()
        for case_id in range(1, self.contracts.verdicts.case_count() + 1):
            case = self.contracts.verdicts.case(case_id)
            if case.status == 1 and now >= case.deadline:
                self._resolve(case_id)
                done.append(case_id)
        for case_id in sorted(self.involved - self.settled):
            self._note_outcome(self.contracts.verdicts.case(case_id))
        return done

    def _resolve(self, case_id: int) -> None:
        try:
            self.contracts.verdicts.resolve(case_id)
        except ChainError:
            if self.contracts.verdicts.case(case_id).status == 1:
                raise
            # another validator resolved it first (both saw it due)
        else:
            log.info("resolved case %d", case_id)
        self.involved.add(case_id)
        self._note_outcome(self.contracts.verdicts.case(case_id))

    def _note_outcome(self, case: CaseRecord) -> None:
        if case.status == 1 or case.case_id in self.settled:
            return
        self.settled.add(case.case_id)
        outcome = OUTCOMES.get(case.status, str(case.status))
        reporters = self.contracts.verdicts.reports(case.case_id)
        mine = any(r.reporter == self.address for r in reporters)
        if mine and self.contracts.verdicts.claimable(case.case_id, self.address) > 0:
            self.contracts.verdicts.claim(case.case_id)  # its bond back, and its reward share
        reward = 0
        if case.status == 2 and mine:
            client, verdicts = self.contracts.client, self.contracts.verdicts
            paid = client.events(verdicts.contract, "ReporterRewarded", self.contracts.deployment.deploy_block,
                                 argument_filters={"case_id": case.case_id, "reporter": self.address})  # fmt: skip
            reward = sum(int(e["args"]["reward"]) for e in paid)
        rewards = self.contracts.verdicts.rewards_of(self.address)
        self.metrics.resolutions.labels(outcome.replace(" ", "_")).inc()
        self.metrics.slashed.inc(case.slashed / ALM)
        self.metrics.rewards.set(rewards / ALM)
        log.warning(
            "case %d against %s resolved: %s, slashed %s ALM, %d report(s)%s; rewards earned so far %s ALM",
            case.case_id,
            case.provider,
            outcome,
            _alm(case.slashed),
            len(reporters),
            f", this validator's reward {_alm(reward)} ALM" if mine and case.status == 2 else "",
            _alm(rewards),
        )

    def publish_scores(self) -> int:
        items = [(p, s.score_bps) for p, s in self.store.scores().items() if s.audits]
        if not items:
            return 0
        self.contracts.verdicts.publish_scores([p for p, _ in items], [s for _, s in items])
        self.metrics.publications.inc()
        for p, score in items:
            self.metrics.score.labels(p).set(score)
        log.info("published scores: %s", ", ".join(f"{p} {s / 100:.0f}%" for p, s in items))
        return len(items)

    def status(self) -> dict[str, Any]:
        """What /status shows: the chain's view of this validator and the open cases, and its
        own audit counts. Amounts in ALM base units, as strings."""
        registry, verdicts = self.contracts.registry, self.contracts.verdicts
        account = registry.account(self.address)
        now = self.contracts.client.timestamp()
        cases = []
        for case_id in range(1, verdicts.case_count() + 1):
            case = verdicts.case(case_id)
            if case.status != 1:
                continue
            reporters = [r.reporter for r in verdicts.reports(case_id)]
            role = "reporter" if self.address in reporters else "none"
            if role == "none" and verdicts.voted(case_id, self.address):
                role = "voted guilty" if verdicts.voted_guilty(case_id, self.address) else "voted not guilty"
            cases.append(
                {"case_id": case_id, "provider": case.provider, "model_id": "0x" + case.model_id.hex(),
                 "reporters": reporters, "bond_each": str(case.bond), "bonds": str(case.bond * len(reporters)),
                 "guilty_weight": str(case.guilty_weight), "not_guilty_weight": str(case.innocent_weight),
                 "quorum_base": str(case.total_stake), "quorum_bps": case.quorum_bps, "deadline": case.deadline,
                 "seconds_left": max(0, case.deadline - now), "this_validator": role}
            )  # fmt: skip
        self.metrics.open_cases.set(len(cases))
        rewards = verdicts.rewards_of(self.address)
        self.metrics.rewards.set(rewards / ALM)
        self.metrics.stake.set(account.stake / ALM)
        counts = self.store.counts()
        return {
            "address": self.address,
            "endpoint": self.config.endpoint,
            "stake": str(account.stake),
            "unbonding": str(account.unbonding),
            "active": registry.is_active(self.address),
            "audits": counts,
            "scores": {p: s.score_bps for p, s in self.store.scores().items()},
            "evidence": self.ledger.summary(),
            "open_cases": cases,
            "rewards_earned": str(rewards),
            "chain_time": now,
        }


OUTCOMES = {2: "guilty", 3: "not guilty", 4: "inconclusive"}
SHAPES_MAX_AGE = 60.0  # seconds a gateway's published request shapes are used before they are read again


def _alm(amount: int) -> str:
    return f"{amount / ALM:,.4f}".rstrip("0").rstrip(".")


def _when(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class AuditUnavailable(Exception):
    """The audit got no answer to check (gateway or provider unavailable): not scored."""


@dataclass(frozen=True)
class Found:
    """What a failed audit found: the provider's commitments, as the gateway passed them on."""

    request: dict[str, Any]
    prompt_ids: list[int]
    token_ids: list[int]
    proof: bytes
    text: str
    receipt: SignedReceipt
    choices: list[Choice] | None = None  # n > 1: all of them (the fields above: the first)
    block: int | None = None  # the block the audit began at (None: not from an audit)
    kind: Kind = "chat"  # the request's kind (chat | completion)


def auth(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def ask_gateway(
    http: httpx.Client,
    gateway: str,
    body: dict[str, Any],
    provider: str,
    key: str | None = None,
    kind: str = "chat",
) -> dict[str, Any]:
    """Send `body` to `gateway` as a user would, served by `provider` only; return the
    evidence the gateway attaches (the request as sent, token ids, proof, signed receipt).
    Streams are read to the end like a chat app reads them."""
    headers = {**auth(key), PIN_HEADER: provider, EVIDENCE_HEADER: "1"}
    url = gateway + endpoint(kind).path
    try:
        if not body.get("stream"):
            reply = http.post(url, json=body, headers=headers)
            data = reply.json()
            if isinstance(data.get("allmende"), dict) and "evidence" in data["allmende"]:
                return dict(data["allmende"]["evidence"])  # also when the gateway refused the receipt
            if reply.status_code != 200:
                raise AuditUnavailable(f"{reply.status_code}: {data.get('error', {}).get('message')}")
            return dict(data["allmende"]["evidence"])
        with http.stream("POST", url, json=body, headers=headers) as reply:
            if reply.status_code != 200:
                reply.read()
                raise AuditUnavailable(f"{reply.status_code}: {reply.text[:200]}")
            for line in reply.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise AuditUnavailable(str(chunk["error"].get("message")))
                if "evidence" in chunk.get("allmende", {}):
                    return dict(chunk["allmende"]["evidence"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AuditUnavailable(f"gateway {gateway}: {exc}") from None
    raise AuditUnavailable(f"gateway {gateway} ended the stream without evidence")


__all__ = ["AuditRecord", "Validator", "ValidatorConfig", "ask_gateway"]
