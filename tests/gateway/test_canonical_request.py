"""The one typed request the gateway builds from a client's body (api.canonical.checked) and
carries through routing, payment, the receipt check and a stream's failover: the same object
the provider builds from the body it receives, so the credit rule, the receipt check and the
provider's sampling read one max_tokens, one n and one set of stop strings."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from eth_account import Account

from allmende.api.canonical import CONTINUE, CanonicalRequest, canonical, checked
from allmende.api.protocol import InvalidParameter, check_request, input_hash
from allmende.core import Receipt, request_cost, sign_receipt
from allmende.core.credit import UNTIL_CONTEXT, max_embedding_cost, max_generation_cost
from allmende.core.eip712 import keccak256 as keccak
from allmende.core.prompts import max_prompt_tokens
from allmende.engine.base import Kind
from allmende.payer.receipts import BadReceipt, check_receipt, output_bytes, received_tokens
from tests.gateway.fakes import MODEL_ID, RECEIPTS

USER = [{"role": "user", "content": "Hallo"}]
PARTS = [{"role": "user", "content": [{"type": "text", "text": "Hal"}, {"type": "text", "text": "lo"}]}]
WEATHER = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
BODIES: list[tuple[Kind, dict[str, Any]]] = [
    ("chat", {"model": "m", "messages": USER}),
    ("chat", {"model": "m", "messages": PARTS, "max_tokens": 7, "stop": "x", "n": 3}),
    ("chat", {"model": "m", "messages": USER, "max_completion_tokens": 9, "stream": True}),
    ("chat", {"model": "m", "messages": USER, "tools": [WEATHER], "tool_choice": "required", "logprobs": True}),
    ("chat", {"model": "m", "messages": USER, "response_format": {"type": "json_object"}, "seed": 4}),
    ("completion", {"model": "m", "prompt": ["one prompt"], "max_tokens": 5, "stop": ["a", "b"]}),
    ("completion", {"model": "m", "prompt": [1, 2, 3], "n": 2}),
    ("embedding", {"model": "e", "input": ["a cat", "a dog", "a cow"]}),
    ("embedding", {"model": "e", "input": [4, 5, 6]}),
]
IDS = ["plain", "parts-max-stop-n", "max-completion-stream", "tools", "json", "text", "token-ids", "texts", "tokens"]


@pytest.mark.parametrize(("kind", "body"), BODIES, ids=IDS)
def test_the_gateway_builds_what_the_provider_builds_from_the_forwarded_body(kind: Kind, body: dict[str, Any]) -> None:
    sent = checked(kind, _copy(body))

    provider = canonical(kind, _copy(sent.body))

    assert (sent.prompt, sent.sampling, sent.n) == (provider.prompt, provider.sampling, provider.n)
    assert sent.input_hash == input_hash(kind, provider.body)
    assert sent.max_prompt_tokens == max_prompt_tokens(kind, provider.body)


@pytest.mark.parametrize(("kind", "body"), BODIES, ids=IDS)
def test_the_body_is_normalised_as_check_request_normalises_it(kind: Kind, body: dict[str, Any]) -> None:
    old = _copy(body)
    check_request(kind, old)

    assert checked(kind, _copy(body)).body == old


@pytest.mark.parametrize(
    ("kind", "body", "param"),
    [
        ("chat", {"messages": USER, "max_tokens": 0}, "max_tokens"),
        ("chat", {"messages": USER, "n": 9}, "n"),
        ("chat", {"messages": USER, "allmende_continue": "sent"}, "allmende_continue"),
        ("chat", {"messages": USER, "response_format": {"type": "xml"}}, "response_format"),
        ("chat", {"messages": USER, "tools": [{"type": "function"}]}, "tools[0]"),
        ("embedding", {"input": []}, "input"),
        ("edit", {"prompt": "hello"}, None),
    ],
    ids=["max-tokens", "n", "continuation-from-a-client", "format", "tool", "no-input", "unknown-kind"],
)
def test_a_body_the_gateway_refuses_is_refused_as_check_request_refuses_it(
    kind: str, body: dict[str, Any], param: str | None
) -> None:
    with pytest.raises(InvalidParameter) as old:
        check_request(kind, _copy(body))

    with pytest.raises(InvalidParameter) as new:
        checked(kind, _copy(body))  # type: ignore[arg-type]  # 'edit' is no Kind

    assert (str(new.value), new.value.param) == (str(old.value), old.value.param)
    assert new.value.param == param


@pytest.mark.parametrize(
    ("body", "max_tokens", "n"),
    [
        ({"messages": USER}, UNTIL_CONTEXT, 1),
        ({"messages": USER, "max_tokens": 7, "n": 3}, 7, 3),
        ({"messages": USER, "max_completion_tokens": 9}, 9, 1),
        ({"messages": USER, "max_tokens": 3, "max_completion_tokens": 5}, 3, 1),
        ({"messages": USER, "max_tokens": None, "max_completion_tokens": 5, "n": 2}, 5, 2),
    ],
    ids=["default", "max-tokens-n", "max-completion-tokens", "max-tokens-wins", "null-falls-through"],
)
def test_the_credit_rule_prices_the_max_tokens_and_n_the_provider_samples_with(
    body: dict[str, Any], max_tokens: int, n: int
) -> None:
    sent = checked("chat", _copy(body))

    sampling = canonical("chat", sent.body).generation[1]  # what the provider runs

    assert (sent.max_tokens, sent.n) == (sampling.max_tokens, n) == (max_tokens, n)
    assert sent.max_cost(512, 200_000, 600_000) == max_generation_cost(max_tokens, n, 512, 200_000, 600_000)


def test_an_embedding_is_priced_by_its_parsed_inputs() -> None:
    texts = checked("embedding", {"input": ["a", "b", "c"]})
    ids = checked("embedding", {"input": [1, 2, 3]})  # one token array, not three inputs

    assert texts.max_cost(512, 1_000_000, 0) == max_embedding_cost(3, 512, 1_000_000, 0) == 3 * 512
    assert ids.max_cost(512, 1_000_000, 0) == 512
    assert (texts.max_tokens, texts.n, texts.stop, texts.structured) == (0, 1, (), False)


def test_the_receipt_check_reads_max_tokens_n_and_stop_from_the_typed_request() -> None:
    """The check reads the derived values, not the body: a request whose typed max_tokens is 3
    refuses a fourth token, and one whose stop strings are ("b",) a text holding "b", whatever
    the body says (on the old code the check re-derived both from the body)."""
    sent = checked("chat", {"model": "fake", "messages": USER, "max_tokens": 8})
    sampling = sent.generation[1]
    tighter = dataclasses.replace(sent, sampling=dataclasses.replace(sampling, max_tokens=3))
    stopping = dataclasses.replace(sent, sampling=dataclasses.replace(sampling, stop=("b",)))
    four = {"text": "abcd", "token_ids": [1, 2, 3, 4]}
    three = {"text": "abc", "token_ids": [1, 2, 3]}

    check_receipt(_receipt(sent, four), sent, four, PRICES, 256)
    check_receipt(_receipt(tighter, three), tighter, three, PRICES, 256)
    with pytest.raises(BadReceipt, match="more than max_tokens × n = 3"):
        check_receipt(_receipt(tighter, four), tighter, four, PRICES, 256)
    with pytest.raises(BadReceipt, match="holds a requested stop string"):
        check_receipt(_receipt(stopping, three), stopping, three, PRICES, 256)


def test_n_choices_may_each_use_max_tokens_in_the_receipt_check() -> None:
    sent = checked("chat", {"model": "fake", "messages": USER, "max_tokens": 2, "n": 2})
    output = {"choices": [{"text": "ab", "token_ids": [1, 2]}, {"text": "cd", "token_ids": [3, 4]}]}

    check_receipt(_receipt(sent, output), sent, output, PRICES, 256)


# ------------------------------------------------------------------ a stream's failover


@pytest.mark.parametrize(
    ("body", "text", "tokens", "max_tokens"),
    [
        ({"max_tokens": 10}, "Hello", 4, 6),
        ({"max_completion_tokens": 10}, "Hello", 4, 6),
        ({"max_completion_tokens": 10}, "", 0, 10),
        ({"max_tokens": 3}, "Hello wor", 5, 1),
        ({}, "Hello", 4, None),
        ({"stop": ["x"], "seed": 7, "stream": True}, "He", 1, None),
    ],
    ids=["max-tokens", "max-completion-tokens", "first-try", "past-max-tokens", "until-context", "sampling-kept"],
)
def test_a_continued_stream_request_is_what_the_provider_builds_from_its_body(
    body: dict[str, Any], text: str, tokens: int, max_tokens: int | None
) -> None:
    sent = checked("chat", {"model": "m", "messages": USER, **body})

    continued = sent.continued(text, tokens)

    provider = canonical("chat", _copy(continued.body))
    assert continued.body["stream"] is True
    assert continued.body.get(CONTINUE) == (text or None)
    assert "max_completion_tokens" not in continued.body or max_tokens is None
    assert continued.body.get("max_tokens") == max_tokens
    assert continued.max_tokens == (UNTIL_CONTEXT if max_tokens is None else max_tokens)
    assert (continued.prompt, continued.sampling, continued.n) == (provider.prompt, provider.sampling, provider.n)
    assert continued.request == provider.request
    assert continued.input_hash == input_hash("chat", continued.body)
    assert CONTINUE not in sent.body and sent.body.get("stream") == body.get("stream")  # the client's untouched


def test_a_completion_stream_continues_after_its_text_too() -> None:
    sent = checked("completion", {"model": "m", "prompt": "Once", "max_tokens": 8, "stream": True})

    continued = sent.continued(" upon", 2)

    assert continued.prompt == canonical("completion", continued.body).prompt
    assert (continued.max_tokens, continued.prompt.continuation) == (6, " upon")  # type: ignore[union-attr]


def test_the_first_try_of_a_stream_sends_the_request_as_the_client_sent_it() -> None:
    sent = checked("chat", {"model": "m", "messages": USER, "max_tokens": 4, "stream": True})

    assert sent.continued("", 0) is sent


def test_an_embedding_has_no_stream_to_continue() -> None:
    with pytest.raises(InvalidParameter, match="generates no text"):
        checked("embedding", {"input": "a"}).continued("", 0)


# ------------------------------------------------------------------------------ helpers

PRICES = (200_000, 600_000)


def _copy(body: dict[str, Any]) -> dict[str, Any]:
    """A deep enough copy: the parse normalises messages in place."""
    out = dict(body)
    if isinstance(out.get("messages"), list):
        out["messages"] = [dict(m) for m in out["messages"]]
    return out


def _receipt(sent: CanonicalRequest, output: dict[str, Any]) -> Any:
    tokens_out = received_tokens(sent, output)
    receipt = Receipt(
        request_id=b"\x01" * 32,
        model_id=MODEL_ID,
        provider=Account.from_key(b"\x05" * 32).address,
        input_hash=sent.input_hash,
        output_hash=keccak(output_bytes(sent, output)),
        proof_hash=b"\x00" * 32,
        tokens_in=9,
        tokens_out=tokens_out,
        amount=request_cost(9, tokens_out, *PRICES),
        timestamp=1,
    )
    return sign_receipt(receipt, RECEIPTS, b"\x05" * 32)
