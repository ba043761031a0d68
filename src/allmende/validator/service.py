"""The validator's logic: a mystery shopper that audits providers (auditor), opens fraud
cases with the provider's own receipt as evidence, re-checks and votes on other
validators' cases (juror), resolves due cases and publishes reputation scores.

Audits go through exactly the path a gateway uses — the same discovery, payment
channel, vouchers, envelope and provider API — with prompts from a pool and the
sizes and pacing of ordinary traffic, so a provider cannot tell an audit from a
user's request and users' prompts never need to be shared for auditing.
"""

from __future__ import annotations

import logging
import random
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
from allmende.core.errors import InvalidInput
from allmende.engine import load_engine
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.gateway.directory import Directory, ProviderEntry
from allmende.gateway.payments import ChannelPolicy, Payments
from allmende.gateway.store import GatewayStore
from allmende.protocol import input_hash, sampling_params
from allmende.provider.client import ProviderReplyError, build_envelope, infer
from allmende.validator.checker import Verdict, verify_completion
from allmende.validator.evidence import BadEvidence, Evidence, EvidenceStore, fetch_evidence
from allmende.validator.store import AuditRecord, ValidatorStore

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
        payments_store = GatewayStore(cfg.state_dir / "validator.db")  # channels, vouchers, receipts
        self.payments = Payments(payments_store, self.contracts, cfg.key, ChannelPolicy(deposit=cfg.deposit))
        self.store = ValidatorStore(cfg.state_dir / "audits.db")
        self.evidence = EvidenceStore(cfg.state_dir / "evidence")

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
        rid, env, sealer = build_envelope(entry.info, model_id, "chat", body, self.payments.signer, channel_id, voucher)
        started = time.monotonic()
        try:
            answer = infer(self.http, entry.url, entry.info, self.contracts.registry.receipt_domain(), env, sealer, rid)
        except (ProviderReplyError, httpx.HTTPError) as exc:
            record = AuditRecord(entry.address, True, f"unavailable: {exc}", time.monotonic() - started)
            self._score(record, counted=False)
            return record
        latency = time.monotonic() - started
        offer = entry.offers[model_id]
        carried = voucher.voucher.cumulative_amount if voucher else 0
        self.payments.settle(entry.address, channel_id, offer, answer.receipt, None, carried)
        prompt_ids = engine.prompt_ids("chat", body)
        token_ids = [int(t) for t in answer.output.get("token_ids", [])]
        proof = bytes.fromhex(str(answer.output.get("proof", "0x"))[2:])
        verdict = self.check(engine, body, prompt_ids, token_ids, proof, answer.output.get("text", ""), answer.receipt)
        record = AuditRecord(entry.address, verdict.ok, verdict.reason, latency)
        if not verdict.ok:
            record.case_id = self.report(entry, body, prompt_ids, token_ids, proof, answer, verdict)
        self._score(record)
        return record

    def check(
        self,
        engine: CausalLMEngine,
        body: dict[str, Any],
        prompt_ids: list[int],
        token_ids: list[int],
        proof: bytes,
        text: str,
        receipt: SignedReceipt,
    ) -> Verdict:
        """The proof and token checks, plus: the receipt binds this request, this proof, text
        and token count."""
        params = sampling_params(body)  # exactly what the provider derived from the same body
        verdict = verify_completion(engine.prefill(prompt_ids + token_ids), len(prompt_ids), token_ids, proof, params)
        problems = [] if verdict.ok else [verdict.reason]
        r = receipt.receipt
        if r.input_hash != input_hash(body):
            problems.append("receipt inputHash does not match the request")
        if r.output_hash != keccak(text.encode()):
            problems.append("receipt outputHash does not match the text")
        if proof and r.proof_hash != keccak(proof):
            problems.append("receipt proof_hash does not match the proof")
        if r.tokens_out != len(token_ids):
            problems.append("receipt token count does not match the output")
        if r.tokens_in != len(prompt_ids):
            problems.append("receipt tokensIn does not match the prompt")
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
        evidence = Evidence(
            kind="chat",
            body=body,
            model_id="0x" + answer.receipt.receipt.model_id.hex(),
            prompt_ids=prompt_ids,
            token_ids=token_ids,
            text=answer.output.get("text", ""),
            proof="0x" + proof.hex(),
            receipt=answer.receipt.to_json(),
            reason=verdict.reason,
        )
        digest = self.evidence.put(evidence)
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
        self.store.record(record, counted)
        log.info(
            "audit of %s: %s (%s, %.2fs)%s",
            record.provider,
            "passed" if record.ok else "FAILED",
            record.reason,
            record.latency,
            f", case {record.case_id}" if record.case_id else "",
        )

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
            log.info("voted %s on case %d against %s", "guilty" if guilty else "not guilty", case_id, case.provider)
            votes.append((case_id, guilty))
        return votes

    def _recheck(self, uri: str, digest: bytes, provider: str) -> bool | None:
        """True: guilty; False: not guilty (including evidence the receipt does not back);
        None: abstain (evidence unavailable, or a model this validator cannot check)."""
        try:
            evidence = fetch_evidence(self.http, uri, digest)
        except BadEvidence as exc:
            log.warning("case evidence at %s is not evidence: %s", uri, exc)
            return False
        if evidence is None:
            return None
        engine = self.engines.get(bytes.fromhex(evidence.model_id[2:]))
        if engine is None:
            return None
        receipt = evidence.signed_receipt
        r = receipt.receipt
        if r.provider != provider:
            return False
        # the evidence must be what the provider signed for, or it proves nothing against it
        if not evidence.backs_receipt():
            log.warning("case evidence at %s does not match the provider's receipt: voting not guilty", uri)
            return False
        try:
            prompt_ids = engine.prompt_ids("chat", evidence.body)  # recomputed: the reporter's ids are not trusted
            verdict = self.check(
                engine,
                evidence.body,
                prompt_ids,
                evidence.token_ids,
                bytes.fromhex(evidence.proof[2:]),
                evidence.text,
                receipt,
            )
        except InvalidInput as exc:
            log.warning("case evidence at %s cannot be checked: %s", uri, exc)
            return False
        return not verdict.ok

    def resolve_due(self) -> list[int]:
        """Resolve cases whose voting window is over (anyone may)."""
        done = []
        now = self.contracts.client.timestamp()
        for case_id in range(1, self.contracts.verdicts.case_count() + 1):
            case = self.contracts.verdicts.case(case_id)
            if case.status == 1 and now >= case.deadline:
                self.contracts.verdicts.resolve(case_id)
                log.info("resolved case %d against %s", case_id, case.provider)
                done.append(case_id)
        return done

    def publish_scores(self) -> int:
        items = [(p, s.score_bps) for p, s in self.store.scores().items() if s.audits]
        if not items:
            return 0
        self.contracts.verdicts.publish_scores([p for p, _ in items], [s for _, s in items])
        log.info("published scores: %s", ", ".join(f"{p} {s / 100:.0f}%" for p, s in items))
        return len(items)


__all__ = ["AuditRecord", "Validator", "ValidatorConfig"]
