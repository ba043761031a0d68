"""`/v1/responses` through the official `openai` client and `/v1/messages` through the official
`anthropic` client, on the network `allmende up` started (tests/e2e/conftest.py), with the
default chat model (SmolLM2-135M-Instruct on llama.cpp): plain, streamed, a tool loop each,
and `text.format` json_schema. Every answer is a real provider's, with its receipt."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import jsonschema
import openai
import pytest

from tests.e2e.conftest import Network

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France?"
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def get_weather(city: str) -> str:
    return f"It is 18 degrees and sunny in {city}."


@pytest.fixture
def oa(network: Network) -> openai.OpenAI:
    return openai.OpenAI(base_url=network.data["gateway_url"], api_key="unused", max_retries=0, timeout=300)


@pytest.fixture
def claude(network: Network) -> anthropic.Anthropic:
    base = network.data["gateway_url"].removesuffix("/v1")
    return anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0, timeout=300)


def signed(extra: dict[str, Any] | None) -> bool:
    """The `allmende` field holds a provider's signed receipt."""
    view = (extra or {}).get("allmende") or {}
    return bool(view.get("signature")) and str(view.get("provider", "")).startswith("0x")


# --- /v1/responses --------------------------------------------------------------------------


def test_a_response_answers_the_question(oa: openai.OpenAI) -> None:
    response = oa.responses.create(
        model=MODEL, instructions="Answer in one short sentence.", input=QUESTION, temperature=0, max_output_tokens=24
    )

    assert response.status in ("completed", "incomplete") and "Paris" in response.output_text
    assert response.usage.input_tokens > 0 and 0 < response.usage.output_tokens <= 24
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert signed(response.model_extra)


def test_a_streamed_response_ends_with_the_whole_response(oa: openai.OpenAI) -> None:
    stream = oa.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=16, stream=True)
    events = list(stream)

    assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text and final.output_text == text and 0 < final.usage.output_tokens <= 16
    assert signed(final.model_extra)


def test_a_response_tool_loop(oa: openai.OpenAI) -> None:
    tool = {"type": "function", "name": "get_weather", "description": "Current weather in a city", "parameters": CITY}
    ask = {"role": "user", "content": "What is the weather in Paris?"}
    first = oa.responses.create(
        model=MODEL,
        input=[ask],
        tools=[tool],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        temperature=0,
        max_output_tokens=40,
    )
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and signed(first.model_extra)
    arguments = json.loads(call.arguments)
    jsonschema.validate(arguments, CITY)

    second = oa.responses.create(
        model=MODEL,
        input=[
            ask,
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": get_weather(**arguments)},
        ],
        tools=[tool],
        tool_choice="none",
        temperature=0,
        max_output_tokens=24,
    )

    assert second.output[0].type == "message" and second.output_text and signed(second.model_extra)


def test_a_response_in_a_json_schema(oa: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response = oa.responses.create(
        model=MODEL,
        input="Is Paris in France? Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "verdict", "schema": schema, "strict": True}},
        temperature=0,
        max_output_tokens=24,
    )

    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)


def test_a_stored_response_is_refused_by_name(oa: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oa.responses.create(model=MODEL, input=QUESTION, store=True)

    assert info.value.body["param"] == "store"


# --- /v1/messages ---------------------------------------------------------------------------


def test_a_message_answers_the_question(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=24,
        system="Answer in one short sentence.",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
    )

    assert message.stop_reason in ("end_turn", "max_tokens") and "Paris" in message.content[0].text
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 24
    assert signed(message.model_extra)


def test_a_stop_sequence_ends_the_message_and_is_named(claude: anthropic.Anthropic) -> None:
    asked = {"model": MODEL, "max_tokens": 24, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0}
    whole = claude.messages.create(**asked)
    text = whole.content[0].text
    assert " is" in text, text  # "The capital of France is Paris."

    cut = claude.messages.create(**asked, stop_sequences=[" is", "never said"])
    with claude.messages.stream(**asked, stop_sequences=[" is"]) as stream:
        streamed = stream.get_final_message()

    for message in (cut, streamed):
        assert message.content[0].text == text[: text.index(" is")]
        assert message.stop_reason == "stop_sequence" and message.stop_sequence == " is"


def test_a_streamed_message(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=MODEL, max_tokens=16, messages=[{"role": "user", "content": QUESTION}], temperature=0
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()

    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text and final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens") and 0 < final.usage.output_tokens <= 16
    assert final.usage.input_tokens > 0
    (delta,) = [e for e in events if e.type == "message_delta"]
    assert signed(delta.model_extra)


def test_a_message_tool_loop(claude: anthropic.Anthropic) -> None:
    tool = {"name": "get_weather", "description": "Current weather in a city", "input_schema": CITY}
    ask = {"role": "user", "content": "What is the weather in Paris?"}
    first = claude.messages.create(
        model=MODEL,
        max_tokens=40,
        messages=[ask],
        tools=[tool],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        temperature=0,
    )
    (use,) = first.content
    assert first.stop_reason == "tool_use" and use.type == "tool_use" and use.name == "get_weather"
    jsonschema.validate(use.input, CITY)

    second = claude.messages.create(
        model=MODEL,
        max_tokens=24,
        tools=[tool],
        tool_choice={"type": "none"},
        temperature=0,
        messages=[
            ask,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": get_weather(**use.input)}],
            },
        ],
    )

    assert second.stop_reason in ("end_turn", "max_tokens") and second.content[0].type == "text"
    assert second.content[0].text and signed(second.model_extra)


def test_a_bad_message_is_refused_in_anthropics_shape(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Hi"}], top_k=-1)

    assert info.value.body["type"] == "error" and "top_k" in info.value.body["error"]["message"]
