"""Tool calling: what a chat request's `tools`, `tool_choice` and `parallel_tool_calls` ask
for, how tools and tool-call history reach the model, the grammar that makes a forced call
valid by construction, and how a tool call is read back out of the generated text.

The wire format of a call. Whatever the model, a tool call is generated as compact JSON:
an array of calls, each `{"name": <tool>, "arguments": <object of the tool's schema>}`
(at most one with `parallel_tool_calls: false` or a named `tool_choice`). That text is
what the provider generates, what its receipt's `outputHash` commits to and what a
validator re-checks; the gateway turns it into OpenAI's `tool_calls` (ids `call_…`,
`arguments` as a JSON string: the exact characters the model wrote).

    tool_choice          grammar (llguidance; from the body, which inputHash binds)
    "none"               none: text; the tools are not shown to the model
    "auto" (default)     `calls | text`: either a call array or text whose first character is
                         not `[`; the answer is a tool call iff its text starts with `[`
    "required"           a call array of any of the tools
    {"type": "function", "function": {"name": N}}   a call array of one call to N

Rendering. A chat template that knows tools (its source mentions `tools`) gets them through
`apply_chat_template(..., tools=...)` and the history in Hugging Face's shape. Other
templates (SmolLM2's, allmende:tiny's) get the fallback: the tool list and the format above
appended to the system message (one is added first if the request has none), an assistant
turn with `tool_calls` written as the call array it would have generated, and `tool`
messages as they are (role `tool`, their content).

Everything here raises ToolSpecError (a ValueError with the parameter's name); the protocol
turns it into a 400 naming the parameter, an engine into an EngineError.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_PARALLEL_CALLS = 8  # calls in one answer when parallel calls are allowed
MAX_TOOLS = 128  # as OpenAI caps `tools`
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
FALLBACK_INSTRUCTION = (
    "Tools (their arguments as JSON Schema):\n{tools}\n"
    'To call tools, answer only with a JSON array: [{{"name":"tool","arguments":{{...}}}}]'
)


class ToolSpecError(ValueError):
    """A tool parameter that cannot be served; `param` names it as OpenAI would."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


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


