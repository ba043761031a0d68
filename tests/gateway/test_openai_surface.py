"""The gateway's HTTP API through the official `openai` client, in process: the real gateway
app over in-process providers with a fake engine. Every response is parsed by the client's
own types, so a shape OpenAI would not send fails here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import openai
import pytest

from allmende.api.canonical import checked
from allmende.api.protocol import ChatRequest
from allmende.core.errors import UpstreamError
from allmende.engine.base import SamplingParams, TokenEvent
from allmende.gateway.app import GatewayLimits, create_app
from allmende.gateway.rendering import chat_response
from tests.gateway.fakes import FakeEngine, FakeProvider, network

T = TypeVar("T")
CHAT = [{"role": "user", "content": "Hallo"}]


def run(
    tmp: Path,
    call: Callable[[openai.AsyncOpenAI, httpx.AsyncClient], Awaitable[T]],
    provider: FakeProvider | None = None,
    **limits: Any,
) -> T:
    """`call` with an openai client and a raw client of a gateway app over one fake provider."""
    net = network(tmp, [provider or FakeProvider(tmp)])
    contracts = net.service.directory.contracts  # the explorer's chain view reads these lazily
    for name in ("channels", "verdicts", "governor"):
        if not hasattr(contracts, name):
            setattr(contracts, name, SimpleNamespace())
        getattr(contracts, name).contract = None
    contracts.deployment = SimpleNamespace(deploy_block=0)
    app = create_app(net.service, GatewayLimits(**limits))

    async def go() -> T:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw/v1") as http:
            client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="k", http_client=http, max_retries=0)
            return await call(client, http)

    return asyncio.run(go())


def test_models_retrieve_finds_a_served_model_as_chat_does_and_404s_an_unknown_one(tmp_path: Path) -> None:
    async def call(client: openai.AsyncOpenAI, _: httpx.AsyncClient) -> Any:
        found = await client.models.retrieve("fake")
        model_id = (found.model_extra or {})["allmende"]["model_id"]
        again = [
            await client.models.retrieve(name) for name in ("FAKE", model_id, model_id.upper().replace("0X", "0x"))
        ]
        with pytest.raises(openai.NotFoundError) as info:
            await client.models.retrieve("no-such-model")
        return found, again, info.value.body

    found, again, error = run(tmp_path, call)
    assert found.id == "fake" and found.object == "model"
    assert [m.id for m in again] == ["fake"] * 3  # any case, and the content id chat accepts (issue 32: 404 before)
    assert error["code"] == "model_not_found" and error["param"] == "model"


def test_stream_null_is_taken_as_false_and_stream_options_need_stream(tmp_path: Path) -> None:
    async def call(_: openai.AsyncOpenAI, http: httpx.AsyncClient) -> list[httpx.Response]:
        base = {"model": "fake", "messages": CHAT, "max_tokens": 2}
        return [
            await http.post("http://gw/v1/chat/completions", json={**base, "stream": None}),
            await http.post("http://gw/v1/chat/completions", json={**base, "stream_options": {"include_usage": True}}),
            await http.post("http://gw/v1/chat/completions", json={**base, "top_p": 0}),
        ]

    plain, options, top_p = run(tmp_path, call)
    assert plain.status_code == 200 and plain.json()["object"] == "chat.completion"  # OpenAI accepts null
    assert options.status_code == 400 and options.json()["error"]["param"] == "stream_options"  # OpenAI refuses it
    assert "only allowed when 'stream' is enabled" in options.json()["error"]["message"]
    assert top_p.status_code == 400 and top_p.json()["error"]["param"] == "top_p"  # was a provider-side 400


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/nothing-here", 404), ("POST", "/v1/assistants", 404), ("GET", "/v1/chat/completions", 405)],
    ids=["unknown-get", "unknown-post", "wrong-method"],
)
def test_unknown_routes_answer_in_openai_error_shape(tmp_path: Path, method: str, path: str, status: int) -> None:
    async def call(_: openai.AsyncOpenAI, http: httpx.AsyncClient) -> httpx.Response:
        return await http.request(method, "http://gw" + path)

    reply = run(tmp_path, call)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and path in error["message"]


def test_a_rate_limited_client_is_told_when_to_retry(tmp_path: Path) -> None:
    async def call(_: openai.AsyncOpenAI, http: httpx.AsyncClient) -> list[httpx.Response]:
        body = {"model": "fake", "messages": CHAT, "max_tokens": 1}
        return [await http.post("/chat/completions", json=body) for _ in range(2)]

    first, second = run(tmp_path, call, rate_limit=0.01, rate_burst=1)
    assert first.status_code == 200 and second.status_code == 429
    assert second.headers["retry-after"] == "100"  # one request per 100 s
    assert "retry after 100 s" in second.json()["error"]["message"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f g"}}]}, "tools[0]"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "nope"}}},
            "response_format",
        ),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"logit_bias": {"fifty": -100}}, "logit_bias"),
        ({"logit_bias": {"50256": -101}}, "logit_bias"),
        ({"extra_body": {"top_k": -2}}, "top_k"),
        ({"extra_body": {"top_k": 2.5}}, "top_k"),
        ({"extra_body": {"min_p": 1.5}}, "min_p"),
        ({"store": True}, "store"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_parameter_that_would_be_ignored_or_is_out_of_range_is_refused_by_name(
    tmp_path: Path, kwargs: dict[str, Any], param: str
) -> None:
    async def call(client: openai.AsyncOpenAI, _: httpx.AsyncClient) -> Any:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="fake", messages=CHAT, max_tokens=2, **kwargs)  # type: ignore[call-overload]
        return info.value.body

    error = run(tmp_path, call)
    assert error["param"] == param and error["type"] == "invalid_request_error"


class RecordingEngine(FakeEngine):
    """The fake engine, keeping the sampling parameters each generation was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[SamplingParams] = []

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        self.asked.append(params)
        return super().generate(prompt_ids, params)


