"""The shared protocol module: requests are parsed into typed models that name the bad
parameter the way OpenAI does, and every response shape the gateway renders is one the
official `openai` client parses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai.types import Completion as OpenAICompletion
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion as OpenAIChatCompletion
from openai.types.chat import ChatCompletionChunk as OpenAIChatCompletionChunk

from allmende.api import protocol
from allmende.api.client import Answer, Delta
from allmende.api.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    InvalidParameter,
    check_request,
    input_hash,
    parameter_table,
    parse_request,
    sampling_params,
)
from allmende.core.credit import UNTIL_CONTEXT
from allmende.gateway.rendering import (
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    embedding_response,
)

USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("kind", "body", "param"),
    [
        ("chat", {"messages": []}, "messages"),
        ("chat", {}, "messages"),
        ("chat", {"messages": "hi"}, "messages"),
        ("chat", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ("chat", {"messages": [*USER, {"role": "user", "content": [{"type": "image_url"}]}]}, "messages[1].content"),
        ("chat", {"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
        (
            "chat",
            {"messages": [*USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]},
            "messages[1].tool_calls[0]",
        ),
        ("chat", {"messages": [{"role": "user", "content": "x", "cache": 1}]}, "messages[0].cache"),
        ("chat", {"messages": USER, "temperature": 2.5}, "temperature"),
        ("chat", {"messages": USER, "temperature": True}, "temperature"),
        ("chat", {"messages": USER, "top_p": "1"}, "top_p"),
        ("chat", {"messages": USER, "max_tokens": 0}, "max_tokens"),
        ("chat", {"messages": USER, "max_completion_tokens": 2**21}, "max_completion_tokens"),
        ("chat", {"messages": USER, "seed": -1}, "seed"),
        ("chat", {"messages": USER, "n": 9}, "n"),
        ("chat", {"messages": USER, "n": 2, "stream": True}, "n"),
        ("chat", {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("chat", {"messages": USER, "stream": "yes"}, "stream"),
        ("chat", {"messages": USER, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ("chat", {"messages": USER, "model": 7}, "model"),
        ("chat", {"messages": USER, "prompt_cache_retention": "24h"}, "prompt_cache_retention"),
        ("chat", {"messages": USER, "prompt_cache_options": {"mode": "explicit"}}, "prompt_cache_options"),
        ("completion", {"prompt": ["a", "b"]}, "prompt"),
        ("embedding", {"input": ["ok", ""]}, "input"),
        ("embedding", {"input": ["x"] * 2049}, "input"),
        ("embedding", {"input": "x", "encoding_format": "hex"}, "encoding_format"),
    ],
)
def test_a_bad_parameter_is_named(kind: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse_request(kind, body)
    assert info.value.param == param
    assert str(info.value).startswith(f"'{param}' ")


def test_an_assistant_message_as_the_sdk_returns_it_is_accepted_back() -> None:
    returned = {"role": "assistant", "content": "hi", "refusal": None, "tool_calls": None, "annotations": []}
    check_request("chat", {"messages": [*USER, returned, {"role": "tool", "content": "42", "tool_call_id": "c1"}]})


def test_check_request_normalises_the_body_it_will_forward() -> None:
    body = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "stop": "x",
    }
    request = check_request("chat", body)
    assert isinstance(request, ChatRequest)
    assert body["messages"][0]["content"] == "ab"  # what the provider runs and the receipt binds
    assert request.sampling().stop == ("x",)
    completion = {"prompt": ["one prompt"]}
    check_request("completion", completion)
    assert completion["prompt"] == "one prompt"


@pytest.mark.parametrize(
    ("kind", "body", "field", "normalised"),
    [
        ("completion", {"prompt": [1, 2, 3]}, "prompt", [1, 2, 3]),
        ("completion", {"prompt": [[1, 2, 3]]}, "prompt", [[1, 2, 3]]),
        ("embedding", {"input": [1, 2]}, "input", [1, 2]),
        ("embedding", {"input": [[1, 2], [3], "text"]}, "input", [[1, 2], [3], "text"]),
    ],
    ids=["prompt-ids", "one-prompt-of-ids", "input-ids", "inputs-of-ids-and-text"],
)
def test_token_array_inputs_are_accepted(kind: str, body: dict[str, Any], field: str, normalised: Any) -> None:
    check_request(kind, body)
    assert body[field] == normalised or (kind == "completion" and body[field] == [1, 2, 3])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": [[1], [2]]}, "prompt"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": [True]}, "prompt"),
        ({"prompt": [1, 2], "echo": True}, "echo"),
        ({"prompt": "a", "echo": True, "logprobs": 1}, "echo"),
        ({"prompt": "a", "logprobs": 6}, "logprobs"),
        ({"prompt": "a", "best_of": 3}, "best_of"),
        ({"prompt": "a", "suffix": "z"}, "suffix"),
    ],
    ids=["two-prompts", "negative-id", "bool-id", "echo-ids", "echo-logprobs", "logprobs-6", "best-of", "suffix"],
)
def test_completion_parameters_it_cannot_honour_are_named(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse_request("completion", body)
    assert info.value.param == param


def test_every_parameter_is_in_the_readme_table() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert (
        parameter_table() in readme
    )  # regenerate: python -c "from allmende.api.protocol import parameter_table as t; print(t())"


def test_sampling_params_are_the_same_from_every_role() -> None:
    body = {"messages": USER, "temperature": 0, "max_completion_tokens": 5, "seed": 7, "stop": ["\n"]}
    params = sampling_params(body)
    assert (params.max_tokens, params.temperature, params.top_p, params.seed, params.stop) == (5, 0.0, 1.0, 7, ("\n",))
    assert sampling_params({"messages": USER}).max_tokens == UNTIL_CONTEXT  # until the answer or the context ends
    reordered = dict(reversed(list(body.items())))
    assert input_hash("chat", body) == input_hash("chat", reordered)  # key order does not matter
    assert input_hash("chat", body) != input_hash("completion", body)  # the kind is bound with the body


def answer(output: dict[str, Any], usage: dict[str, int]) -> Answer:
    return Answer(output, usage, None)  # type: ignore[arg-type]


def test_rendered_responses_parse_with_the_official_client() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    question = {"messages": [{"role": "user", "content": "Capital of France?"}]}
    asked = ChatRequest.model_validate(question)
    chat = chat_response(asked, question, "m", answer({"text": "Paris.", "finish_reason": "stop"}, usage))
    parsed = OpenAIChatCompletion.model_validate(chat)
    assert parsed.choices[0].message.content == "Paris." and parsed.usage and parsed.usage.total_tokens == 5
    assert chat["choices"][0]["logprobs"] is None and "allmende" not in chat
    prompt = CompletionRequest.model_validate({"prompt": "a"})
    text = completion_response(prompt, "m", answer({"text": "x", "finish_reason": "length"}, usage))
    assert OpenAICompletion.model_validate(text).choices[0].finish_reason == "length"
    vectors = {"embeddings": [[0.5, -0.5]]}
    floats = EmbeddingRequest.model_validate({"input": "a", "encoding_format": "float"})
    emb = embedding_response(floats, "m", answer(vectors, {"prompt_tokens": 2}))
    assert CreateEmbeddingResponse.model_validate(emb).usage.total_tokens == 2
    packed = EmbeddingRequest.model_validate({"input": "a", "encoding_format": "base64"})
    emb = embedding_response(packed, "m", answer(vectors, {"prompt_tokens": 2}))
    assert emb["data"][0]["embedding"] == "AAAAPwAAAL8="  # little-endian float32, decoded by the client


def test_stream_chunks_parse_with_the_official_client() -> None:
    first = chat_chunk("id", 1, "m", "", None, role=True)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = chat_chunk("id", 1, "m", None, "stop", allmende={"receipt": "r"})
    assert last["choices"][0]["delta"] == {} and last["allmende"] == {"receipt": "r"}
    usage = chat_chunk("id", 1, "m", None, None, usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 2
    for c in (first, last, usage, chat_chunk("id", 1, "m", "tok", None)):
        OpenAIChatCompletionChunk.model_validate(c)
    text = completion_chunk("id", 1, "m", "tok", None)  # finish_reason null until the end, as OpenAI streams it
    assert text["object"] == "text_completion" and text["choices"][0] == {
        "index": 0,
        "text": "tok",
        "logprobs": None,
        "finish_reason": None,
    }
    OpenAICompletion.model_validate(completion_chunk("id", 1, "m", None, "length"))


@pytest.mark.parametrize("text", ["tok", "", ' ü\n"\\\u0000🙂', Delta("x", tokens=3)])
def test_a_text_deltas_chunk_is_the_models_rendering(text: str) -> None:
    """The chunk of a plain text delta is built without pydantic (rendering.text_chunk): it
    must be exactly what the model renders, and parse with the official client."""
    built = chat_chunk("chatcmpl-1", 7, "m", text, None)
    choice = ChatChunkChoice(delta=protocol.Delta(content=text), logprobs=None, finish_reason=None)
    rendered = ChatCompletionChunk(id="chatcmpl-1", created=7, model="m", choices=[choice]).render()
    assert built == rendered and json.dumps(built) == json.dumps(rendered)
    assert type(built["choices"][0]["delta"]["content"]) is str
    assert OpenAIChatCompletionChunk.model_validate(built).choices[0].delta.content == text
