"""Framing an honest provider through fields it honours (issue 29, attack 1). The provider
serves a request from its canonical form (api.canonical) and the receipt binds the request's
kind with its body, so a juror re-checks exactly what was served: the failover continuation
the provider appended, and the kind the request was sent as. Before, a juror rebuilt the
prompt without `allmende_continue` and read a `completion` body carrying `messages` as a
chat: both honest answers were voted guilty."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak

from allmende.api.canonical import canonical
from allmende.api.client import ProviderReplyError
from allmende.api.protocol import input_hash
from allmende.core import Domain, Receipt, SignedReceipt, sign_receipt
from allmende.engine import collect, load_engine
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.validator.answers import recheck
from allmende.validator.evidence import Evidence
from tests.gateway.fakes import FakeProvider
from tests.gateway.test_provider_intake import ask_kind

KEY = b"\x0b" * 32
DOMAIN = Domain(31337, "0x" + "ef" * 20)
REQUEST_ID = b"\x44" * 32
CONTINUED = {
    "messages": [{"role": "user", "content": "Tell me about the sea."}],
    "max_tokens": 12,
    "temperature": 0.7,
    "allmende_continue": "The sea is",  # what a provider that failed mid-stream had already sent
}


@pytest.fixture(scope="module")
def tiny() -> CausalLMEngine:
    engine = load_engine("allmende:tiny")
    assert isinstance(engine, CausalLMEngine)
    return engine


def served(engine: CausalLMEngine, kind: str, body: dict, signed_kind: str | None = None) -> Evidence:  # type: ignore[type-arg]
    """An honest provider's answer, served from the canonical request as provider/service.py
    does, with its signed receipt, as a case's evidence."""
    request = canonical(kind, body, REQUEST_ID)  # type: ignore[arg-type]
    prompt, params = request.generation
    ids = engine.prompt_ids(prompt)
    gen = asyncio.run(collect(engine.generate(ids, params), len(ids)))
    receipt = Receipt(
        request_id=REQUEST_ID,
        model_id=engine.model_id,
        provider=Account.from_key(KEY).address,
        input_hash=input_hash(signed_kind or kind, body),
        output_hash=keccak(gen.text.encode()),
        proof_hash=keccak(gen.proof),
        tokens_in=len(ids),
        tokens_out=len(gen.token_ids),
        amount=1,
        timestamp=1,
    )
    signed: SignedReceipt = sign_receipt(receipt, DOMAIN, KEY)
    return Evidence(
        kind=kind,
        body=body,
        model_id="0x" + engine.model_id.hex(),
        prompt_ids=ids,
        token_ids=gen.token_ids,
        text=gen.text,
        proof="0x" + gen.proof.hex(),
        receipt=signed.to_json(),
        reason="",
    )


def test_a_framer_cannot_convict_a_failover_continuation_the_provider_served_honestly(tiny: CausalLMEngine) -> None:
    evidence = served(tiny, "chat", CONTINUED)

    verdict = recheck(tiny, evidence)

    assert verdict is not None and verdict.ok, verdict and verdict.reason


def test_the_continuation_is_part_of_what_is_checked(tiny: CausalLMEngine) -> None:
    """The same answer claimed for the request without the continuation is not backed by
    the receipt, and one re-signed for it fails the check: the juror sees the difference."""
    evidence = served(tiny, "chat", CONTINUED)
    without = {k: v for k, v in CONTINUED.items() if k != "allmende_continue"}
    claimed = Evidence(**{**evidence.__dict__, "body": without})

    assert recheck(tiny, claimed) is None  # the receipt binds the body with its continuation


def test_evidence_that_names_another_kind_than_the_receipt_binds_proves_nothing(tiny: CausalLMEngine) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
    evidence = served(tiny, "completion", body)
    as_chat = Evidence(**{**evidence.__dict__, "kind": "chat"})

    assert recheck(tiny, evidence) is not None and recheck(tiny, evidence).ok  # type: ignore[union-attr]
    assert recheck(tiny, as_chat) is None  # the kind is bound with the body


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("kind", "body", "refusal"),
    [
        ("completion", {"prompt": "Once upon a time", "messages": HI}, ("invalid_request", "messages")),
        ("chat", {"messages": HI, "prompt": "Once upon a time"}, ("invalid_request", "prompt")),
        ("chat", {"messages": HI, "allmende_continue": 7}, ("invalid_request", "allmende_continue")),
        # the fake provider serves a generation model: refused by kind before the body is read
        ("embedding", {"input": "a cat", "allmende_continue": "a dog"}, ("bad_request", None)),
    ],
    ids=["completion-with-messages", "chat-with-prompt", "continuation-not-text", "embedding-continued"],
)
def test_a_body_of_mixed_kinds_sent_straight_to_a_provider_is_refused(
    tmp_path: Path,
    kind: str,
    body: dict,  # type: ignore[type-arg]
    refusal: tuple[str, str | None],
) -> None:
    """Refused as the gateway refuses it: OpenAI's code and the parameter at fault."""
    provider = FakeProvider(tmp_path)

    with pytest.raises(ProviderReplyError) as refused:
        ask_kind(provider, kind, body)

    assert (refused.value.status, refused.value.code, refused.value.param) == (400, *refusal)
    assert provider.store.receipt_count() == 0 and provider.gate.reserved(b"\x01" * 32) == 0
