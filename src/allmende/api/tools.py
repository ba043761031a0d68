"""Tool calling: what a chat request's `tools`, `tool_choice` and `parallel_tool_calls` ask
for, how tools and tool-call history reach the model, the grammar that makes a forced call
valid by construction, and how a tool call is read back out of the generated text.

The wire format of a call. Whatever the model, a tool call is generated as compact JSON:
an array of calls, each `{"name": <tool>, "arguments": <object of the tool's schema>}`
(at most one with `parallel_tool_calls: false` or a named `tool_choice`). That text is
what the provider generates, what its receipt's `outputHash` commits to and what a
validator re-checks; the gateway turns it into OpenAI's `tool_calls` (ids `call_…`,
`arguments` as a JSON string: the exact characters the model wrote).

Each tool's parameters are decoded closed and bounded (allmende.api.schemas: no invented
properties, integers and numbers of bounded length), so a call always ends.

    tool_choice          grammar (llguidance; from the body, which inputHash binds)
    "none"               none: text; the tools are not shown to the model
    "auto" (default)     `calls | text`: either a call array or text whose first character is
                         not `[`; the answer is a tool call iff its text starts with `[`
    "required"           a call array of any of the tools
    {"type": "function", "function": {"name": N}}   a call array of one call to N

Rendering the tools and the call history for a chat template is the engine's
(allmende.engine.chat); reading a call back out of streamed text is the gateway's
(allmende.gateway.call_reader).

Everything here raises ToolSpecError (a ValueError with the parameter's name); the protocol
turns it into a 400 naming the parameter, an engine into an EngineError.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from allmende.api.schemas import decodable
from allmende.engine.base import ToolSpec

MAX_PARALLEL_CALLS = 8  # calls in one answer when parallel calls are allowed
MAX_TOOLS = 128  # as OpenAI caps `tools`
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


class ToolSpecError(ValueError):
    """A tool parameter that cannot be served; `param` names it as OpenAI would."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


Tool = ToolSpec  # a function the request offers the model


def tools_of(body: Mapping[str, Any]) -> list[Tool]:
    """The request's tools, checked ([] without any)."""
    raw = body.get("tools")
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise ToolSpecError(f"'tools' must be an array of at most {MAX_TOOLS} tools", "tools")
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(item, dict) or item.get("type") != "function" or not isinstance(item.get("function"), dict):
            raise ToolSpecError(f'\'{where}\' must be {{"type": "function", "function": {{...}}}}', where)
        unknown = set(item) - {"type", "function"}
        if unknown:
            raise ToolSpecError(f"'{where}.{sorted(unknown)[0]}' is not a field of a tool", where)
        function = item["function"]
        unknown = set(function) - {"name", "description", "parameters", "strict"}
        if unknown:
            raise ToolSpecError(f"'{where}.function.{sorted(unknown)[0]}' is not a field of a function", where)
        name = function.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ToolSpecError(f"'{where}.function.name' must be 1-64 letters, digits, _ or -", where)
        if any(t.name == name for t in tools):
            raise ToolSpecError(f"'{where}.function.name' {name!r} is given twice", where)
        description = function.get("description", "")
        parameters = function.get("parameters", NO_PARAMETERS)
        if not isinstance(description, str) or not isinstance(parameters, dict):
            raise ToolSpecError(f"'{where}.function' needs a string description and an object parameters", where)
        if not isinstance(function.get("strict", False), bool | None):
            raise ToolSpecError(f"'{where}.function.strict' must be a boolean", where)
        tools.append(Tool(name, description, parameters))
    return tools


