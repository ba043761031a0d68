"""What the fault tests send: alternating streamed and one-shot chat requests."""

from __future__ import annotations

from typing import Any

from openai import OpenAI

MESSAGES: list[Any] = [{"role": "user", "content": "Erzähl mir von der Allmende."}]


def ask(client: OpenAI, i: int, stream_tokens: int = 40, chat_tokens: int = 8) -> str:
    """Odd i streams, even i does not; returns "stream:<finish>" or "chat:<finish>"."""
    if i % 2:
        stream = client.chat.completions.create(
            model="allmende:tiny", messages=MESSAGES, max_tokens=stream_tokens, stream=True
        )
        finishes = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
        assert finishes, "stream ended without a finish reason"
        return f"stream:{finishes[-1]}"
    reply = client.chat.completions.create(model="allmende:tiny", messages=MESSAGES, max_tokens=chat_tokens)
    return f"chat:{reply.choices[0].finish_reason}"
