"""The validator node: a mystery shopper that audits providers, opens fraud cases,
votes on other validators' cases and publishes reputation scores.

Audits go through exactly the path a gateway uses — the same discovery, payment
channel, vouchers, envelope and provider API — with prompts from a pool and the
sizes and pacing of ordinary traffic, so a provider cannot tell an audit from a
user's request and users' prompts never need to be shared for auditing.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from eth_utils import keccak

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.bindings import ROLE_VALIDATOR
from allmende.chain.errors import ChainError
from allmende.core import SignedReceipt
from allmende.engine import load_engine
from allmende.engine.base import SamplingParams
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.gateway.directory import Directory, ProviderEntry
from allmende.gateway.payments import ChannelPolicy, Payments
from allmende.gateway.store import GatewayStore
from allmende.provider.client import ProviderReplyError, build_envelope, infer
from allmende.validator.checker import Verdict, verify_completion

log = logging.getLogger("allmende.validator")

PROMPT_POOL = [
    "What is a commons and who looks after it?",
    "Erkläre mir bitte, wie ein Zahlungskanal funktioniert.",
    "Write two sentences about rivers.",
    "Give me three tips for learning a language.",
    "Was ist der Unterschied zwischen Wetter und Klima?",
    "Summarise why the sky is blue.",
    "Name a few uses of spare GPUs.",
    "How do I bake bread without yeast?",
    "Describe a quiet morning.",
    "List five animals that live in forests.",
    "Wie funktioniert eine Wahl?",
    "What is a hash function?",
]


@dataclass
class AuditRecord:
    provider: str
    ok: bool
    reason: str
    latency: float
    case_id: int | None = None


@dataclass
class ProviderScore:
    audits: int = 0
    passed: int = 0
    latency_total: float = 0.0

    @property
    def score_bps(self) -> int:
        return 10_000 * self.passed // max(self.audits, 1)


@dataclass(frozen=True)
class ValidatorConfig:
    rpc_url: str
    key: bytes
    deployments: Path
    state_dir: Path
    models: list[str]  # models this validator can audit
    endpoint: str = "http://127.0.0.1:9500"  # where its evidence is served
    max_tokens_choices: tuple[int, ...] = (16, 32, 48, 64)
    seed: int | None = None
    deposit: int = 2_000_000


@dataclass
class Validator:
    config: ValidatorConfig
    contracts: Contracts = field(init=False)
    engines: dict[bytes, CausalLMEngine] = field(init=False)
    directory: Directory = field(init=False)
    payments: Payments = field(init=False)
    scores: dict[str, ProviderScore] = field(default_factory=dict)
    records: list[AuditRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.config
        client = ChainClient(cfg.rpc_url, cfg.key)
        self.contracts = Contracts(client, Deployment.load(cfg.deployments))
        self.address = client.address
        self.rng = random.Random(cfg.seed)
        self.engines = {}
        for name in cfg.models:
            engine = load_engine(name)
            if isinstance(engine, CausalLMEngine):
                self.engines[engine.model_id] = engine  # the id is computed from the files it loaded
        self.http = httpx.Client(timeout=120)
        self.directory = Directory(self.contracts, httpx.Client(timeout=5))
        store = GatewayStore(cfg.state_dir / "validator.db")
        self.payments = Payments(store, self.contracts, cfg.key, ChannelPolicy(deposit=cfg.deposit))
        self.evidence_dir = cfg.state_dir / "evidence"
        self.evidence_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

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

    # ------------------------------------------------------------ audits

    def audit(self, entry: ProviderEntry, model_id: bytes) -> AuditRecord:
        """One mystery-shopper request to `entry`, checked; opens a case if it fails."""
        engine = self.engines[model_id]
        question = self.rng.choice(PROMPT_POOL)
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": question}],
            "max_tokens": self.rng.choice(self.config.max_tokens_choices),
        }
        if self.rng.random() < 0.5:
            body["temperature"] = 0
        else:
            body.update(temperature=0.8, top_p=0.95, seed=self.rng.randrange(2**31))
        channel_id = self.payments.channel_for(entry.address)
        voucher = self.payments.voucher(channel_id, model_id)
        rid, env, sealer = build_envelope(entry.info, model_id, "chat", body, self.address, channel_id, voucher)
        started = time.monotonic()
        try:
            answer = infer(self.http, entry.url, entry.info, self.contracts.registry.receipt_domain(), env, sealer, rid)
        except (ProviderReplyError, httpx.HTTPError) as exc:
            record = AuditRecord(entry.address, True, f"unavailable: {exc}", time.monotonic() - started)
            self._score(record, counted=False)
            return record
        latency = time.monotonic() - started
        offer = entry.offers[model_id]
        self.payments.settle(entry.address, channel_id, offer, answer.receipt, None)
        params = SamplingParams(
            max_tokens=body["max_tokens"],
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            seed=body.get("seed"),
        )
        prompt_ids = engine.prompt_ids("chat", body)
        token_ids = [int(t) for t in answer.output.get("token_ids", [])]
        proof = bytes.fromhex(str(answer.output.get("proof", "0x"))[2:])
        verdict = self.check(
            engine, prompt_ids, token_ids, proof, params, answer.output.get("text", ""), answer.receipt
        )
        record = AuditRecord(entry.address, verdict.ok, verdict.reason, latency)
        if not verdict.ok:
            record.case_id = self.report(entry, body, prompt_ids, token_ids, proof, answer, verdict)
        self._score(record)
        return record

    def check(
        self,
        engine: CausalLMEngine,
        prompt_ids: list[int],
        token_ids: list[int],
        proof: bytes,
        params: SamplingParams,
        text: str,
        receipt: SignedReceipt,
    ) -> Verdict:
        """The proof and token checks, plus: the receipt binds this proof, text and token count."""
        verdict = verify_completion(engine.prefill(prompt_ids + token_ids), len(prompt_ids), token_ids, proof, params)
        problems = [] if verdict.ok else [verdict.reason]
        r = receipt.receipt
        if proof and r.proof_hash != keccak(proof):
            problems.append("receipt proof_hash does not match the proof")
        if r.tokens_out != len(token_ids):
            problems.append("receipt token count does not match the output")
        if engine.decode(token_ids) != text:
            problems.append("text does not match the token ids")
        return Verdict(not problems, "; ".join(problems) or "consistent", verdict.proof, verdict.bad_tokens)

    def report(
        self,
        entry: ProviderEntry,
        body: dict[str, Any],
        prompt_ids: list[int],
        token_ids: list[int],
        proof: bytes,
        answer: Any,
        verdict: Verdict,
    ) -> int | None:
        """Store the evidence where other validators can fetch it and open a case."""
        evidence = {
            "kind": "chat",
            "body": body,
            "model_id": "0x" + answer.receipt.receipt.model_id.hex(),
            "prompt_ids": prompt_ids,
            "token_ids": token_ids,
            "text": answer.output.get("text", ""),
            "proof": "0x" + proof.hex(),
            "receipt": answer.receipt.to_json(),
            "reason": verdict.reason,
        }
        blob = json.dumps(evidence, sort_keys=True).encode()
        digest = keccak(blob)
        (self.evidence_dir / f"0x{digest.hex()}.json").write_bytes(blob)
        uri = f"{self.config.endpoint}/v1/evidence/0x{digest.hex()}"
        try:
            case_id = self.contracts.verdicts.open_case(
                answer.receipt.receipt.as_tuple(), answer.receipt.signature, digest, uri
            )
        except ChainError as exc:
            log.warning("could not open a case against %s: %s", entry.address, exc)
            return None
        log.warning("opened case %d against %s: %s", case_id, entry.address, verdict.reason)
        return case_id

    def _score(self, record: AuditRecord, counted: bool = True) -> None:
        with self._lock:
            self.records.append(record)
            if counted:
                s = self.scores.setdefault(record.provider, ProviderScore())
                s.audits += 1
                s.passed += int(record.ok)
                s.latency_total += record.latency

    def audit_round(self) -> list[AuditRecord]:
        """Audit every provider that offers a model this validator can check, once."""
        self.directory.maybe_refresh()
        records = []
        for entry in self.directory.entries():
            if entry.address == self.address:
                continue
            for model_id in entry.offers:
                if model_id in self.engines:
                    records.append(self.audit(entry, model_id))
        return records

    # ------------------------------------------------------------ cases

    def evidence(self, digest_hex: str) -> bytes | None:
        path = self.evidence_dir / f"{digest_hex}.json"
        return path.read_bytes() if path.exists() else None

    def review_cases(self) -> list[tuple[int, bool]]:
        """Vote on every open case this validator did not open, after re-checking its evidence."""
        votes = []
        verdicts = self.contracts.verdicts
        now = self.contracts.client.timestamp()
        for case_id in range(1, verdicts.case_count() + 1):
            case = verdicts.case(case_id)
            if case.status != 1 or case.reporter == self.address or now >= case.deadline:
                continue
            if verdicts.vote_weight(case_id, self.address) == 0:
                continue  # voted already, or it had no stake just before the case opened
            guilty = self._recheck(case.evidence_uri, case.evidence_hash, case.provider)
            if guilty is None:
                continue  # evidence unavailable: abstain rather than guess
            verdicts.vote(case_id, guilty)
            votes.append((case_id, guilty))
        return votes

    def _recheck(self, uri: str, digest: bytes, provider: str) -> bool | None:
        try:
            blob = self.http.get(uri, timeout=10).content
        except httpx.HTTPError:
            return None
        if keccak(blob) != digest:
            return None
        evidence = json.loads(blob)
        engine = self.engines.get(bytes.fromhex(evidence["model_id"][2:]))
        if engine is None:
            return None
        receipt = SignedReceipt.from_json(evidence["receipt"])
        if receipt.receipt.provider != provider:
            return False
        body = evidence["body"]
        params = SamplingParams(
            max_tokens=body["max_tokens"],
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            seed=body.get("seed"),
        )
        prompt_ids = engine.prompt_ids("chat", body)  # recomputed: the reporter's ids are not trusted
        token_ids = [int(t) for t in evidence["token_ids"]]
        proof = bytes.fromhex(evidence["proof"][2:])
        return not self.check(engine, prompt_ids, token_ids, proof, params, evidence["text"], receipt).ok

    def resolve_due(self) -> list[int]:
        """Resolve cases whose voting window is over (anyone may)."""
        done = []
        now = self.contracts.client.timestamp()
        for case_id in range(1, self.contracts.verdicts.case_count() + 1):
            case = self.contracts.verdicts.case(case_id)
            if case.status == 1 and now >= case.deadline:
                self.contracts.verdicts.resolve(case_id)
                done.append(case_id)
        return done

    def publish_scores(self) -> int:
        with self._lock:
            items = [(p, s.score_bps) for p, s in self.scores.items() if s.audits]
        if not items:
            return 0
        self.contracts.verdicts.publish_scores([p for p, _ in items], [s for _, s in items])
        return len(items)


def serve(config: ValidatorConfig, host: str, port: int, audit_interval: float, publish_every: int) -> None:
    """Run the validator: evidence over HTTP, audits, reviews, resolutions, scores."""
    import uvicorn

    validator = Validator(config)
    validator.stake()
    app = evidence_app(validator)

    def loop() -> None:
        rounds = 0
        while True:
            try:
                validator.audit_round()
                validator.review_cases()
                validator.resolve_due()
                rounds += 1
                if rounds % publish_every == 0:
                    validator.publish_scores()
            except (ChainError, httpx.HTTPError) as exc:
                log.warning("validator round failed, retrying: %s", exc)
            time.sleep(audit_interval * (0.5 + validator.rng.random()))  # jittered like user traffic

    threading.Thread(target=loop, daemon=True).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")


def evidence_app(validator: Validator) -> Any:
    """The validator's HTTP API: /healthz and /v1/evidence/<keccak hash>."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    app = FastAPI(title="Allmende validator", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "address": validator.address, "audits": len(validator.records)}

    @app.get("/v1/evidence/{digest}")
    def evidence(digest: str) -> Response:
        blob = validator.evidence(digest) if digest.startswith("0x") and len(digest) == 66 else None
        if blob is None:
            return JSONResponse({"error": {"code": "not_found", "message": "no such evidence"}}, status_code=404)
        return Response(blob, media_type="application/json")

    return app


__all__ = ["AuditRecord", "Validator", "ValidatorConfig", "serve"]
