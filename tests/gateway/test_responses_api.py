"""`POST /v1/responses` through the official `openai` client, in process: plain, streamed (the
typed events in order, with sequence numbers and `event:` lines), function tools with a tool
loop, `text.format` json_schema, `max_output_tokens` → incomplete, and every refusal as a 400
in OpenAI's shape naming the parameter. Each answer is the provider's, its receipt checked
and paid as for chat."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from allmende.api.protocol import input_hash
from allmende.api.responses import chat_body, parse_responses
from tests.gateway.scripted import Clients, PromptEngine, serve

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CALL = '[{"name":"get_weather","arguments":{"city":"Paris"}}]'


def weather_agent(prompt: str) -> str:
    """Calls the tool until its result is in the prompt, then answers from it."""
    if "18 degrees" in prompt:  # the tool's result is in
        return "It is 18 degrees in Paris."
    return CALL if "<tool get_weather>" in prompt else "Hello there."


def test_a_plain_response_carries_the_text_usage_and_the_receipt(tmp_path: Path) -> None:
    engine = PromptEngine(weather_agent)

    async def call(c: Clients) -> Any:
        return await c.openai.responses.create(model="fake", input="Hi", instructions="Be brief.")

    response, net = serve(tmp_path, engine, call)

    assert response.status == "completed" and response.output_text == "Hello there."
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.usage.output_tokens == len("Hello there.")
    assert response.usage.input_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.model_extra["allmende"]["signature"]  # the provider's signed receipt
    assert engine.prompts == ["<system>Be brief.<user>Hi"]
    assert net.store.spent("k") > 0  # checked and paid


def test_a_streamed_response_sends_the_typed_events_in_order(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        stream = await c.openai.responses.create(model="fake", input="Hi", stream=True)
        return [event async for event in stream]

    events, _ = serve(tmp_path, PromptEngine(weather_agent), call)

    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert text == "Hello there." == done.output_text and done.status == "completed"
    assert done.usage.output_tokens == len(text) and done.model_extra["allmende"]["signature"]


def test_the_stream_names_each_event_on_its_event_line(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        reply = await c.http.post("/v1/responses", json={"model": "fake", "input": "Hi", "stream": True})
        return reply.text

    raw, _ = serve(tmp_path, PromptEngine(weather_agent), call)

    frames = [f for f in raw.split("\n\n") if f]
    for frame in frames:
        event, data = frame.split("\n")
        assert event == "event: " + json.loads(data.removeprefix("data: "))["type"]
    assert "[DONE]" not in raw


def test_a_tool_loop_calls_the_function_and_answers_from_its_output(tmp_path: Path) -> None:
    engine = PromptEngine(weather_agent)

    async def call(c: Clients) -> Any:
        first = await c.openai.responses.create(model="fake", input="Weather in Paris?", tools=[WEATHER])
        (fc,) = first.output
        result = {"type": "function_call_output", "call_id": fc.call_id, "output": "18 degrees"}
        history = ["Weather in Paris?", fc, result]
        second = await c.openai.responses.create(
            model="fake",
            input=[{"role": "user", "content": history[0]}, fc.model_dump(exclude_none=True), result],
            tools=[WEATHER],
        )
        return fc, second

    (fc, second), _ = serve(tmp_path, engine, call)

    assert fc.type == "function_call" and fc.name == "get_weather" and fc.status == "completed"
    assert json.loads(fc.arguments) == {"city": "Paris"} and fc.call_id.startswith("call_")
    assert second.output_text == "It is 18 degrees in Paris."
    # the call and its output reached the model as chat's assistant tool_calls and tool message
    assert (
        f'<assistant><call {fc.call_id} get_weather {{"city": "Paris"}}><tool {fc.call_id}>18 degrees'
        in (engine.prompts[1])
    )


def test_a_streamed_call_sends_the_argument_events(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        stream = await c.openai.responses.create(
            model="fake",
            input="Weather?",
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            stream=True,
        )
        return [event async for event in stream]

    events, _ = serve(tmp_path, PromptEngine(weather_agent), call)

    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.output_text.delta" not in kinds
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(arguments) == {"city": "Paris"} == json.loads(done.arguments)
    (added,) = [e for e in events if e.type == "response.output_item.added"]
    assert added.item.type == "function_call" and added.item.name == "get_weather"
    final = events[-1].response
    assert events[-1].type == "response.completed" and final.output[0].arguments == done.arguments


def test_text_format_json_schema_is_the_chat_response_format(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = {
        "model": "fake",
        "input": "Where?",
        "text": {"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
    }

    chat = chat_body(parse_responses(body))

    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": schema, "strict": True},
    }

    async def call(c: Clients) -> Any:
        return await c.openai.responses.create(
            model="fake", input="Where?", text={"format": body["text"]["format"]}, extra_headers={}
        )

    response, _ = serve(tmp_path, PromptEngine(lambda _: '{"city":"Paris"}'), call)

    assert json.loads(response.output_text) == {"city": "Paris"}
    assert response.text.format.type == "json_schema"


class City(BaseModel):
    city: str


def test_the_sdks_stream_helper_and_parse_read_the_events_and_the_schema(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        async with c.openai.responses.stream(model="fake", input="Weather?", tools=[WEATHER]) as stream:
            async for _ in stream:  # the helper rebuilds the response from the events
                pass
            streamed = await stream.get_final_response()
        parsed = await c.openai.responses.parse(model="fake", input="Where?", text_format=City)
        return streamed, parsed

    def script(prompt: str) -> str:
        return CALL if "<tool get_weather>" in prompt else '{"city":"Paris"}'

    (streamed, parsed), _ = serve(tmp_path, PromptEngine(script), call)

    assert streamed.output[0].name == "get_weather" and json.loads(streamed.output[0].arguments) == {"city": "Paris"}
    assert parsed.output_parsed == City(city="Paris")


def test_max_output_tokens_makes_the_response_incomplete(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        whole = await c.openai.responses.create(model="fake", input="Hi", max_output_tokens=5)
        stream = await c.openai.responses.create(model="fake", input="Hi", max_output_tokens=5, stream=True)
        return whole, [e async for e in stream]

    (whole, events), _ = serve(tmp_path, PromptEngine(weather_agent), call)

    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert whole.output_text == "Hello" and whole.usage.output_tokens == 5
    assert events[-1].type == "response.incomplete" and events[-1].response.output_text == "Hello"


def test_the_cache_and_storage_settings_agents_send_are_taken(tmp_path: Path) -> None:
    """What the OpenAI Agents SDK forwards from its ModelSettings, at values the gateway serves
    (in-memory prefix caching, nothing stored, no compaction), is not a 400."""

    async def call(c: Clients) -> Any:
        return await c.openai.responses.create(
            model="fake",
            input="Hi",
            store=False,
            include=[],
            truncation="disabled",
            prompt_cache_key="agent-1",
            prompt_cache_retention="in_memory",
            prompt_cache_options={"mode": "implicit"},
            context_management=[],
            metadata={"run": "1"},
        )

    response, net = serve(tmp_path, PromptEngine(weather_agent), call)

    assert response.status == "completed" and response.output_text == "Hello there."
    assert net.store.spent("k") > 0


def test_the_chat_body_served_is_what_the_receipt_binds(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        reply = await c.http.post(
            "/v1/responses",
            json={"model": "fake", "input": "Hi", "temperature": 0},
            headers={"x-allmende-evidence": "1"},
        )
        return reply.json()

    body, _ = serve(tmp_path, PromptEngine(weather_agent), call)

    evidence = body["allmende"]["evidence"]
    assert evidence["kind"] == "chat"
    assert evidence["request"] == {"model": "fake", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0}
    assert evidence["receipt"]["input_hash"] == "0x" + input_hash("chat", evidence["request"]).hex()
    assert body["allmende"]["input_hash"] == evidence["receipt"]["input_hash"]


def test_an_earlier_answer_goes_back_as_an_assistant_message(tmp_path: Path) -> None:
    engine = PromptEngine(weather_agent)

    async def call(c: Clients) -> Any:
        first = await c.openai.responses.create(model="fake", input="Hi")
        history = [{"role": "user", "content": "Hi"}, first.output[0].model_dump(exclude_none=True)]
        return await c.openai.responses.create(model="fake", input=[*history, {"role": "user", "content": "Again"}])

    second, _ = serve(tmp_path, engine, call)

    assert second.output_text == "Hello there."
    assert engine.prompts[1] == "<user>Hi<assistant>Hello there.<user>Again"


def test_a_stream_whose_provider_fails_ends_with_error_and_failed_events(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        reply = await c.http.post("/v1/responses", json={"model": "fake", "input": "Hi", "stream": True})
        stream = await c.openai.responses.create(model="fake", input="Hi", stream=True)
        return reply.status_code, [e async for e in stream]

    (status, events), _ = serve(tmp_path, PromptEngine(weather_agent, fail_after=3), call)

    assert status == 200  # the stream had begun; the failure is in it, never a 5xx
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "no_provider_available" and events[-1].response.status == "failed"
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]"], ids=["not-json", "not-an-object"])
def test_a_body_that_is_no_json_object_is_a_400(tmp_path: Path, raw: bytes) -> None:
    async def call(c: Clients) -> Any:
        reply = await c.http.post("/v1/responses", content=raw, headers={"content-type": "application/json"})
        return reply.status_code, reply.json()

    (status, error), _ = serve(tmp_path, PromptEngine(weather_agent), call)

    assert status == 400 and error["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"seed": 1}, "seed"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"prompt_cache_retention": "24h"}, "prompt_cache_retention"),
        ({"prompt_cache_options": {"mode": "explicit"}}, "prompt_cache_options"),
        ({"context_management": [{"type": "compaction", "compact_threshold": 1000}]}, "context_management"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0]"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": []}, "input"),
        ({"input": 3}, "input"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{**WEATHER, "name": "a b"}]}, "tools[0]"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": "no"}}}, "text.format.schema"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"model": "no-such-model"}, "model"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_what_is_not_served_is_a_400_naming_the_parameter(tmp_path: Path, body: dict[str, Any], param: str) -> None:
    async def call(c: Clients) -> Any:
        reply = await c.http.post("/v1/responses", json={"model": "fake", "input": "Hi", **body})
        return reply.status_code, reply.json()

    (status, error), net = serve(tmp_path, PromptEngine(weather_agent), call)

    assert status in (400, 404) and error["error"]["param"] == param, error
    assert net.store.spent("k") == 0


def test_the_client_raises_a_bad_request_for_store_true(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        with pytest.raises(openai.BadRequestError) as info:
            await c.openai.responses.create(model="fake", input="Hi", store=True)
        return info.value

    error, _ = serve(tmp_path, PromptEngine(weather_agent), call)

    assert error.status_code == 400 and "stateless" in error.message and error.body["param"] == "store"


def test_32_concurrent_clients_are_all_served(tmp_path: Path) -> None:
    async def call(c: Clients) -> Any:
        async def one(i: int) -> Any:
            if i % 2:
                stream = await c.openai.responses.create(model="fake", input=f"Hi {i}", stream=True)
                return [e async for e in stream][-1].response
            return await c.openai.responses.create(model="fake", input=f"Hi {i}")

        return await asyncio.gather(*(one(i) for i in range(32)))

    responses, net = serve(tmp_path, PromptEngine(weather_agent), call)

    assert [r.output_text for r in responses] == ["Hello there."] * 32
    assert all(r.model_extra["allmende"]["signature"] for r in responses)
    assert net.store.receipt_count() == 32  # each receipt checked and recorded, none refused
