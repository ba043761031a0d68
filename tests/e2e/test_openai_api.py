"""The gateway through the official openai client, on a network started by `allmende up`."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from allmende.api.canonical import canonical
from allmende.core import SignedReceipt
from allmende.engine import load_engine
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.validator.answers import check_answer, choices_of
from tests.e2e.conftest import Network

CHAT = [{"role": "user", "content": "Hallo, wer bist du?"}]
TOOL = {"type": "function", "function": {"name": "the weather", "parameters": {"type": "object", "properties": {}}}}


def test_models_lists_every_served_model(network: Network) -> None:
    models = {m.id: m for m in network.client.models.list().data}

    assert set(models) == {"allmende:tiny", "minilm", "smollm2-135m-instruct"}
    extra = models["allmende:tiny"].model_extra["allmende"]
    assert extra["providers"] == 3 and extra["kind"] == "generate"
    assert extra["model_id"] == "0x11419bb2d012e4d1be2e2b08c0a5bf7989eee37483da38f27e1c13a8d3e9ab13"


def test_chat_completion(network: Network) -> None:
    reply = network.client.chat.completions.create(model="allmende:tiny", messages=CHAT, max_tokens=12, temperature=0)

    assert reply.object == "chat.completion"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_greedy_chat_is_the_same_from_any_provider(network: Network) -> None:
    texts = {
        network.client.chat.completions.create(model="allmende:tiny", messages=CHAT, max_tokens=8, temperature=0)
        .choices[0]
        .message.content
        for _ in range(6)
    }
    assert len(texts) == 1


def test_streaming_chat_with_usage(network: Network) -> None:
    stream = network.client.chat.completions.create(
        model="allmende:tiny",
        messages=CHAT,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage]
    reference = network.client.chat.completions.create(
        model="allmende:tiny", messages=CHAT, max_tokens=10, temperature=0
    )
    assert content == reference.choices[0].message.content
    assert len(finishes) == 1
    assert len(usage) == 1 and usage[0].completion_tokens == reference.usage.completion_tokens


def test_completions(network: Network) -> None:
    reply = network.client.completions.create(model="allmende:tiny", prompt="Es war einmal", max_tokens=6)
    assert reply.object == "text_completion"
    assert reply.usage.completion_tokens <= 6 and isinstance(reply.choices[0].text, str)


def test_streaming_completions(network: Network) -> None:
    chunks = list(network.client.completions.create(model="allmende:tiny", prompt="Es war", max_tokens=5, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("encoding", ["float", None], ids=["float", "client-default-base64"])
def test_embeddings(network: Network, encoding: str | None) -> None:
    extra = {"encoding_format": encoding} if encoding else {}  # the client asks for base64 and decodes it
    reply = network.client.embeddings.create(model="minilm", input=["ein Hund bellt", "a dog barks", "Zinsen"], **extra)  # type: ignore[arg-type]
    vectors = [d.embedding for d in reply.data]
    assert [len(v) for v in vectors] == [384] * 3
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
    assert reply.usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"model": "no-such-model", "messages": CHAT}, openai.NotFoundError, "model"),
        ({"model": "allmende:tiny", "messages": []}, openai.BadRequestError, "messages"),
        ({"model": "allmende:tiny", "messages": CHAT, "temperature": 5}, openai.BadRequestError, "temperature"),
        ({"model": "allmende:tiny", "messages": CHAT, "max_tokens": -1}, openai.BadRequestError, "max_tokens"),
        ({"model": "allmende:tiny", "messages": CHAT, "n": 9}, openai.BadRequestError, "n"),
        ({"model": "allmende:tiny", "messages": CHAT, "tools": [TOOL]}, openai.BadRequestError, "tools[0]"),
        (
            {"model": "allmende:tiny", "messages": CHAT, "response_format": {"type": "yaml"}},
            openai.BadRequestError,
            "response_format",
        ),
        ({"model": "minilm", "messages": CHAT}, openai.BadRequestError, "model"),
        (
            {"model": "allmende:tiny", "messages": [{"role": "wizard", "content": "x"}]},
            openai.BadRequestError,
            "messages[0].role",
        ),
    ],
    ids=[
        "unknown-model",
        "no-messages",
        "temperature",
        "negative-max-tokens",
        "n",
        "tools",
        "response-format",
        "wrong-kind",
        "bad-role",
    ],
)
def test_errors_in_openai_shape(network: Network, kwargs: dict, error: type[Exception], param: str) -> None:
    with pytest.raises(error) as info:
        network.client.chat.completions.create(**kwargs)
    assert info.value.body["param"] == param  # type: ignore[attr-defined]
    assert info.value.body["type"] == "invalid_request_error"  # type: ignore[attr-defined]


def test_context_length_error_comes_back_as_400(network: Network) -> None:
    with pytest.raises(openai.BadRequestError, match="context length"):
        network.client.chat.completions.create(
            model="allmende:tiny", max_tokens=500, messages=[{"role": "user", "content": "z" * 300}]
        )


def test_raw_http_bad_json(network: Network) -> None:
    reply = httpx.post(
        network.data["gateway_url"] + "/chat/completions",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_models_retrieve(network: Network) -> None:
    assert network.client.models.retrieve("allmende:tiny").id == "allmende:tiny"
    with pytest.raises(openai.NotFoundError):
        network.client.models.retrieve("no-such-model")


def test_an_unknown_route_is_an_openai_shaped_404(network: Network) -> None:
    reply = httpx.get(network.data["gateway_url"] + "/assistants")
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "unknown_url"


def test_chat_logprobs_streamed_and_not_agree(network: Network) -> None:
    kwargs = {"model": "allmende:tiny", "messages": CHAT, "max_tokens": 6, "temperature": 0, "logprobs": True}
    whole = network.client.chat.completions.create(**kwargs, top_logprobs=3)  # type: ignore[call-overload]
    chunks = list(network.client.chat.completions.create(**kwargs, top_logprobs=3, stream=True))  # type: ignore[call-overload]

    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-4 for t in content)  # greedy: the drawn one is the top
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert all(math.isclose(a.logprob, b.logprob, abs_tol=1e-3) for a, b in zip(streamed, content, strict=True))


def test_completions_with_logprobs_n_and_echo(network: Network) -> None:
    scored = network.client.completions.create(
        model="allmende:tiny", prompt="Es war einmal", max_tokens=4, logprobs=2, n=3, temperature=1.0, seed=5
    )
    echoed = network.client.completions.create(model="allmende:tiny", prompt="Es war", max_tokens=3, echo=True)

    assert [c.index for c in scored.choices] == [0, 1, 2]
    assert scored.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in scored.choices)
    # {token text: logprob}: two ids that decode alike (partial UTF-8) share one key, as with OpenAI
    assert all(1 <= len(top) <= 2 for c in scored.choices for top in c.logprobs.top_logprobs)
    assert echoed.choices[0].text.startswith("Es war")


def test_embeddings_of_token_ids_and_dimensions(network: Network) -> None:
    text = network.client.embeddings.create(model="minilm", input="a dog barks", encoding_format="float")
    ids = network.client.embeddings.create(model="minilm", input=[[1037, 3899, 11286, 2015]], encoding_format="float")
    same = network.client.embeddings.create(model="minilm", input="a dog barks", dimensions=384)
    with pytest.raises(openai.BadRequestError) as info:
        network.client.embeddings.create(model="minilm", input="a dog barks", dimensions=64)

    assert max(abs(a - b) for a, b in zip(text.data[0].embedding, ids.data[0].embedding, strict=True)) < 1e-4
    assert len(same.data[0].embedding) == 384
    assert info.value.body["param"] == "dimensions"  # type: ignore[attr-defined]


def test_json_schema_output_parses_and_fits_its_schema(network: Network) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "green"]}},
        "required": ["ok", "colour"],
        "additionalProperties": False,
    }
    reply = network.client.chat.completions.create(
        model="allmende:tiny",
        messages=CHAT,
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
    )

    assert reply.choices[0].finish_reason == "stop"
    value = json.loads(reply.choices[0].message.content or "")
    assert set(value) == {"ok", "colour"} and isinstance(value["ok"], bool) and value["colour"] in ("red", "green")


FORECAST = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Berlin"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}


def test_a_forced_tool_call_validates_against_its_schema_streamed_and_not(network: Network) -> None:
    kwargs: dict[str, Any] = {
        "model": "allmende:tiny",
        "messages": [{"role": "user", "content": "Forecast for Paris?"}],
        "tools": [{"type": "function", "function": {"name": "forecast", "parameters": FORECAST, "strict": True}}],
        "tool_choice": {"type": "function", "function": {"name": "forecast"}},
        "parallel_tool_calls": False,
        "max_tokens": 60,
        "seed": 3,
    }
    whole = network.client.chat.completions.create(**kwargs)
    chunks = list(network.client.chat.completions.create(**kwargs, stream=True))

    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.function.name == "forecast"
    jsonschema.validate(json.loads(call.function.arguments), FORECAST)
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function.name == "forecast" and deltas[0].function.arguments == ""
    assert all(d.index == 0 and d.id is None and d.function.name is None for d in deltas[1:])
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments  # same seed, same draw
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_every_sampling_parameter_through_the_network_is_a_draw_the_validator_accepts(network: Network) -> None:
    """presence and frequency penalties, logit_bias (the official client's own parameters)
    and top_k and min_p (through `extra_body`, as vLLM's users send them) reach a provider,
    and the answer, with the evidence a validator's audit asks for, passes the validator's
    check of the request the receipt binds; without the ban, the banned tokens are drawn."""
    banned = {str(t): -100 for t in range(64, 192)}  # half of the tiny model's byte tokens
    asked: dict[str, Any] = {
        "model": "allmende:tiny",
        "messages": CHAT,
        "max_tokens": 24,
        "temperature": 1.1,
        "presence_penalty": 0.8,
        "frequency_penalty": 0.4,
        "logit_bias": banned,
        "extra_body": {"top_k": 20, "min_p": 0.02},
        "extra_headers": {"x-allmende-evidence": "1"},
    }
    reply = network.client.chat.completions.create(**asked)
    free = network.client.chat.completions.create(**{**asked, "logit_bias": None})

    evidence = reply.model_extra["allmende"]["evidence"]
    tokens = evidence["token_ids"]
    assert tokens and not {str(t) for t in tokens} & set(banned)
    assert {str(t) for t in free.model_extra["allmende"]["evidence"]["token_ids"]} & set(banned)
    tiny = load_engine("allmende:tiny")
    assert isinstance(tiny, CausalLMEngine)
    body = evidence["request"]
    assert body["top_k"] == 20 and body["logit_bias"] == banned  # the body the receipt's inputHash binds
    receipt = SignedReceipt.from_json(evidence["receipt"])
    prompt = tiny.prompt_ids(canonical("chat", body, receipt.receipt.request_id).generation[0])
    verdict = check_answer(tiny, body, prompt, choices_of(evidence), receipt)
    assert verdict.ok, verdict.reason
