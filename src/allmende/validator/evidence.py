"""Fraud evidence: one schema, written and read here only.

A reporter stores the evidence of a failed audit under the keccak hash of its bytes and
serves it at `/v1/evidence/<hash>`; the case on chain holds that hash and URL. A juror
fetches it (at most `MAX_EVIDENCE_BYTES`, within `EVIDENCE_DEADLINE` seconds in all, not per
read; a stage's case, which carries the stage's inputs, up to `MAX_STAGE_EVIDENCE_BYTES` with
time for the extra bytes, off the thread that audits and votes: validator/fetcher.py), checks the hash, and
re-checks the completion itself. The evidence must agree with the provider's own signed
receipt — the request it holds must hash to the receipt's `inputHash` and its text to
`outputHash` — or it frames nobody: a juror votes not guilty on evidence the receipt does
not back.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_utils import keccak

from allmende.api.protocol import input_hash
from allmende.core import SignedReceipt
from allmende.core.errors import InvalidInput

# the largest evidence a juror downloads for a whole model's case: a prompt, a completion and a
# proof fit many times over
MAX_EVIDENCE_BYTES = 1 << 20
# ... and for a stage's case, which carries the stage's inputs from position 0 (float32 hidden
# states, base64 in JSON) and a receipt per call: about 2,300 positions of an 8,192-wide model,
# 3,700 of a 5,120-wide one (`stage_positions_within`). A cap of 1 MiB refused every stage case past a few hundred
# positions of a 1,024-wide model, so jurors abstained and a cheating stage went free.
MAX_STAGE_EVIDENCE_BYTES = 96 << 20
# seconds for a whole download of at most MAX_EVIDENCE_BYTES, from connecting to the last byte:
# a server that sends a byte every few seconds is cut off here, however long each read takes
EVIDENCE_DEADLINE = 10.0
# larger caps get this much more time per byte past MAX_EVIDENCE_BYTES (8 MiB/s: a juror on a
# 100 Mbit/s line fetches the largest stage case in time)
SECONDS_PER_BYTE = 1 / (8 << 20)


# what a stage case's evidence holds besides its input rows: the accused call's proof (hex, a
# commitment per 32 positions), the receipt of every call before it (a prompt call, then one
# per token drawn), and the rest of the document
STAGE_PROOF_BYTES_PER_POSITION = 64
STAGE_RECEIPT_BYTES = 2048
STAGE_EVIDENCE_SLACK = 64 << 10


def stage_positions_within(width: int, tokens: int, limit: int = MAX_STAGE_EVIDENCE_BYTES) -> int:
    """The most positions (prompt and drawn tokens) of a stage audit whose evidence stays
    within `limit`: each position is a row of `width` float32 values in base64, each drawn
    token a call with its receipt. An auditor keeps its sessions within it, so that jurors
    take the evidence of any fault it finds."""
    row = -(-4 * width // 3) * 4 + STAGE_PROOF_BYTES_PER_POSITION  # base64 of 4 * width bytes, and its proof
    return max(0, (limit - STAGE_EVIDENCE_SLACK - (tokens + 1) * STAGE_RECEIPT_BYTES) // row)


def deadline_for(limit: int, deadline: float = EVIDENCE_DEADLINE) -> float:
    """Seconds for a whole download of at most `limit` bytes: `deadline` for a whole model's
    case, and time for the extra bytes of a larger cap."""
    return deadline + max(0, limit - MAX_EVIDENCE_BYTES) * SECONDS_PER_BYTE


class BadEvidence(InvalidInput):
    code = "bad_evidence"


STAGE_EVIDENCE = "stage"  # the kind of a stage provider's case (validator/stages.py), beside chat | completion


@dataclass(frozen=True)
class Evidence:
    kind: str  # chat | completion, or STAGE_EVIDENCE
    body: dict[str, Any]  # the request exactly as sent (its canonical form is the receipt's inputHash)
    model_id: str  # 0x…
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    proof: str  # 0x… TOPLOC-style commitment
    receipt: dict[str, Any]  # the provider's signed receipt (JSON)
    reason: str  # what the reporter found
    # n > 1: every choice ({token_ids, proof, text}); the fields above then hold the first
    choices: list[dict[str, Any]] | None = None
    # a case on accumulated evidence (validator/accumulated.py): every audit of the window
    # with its statistics, the test's figures; the fields above then hold the last audit
    accumulated: dict[str, Any] | None = None

    @property
    def of_stage(self) -> bool:
        """Whether it is a stage provider's case (re-run on a copy of the stage, not a model)."""
        return self.kind == STAGE_EVIDENCE

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @property
    def digest(self) -> bytes:
        return keccak(self.to_bytes())

    @classmethod
    def from_bytes(cls, blob: bytes) -> Evidence:
        try:
            data = json.loads(blob)
            evidence = cls(**data)
            SignedReceipt.from_json(evidence.receipt)
            bytes.fromhex(evidence.proof[2:])
            bytes.fromhex(evidence.model_id[2:])
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise BadEvidence(f"evidence does not follow the schema: {exc}") from None
        if not all(isinstance(t, int) for t in [*evidence.token_ids, *evidence.prompt_ids]):
            raise BadEvidence("token ids must be integers")
        if evidence.choices is not None and not (
            isinstance(evidence.choices, list)
            and all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in evidence.choices)
        ):
            raise BadEvidence("choices must be a list of {token_ids, proof, text}")
        if evidence.accumulated is not None and not (
            isinstance(evidence.accumulated, dict) and isinstance(evidence.accumulated.get("audits"), list)
        ):
            raise BadEvidence("accumulated evidence must hold a list of audits")
        return evidence

    @property
    def signed_receipt(self) -> SignedReceipt:
        return SignedReceipt.from_json(self.receipt)

    def backs_receipt(self) -> bool:
        """True if this request and text are the ones the provider's receipt commits to
        (`inputHash`, `outputHash`): only then can the evidence speak against the provider."""
        r = self.signed_receipt.receipt
        texts = [c["text"] for c in self.choices] if self.choices else None
        output = json.dumps(texts).encode() if texts and len(texts) > 1 else self.text.encode()
        return r.input_hash == input_hash(self.kind, self.body) and r.output_hash == keccak(output)


