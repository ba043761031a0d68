"""An agent loop through `allmende up` with the default real chat model (SmolLM2-135M-Instruct):
the model is forced to call a tool (the request exactly as langchain-openai's
`ChatOpenAI.bind_tools(..., tool_choice=...)` sends it), the tool runs here, its result goes
back as a `tool` message after the assistant's `tool_calls` turn (`content: null`), and the
model answers in text. The e2e network's providers serve the real model next to the tiny one,
with llama.cpp (`--engine auto`, the default, on a GGUF model), as `make demo` does."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from openai import OpenAI

from tests.e2e.conftest import Network

MODEL = "smollm2-135m-instruct"
CITY = {"properties": {"city": {"type": "string"}}, "required": ["city"], "type": "object"}
# what langchain-openai sends for ChatOpenAI(model=MODEL, temperature=0).bind_tools([get_weather],
# tool_choice="get_weather", parallel_tool_calls=False).invoke("What is the weather in Paris?"),
# get_weather being a typed function whose docstring is its description

BIND_TOOLS_REQUEST: dict[str, Any] = {
    "messages": [{"content": "What is the weather in Paris?", "role": "user"}],
    "model": MODEL,
    "stream": False,
    "n": 1,
    "temperature": 0.0,
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather in a given city.",
                "parameters": CITY,
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
}


def get_weather(city: str) -> str:
    return f"It is 18 degrees and sunny in {city}."


def test_an_agent_loop_with_a_forced_tool_call_runs_end_to_end(network: Network) -> None:
    logs = "".join(Path(p["log"]).read_text() for p in network.data["providers"])
    assert re.search(rf"loaded {MODEL} \(0x[0-9a-f]+…\) on llama\.cpp \(f16 weights, \d+ threads?\)", logs), logs
    gateway = network.data["gateway_url"]
    first = httpx.post(f"{gateway}/chat/completions", json=BIND_TOOLS_REQUEST, timeout=300).json()
    message = first["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "tool_calls" and message["content"] is None
    (call,) = message["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, CITY)
    result = get_weather(**arguments)
    client = OpenAI(base_url=gateway, api_key="unused", max_retries=0, timeout=300)

    answer = client.chat.completions.create(
        model=MODEL,
        messages=[
            *BIND_TOOLS_REQUEST["messages"],
            message,
            {"role": "tool", "tool_call_id": call["id"], "content": result},
        ],
        tools=BIND_TOOLS_REQUEST["tools"],
        tool_choice="none",
        max_tokens=12,
        temperature=0,
    )

    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content and answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens <= 12
