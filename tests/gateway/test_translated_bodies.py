"""Malformed bodies at /v1/responses and /v1/messages: 400 valid requests, each with one value
replaced by a JSON value of another kind (seeded, so a failure replays), are answered with
a 200 or a 4xx in the endpoint's own error shape, never a 5xx and never a payment for a
refused request."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.scripted import Clients, PromptEngine, serve

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
RESPONSES = {
    "model": "fake",
    "instructions": "Be brief.",
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18 degrees"},
    ],
    "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}],
    "tool_choice": "auto",
    "text": {"format": {"type": "text"}},
    "max_output_tokens": 16,
    "temperature": 0.5,
    "stream": False,
}
MESSAGES = {
    "model": "fake",
    "max_tokens": 16,
    "system": [{"type": "text", "text": "Be brief."}],
    "messages": [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "P"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "18 degrees"}]},
    ],
    "tools": [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
    "tool_choice": {"type": "auto"},
    "stop_sequences": ["\n"],
    "stream": False,
}
ODD_VALUES: list[Any] = [None, True, 0, -1, 2.5, 10**30, "", "x", [], [None], {}, {"type": None}, [[[]]]]


def paths(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value, as a path of keys and indices."""
    found = [at] if at else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*at, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found += paths(inner, (*at, i))
    return found


def replaced(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy: Any = dict(body) if isinstance(body, dict) else list(body)
    copy[path[0]] = replaced(copy[path[0]], path[1:], value)
    return copy


def mutants(body: dict[str, Any], count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    places = [p for p in paths(body) if p != ("stream",)]  # a stream's answer is events (tested elsewhere)
    return [replaced(body, rng.choice(places), rng.choice(ODD_VALUES)) for _ in range(count)]


@pytest.mark.parametrize(("route", "body"), [("/v1/responses", RESPONSES), ("/v1/messages", MESSAGES)])
def test_malformed_bodies_get_the_endpoints_4xx_never_a_5xx(tmp_path: Path, route: str, body: dict[str, Any]) -> None:
    bodies = mutants(body, 200, seed=32)

    async def call(c: Clients) -> Any:
        replies = []
        for sent in [body, *bodies]:
            reply = await c.http.post(route, json=sent)
            replies.append((sent, reply.status_code, reply.json()))
        return replies

    replies, net = serve(tmp_path, PromptEngine(lambda _: "Fine."), call)

    assert replies[0][1] == 200  # the body itself is served
    served = 0
    for sent, status, answer in replies:
        assert status < 500, (sent, answer)
        if status == 200:
            served += 1
        elif route == "/v1/messages":
            assert answer["type"] == "error" and set(answer["error"]) == {"type", "message"}, answer
        else:
            assert set(answer["error"]) == {"message", "type", "param", "code"}, answer
    assert 0 < served < len(replies)
    assert net.store.receipt_count() == served  # a refused request is never sent, never paid
