"""Anthropic's Messages API (`POST /v1/messages`): the request as its typed model, and its
translation into the chat request the provider serves. As with the Responses API, the
provider never sees this shape: the chat body `chat_body` returns is what it runs, what its
receipt binds and what a validator re-checks.

    system (string or text blocks)     a system message first
    user content blocks                text → a user message; tool_result → a tool message
                                       (`tool_use_id` as `tool_call_id`), placed before the text
    assistant content blocks           text → an assistant message; tool_use → an assistant
                                       turn with tool_calls (`input` as JSON arguments)
    tools (input_schema)               chat's `tools` (`parameters`)
    tool_choice auto|any|tool|none     chat's auto|required|a named function|none;
                                       `disable_parallel_tool_use` → `parallel_tool_calls: false`
    stop_sequences                     chat's `stop`, with `logprobs` asked for so the
                                       gateway can tell which stop sequence ended the answer
                                       (the provider cuts it from the text; the token texts
                                       still hold it)
    max_tokens, temperature, top_p,    the same
    top_k
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from allmende.api.fields import known_fields, string_field
from allmende.api.protocol import InvalidParameter, invalid_parameter, screen_parameters

MAX_STOP_SEQUENCES = 4  # as chat's `stop`: the engine and the checker watch at most 4


class MessagesRequest(BaseModel):
    """An Anthropic Messages request, checked (its refused parameters were screened before)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    model: str
    max_tokens: Annotated[int, Field(ge=1, le=2**20)]
    messages: Annotated[list[Any], Field(min_length=1)]
    system: Any = None  # a string or text blocks: checked by messages_of
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    stream: bool | None = None
    tools: list[Any] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None

    def stops(self) -> tuple[str, ...]:
        return tuple(s for s in self.stop_sequences or () if s)


def parse_messages(body: dict[str, Any]) -> MessagesRequest:
    """The typed request, or InvalidParameter naming the first bad parameter."""
    screen_parameters("messages", body)
    try:
        return MessagesRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_parameter(exc) from None


