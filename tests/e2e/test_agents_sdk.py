"""The OpenAI Agents SDK (`openai-agents`) against the gateway `allmende up` started
(tests/e2e/conftest.py), with the default chat model (SmolLM2-135M-Instruct): an agent with a
`@function_tool` runs to its final answer through the SDK's default model class,
`OpenAIResponsesModel` (`/v1/responses`), plain and streamed, and through
`OpenAIChatCompletionsModel` (`/v1/chat/completions`); an agent with an `output_type` gets
its typed result from `text.format` json_schema.

The first step is forced to call the tool (`tool_choice="required"`, a valid call by
grammar); the tool is offered only until it has answered (`is_enabled`), so the next step
answers in text whatever the small model would prefer. Every request is a real provider's."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from agents import (
    Agent,
    FunctionTool,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RunContextWrapper,
    Runner,
    RunResult,
    RunResultStreaming,
    function_tool,
    set_tracing_disabled,
)
from agents.models.interface import Model
from openai import AsyncOpenAI
from pydantic import BaseModel

from tests.e2e.conftest import Network

MODEL = "smollm2-135m-instruct"
QUESTION = "What is the weather in Paris?"
# as an agent configures a model: the cache settings are forwarded to both endpoints
SETTINGS = ModelSettings(
    tool_choice="required",
    temperature=0,
    max_tokens=128,
    prompt_cache_retention="in_memory",
    prompt_cache_options={"mode": "implicit"},
)

set_tracing_disabled(True)  # the SDK would otherwise export traces to OpenAI


class Receipts:
    """The `allmende` field of every non-streamed answer the client received."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, response: httpx.Response) -> None:
        if response.request.method == "POST" and "text/event-stream" not in response.headers.get("content-type", ""):
            await response.aread()
            self.seen.append(response.json().get("allmende") or {})


def client_of(network: Network, receipts: Receipts) -> AsyncOpenAI:
    http = httpx.AsyncClient(timeout=300, event_hooks={"response": [receipts]})
    return AsyncOpenAI(base_url=network.data["gateway_url"], api_key="unused", max_retries=0, http_client=http)


def weather_tool(calls: list[dict[str, Any]]) -> FunctionTool:
    """`get_weather`, recording each call's arguments; offered until it has been called."""

    def not_yet_called(ctx: RunContextWrapper[Any], agent: Any) -> bool:
        return not calls

    @function_tool(is_enabled=not_yet_called)
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append({"city": city})
        return f"It is 18 degrees and sunny in {city}."

    return get_weather


def weather_agent(model: Model, calls: list[dict[str, Any]]) -> Agent[Any]:
    return Agent(
        name="weather",
        instructions="Answer questions about the weather with the get_weather tool, in one sentence.",
        tools=[weather_tool(calls)],
        model=model,
        model_settings=SETTINGS,
    )


def assert_tool_loop(result: RunResult | RunResultStreaming, calls: list[dict[str, Any]]) -> None:
    """The model called the tool once with valid arguments, the tool ran with exactly those,
    its result went back to the model, and the model's text is the final output."""
    first, last = result.raw_responses
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert calls == [json.loads(call.arguments)] and isinstance(calls[0]["city"], str) and calls[0]["city"]
    outputs = [item for item in result.to_input_list() if item.get("type") == "function_call_output"]
    assert [o["call_id"] for o in outputs] == [call.call_id] and "18 degrees" in str(outputs[0]["output"])
    assert [item.type for item in last.output] == ["message"]
    assert isinstance(result.final_output, str) and result.final_output.strip()
    assert result.final_output == last.output[0].content[0].text

    usage = result.context_wrapper.usage
    assert usage.requests == 2
    assert usage.input_tokens == sum(r.usage.input_tokens for r in result.raw_responses) > 0
    assert usage.output_tokens == sum(r.usage.output_tokens for r in result.raw_responses) > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def signed(receipts: Receipts, count: int) -> bool:
    return len(receipts.seen) == count and all(
        r.get("signature") and str(r.get("provider", "")).startswith("0x") for r in receipts.seen
    )


# --- OpenAIResponsesModel, the SDK's default ------------------------------------------------


def test_an_agent_calls_its_tool_and_answers_through_the_responses_api(network: Network) -> None:
    calls: list[dict[str, Any]] = []
    receipts = Receipts()

    async def go() -> RunResult:
        async with client_of(network, receipts) as client:
            model = OpenAIResponsesModel(model=MODEL, openai_client=client)
            return await Runner.run(weather_agent(model, calls), QUESTION, max_turns=4)

    result = asyncio.run(go())

    assert_tool_loop(result, calls)
    assert calls == [{"city": "Paris"}]
    assert signed(receipts, 2)  # each step is a provider's answer with its signed receipt


def test_a_streamed_agent_run_through_the_responses_api(network: Network) -> None:
    calls: list[dict[str, Any]] = []

    async def go() -> tuple[RunResultStreaming, list[str]]:
        async with client_of(network, Receipts()) as client:
            model = OpenAIResponsesModel(model=MODEL, openai_client=client)
            result = Runner.run_streamed(weather_agent(model, calls), QUESTION, max_turns=4)
            events = [event async for event in result.stream_events()]
        kinds = [getattr(event.data, "type", "") for event in events if event.type == "raw_response_event"]
        return result, kinds

    result, kinds = asyncio.run(go())

    assert_tool_loop(result, calls)
    assert kinds.count("response.completed") == 2 and "response.function_call_arguments.delta" in kinds


class Report(BaseModel):
    city: str
    degrees: int


def test_an_agent_with_an_output_type_gets_its_typed_result(network: Network) -> None:
    receipts = Receipts()

    async def go() -> RunResult:
        async with client_of(network, receipts) as client:
            agent = Agent(
                name="reporter",
                instructions="Report the city and the temperature in degrees.",
                model=OpenAIResponsesModel(model=MODEL, openai_client=client),
                output_type=Report,
                model_settings=ModelSettings(temperature=0, max_tokens=64),
            )
            return await Runner.run(agent, "It is 18 degrees and sunny in Paris.")

    result = asyncio.run(go())

    assert isinstance(result.final_output, Report) and result.final_output.city  # valid by grammar
    assert result.context_wrapper.usage.requests == 1 and signed(receipts, 1)


# --- OpenAIChatCompletionsModel -------------------------------------------------------------


def test_an_agent_calls_its_tool_and_answers_through_chat_completions(network: Network) -> None:
    calls: list[dict[str, Any]] = []
    receipts = Receipts()

    async def go() -> RunResult:
        async with client_of(network, receipts) as client:
            model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
            return await Runner.run(weather_agent(model, calls), QUESTION, max_turns=4)

    result = asyncio.run(go())

    assert_tool_loop(result, calls)
    assert signed(receipts, 2)


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        (ModelSettings(store=True), "store"),
        (ModelSettings(truncation="auto"), "truncation"),
        (ModelSettings(reasoning={"effort": "low"}), "reasoning"),
    ],
)
def test_settings_the_gateway_does_not_serve_are_refused_by_name(
    network: Network, settings: ModelSettings, param: str
) -> None:
    async def go() -> None:
        async with client_of(network, Receipts()) as client:
            model = OpenAIResponsesModel(model=MODEL, openai_client=client)
            await Runner.run(Agent(name="a", model=model, model_settings=settings), "Hi")

    with pytest.raises(openai.BadRequestError) as info:
        asyncio.run(go())

    assert info.value.status_code == 400 and info.value.body["param"] == param