def choice_of(body: Mapping[str, Any], tools: list[Tool] | None = None) -> str:
    """The tool choice: "none", "auto", "required" or the name of the function to call.
    Without tools only "none" is possible (OpenAI refuses any other)."""
    tools = tools_of(body) if tools is None else tools
    raw = body.get("tool_choice")
    if raw is None:
        return "auto" if tools else "none"
    if raw in ("none", "auto", "required"):
        choice = str(raw)
    elif (
        isinstance(raw, dict)
        and raw.get("type") == "function"
        and isinstance(raw.get("function"), dict)
        and isinstance(raw["function"].get("name"), str)
    ):
        choice = str(raw["function"]["name"])
        if not any(t.name == choice for t in tools):
            raise ToolSpecError(f"'tool_choice' names {choice!r}, which is not one of 'tools'", "tool_choice")
        return choice
    else:
        raise ToolSpecError(
            '\'tool_choice\' must be "none", "auto", "required" or {"type": "function", "function": {"name": …}}',
            "tool_choice",
        )
    if choice != "none" and not tools:
        raise ToolSpecError("'tool_choice' is only allowed when 'tools' are specified", "tool_choice")
    return choice


def parallel_of(body: Mapping[str, Any]) -> bool:
    raw = body.get("parallel_tool_calls")
    if raw is None:
        return True
    if not isinstance(raw, bool):
        raise ToolSpecError("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    return raw


def calls_schema(tools: list[Tool], choice: str, parallel: bool) -> dict[str, Any]:
    """The JSON Schema of a call array for this choice."""
    allowed = tools if choice in ("auto", "required") else [t for t in tools if t.name == choice]
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": decodable(t.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in allowed
    ]
    one = parallel and choice in ("auto", "required")
    return {
        "type": "array",
        "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
        "minItems": 1,
        "maxItems": MAX_PARALLEL_CALLS if one else 1,
        "x-guidance": {"whitespace_flexible": False},  # compact JSON: no whitespace to wander into
    }


def tool_grammar(body: Mapping[str, Any]) -> str | None:
    """The llguidance grammar of a request's tool choice (None: no constraint). A pure
    function of the body, so provider and validator derive the same masks."""
    tools = tools_of(body)
    choice = choice_of(body, tools)
    parallel = parallel_of(body)
    if choice == "none":
        return None
    from llguidance import LLMatcher, grammar_from

    schema = calls_schema(tools, choice, parallel)
    try:
        if choice == "auto":  # either a call array, or text that does not start like one
            lark = f"start: calls | text\ncalls: %json {json.dumps(schema)}\ntext: /[^\\[](.|\\n)*/\n"
            grammar = grammar_from("lark", lark)
        else:
            grammar = LLMatcher.grammar_from_json_schema(schema)
    except (ValueError, TypeError) as exc:
        raise ToolSpecError(f"'tools' parameters are not a valid JSON Schema: {exc}", "tools") from None
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise ToolSpecError(f"'tools' parameters are not supported: {error}", "tools")
    return grammar


# --- history -------------------------------------------------------------------------------


def _arguments(raw: Any, where: str) -> Any:
    if not isinstance(raw, str):
        raise ToolSpecError(f"'{where}' must be a string of JSON", where)
    try:
        return json.loads(raw)
    except ValueError:
        raise ToolSpecError(f"'{where}' is not JSON", where) from None


def history_calls(message: Mapping[str, Any], i: int) -> list[tuple[str, str, Any]]:
    """(id, name, parsed arguments) of an assistant message's `tool_calls`, checked."""
    raw = message.get("tool_calls")
    if raw is None or raw == []:
        return []
    where = f"messages[{i}].tool_calls"
    if message.get("role") != "assistant" or not isinstance(raw, list):
        raise ToolSpecError(f"'{where}' must be an array on an assistant message", where)
    calls = []
    for j, call in enumerate(raw):
        at = f"{where}[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(call, dict)
            or call.get("type", "function") != "function"
            or not isinstance(call.get("id"), str)
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
        ):
            raise ToolSpecError(f"'{at}' must be {{id, type: function, function: {{name, arguments}}}}", at)
        calls.append((call["id"], function["name"], _arguments(function.get("arguments"), f"{at}.function.arguments")))
    return calls
