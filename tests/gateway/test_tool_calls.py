"""Tool calling, fast and in process: the request checks, the rendering of tools and
tool-call history for templates with and without tool support, reading a call array back
(whole and streamed), and the gateway's answers through the official `openai` client over
a provider whose scripted engine writes a given text (the receipts are checked and paid as
for any answer)."""

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

from allmende.api.canonical import prompt_of
from allmende.api.protocol import InvalidParameter, check_request, sampling_params
from allmende.api.schemas import closed
from allmende.core.prompts import max_prompt_tokens
from allmende.engine.base import ChatPrompt, SamplingParams, TokenEvent
from allmende.engine.chat import render_chat, template_renders_tools
from allmende.gateway.app import GatewayLimits, create_app
from allmende.gateway.call_reader import CallReader, read_calls
from tests.gateway.fakes import FakeEngine, FakeProvider, network

T = TypeVar("T")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
USER = [{"role": "user", "content": "Weather in Paris?"}]
CALL = '[{"name":"get_weather","arguments":{"city":"Paris"}}]'
HISTORY = [
    *USER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 °C, sunny"},
]
# what langchain-openai's ChatOpenAI(model=...).bind_tools([get_weather]).invoke("...") sends
# (langchain-openai 0.3: the tool from a typed Python function, its docstring the description)
LANGCHAIN_BIND_TOOLS = {
    "messages": [{"content": "What is the weather in Paris?", "role": "user"}],
    "model": "fake",
    "stream": False,
    "n": 1,
    "temperature": 0.7,
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather in a given city.",
                "parameters": {
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                    "type": "object",
                },
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
}