def test_every_sampling_parameter_reaches_the_engine_and_the_receipt_binds_it(tmp_path: Path) -> None:
    """presence and frequency penalties, logit_bias, top_k and min_p (the last two through
    `extra_body`, as vLLM's clients send them) are accepted, reach the provider's engine in
    its typed sampling parameters, and change the request the receipt's inputHash binds."""
    engine = RecordingEngine()
    asked = {
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "logit_bias": {"70": -100, "66": 7},
        "extra_body": {"top_k": 40, "min_p": 0.05},
    }

    async def call(client: openai.AsyncOpenAI, _: httpx.AsyncClient) -> Any:
        plain = await client.chat.completions.create(model="fake", messages=CHAT, max_tokens=2, seed=1)
        shaped = await client.chat.completions.create(model="fake", messages=CHAT, max_tokens=2, seed=1, **asked)  # type: ignore[call-overload]
        return plain, shaped

    plain, shaped = run(tmp_path, call, FakeProvider(tmp_path, engine=engine))
    assert [(p.presence_penalty, p.frequency_penalty, p.logit_bias, p.top_k, p.min_p) for p in engine.asked] == [
        (0.0, 0.0, (), 0, 0.0),
        (0.5, -0.25, ((66, 7.0), (70, -100.0)), 40, 0.05),
    ]
    signed = [(r.model_extra or {})["allmende"]["input_hash"] for r in (plain, shaped)]
    assert signed[0] != signed[1]


def test_defaults_that_ask_for_nothing_are_accepted(tmp_path: Path) -> None:
    async def call(client: openai.AsyncOpenAI, _: httpx.AsyncClient) -> Any:
        return await client.chat.completions.create(
            model="fake",
            messages=CHAT,
            max_tokens=2,
            presence_penalty=0,
            frequency_penalty=0.0,
            n=1,
            tool_choice="none",
            response_format={"type": "text"},
            store=False,
            user="someone",
        )

    assert len(run(tmp_path, call).choices[0].message.content) == 2