def closed(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object schema that lists its
    properties and says nothing about others: arguments are generated with the declared
    properties only (still valid against the schema as given). Without it a small model
    invents properties until `max_tokens` (SmolLM2 did, on langchain's `bind_tools` schema)."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
            out[key] = {name: closed(v) for name, v in value.items()}  # maps of names to schemas
        elif key in ("const", "enum", "default", "examples", "required"):
            out[key] = value  # values, not schemas
        else:
            out[key] = closed(value)
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def calls_schema(tools: list[Tool], choice: str, parallel: bool) -> dict[str, Any]:
    """The JSON Schema of a call array for this choice."""
    allowed = tools if choice in ("auto", "required") else [t for t in tools if t.name == choice]
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": closed(t.parameters)},
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


# --- rendering ------------------------------------------------------------------------------


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


def call_text(calls: list[tuple[str, Any]]) -> str:
    """The call array as the model is asked to write it (compact JSON)."""
    return json.dumps([{"name": n, "arguments": a} for n, a in calls], separators=(",", ":"), ensure_ascii=False)


def render_messages(body: Mapping[str, Any], native: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) for the chat template: `native` for a template that renders tools
    itself; otherwise the fallback described in the module doc (tools is then None)."""
    raw = body.get("messages")
    if not isinstance(raw, list):
        raise ToolSpecError("'messages' must be an array", "messages")
    tools = tools_of(body)
    shown = tools if choice_of(body, tools) != "none" else []
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ToolSpecError(f"'messages[{i}]' needs a string role", f"messages[{i}]")
        content = m.get("content")
        calls = history_calls(m, i)
        if not isinstance(content, str) and not (content is None and calls):
            raise ToolSpecError(f"'messages[{i}].content' must be a string", f"messages[{i}].content")
        out: dict[str, Any] = {"role": m["role"], "content": content or ""}
        if calls and native:
            out["tool_calls"] = [
                {"id": c, "type": "function", "function": {"name": n, "arguments": a}} for c, n, a in calls
            ]
        elif calls:
            out["content"] = (content + "\n" if content else "") + call_text([(n, a) for _, n, a in calls])
        if m["role"] == "tool":
            if not isinstance(m.get("tool_call_id"), str):
                raise ToolSpecError(f"'messages[{i}].tool_call_id' is required on a tool message", f"messages[{i}]")
            if native:
                out["tool_call_id"] = m["tool_call_id"]
        messages.append(out)
    if not shown:
        return messages, None
    if native:
        return messages, [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in shown
        ]
    listing = "\n".join(
        json.dumps(
            {"name": t.name, "description": t.description, "parameters": t.parameters},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        for t in shown
    )
    instruction = FALLBACK_INSTRUCTION.format(tools=listing)
    if messages and messages[0]["role"] in ("system", "developer"):
        messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + instruction}
    else:
        messages.insert(0, {"role": "system", "content": instruction})
    return messages, None


def template_renders_tools(template: object) -> bool:
    """True if a chat template (its Jinja source) renders `tools` itself."""
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default")
    return isinstance(template, str) and "tools" in template


# --- reading calls back -------------------------------------------------------------------


@dataclass
class CallDelta:
    """One streamed piece of a call: its start (`name` set, with the id) or arguments text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class CallReader:
    """Reads a call array as its text arrives (compact or not) and says what to stream:
    a call's start once its name is known, then its arguments' characters as they come.
    The arguments are the exact characters of the JSON value the model wrote."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    index: int = -1
    role: str = ""  # "key" or "value" inside a call object
    key: str | None = None
    token: str = ""  # the string being read (a key or the name), with its quotes
    in_arguments: bool = False
    names: list[str | None] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    started: list[bool] = field(default_factory=list)
    broken: bool = False

    def feed(self, text: str) -> list[CallDelta]:
        before = [len(a) for a in self.arguments]
        was_started = list(self.started)
        for c in text:
            self._char(c)
        out = []
        for i, name in enumerate(self.names):
            if name is not None and not self.started[i]:
                self.started[i] = True
                self.ids.append(new_call_id())
                out.append(CallDelta(i, self.ids[i], name, ""))
            if self.started[i]:
                start = before[i] if i < len(before) and i < len(was_started) and was_started[i] else 0
                piece = self.arguments[i][start:]
                if piece:
                    out.append(CallDelta(i, arguments=piece))
        return out

    def _char(self, c: str) -> None:
        if self.in_arguments and self.depth == 2 and not self.in_string and c in ",}":
            self.in_arguments = False  # a scalar value ended (an object or array ends below)
        if self.in_arguments:
            self.arguments[self.index] += c
        if self.in_string:
            if not self.in_arguments:
                self.token += c
            if self.escaped:
                self.escaped = False
            elif c == "\\":
                self.escaped = True
            elif c == '"':
                self.in_string = False
                if not self.in_arguments and self.depth == 2:
                    self._string_done()
            return
        if c == '"':
            self.in_string, self.token = True, c
        elif c in "[{":
            self.depth += 1
            if self.in_arguments:
                return
            if c == "{" and self.depth == 2:  # a call starts
                self.index += 1
                self.names.append(None)
                self.arguments.append("")
                self.started.append(False)
                self.role, self.key = "key", None
            elif not (c == "[" and self.depth == 1 and self.index < 0):
                self.broken = True
        elif c in "]}":
            self.depth -= 1
            if self.in_arguments and self.depth == 2:
                self.in_arguments = False
        elif self.depth == 2 and not self.in_arguments:
            if c == ":":
                self.role = "value"
                self.in_arguments = self.key == "arguments"
            elif c == ",":
                self.role = "key"
            elif not c.isspace():
                self.broken = True

    def _string_done(self) -> None:
        try:
            value = json.loads(self.token)
        except ValueError:
            self.broken = True
            return
        if self.role == "key":
            self.key = value
        elif self.key == "name" and isinstance(value, str):
            self.names[self.index] = value

    def complete(self) -> bool:
        """True if the text so far is a whole call array with a name and arguments in every call."""
        return (
            not self.broken
            and self.depth == 0
            and not self.in_string
            and self.index >= 0
            and all(n is not None for n in self.names)
            and all(a for a in self.arguments)
        )


def read_calls(text: str) -> list[tuple[str, str, str]] | None:
    """(id, name, arguments) of each call in `text`, or None if it is not a whole call array
    (text, or a call cut off by `max_tokens`)."""
    if not text.lstrip().startswith("["):
        return None
    reader = CallReader()
    reader.feed(text)
    if not reader.complete():
        return None
    try:
        json.loads(text)  # the characters between the calls are JSON too
    except ValueError:
        return None
    return [(reader.ids[i], str(reader.names[i]), reader.arguments[i]) for i in range(reader.index + 1)]