def chat_body(request: MessagesRequest) -> dict[str, Any]:
    """The chat request that serves `request` (InvalidParameter, named in Anthropic's shape,
    for what cannot be translated)."""
    body: dict[str, Any] = {"model": request.model, "messages": messages_of(request), "max_tokens": request.max_tokens}
    if request.tools:
        body["tools"] = [_tool(tool, i) for i, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        choice = _tool_choice(request.tool_choice)
        if request.tools or choice["tool_choice"] not in ("auto", "none"):  # Anthropic takes these without tools
            body.update(choice)
    stops = request.stops()
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidParameter(f"'stop_sequences' may hold at most {MAX_STOP_SEQUENCES} strings", "stop_sequences")
    if stops:
        body["stop"] = list(stops)
        body["logprobs"] = True  # the token texts tell which stop sequence was reached
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.top_k:
        body["top_k"] = request.top_k
    user = (request.metadata or {}).get("user_id")
    if user is not None:
        if not isinstance(user, str):
            raise InvalidParameter("'metadata.user_id' must be a string", "metadata.user_id")
        body["user"] = user
    if request.stream:
        body["stream"] = True
    return body


def messages_of(request: MessagesRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system is not None:
        system = _text(request.system, "system")
        if system:
            out.append({"role": "system", "content": system})
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidParameter(f"'{where}' must be an object", where)
        known_fields(message, {"role", "content"}, where)
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise InvalidParameter(f"'{where}.role' must be user or assistant", f"{where}.role")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list) or not content:
            raise InvalidParameter(f"'{where}.content' must be a string or a non-empty array of blocks", where)
        out.extend(_turn(role, content, f"{where}.content"))
    if out[-1]["role"] == "assistant":
        last = f"messages[{len(request.messages) - 1}]"
        raise InvalidParameter(
            f"'{last}' is an assistant message: continuing a prefilled assistant turn is not offered", last
        )
    return out


def _turn(role: str, blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """One message's blocks as chat messages: tool results first (each its own tool
    message), then the text; an assistant's text, then its calls."""
    texts: list[str] = []
    results: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}[{j}]"
        block_type = block.get("type") if isinstance(block, dict) else None
        if block_type == "text":
            known_fields(block, {"type", "text", "cache_control", "citations"}, at)
            texts.append(string_field(block, "text", at))
        elif block_type == "tool_use" and role == "assistant":
            known_fields(block, {"type", "id", "name", "input", "cache_control"}, at)
            arguments = block.get("input")
            if not isinstance(arguments, dict):
                raise InvalidParameter(f"'{at}.input' must be an object", f"{at}.input")
            arguments_json = json.dumps(arguments, separators=(",", ":"))
            function = {"name": string_field(block, "name", at), "arguments": arguments_json}
            calls.append({"id": string_field(block, "id", at), "type": "function", "function": function})
        elif block_type == "tool_result" and role == "user":
            known_fields(block, {"type", "tool_use_id", "content", "is_error", "cache_control"}, at)
            content = block.get("content", "")
            text = content if isinstance(content, str) else _text(content, f"{at}.content")
            if block.get("is_error") is True:
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": string_field(block, "tool_use_id", at), "content": text})
        else:
            raise InvalidParameter(
                f"'{at}.type' {block_type!r} blocks are not served in a {role} message: text"
                + (", tool_result" if role == "user" else ", tool_use")
                + " are (the served models read text only)",
                f"{at}.type",
            )
    out = list(results)
    if texts:
        out.append({"role": role, "content": "".join(texts)})
    if calls:
        out.append({"role": "assistant", "content": None, "tool_calls": calls})
    return out


def _text(content: Any, where: str) -> str:
    """A string, or the text of text blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidParameter(f"'{where}' must be a string or an array of text blocks", where)
    texts = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidParameter(f"'{at}' must be a text block (the served models read text only)", at)
        known_fields(block, {"type", "text", "cache_control", "citations"}, at)
        texts.append(string_field(block, "text", at))
    return "".join(texts)


def _tool(tool: Any, i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise InvalidParameter(f"'{where}.type' {kind!r} tools are not served: client tools are", f"{where}.type")
    known_fields(tool, {"type", "name", "description", "input_schema", "cache_control"}, where)
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise InvalidParameter(f"'{where}.input_schema' must be a JSON Schema object", f"{where}.input_schema")
    function: dict[str, Any] = {"name": string_field(tool, "name", where), "parameters": schema}
    if tool.get("description") is not None:
        function["description"] = string_field(tool, "description", where)
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    """Chat's `tool_choice` (and `parallel_tool_calls`) for Anthropic's."""
    choice_type = choice.get("type")
    known_fields(choice, {"type", "name", "disable_parallel_tool_use"}, "tool_choice")
    out: dict[str, Any]
    if choice_type == "auto":
        out = {"tool_choice": "auto"}
    elif choice_type == "any":
        out = {"tool_choice": "required"}
    elif choice_type == "none":
        out = {"tool_choice": "none"}
    elif choice_type == "tool" and isinstance(choice.get("name"), str):
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise InvalidParameter("'tool_choice.type' must be auto, any, none or tool (with a name)", "tool_choice.type")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None:
        if not isinstance(disable, bool):
            raise InvalidParameter(
                "'tool_choice.disable_parallel_tool_use' must be a boolean", "tool_choice.disable_parallel_tool_use"
            )
        out["parallel_tool_calls"] = not disable
    return out


def renamed(exc: InvalidParameter) -> InvalidParameter:
    """The chat check's refusal of a translated body, naming Anthropic's parameter."""
    param = exc.param or ""
    if param == "stop":
        return InvalidParameter(str(exc).replace("'stop'", "'stop_sequences'", 1), "stop_sequences")
    if param.startswith("messages"):  # indices differ after the translation: name the list
        return InvalidParameter(str(exc), "messages")
    if param.startswith("tools[") and ".function" in param:
        return InvalidParameter(str(exc).replace(".function.parameters", ".input_schema"), param.split(".")[0])
    return exc
