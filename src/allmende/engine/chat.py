"""How a conversation reaches a chat template: tools and tool-call history rendered natively
where the template renders tools, else by the fallback below (allmende.api.tools has the
wire format of a call and the grammar that decodes one).

Fallback. A template that does not know tools (SmolLM2's, allmende:tiny's) gets the tool
list and the call format appended to the system message (one is added first if the
conversation has none), an assistant turn with `tool_calls` written as the call array it
would have generated, and `tool` messages as they are (role `tool`, their content).
"""

from __future__ import annotations

import json
from typing import Any

from allmende.engine.base import ChatPrompt

FALLBACK_INSTRUCTION = (
    "Tools (their arguments as JSON Schema):\n{tools}\n"
    'To call tools, answer only with a JSON array: [{{"name":"tool","arguments":{{...}}}}]'
)


def call_text(calls: list[tuple[str, Any]]) -> str:
    """The call array as the model is asked to write it (compact JSON)."""
    return json.dumps([{"name": n, "arguments": a} for n, a in calls], separators=(",", ":"), ensure_ascii=False)


def template_renders_tools(template: object) -> bool:
    """True if a chat template (its Jinja source) renders `tools` itself."""
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default")
    return isinstance(template, str) and "tools" in template


def render_chat(prompt: ChatPrompt, native: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) for `apply_chat_template`: `native` for a template that renders
    tools itself (history in Hugging Face's shape); otherwise the fallback (tools None)."""
    messages: list[dict[str, Any]] = []
    for m in prompt.messages:
        out: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls and native:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in m.tool_calls
            ]
        elif m.tool_calls:
            calls = call_text([(c.name, c.arguments) for c in m.tool_calls])
            out["content"] = (m.content + "\n" if m.content else "") + calls
        if m.tool_call_id is not None and native:
            out["tool_call_id"] = m.tool_call_id
        messages.append(out)
    if not prompt.tools:
        return messages, None
    if native:
        return messages, [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in prompt.tools
        ]
    listing = "\n".join(
        json.dumps(
            {"name": t.name, "description": t.description, "parameters": t.parameters},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        for t in prompt.tools
    )
    instruction = FALLBACK_INSTRUCTION.format(tools=listing)
    if messages and messages[0]["role"] in ("system", "developer"):
        messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + instruction}
    else:
        messages.insert(0, {"role": "system", "content": instruction})
    return messages, None