def test_chat_logprobs_come_with_the_answer_and_with_each_streamed_token(tmp_path: Path) -> None:
    async def call(client: openai.AsyncOpenAI, _: httpx.AsyncClient) -> Any:
        whole = await client.chat.completions.create(
            model="fake", messages=CHAT, max_tokens=3, logprobs=True, top_logprobs=2
        )
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="fake", messages=CHAT, max_tokens=3, logprobs=True, top_logprobs=2, stream=True
            )
        ]
        plain = await client.chat.completions.create(model="fake", messages=CHAT, max_tokens=3)
        return whole, chunks, plain

    whole, chunks, plain = run(tmp_path, call)
    content = whole.choices[0].logprobs.content
    assert [t.token for t in content] == list(whole.choices[0].message.content)
    assert [t.logprob for t in content] == [-0.25] * 3
    first = content[0].token
    assert [a.token for a in content[0].top_logprobs] == [first, chr(ord(first) + 1)]
    assert content[0].bytes == [ord(first)]
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert streamed == content
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_and_echo_in_the_legacy_shape(tmp_path: Path) -> None:
    async def call(client: openai.AsyncOpenAI, _: httpx.AsyncClient) -> Any:
        scored = await client.completions.create(model="fake", prompt="ab", max_tokens=2, logprobs=1)
        echoed = await client.completions.create(model="fake", prompt="ab", max_tokens=2, echo=True)
        streamed = [
            c
            async for c in await client.completions.create(
                model="fake", prompt="ab", max_tokens=2, echo=True, stream=True
            )
        ]
        with pytest.raises(openai.BadRequestError) as info:
            await client.completions.create(model="fake", prompt="ab", max_tokens=2, suffix="end")
        return scored, echoed, streamed, info.value.body

    scored, echoed, streamed, refused = run(tmp_path, call)
    logprobs = scored.choices[0].logprobs
    assert logprobs.tokens == list(scored.choices[0].text) and logprobs.token_logprobs == [-0.25, -0.25]
    assert logprobs.top_logprobs == [{t: -0.25} for t in logprobs.tokens] and logprobs.text_offset == [0, 1]
    assert echoed.choices[0].text == "ab" + scored.choices[0].text
    assert "".join(c.choices[0].text for c in streamed if c.choices) == echoed.choices[0].text
    assert refused["param"] == "suffix"


def test_n_choices_come_back_indexed_and_are_all_paid_for(tmp_path: Path) -> None:
    async def call(client: openai.AsyncOpenAI, _: httpx.AsyncClient) -> Any:
        chat = await client.chat.completions.create(model="fake", messages=CHAT, max_tokens=3, n=3, logprobs=True)
        text = await client.completions.create(model="fake", prompt="ab", max_tokens=2, n=2, best_of=2)
        with pytest.raises(openai.BadRequestError) as info:
            await client.completions.create(model="fake", prompt="ab", max_tokens=2, n=2, best_of=3)
        return chat, text, info.value.body

    chat, text, refused = run(tmp_path, call)
    assert [c.index for c in chat.choices] == [0, 1, 2]
    assert all(len(c.message.content) == 3 and len(c.logprobs.content) == 3 for c in chat.choices)
    assert chat.usage.completion_tokens == 9  # every choice's tokens are in the signed receipt
    assert [c.index for c in text.choices] == [0, 1] and text.usage.completion_tokens == 4
    assert refused["param"] == "best_of"


def test_a_provider_that_answers_fewer_choices_than_asked_is_not_passed_on(tmp_path: Path) -> None:
    net = network(tmp_path, [FakeProvider(tmp_path)])
    body = {"model": "fake", "messages": CHAT, "max_tokens": 2, "n": 2}
    result = asyncio.run(net.service.complete(checked("chat", dict(body)), None))
    del result.answer.output["choices"][1]  # what a provider that skipped a choice would send

    with pytest.raises(UpstreamError, match="number of choices"):
        chat_response(ChatRequest.model_validate(body), body, "fake", result.answer)


