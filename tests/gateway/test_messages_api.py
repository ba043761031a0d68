"""`POST /v1/messages` through the official `anthropic` client, in process: plain, streamed
(Anthropic's events, text and tool_use blocks), tools with a tool loop, stop sequences and
every stop reason, the `x-api-key` header, and refusals in Anthropic's error shape (never a
5xx). Each answer is the provider's, its receipt checked and paid as for chat."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import anthropic
import pytest

from allmende.api.canonical import canonical
from allmende.api.messages import chat_body, parse_messages
from tests.gateway.scripted import Clients, PromptEngine, serve

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CALL = '[{"name":"get_weather","arguments":{"city":"Paris"}}]'
USER = [{"role": "user", "content": "Hi"}]


def weather_agent(prompt: str) -> str:
    if "18 degrees" in prompt:  # the tool's result is in
        return "It is 18 degrees in Paris."
    return CALL if "<tool get_weather>" in prompt else "Hello there. Bye."


def test_a_plain_message_carries_the_text_usage_and_the_receipt(tmp_path: Path) -> None:
    engine = PromptEngine(weather_agent)

    async def call(c: Clients) -> Any:
        return await c.anthropic.messages.create(
            model="fake", max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "Hi"}]
        )

    message, net = serve(tmp_path, engine, call)

    assert message.type == "message" and message.role == "assistant" and message.model == "fake"
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "Hello there. Bye."
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens == len("Hello there. Bye.") and message.usage.input_tokens > 0
    assert message.model_extra["allmende"]["signature"]  # the provider's signed receipt
    assert engine.prompts == ["<system>Be brief.<user>Hi"]
    assert net.store.spent("k") > 0  # checked and paid


def test_a_streamed_message_sends_anthropics_events(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        stream = await c.anthropic.messages.create(model="fake", max_tokens=64, messages=USER, stream=True)
        events = [event async for event in stream]
        async with c.anthropic.messages.stream(model="fake", max_tokens=64, messages=USER) as helper:
            final = await helper.get_final_message()
        return events, final

    (events, final), _ = serve(tmp_path, PromptEngine(weather_agent), call)

    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]  # (the client drops the ping)
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "Hello there. Bye."
    delta = events[-2]
    assert delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens == len(text)
    assert delta.model_extra["allmende"]["signature"]
    assert final.content[0].text == text and final.usage.input_tokens > 0 and final.stop_reason == "end_turn"


def test_stop_sequences_end_the_answer_and_are_named(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        whole = await c.anthropic.messages.create(
            model="fake", max_tokens=64, messages=USER, stop_sequences=["nothing", ". B"]
        )
        async with c.anthropic.messages.stream(
            model="fake", max_tokens=64, messages=USER, stop_sequences=[". B"]
        ) as helper:
            streamed = await helper.get_final_message()
        cut = await c.anthropic.messages.create(model="fake", max_tokens=5, messages=USER)
        return whole, streamed, cut

    (whole, streamed, cut), _ = serve(tmp_path, PromptEngine(weather_agent), call)

    for message in (whole, streamed):
        assert message.content[0].text == "Hello there"
        assert message.stop_reason == "stop_sequence" and message.stop_sequence == ". B"
    assert cut.stop_reason == "max_tokens" and cut.content[0].text == "Hello"


def test_a_tool_loop_uses_the_tool_and_answers_from_its_result(tmp_path: Path) -> None:
    engine = PromptEngine(weather_agent)

    async def call(c: Clients) -> Any:
        ask = {"role": "user", "content": "Weather in Paris?"}
        first = await c.anthropic.messages.create(model="fake", max_tokens=64, messages=[ask], tools=[WEATHER])
        (use,) = first.content
        result = {"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees"}
        second = await c.anthropic.messages.create(
            model="fake",
            max_tokens=64,
            tools=[WEATHER],
            messages=[ask, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}],
        )
        return first, second

    (first, second), _ = serve(tmp_path, engine, call)

    (use,) = first.content
    assert first.stop_reason == "tool_use" and use.type == "tool_use" and use.id.startswith("toolu_")
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    assert second.stop_reason == "end_turn" and second.content[0].text == "It is 18 degrees in Paris."
    # the call and its result reached the model as chat's assistant tool_calls and tool message
    assert f'<assistant><call {use.id} get_weather {{"city": "Paris"}}><tool {use.id}>18 degrees' in engine.prompts[1]


def test_a_streamed_tool_use_sends_input_json_deltas(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        async with c.anthropic.messages.stream(
            model="fake",
            max_tokens=64,
            messages=USER,
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"},
        ) as helper:
            events = [event async for event in helper]
            return events, await helper.get_final_message()

    (events, final), _ = serve(tmp_path, PromptEngine(weather_agent), call)

    start = next(e for e in events if e.type == "content_block_start")
    assert start.content_block.type == "tool_use" and start.content_block.name == "get_weather"
    partial = "".join(e.delta.partial_json for e in events if e.type == "content_block_delta")
    assert json.loads(partial) == {"city": "Paris"}
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Paris"}


def test_tool_choice_translates_to_chats() -> None:
    def chat(choice: dict[str, Any]) -> dict[str, Any]:
        body = chat_body(
            parse_messages({"model": "m", "max_tokens": 5, "messages": USER, "tools": [WEATHER], "tool_choice": choice})
        )
        return {k: body.get(k) for k in ("tool_choice", "parallel_tool_calls")}

    assert chat({"type": "auto"}) == {"tool_choice": "auto", "parallel_tool_calls": None}
    assert chat({"type": "any", "disable_parallel_tool_use": True}) == {
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    assert chat({"type": "tool", "name": "get_weather"})["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }
    assert chat({"type": "none"})["tool_choice"] == "none"


def test_top_k_is_served_as_chats_top_k_inside_the_verifiable_draw() -> None:
    def chat(extra: dict[str, Any]) -> dict[str, Any]:
        return chat_body(parse_messages({"model": "m", "max_tokens": 5, "messages": USER, **extra}))

    body = chat({"top_k": 5, "temperature": 0.7})
    assert (body["top_k"], body["temperature"]) == (5, 0.7)
    assert canonical("chat", body).generation[1].top_k == 5  # what the provider draws with, bound by inputHash
    assert "top_k" not in chat({"top_k": 0})  # 0 asks for nothing


def test_the_key_may_come_as_x_api_key_or_bearer(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        body = {"model": "fake", "max_tokens": 8, "messages": USER}
        keyed = await c.http.post("/v1/messages", json=body, headers={"x-api-key": "sk-1"})
        bearer = await c.http.post("/v1/messages", json=body, headers={"authorization": "Bearer sk-1"})
        wrong = await c.http.post("/v1/messages", json=body, headers={"x-api-key": "sk-2"})
        return keyed.status_code, bearer.status_code, wrong.status_code, wrong.json()

    (keyed, bearer, wrong, error), _ = serve(tmp_path, PromptEngine(weather_agent), call, api_keys=frozenset({"sk-1"}))

    assert (keyed, bearer, wrong) == (200, 200, 401)
    assert error["type"] == "error" and error["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("body", "status", "kind", "needle"),
    [
        ({"max_tokens": None}, 400, "invalid_request_error", "max_tokens"),
        ({"messages": []}, 400, "invalid_request_error", "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, 400, "invalid_request_error", "role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            400,
            "invalid_request_error",
            "image",
        ),
        ({"messages": [*USER, {"role": "assistant", "content": "Sure"}]}, 400, "invalid_request_error", "prefill"),
        ({"temperature": 1.5}, 400, "invalid_request_error", "temperature"),
        ({"top_k": -1}, 400, "invalid_request_error", "top_k"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, 400, "invalid_request_error", "stop_sequences"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 400, "invalid_request_error", "tools[0]"),
        ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [WEATHER]}, 400, "invalid_request_error", "nope"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, 400, "invalid_request_error", "thinking"),
        ({"model": "no-such-model"}, 404, "not_found_error", "no-such-model"),
        ({"frequency": 1}, 400, "invalid_request_error", "frequency"),
    ],
    ids=[
        "no-max-tokens",
        "empty",
        "system-role",
        "image",
        "prefill",
        "temperature",
        "top-k",
        "five-stops",
        "server-tool",
        "unknown-tool",
        "thinking",
        "unknown-model",
        "unknown-parameter",
    ],
)
def test_what_is_not_served_is_refused_in_anthropics_shape(
    tmp_path: Path, body: dict[str, Any], status: int, kind: str, needle: str
) -> None:
    async def call(c: Clients) -> Any:
        sent = {k: v for k, v in {"model": "fake", "max_tokens": 8, "messages": USER, **body}.items() if v is not None}
        reply = await c.http.post("/v1/messages", json=sent)
        return reply.status_code, reply.json()

    (got, error), net = serve(tmp_path, PromptEngine(weather_agent), call)

    assert got == status and error["type"] == "error" and error["error"]["type"] == kind
    assert needle in error["error"]["message"]
    assert net.store.spent("k") == 0


def test_a_stream_whose_provider_fails_ends_with_an_error_event(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        with pytest.raises(anthropic.APIStatusError) as info:
            async with c.anthropic.messages.stream(model="fake", max_tokens=64, messages=USER) as helper:
                await helper.get_final_message()
        return info.value

    error, _ = serve(tmp_path, PromptEngine(weather_agent, fail_after=3), call)

    assert error.body["type"] == "error" and error.body["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]"], ids=["not-json", "not-an-object"])
def test_a_body_that_is_no_json_object_is_a_400_in_anthropics_shape(tmp_path: Path, raw: bytes) -> None:
    async def call(c: Clients) -> Any:
        reply = await c.http.post("/v1/messages", content=raw, headers={"content-type": "application/json"})
        return reply.status_code, reply.json()

    (status, error), _ = serve(tmp_path, PromptEngine(weather_agent), call)

    assert status == 400 and error == {"type": "error", "error": {"type": "invalid_request_error", "message": ANY}}


def test_a_bad_body_raises_the_clients_own_error(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        with pytest.raises(anthropic.BadRequestError) as info:
            await c.anthropic.messages.create(model="fake", max_tokens=8, messages=USER, temperature=1.5)
        return info.value

    error, _ = serve(tmp_path, PromptEngine(weather_agent), call)

    assert error.status_code == 400 and error.body["error"]["type"] == "invalid_request_error"


def test_32_concurrent_clients_are_all_served(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        async def one(i: int) -> Any:
            messages = [{"role": "user", "content": f"Hi {i}"}]
            if i % 2:
                async with c.anthropic.messages.stream(model="fake", max_tokens=64, messages=messages) as helper:
                    return await helper.get_final_message()
            return await c.anthropic.messages.create(model="fake", max_tokens=64, messages=messages)

        return await asyncio.gather(*(one(i) for i in range(32)))

    messages, net = serve(tmp_path, PromptEngine(weather_agent), call)

    assert [m.content[0].text for m in messages] == ["Hello there. Bye."] * 32
    assert all(m.stop_reason == "end_turn" for m in messages)
    assert net.store.receipt_count() == 32  # each receipt checked and recorded, none refused