# --- checks and grammar -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools[0]"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1]"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER], "parallel_tool_calls": 1}, "parallel_tool_calls"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [*USER, {"role": "assistant", "content": None}]}, "messages[1]"),
        ({"messages": [*USER, {"role": "tool", "content": "x"}]}, "messages[1]"),
        (
            {"messages": [*USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]},
            "messages[1].tool_calls[0]",
        ),
        (
            {
                "messages": [
                    HISTORY[0],
                    {
                        **HISTORY[1],
                        "tool_calls": [
                            {**HISTORY[1]["tool_calls"][0], "function": {"name": "get_weather", "arguments": "{nope"}}
                        ],
                    },
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_tool_parameter_that_cannot_be_served_is_named(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        check_request("chat", {"messages": USER, **body})
    assert info.value.param == param


def test_the_grammar_follows_tool_choice() -> None:
    def grammar(**kw: Any) -> str | None:
        return sampling_params({"messages": USER, "tools": [WEATHER], **kw}).grammar

    assert grammar(tool_choice="none") is None
    assert grammar() == grammar(tool_choice="auto") and "text" in str(grammar())  # a call array or text
    assert grammar(tool_choice="required") != grammar(tool_choice="auto")
    named = grammar(tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named is not None and '"maxItems":1' in named.replace(" ", "")
    assert sampling_params({"messages": USER}).grammar is None


# --- rendering ------------------------------------------------------------------------------


def render_messages(body: dict[str, Any], native: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """What the engine gives the chat template for a request's body (api.canonical → engine.chat)."""
    prompt = prompt_of("chat", body)
    assert isinstance(prompt, ChatPrompt)
    return render_chat(prompt, native)


def test_the_fallback_describes_tools_in_the_system_message_and_writes_calls_as_the_model_would() -> None:
    messages, tools = render_messages({"messages": HISTORY, "tools": [WEATHER]}, native=False)

    assert tools is None
    assert messages[0]["role"] == "system" and "get_weather" in messages[0]["content"]
    assert "JSON array" in messages[0]["content"]
    assert messages[2] == {"role": "assistant", "content": CALL}
    assert messages[3] == {"role": "tool", "content": "18 °C, sunny"}
    with_system, _ = render_messages(
        {"messages": [{"role": "system", "content": "Be brief."}, *USER], "tools": [WEATHER]}, native=False
    )
    assert len(with_system) == 2 and with_system[0]["content"].startswith("Be brief.\n\n")
    none, _ = render_messages({"messages": USER, "tools": [WEATHER], "tool_choice": "none"}, native=False)
    assert none == USER  # tool_choice none: the model is not told about tools


def test_a_template_that_renders_tools_gets_them_and_the_history_natively() -> None:
    messages, tools = render_messages({"messages": HISTORY, "tools": [WEATHER]}, native=True)

    assert tools == [WEATHER] and messages[0] == USER[0]
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert messages[2]["tool_call_id"] == "call_1"
    assert template_renders_tools("{% if tools %}{{ tools | tojson }}{% endif %}")
    assert not template_renders_tools("{% for m in messages %}{{ m.content }}{% endfor %}")


def test_the_gateway_pays_for_the_prompt_tools_make() -> None:
    plain = max_prompt_tokens("chat", {"messages": USER})
    with_tools = max_prompt_tokens("chat", {"messages": HISTORY, "tools": [WEATHER]})
    rendered, _ = render_messages({"messages": HISTORY, "tools": [WEATHER]}, native=False)

    assert with_tools >= plain + len(json.dumps(rendered).encode())


# --- reading calls back -----------------------------------------------------------------------


def test_a_call_array_is_read_whole_and_streamed_alike() -> None:
    text = '[{"name":"a","arguments":{"q":"}],{\\"x","n":[1,{"m":2}]}},{"name":"b","arguments":{}}]'
    whole = read_calls(text)
    reader = CallReader()
    pieces = [d for i in range(0, len(text), 4) for d in reader.feed(text[i : i + 4])]

    assert whole is not None and [(n, json.loads(a)) for _, n, a in whole] == [
        ("a", {"q": '}],{"x', "n": [1, {"m": 2}]}),
        ("b", {}),
    ]
    starts = [d for d in pieces if d.name]
    assert [(d.index, d.name, d.arguments) for d in starts] == [(0, "a", ""), (1, "b", "")]
    assert all(d.id and d.id.startswith("call_") for d in starts)
    streamed = ["".join(d.arguments for d in pieces if d.index == i) for i in (0, 1)]
    assert streamed == [a for _, _, a in whole] and reader.complete()


@pytest.mark.parametrize("text", ["", "Paris is sunny.", '[{"name":"a","arguments":{"q":1', '[{"name":"a"}]', "[1]"])
def test_text_that_is_no_whole_call_array_is_not_a_call(text: str) -> None:
    assert read_calls(text) is None


# --- through the gateway ---------------------------------------------------------------------


class ScriptedEngine(FakeEngine):
    """Writes `script`, one character per token, then stops (as a grammar-complete call would)."""

    def __init__(self, script: str) -> None:
        super().__init__()
        self.script = script

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        text = self.script[: params.max_tokens]
        for i, c in enumerate(text):
            last = i == len(text) - 1
            finish = ("stop" if len(text) == len(self.script) else "length") if last else None
            yield TokenEvent(c, ord(c), finish, b"\x01" * 8 if last else None, None)


def run(tmp: Path, script: str, call: Callable[[openai.AsyncOpenAI], Awaitable[T]]) -> T:
    net = network(tmp, [FakeProvider(tmp, engine=ScriptedEngine(script))])
    contracts = net.service.directory.contracts  # the explorer's chain view reads these lazily
    for name in ("channels", "verdicts", "governor"):
        if not hasattr(contracts, name):
            setattr(contracts, name, SimpleNamespace())
        getattr(contracts, name).contract = None
    contracts.deployment = SimpleNamespace(deploy_block=0)
    app = create_app(net.service, GatewayLimits())

    async def go() -> T:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw/v1") as http:
            return await call(openai.AsyncOpenAI(base_url="http://gw/v1", api_key="k", http_client=http, max_retries=0))

    result = asyncio.run(go())
    assert net.store.spent("k") > 0  # the receipt passed the gateway's checks and was paid
    return result


def test_a_forced_call_comes_back_as_tool_calls(tmp_path: Path) -> None:
    async def call(client: openai.AsyncOpenAI) -> Any:
        return await client.chat.completions.create(
            model="fake",
            messages=USER,
            tools=[WEATHER],
            tool_choice="required",
            max_tokens=64,  # type: ignore[list-item]
        )

    reply = run(tmp_path, CALL, call)

    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (tool_call,) = choice.message.tool_calls
    assert tool_call.id.startswith("call_") and tool_call.type == "function"
    assert tool_call.function.name == "get_weather" and json.loads(tool_call.function.arguments) == {"city": "Paris"}


def test_streamed_tool_call_deltas_are_shaped_as_openai_streams_them(tmp_path: Path) -> None:
    async def call(client: openai.AsyncOpenAI) -> Any:
        stream = await client.chat.completions.create(
            model="fake",
            messages=HISTORY,
            tools=[WEATHER],
            tool_choice="required",
            stream=True,  # type: ignore[list-item, arg-type]
        )
        return [c async for c in stream]

    chunks = run(tmp_path, CALL, call)

    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first = deltas[0][0]
    assert (first.index, first.type, first.function.name, first.function.arguments) == (
        0,
        "function",
        "get_weather",
        "",
    )
    assert first.id and first.id.startswith("call_")
    rest = [d for ds in deltas[1:] for d in ds]
    assert all(d.id is None and d.function.name is None for d in rest) and len(rest) > 1  # fragments, as written
    assert "".join(d.function.arguments for d in rest) == '{"city":"Paris"}'
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_answers_text_as_content(tmp_path: Path) -> None:
    async def call(client: openai.AsyncOpenAI) -> Any:
        return await client.chat.completions.create(model="fake", messages=USER, tools=[WEATHER])  # type: ignore[list-item]

    reply = run(tmp_path, "It is sunny.", call)

    assert reply.choices[0].message.content == "It is sunny." and reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason == "stop"


def test_a_call_cut_off_by_max_tokens_stays_text(tmp_path: Path) -> None:
    async def call(client: openai.AsyncOpenAI) -> Any:
        return await client.chat.completions.create(
            model="fake",
            messages=USER,
            tools=[WEATHER],
            tool_choice="required",
            max_tokens=10,  # type: ignore[list-item]
        )

    reply = run(tmp_path, CALL, call)

    assert reply.choices[0].finish_reason == "length" and reply.choices[0].message.content == CALL[:10]


def test_the_request_langchain_bind_tools_sends_gets_a_call(tmp_path: Path) -> None:
    async def call(client: openai.AsyncOpenAI) -> Any:
        reply = await client.post("/chat/completions", body=LANGCHAIN_BIND_TOOLS, cast_to=httpx.Response)
        return reply.json()

    body = run(tmp_path, CALL, call)

    message = body["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["function"]["name"] == "get_weather"
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_arguments_get_the_declared_properties_only() -> None:
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"a": {"const": {"properties": {}}}}},
            "open": {"type": "object", "properties": {}, "additionalProperties": True},
        },
    }

    assert closed(schema) == {
        "type": "object",
        "properties": {
            "properties": {
                "type": "object",
                "properties": {"a": {"const": {"properties": {}}}},
                "additionalProperties": False,
            },
            "open": {"type": "object", "properties": {}, "additionalProperties": True},
        },
        "additionalProperties": False,
    }


def test_parallel_calls_come_back_in_order_with_their_own_ids(tmp_path: Path) -> None:
    two = '[{"name":"get_weather","arguments":{"city":"Paris"}},{"name":"get_weather","arguments":{"city":"Rome"}}]'

    async def call(client: openai.AsyncOpenAI) -> Any:
        stream = await client.chat.completions.create(
            model="fake",
            messages=USER,
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
            stream=True,
            max_tokens=200,
        )
        return [c async for c in stream]

    chunks = run(tmp_path, two, call)

    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    starts = [d for d in deltas if d.id]
    assert [d.index for d in starts] == [0, 1] and starts[0].id != starts[1].id
    cities = ["".join(d.function.arguments or "" for d in deltas if d.index == i) for i in (0, 1)]
    assert [json.loads(c)["city"] for c in cities] == ["Paris", "Rome"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(("script", "finish"), [("Sunny.", "stop"), (CALL, "tool_calls")], ids=["text", "call"])
def test_a_streamed_auto_answer_is_text_or_a_call_by_its_first_character(
    tmp_path: Path, script: str, finish: str
) -> None:
    async def call(client: openai.AsyncOpenAI) -> Any:
        stream = await client.chat.completions.create(model="fake", messages=USER, tools=[WEATHER], stream=True)  # type: ignore[list-item]
        return [c async for c in stream]

    chunks = run(tmp_path, script, call)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert (text, bool(calls)) == (("Sunny.", False) if finish == "stop" else ("", True))
    assert chunks[-1].choices[0].finish_reason == finish
