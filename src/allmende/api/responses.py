"""OpenAI's Responses API (`POST /v1/responses`), stateless: the request as its typed model,
and its translation into the chat request the provider serves. The provider never sees the
Responses shape: what it runs, what its receipt's `inputHash` binds and what a validator
re-checks is the chat body `chat_body` returns, so this endpoint inherits chat's routing,
payment, receipts, tools and grammars unchanged.

    input (string)                      a user message
    input items                         messages (system, developer, user, assistant; a string
                                        or input_text/output_text parts), function_call →
                                        an assistant turn with tool_calls, function_call_output
                                        → a tool message
    instructions                        a system message before them
    tools (flat), tool_choice           chat's `tools` (nested under `function`), `tool_choice`
    text.format                         chat's `response_format`
    max_output_tokens                   chat's `max_tokens`

Every parameter the endpoint does not serve is refused by name (api.protocol's
RESPONSES_PARAMETERS); `store: true` and `previous_response_id` among them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from allmende.api.fields import known_fields, string_field
from allmende.api.protocol import InvalidParameter, invalid_parameter, screen_parameters

MESSAGE_ROLES = ("system", "developer", "user", "assistant")
_TEXT_PARTS = ("input_text", "output_text")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    json_schema: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None  # the served models have no verbosity control


class ResponsesRequest(_Strict):
    """A Responses request, checked (its refused parameters were screened before)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)  # the refused ones, at their neutral value

    model: str
    input: Any  # a string or items: checked by messages_of, which names the bad item
    instructions: str | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None  # checked by _tool_choice
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=2**20)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    def format_echo(self) -> dict[str, Any]:
        """`text` as the response repeats it."""
        fmt = self.text.format if self.text is not None else None
        shown = {"type": "text"} if fmt is None else fmt.model_dump(by_alias=True, exclude_none=True)
        return {"format": shown, "verbosity": "medium"}


def parse_responses(body: dict[str, Any]) -> ResponsesRequest:
    """The typed request, or InvalidParameter naming the first bad parameter."""
    screen_parameters("responses", body)
    try:
        return ResponsesRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_parameter(exc) from None


def chat_body(request: ResponsesRequest) -> dict[str, Any]:
    """The chat request that serves `request` (InvalidParameter, named in the Responses
    shape, for what cannot be translated)."""
    body: dict[str, Any] = {"model": request.model, "messages": messages_of(request)}
    if request.tools is not None:
        body["tools"] = [_tool(tool, i) for i, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice(request.tool_choice)
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    fmt = request.text.format if request.text is not None else None
    if fmt is not None:
        body["response_format"] = _response_format(fmt)
    for name, value in (
        ("max_tokens", request.max_output_tokens),
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("user", request.user),
        ("safety_identifier", request.safety_identifier),
        ("prompt_cache_key", request.prompt_cache_key),
    ):
        if value is not None:
            body[name] = value
    if request.stream:
        body["stream"] = True
    return body


def messages_of(request: ResponsesRequest) -> list[dict[str, Any]]:
    """Chat's messages: the instructions, then the input items in order."""
    out: list[dict[str, Any]] = []
    if request.instructions:
        out.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        out.append({"role": "user", "content": request.input})
        return out
    if not isinstance(request.input, list) or not request.input:
        raise InvalidParameter("'input' must be a string or a non-empty array of items", "input")
    for i, item in enumerate(request.input):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidParameter(f"'{where}' must be an object", where)
        item_type = item.get("type", "message")
        if item_type == "message":
            known_fields(item, {"type", "role", "content", "id", "status", "phase"}, where)
            role = item.get("role")
            if role not in MESSAGE_ROLES:
                raise InvalidParameter(f"'{where}.role' must be system, developer, user or assistant", f"{where}.role")
            out.append({"role": role, "content": _text(item.get("content"), f"{where}.content")})
        elif item_type == "function_call":
            known_fields(item, {"type", "call_id", "name", "arguments", "id", "status", *_CALLER}, where)
            _direct(item, where)
            call_id, name, arguments = (string_field(item, field, where) for field in ("call_id", "name", "arguments"))
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)  # parallel calls of one turn
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item_type == "function_call_output":
            known_fields(item, {"type", "call_id", "output", "id", "status", "name", *_CALLER}, where)
            _direct(item, where)
            call_id = string_field(item, "call_id", where)
            out.append(
                {"role": "tool", "tool_call_id": call_id, "content": _text(item.get("output"), f"{where}.output")}
            )
        else:
            raise InvalidParameter(
                f"'{where}.type' {item_type!r} items are not served: messages, function_call and "
                "function_call_output are",
                f"{where}.type",
            )
    return out


_CALLER = ("caller", "namespace")  # who made a call: only the model itself, directly, is served


def _direct(item: dict[str, Any], where: str) -> None:
    if item.get("caller") not in (None, {"type": "direct"}):
        raise InvalidParameter(f"'{where}.caller' only direct calls are served", f"{where}.caller")
    if item.get("namespace") is not None:
        raise InvalidParameter(f"'{where}.namespace' namespaced tools are not served", f"{where}.namespace")


def _text(content: Any, where: str) -> str:
    """A string, or the text of input_text/output_text parts (these models read text only)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise InvalidParameter(f"'{where}' must be a string or an array of text parts", where)
    texts = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else None
            raise InvalidParameter(
                f"'{at}' must be an input_text or output_text part (not {kind!r}): the served models read text only",
                at,
            )
        known_fields(part, {"type", "text", "annotations", "logprobs"}, at)
        texts.append(part["text"])
    return "".join(texts)


def _tool(tool: Any, i: int) -> dict[str, Any]:
    """A flat Responses function tool as chat's nested one."""
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise InvalidParameter(f"'{where}.type' {kind!r} tools are not served: function tools are", f"{where}.type")
    known_fields(tool, {"type", "name", "description", "parameters", "strict"}, where)
    function = {k: v for k, v in tool.items() if k != "type" and v is not None}
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> str | dict[str, Any]:
    if choice in ("auto", "none", "required"):
        return str(choice)
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        known_fields(choice, {"type", "name"}, "tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidParameter(
        '\'tool_choice\' must be "auto", "none", "required" or {"type": "function", "name": …}', "tool_choice"
    )


def _response_format(fmt: TextFormat) -> dict[str, Any]:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    if fmt.json_schema is None or fmt.name is None:
        raise InvalidParameter("'text.format' json_schema needs a 'name' and a 'schema'", "text.format")
    spec: dict[str, Any] = {"name": fmt.name, "schema": fmt.json_schema}
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    if fmt.description is not None:
        spec["description"] = fmt.description
    return {"type": "json_schema", "json_schema": spec}


# a parameter the chat check names, as the Responses request names it
RENAMED = (("response_format", "text.format"), ("max_tokens", "max_output_tokens"), ("messages", "input"))


def renamed(exc: InvalidParameter) -> InvalidParameter:
    """The chat check's refusal of a translated body, naming the Responses parameter."""
    param = exc.param or ""
    for chat, ours in RENAMED:
        if param == chat or param.startswith((chat + ".", chat + "[")):
            message = str(exc).replace(chat, ours, 1)
            return InvalidParameter(message, ours if chat == "messages" else ours + param[len(chat) :])
    if param.startswith("tools[") and ".function" in param:
        return InvalidParameter(str(exc).replace(".function", ""), param.replace(".function", ""))
    return exc