def test_every_provider_side_refusal_reaches_the_client_with_its_param_and_code(tmp_path: Path) -> None:
    """Refusals only the provider can make (it has the tokenizer, the context and the
    vocabulary) reach the openai client with the parameter to fix and the provider's code:
    a prompt longer than the context names `messages` or `prompt` (it was null), a
    `logit_bias` token id outside the vocabulary names `logit_bias`."""
    from allmende.engine import load_engine

    async def call(client: openai.AsyncOpenAI, _: httpx.AsyncClient) -> list[Any]:
        errors = []
        for create in (
            lambda: client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "z" * 300}], max_tokens=2
            ),
            lambda: client.completions.create(model="fake", prompt="z" * 300, max_tokens=2),
            lambda: client.chat.completions.create(model="fake", messages=CHAT, max_tokens=2, logit_bias={"259": 5}),
        ):
            with pytest.raises(openai.BadRequestError) as info:
                await create()
            errors.append(info.value.body)
        errors.append(
            await client.chat.completions.create(model="fake", messages=CHAT, max_tokens=2, logit_bias={"258": 5})
        )
        return errors

    tiny = load_engine("allmende:tiny")  # the real tokenizer, context and vocabulary (259 tokens)
    tiny.name, tiny.context_length = "fake", 256
    chat, completion, bias, served = run(tmp_path, call, FakeProvider(tmp_path, engine=tiny))  # type: ignore[arg-type]
    assert (chat["code"], chat["param"]) == ("context_length_exceeded", "messages")
    assert (completion["code"], completion["param"]) == ("context_length_exceeded", "prompt")
    assert bias["param"] == "logit_bias" and "vocabulary size 259" in bias["message"]
    assert all(e["type"] == "invalid_request_error" for e in (chat, completion, bias))
    assert served.choices[0].message.content is not None  # the largest id the vocabulary has is served


def test_a_provider_side_refusal_keeps_its_param_and_code() -> None:
    from allmende.api.client import ProviderReplyError
    from allmende.api.protocol import InvalidParameter
    from allmende.api.wire import error_response
    from allmende.engine.base import PromptTooLong
    from allmende.gateway.service import refused

    sent = error_response(InvalidParameter("'top_k' must be at least 1", "top_k"))
    assert json.loads(sent.body)["error"] == {
        "code": "invalid_request",
        "message": "'top_k' must be at least 1",
        "param": "top_k",
    }
    assert "param" not in json.loads(error_response(PromptTooLong("too long")).body)["error"]

    long = refused(ProviderReplyError(400, "context_length_exceeded", "prompt (9000 tokens) + max_tokens (1) exceed"))
    assert (long.code, long.param) == ("context_length_exceeded", None)  # was the generic invalid_request
    named = refused(ProviderReplyError(400, "invalid_request", "top_k is bad", param="top_k"))
    assert named.param == "top_k"
    quoted = refused(ProviderReplyError(400, "engine_error", "'input' item 3: token ids of minilm must be …"))
    assert (quoted.code, quoted.param) == ("invalid_request", "input")


def test_cached_prompt_tokens_reach_the_usage_of_chat_streamed_and_not(tmp_path: Path) -> None:
    provider = FakeProvider(tmp_path)
    provider.engine.cached_tokens = 5  # the engine took 5 prompt tokens from an earlier request's cells

    async def call(client: openai.AsyncOpenAI, _: httpx.AsyncClient) -> tuple[Any, Any]:
        plain = await client.chat.completions.create(model="fake", messages=CHAT, max_tokens=3)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(
            model="fake",
            messages=CHAT,  # type: ignore[arg-type]
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        last = [chunk async for chunk in stream][-1]
        return plain.usage, last.usage

    plain, streamed = run(tmp_path, call, provider)
    assert plain.prompt_tokens_details.cached_tokens == 5
    assert streamed.prompt_tokens_details.cached_tokens == 5
