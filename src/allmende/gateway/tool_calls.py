"""Tool calls in the gateway's answers: the provider returns (and signs) the text the model
generated; when that text is a call array (allmende.api.tools) the gateway shows it as OpenAI's
`tool_calls`, with `content: null` and `finish_reason: "tool_calls"`, and streams it as
OpenAI does: a first delta per call with its index, id, type, name and empty arguments,
then the arguments' text in fragments as the model writes them.

When an answer is a tool call: with `tool_choice` `required` or a named function, always
(the grammar allows nothing else; a call cut off by `max_tokens` stays text with
`finish_reason: "length"`); with `auto`, iff the text starts with `[` (the auto grammar
allows a call array or text whose first character is not `[`); with `none` or no tools,
never.
"""

from __future__ import annotations

from typing import Any

from allmende.api import protocol
from allmende.api.tools import choice_of
from allmende.gateway.call_reader import CallReader, read_calls


def call_mode(body: dict[str, Any]) -> str:
    """ "none", "auto" or "forced" for a checked chat body."""
    if not body.get("tools"):
        return "none"
    choice = choice_of(body)
    return choice if choice in ("none", "auto") else "forced"


def message_of(body: dict[str, Any], text: str, finish: str) -> tuple[protocol.AssistantMessage, str]:
    """The assistant message and finish reason of a whole answer's text."""
    mode = call_mode(body)
    calls = read_calls(text) if mode == "forced" or (mode == "auto" and text.startswith("[")) else None
    if calls is None:
        return protocol.AssistantMessage(content=text), finish
    tool_calls = [
        protocol.ToolCall(id=i, function=protocol.FunctionCall(name=name, arguments=arguments))
        for i, name, arguments in calls
    ]
    return protocol.AssistantMessage(content=None, tool_calls=tool_calls), "tool_calls"


class StreamedCalls:
    """Turns a stream's text deltas into content or tool-call deltas."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.mode = call_mode(body)
        self.calling: bool | None = True if self.mode == "forced" else (False if self.mode == "none" else None)
        self.reader = CallReader()

    def feed(self, text: str) -> tuple[str | None, list[protocol.ToolCallDelta] | None]:
        """(content, tool-call deltas) to send for this piece of text (either may be None)."""
        if self.calling is None:
            if not text:
                return None, None
            self.calling = text.startswith("[")
        if not self.calling:
            return text, None
        deltas = [
            protocol.ToolCallDelta(
                index=d.index,
                id=d.id,
                type="function" if d.id else None,
                function=protocol.FunctionCallDelta(name=d.name, arguments=d.arguments),
            )
            for d in self.reader.feed(text)
        ]
        return None, deltas or None

    def finish(self, reason: str) -> str:
        return "tool_calls" if self.calling and self.reader.complete() else reason
