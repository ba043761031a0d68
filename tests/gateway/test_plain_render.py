"""The plain chat rendering (gateway.rendering.plain_chat_response) gives exactly the JSON the
pydantic response models render, and leaves every answer it does not recognise to them (so
what they refuse is still refused)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from allmende.api import protocol
from allmende.api.client import Answer
from allmende.gateway import rendering
from allmende.gateway.rendering import chat_response, plain_chat_response

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def answer(output: dict[str, Any], usage: Any) -> Answer:
    return Answer(output, usage, None)  # type: ignore[arg-type]  # the receipt is not rendered


def modelled(output: dict[str, Any], usage: Any) -> dict[str, Any]:
    """What the pydantic models render for a one-choice text answer (the path before)."""
    message = protocol.AssistantMessage(content=str(output.get("text", "")))
    finish = output.get("finish_reason", "stop")
    return protocol.ChatCompletion(
        id="chatcmpl-x",
        created=1,
        model="m",
        choices=[protocol.ChatChoice(index=0, message=message, logprobs=None, finish_reason=finish)],
        usage=protocol.Usage.model_validate(usage),
    ).render()


USAGE = {"prompt_tokens": 7, "completion_tokens": 16, "total_tokens": 23}


@pytest.mark.parametrize(
    ("output", "usage"),
    [
        ({"text": "Hallo!", "finish_reason": "length", "token_ids": [1, 2], "proof": "0x"}, USAGE),
        ({"text": "", "finish_reason": "stop"}, USAGE),
        ({"text": 'ünïcode ☃ "quoted"\n'}, {**USAGE, "prompt_tokens_details": {"cached_tokens": 5}}),
        ({"text": "x", "finish_reason": "stop"}, {**USAGE, "prompt_tokens_details": {}}),
        ({"text": "x", "finish_reason": "stop"}, {**USAGE, "prompt_tokens_details": None}),
        ({"text": "x", "finish_reason": "stop"}, {**USAGE, "total_tokens": 2**70}),
    ],
)
def test_the_plain_rendering_is_the_models_rendering(output: dict[str, Any], usage: dict[str, Any]) -> None:
    plain = plain_chat_response("m", answer(output, usage))
    assert plain is not None
    assert plain["id"].startswith("chatcmpl-") and isinstance(plain["created"], int)
    assert {**plain, "id": "chatcmpl-x", "created": 1} == modelled(output, usage)
    assert list(plain) == list(modelled(output, usage))  # the same key order on the wire


@pytest.mark.parametrize(
    ("output", "usage"),
    [
        ({"text": 5, "finish_reason": "stop"}, USAGE),  # the models stringify it
        ({"text": "x", "finish_reason": 5}, USAGE),  # the models refuse it
        ({"text": "x", "finish_reason": None}, USAGE),
        ({"text": "x"}, {**USAGE, "completion_tokens": "16"}),  # the models coerce it
        ({"text": "x"}, {**USAGE, "completion_tokens": True}),
        ({"text": "x"}, {**USAGE, "surprise": 1}),  # the models refuse it
        ({"text": "x"}, {"prompt_tokens": 7, "completion_tokens": 16}),  # the models refuse it
        ({"text": "x"}, {**USAGE, "prompt_tokens_details": {"cached_tokens": 1, "audio_tokens": 0}}),
        ({"text": "x"}, {**USAGE, "prompt_tokens_details": {"cached_tokens": 1.0}}),
        ({"text": "x"}, {**USAGE, "prompt_tokens_details": []}),
        ({"text": "x"}, [7, 16, 23]),
    ],
)
def test_anything_else_is_left_to_the_models(output: dict[str, Any], usage: Any) -> None:
    assert plain_chat_response("m", answer(output, usage)) is None
    request = protocol.ChatRequest.model_validate(BODY)
    try:
        expected: Any = modelled(output, usage)
    except ValidationError as exc:
        expected = type(exc)
    try:
        got: Any = {**chat_response(request, BODY, "m", answer(output, usage)), "id": "chatcmpl-x", "created": 1}
    except ValidationError as exc:
        got = type(exc)
    assert got == expected


def test_tools_logprobs_and_choices_take_the_models_path(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[str] = []
    monkeypatch.setattr(rendering, "plain_chat_response", lambda *a: taken.append("plain"))
    out = answer({"text": "x", "finish_reason": "stop", "logprobs": []}, USAGE)
    for body in (
        {**BODY, "logprobs": True},
        {**BODY, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    ):
        chat_response(protocol.ChatRequest.model_validate(body), body, "m", out)
    assert taken == []
    chat_response(protocol.ChatRequest.model_validate(BODY), BODY, "m", out)
    assert taken == ["plain"]
