"""Users' requests of many structures, for tests of audits drawn from traffic: what a mix of
real clients sends (chat apps, agents with tools, structured output, the legacy
completions API, Anthropic's and OpenAI's newer endpoints translated into chat). Each item
is (endpoint, kind, body as the provider gets it, body as the user sent it)."""

from __future__ import annotations

import random
from typing import Any

from allmende.api import messages as messages_api
from allmende.api import responses as responses_api

WORDS = ["rivers", "tea", "maps", "bridges", "the moon", "clouds", "trains", "jazz", "bees", "salt"]
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
    },
}


def user_request(rng: random.Random, model: str) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """One user's request: (endpoint, kind, forwarded body, body as sent)."""
    word = rng.choice(WORDS)
    pick = rng.random()
    if pick < 0.2:  # a chat app, as the old audits looked
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": f"Tell me about {word}."}]}
        body["max_tokens"] = rng.choice([16, 24])
        if rng.random() < 0.5:
            body["stream"] = True
        return "chat", "chat", body, body
    if pick < 0.35:  # a script with stop strings and a seed
        body = {"model": model, "messages": [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": f"One line on {word}:"}], "max_completion_tokens": 20,
                "stop": ["\n"], "seed": rng.randrange(1000), "temperature": 0.3}  # fmt: skip
        return "chat", "chat", body, body
    if pick < 0.5:  # an agent with a tool
        body = {"model": model, "messages": [{"role": "user", "content": f"Define {word}."}], "tools": [TOOL],
                "tool_choice": "required", "max_tokens": 24}  # fmt: skip
        return "chat", "chat", body, body
    if pick < 0.6:  # structured output with log-probabilities
        body = {"model": model, "messages": [{"role": "user", "content": f"{word} as JSON please"}],
                "response_format": {"type": "json_object"}, "max_tokens": 20, "logprobs": True,
                "top_logprobs": 2}  # fmt: skip
        return "chat", "chat", body, body
    if pick < 0.7:  # the legacy completions API
        body = {"model": model, "prompt": f"A sentence about {word}:", "max_tokens": 16, "temperature": 0.8,
                "top_p": 0.9}  # fmt: skip
        return "completions", "completion", body, body
    if pick < 0.85:  # Anthropic's Messages API with stop sequences (served with logprobs: true)
        sent = {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": f"About {word}?"}],
                "stop_sequences": ["\n\n"], "system": "Be brief."}  # fmt: skip
        return "messages", "chat", messages_api.chat_body(messages_api.parse_messages(sent)), sent
    # OpenAI's Responses API, a short conversation
    sent = {"model": model, "max_output_tokens": 20, "instructions": "You are terse.",
            "input": [{"role": "user", "content": f"Hi, {word}?"}, {"role": "assistant", "content": "Yes?"},
                      {"role": "user", "content": "Go on."}]}  # fmt: skip
    return "responses", "chat", responses_api.chat_body(responses_api.parse_responses(sent)), sent


def old_audit_structure(kind: str, body: dict[str, Any]) -> bool:
    """The structure the first validators' audits had (chat; only max_tokens, temperature,
    top_p, stream, n; one question, a system prompt and a question, or three turns): what a
    provider keying on structure serves honestly."""
    if kind != "chat" or not set(body) <= {"model", "messages", "max_tokens", "temperature", "top_p", "stream", "n"}:
        return False
    roles = "".join(str(m.get("role", "?"))[0] for m in body.get("messages", []) if isinstance(m, dict))
    return roles in ("u", "su", "uau") and all(isinstance(m.get("content"), str) for m in body["messages"])


__all__ = ["old_audit_structure", "user_request"]