class EvidenceStore:
    """Evidence files of this validator's reports, by hash."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, evidence: Evidence) -> bytes:
        blob = evidence.to_bytes()
        digest = keccak(blob)
        (self.folder / f"0x{digest.hex()}.json").write_bytes(blob)
        return digest

    def get(self, digest_hex: str) -> bytes | None:
        if not (digest_hex.startswith("0x") and len(digest_hex) == 66):
            return None
        try:
            bytes.fromhex(digest_hex[2:])
        except ValueError:
            return None
        path = self.folder / f"{digest_hex.lower()}.json"
        return path.read_bytes() if path.exists() else None


def fetch_evidence(
    http: httpx.Client,
    uri: str,
    digest: bytes,
    deadline: float = EVIDENCE_DEADLINE,
    limit: int = MAX_EVIDENCE_BYTES,
) -> Evidence | None:
    """The evidence at `uri` if it arrives within `deadline` and `limit` bytes and hashes to `digest`; None if
    it cannot be had (a juror then abstains); BadEvidence if it is not evidence at all. This
    blocks the calling thread for up to one read past `deadline`: the validator itself uses
    `afetch_evidence` on its fetcher's loop, which is cut off at the deadline exactly."""
    ends = time.monotonic() + deadline
    try:
        with http.stream("GET", uri, timeout=deadline) as reply:
            if reply.status_code != 200 or _too_large(reply, limit):
                return None
            chunks, size = [], 0
            for chunk in reply.iter_bytes():
                size += len(chunk)
                if size > limit or time.monotonic() > ends:
                    return None
                chunks.append(chunk)
    except httpx.HTTPError:
        return None
    return _evidence_of(b"".join(chunks), digest)


async def afetch_evidence(
    http: httpx.AsyncClient,
    uri: str,
    digest: bytes,
    deadline: float = EVIDENCE_DEADLINE,
    limit: int = MAX_EVIDENCE_BYTES,
) -> Evidence | None:
    """`fetch_evidence` on an event loop, with the deadline on the whole download: connecting,
    the headers and every byte (asyncio cancels the read in flight when it passes)."""
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(deadline), http.stream("GET", uri, timeout=deadline) as reply:
            if reply.status_code != 200 or _too_large(reply, limit):
                return None
            size = 0
            async for chunk in reply.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
    except (httpx.HTTPError, TimeoutError):
        return None
    return _evidence_of(b"".join(chunks), digest)


def _too_large(reply: httpx.Response, limit: int) -> bool:
    """The server announces more than the cap (a lie the byte count catches anyway)."""
    length = reply.headers.get("content-length", "")
    return length.isdigit() and int(length) > limit


def _evidence_of(blob: bytes, digest: bytes) -> Evidence | None:
    if keccak(blob) != digest:
        return None
    return Evidence.from_bytes(blob)
