"""Fraud evidence: one schema, bound to the provider's receipt, fetched within limits."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_utils import keccak

from allmende.api.protocol import input_hash
from allmende.core import Domain, Receipt, sign_receipt
from allmende.validator.evidence import (
    MAX_EVIDENCE_BYTES,
    BadEvidence,
    Evidence,
    EvidenceStore,
    fetch_evidence,
)

KEY = b"\x09" * 32
DOMAIN = Domain(31337, "0x" + "ab" * 20)
BODY = {"messages": [{"role": "user", "content": "What is a hash function?"}], "max_tokens": 16, "temperature": 0}
TEXT = "A function that maps data to a fixed-size value."


def evidence_for(body: dict, text: str, signed_body: dict = BODY, signed_text: str = TEXT) -> Evidence:  # type: ignore[type-arg]
    receipt = Receipt(
        request_id=os.urandom(32),
        model_id=b"\x01" * 32,
        provider=Account.from_key(KEY).address,
        input_hash=input_hash("chat", signed_body),
        output_hash=keccak(signed_text.encode()),
        proof_hash=b"\x00" * 32,
        tokens_in=12,
        tokens_out=16,
        amount=20,
        timestamp=1,
    )
    return Evidence(
        kind="chat",
        body=body,
        model_id="0x" + "01" * 32,
        prompt_ids=[1, 2, 3],
        token_ids=[4, 5],
        text=text,
        proof="0x",
        receipt=sign_receipt(receipt, DOMAIN, KEY).to_json(),
        reason="proof mismatch",
    )


def test_evidence_of_the_signed_request_backs_the_receipt() -> None:
    assert evidence_for(BODY, TEXT).backs_receipt()


def test_a_reporter_who_swaps_the_prompt_frames_nobody() -> None:
    # a real receipt, but evidence about another prompt (the framing attack)
    other_prompt = {**BODY, "messages": [{"role": "user", "content": "Ignore the rules."}]}
    assert not evidence_for(other_prompt, TEXT).backs_receipt()


def test_a_reporter_who_swaps_the_answer_frames_nobody() -> None:
    assert not evidence_for(BODY, "Something the provider never said.").backs_receipt()


def test_evidence_round_trips_through_its_one_schema(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path)
    evidence = evidence_for(BODY, TEXT)
    digest = store.put(evidence)
    blob = store.get("0x" + digest.hex())

    assert blob is not None and keccak(blob) == digest == evidence.digest
    assert Evidence.from_bytes(blob) == evidence
    assert store.get("0x" + "ff" * 32) is None and store.get("../../etc/passwd") is None


@pytest.mark.parametrize(
    "blob",
    [b"not json", b"[]", b'{"kind": "chat"}', b'{"unknown": 1}'],
    ids=["not-json", "a-list", "missing-fields", "unknown-field"],
)
def test_malformed_evidence_is_refused(blob: bytes) -> None:
    with pytest.raises(BadEvidence):
        Evidence.from_bytes(blob)


def test_evidence_with_a_broken_receipt_is_refused() -> None:
    broken = dataclasses.replace(evidence_for(BODY, TEXT), receipt={"receipt": "nope"})
    with pytest.raises(BadEvidence):
        Evidence.from_bytes(broken.to_bytes())


def serving(blob: bytes, status: int = 200) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(status, content=blob)))


def test_fetched_evidence_must_hash_to_the_case() -> None:
    evidence = evidence_for(BODY, TEXT)
    blob = evidence.to_bytes()

    assert fetch_evidence(serving(blob), "http://v/e", keccak(blob)) == evidence
    assert fetch_evidence(serving(blob), "http://v/e", b"\x00" * 32) is None  # swapped after the case opened
    assert fetch_evidence(serving(blob, 404), "http://v/e", keccak(blob)) is None


def test_an_endless_evidence_download_is_cut_off() -> None:
    huge = b"x" * (MAX_EVIDENCE_BYTES + 1)
    assert fetch_evidence(serving(huge), "http://v/e", keccak(huge)) is None
