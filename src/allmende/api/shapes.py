"""Request shapes: what a provider can see of a request's structure, without its content.

Gateways count the shapes of the requests they forward (gateway.shapes) and publish the
counts; validators draw each audit's shape from them and compose content of that shape
(validator.prompts). Both sides use `shape_of` here, so an audit composed for a shape has
exactly that shape when the gateway forwards it, and a provider that keys on structure
meets audits in every structure users send, as often as users send it.

A shape is a flat mapping of feature names to coarse tokens, computed from the body the
provider is sent (for /v1/responses and /v1/messages: the chat body they are translated
into, so their shapes are chat shapes a validator can send through /v1/chat/completions):

- `kind` (chat | completion) and `endpoint` (the route the user called: a label only),
- `keys`: every top-level field present (besides model, messages and prompt),
- `v.<field>`: a coarse value per field: buckets for numbers (`max_tokens` by powers of
  two, temperature, top_p, min_p and the penalties by ranges, top_k up to 100 exactly),
  counts for lists (stop strings, tools) and for logit_bias (never its token ids), the type
  for `response_format`, the kind of `tool_choice`, `set` for strings (never their text:
  `user` is an identity),
- `roles`: the message-role sequence (s system, d developer, u user, a assistant,
  A assistant with tool calls, t tool), long conversations as their ends and a length bucket,
- `content`: whether contents are strings, text parts or both,
- `chars`: a length bucket of all the text the prompt holds.

No content and no identity leave the gateway: the text of messages, stop strings, tools and
schemas is reduced to counts and buckets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from allmende.core.endpoints import ENDPOINTS

Shape = dict[str, str]

CHAR_BUCKETS = (100, 400, 1600, 6400)  # upper edges of the prompt-length buckets (characters)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # upper edges for max_tokens
LONG_CONVERSATION = 8  # messages beyond which a role sequence is kept as its ends and a bucket
ROLE_LETTERS = {"system": "s", "developer": "d", "user": "u", "assistant": "a", "tool": "t"}
UNSHAPED = ("model", "messages", "prompt")  # fields whose presence every request of a kind shares
STRING_FIELDS = ("user", "safety_identifier", "prompt_cache_key")  # identities: only their presence
PENALTIES = ("presence_penalty", "frequency_penalty")
PENALTY_RANGES = ((-2, -1), (-1, 0), (0, 0.5), (0.5, 1), (1, 2))
TOP_K_EXACT = 100  # top_k values kept exactly (the common ones: 1, 5, 10, 20, 40, 50, 100)


def shape_of(kind: str, body: Mapping[str, Any], endpoint: str | None = None) -> Shape | None:
    """The shape of a generative request as the provider gets it; None for other kinds."""
    served = ENDPOINTS.get(kind)
    if served is None or not served.generates:
        return None
    shape: Shape = {"kind": kind, "endpoint": endpoint or ("chat" if served.chat else "completions")}
    keys = sorted(k for k in body if k not in UNSHAPED)
    shape["keys"] = ",".join(keys)
    for key in keys:
        shape[f"v.{key}"] = coarse(key, body[key])
    if served.chat:
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        shape["roles"] = roles_of(messages)
        shape["content"] = content_form(messages)
        shape["chars"] = bucket(sum(len(text_of(m.get("content"))) for m in messages if isinstance(m, dict)))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]  # a one-element array of either
        shape["roles"] = "prompt:str" if isinstance(prompt, str) else "prompt:ids"
        shape["content"] = "str" if isinstance(prompt, str) else "ids"
        shape["chars"] = bucket(len(prompt) if isinstance(prompt, str) else 4 * len(prompt or []))
    return shape


def key_of(shape: Mapping[str, str]) -> str:
    """The shape as one string (what a counter keys on)."""
    return json.dumps(dict(sorted(shape.items())), separators=(",", ":"))


def bucket(chars: int) -> str:
    """The prompt-length bucket of `chars` characters: `<=100`, … `>6400`."""
    for edge in CHAR_BUCKETS:
        if chars <= edge:
            return f"<={edge}"
    return f">{CHAR_BUCKETS[-1]}"


def bucket_range(token: str) -> tuple[int, int]:
    """The character counts of a length bucket (the last one capped at twice its edge)."""
    if token.startswith(">"):
        low = int(token[1:])
        return low + 1, 2 * low
    high = int(token[2:])
    edges = (0, *CHAR_BUCKETS)
    low = edges[edges.index(high) - 1] + 1 if high in CHAR_BUCKETS else 1
    return max(1, low), high


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def roles_of(messages: list[Any]) -> str:
    letters = []
    for m in messages:
        if not isinstance(m, dict):
            letters.append("?")
            continue
        letter = ROLE_LETTERS.get(str(m.get("role")), "?")
        letters.append("A" if letter == "a" and m.get("tool_calls") else letter)
    if len(letters) <= LONG_CONVERSATION:
        return "".join(letters)
    n = len(letters)
    size = next((edge for edge in (16, 32, 64, 128) if n <= edge), 256)
    return f"{''.join(letters[:2])}+{size}+{''.join(letters[-2:])}"


def content_form(messages: list[Any]) -> str:
    forms = {
        "parts" if isinstance(m.get("content"), list) else "str"
        for m in messages
        if isinstance(m, dict) and m.get("content") is not None
    }
    return "mixed" if len(forms) > 1 else forms.pop() if forms else "none"


def max_tokens_bucket(value: int) -> str:
    for edge in TOKEN_BUCKETS:
        if value <= edge:
            return f"<={edge}"
    return f">{TOKEN_BUCKETS[-1]}"


def penalty_bucket(value: float) -> str:
    """Presence and frequency penalties: 0, or a signed range."""
    if value == 0:
        return "0"
    for low, high in PENALTY_RANGES:
        if low < value <= high:
            return f"({low},{high}]"
    return "other"


def unit_bucket(value: float) -> str:
    """Temperatures and top_p: the exact common values, ranges between them."""
    if value in (0, 1):
        return str(int(value))
    for low, high in ((0, 0.3), (0.3, 0.7), (0.7, 1), (1, 1.5), (1.5, 2)):
        if low < value <= high:
            return f"({low},{high}]"
    return "other"


def coarse(key: str, value: Any) -> str:
    """The coarse token published for field `key` holding `value`."""
    if key in STRING_FIELDS:
        return "set"
    if key in ("max_tokens", "max_completion_tokens") and isinstance(value, int) and not isinstance(value, bool):
        return max_tokens_bucket(value)
    if key in ("temperature", "top_p", "min_p") and isinstance(value, int | float) and not isinstance(value, bool):
        return unit_bucket(float(value))
    if key in PENALTIES and isinstance(value, int | float) and not isinstance(value, bool):
        return penalty_bucket(float(value))
    if key == "top_k" and isinstance(value, int) and not isinstance(value, bool):
        return str(value) if -1 <= value <= TOP_K_EXACT else f">{TOP_K_EXACT}"
    if key == "logit_bias" and isinstance(value, dict) and value:
        return f"bias{min(len(value), 5)}"  # how many tokens, never which
    if key == "seed":
        return "set" if value is not None else "null"
    if key == "stop":
        if isinstance(value, str):
            return "str"
        return f"list{len(value)}" if isinstance(value, list) else json.dumps(value)
    if key == "tools" and isinstance(value, list):
        return f"list{min(len(value), 5)}"
    if key == "tool_choice":
        if isinstance(value, dict):
            return "named"
        return str(value) if value in ("auto", "none", "required") else "other"
    if key == "response_format" and isinstance(value, dict):
        return str(value.get("type", "other"))
    if key == "stream_options" and isinstance(value, dict):
        return "usage" if value.get("include_usage") else "{}"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value) if isinstance(value, int) and 0 <= value <= 32 else unit_bucket(float(value))
    if isinstance(value, str):
        return json.dumps(value) if value in ("auto", "default", "none", "float", "base64") else "set"
    if isinstance(value, list | dict):
        return json.dumps(value) if not value or value == ["text"] else f"{type(value).__name__}{min(len(value), 5)}"
    return "other"


__all__ = ["Shape", "bucket", "bucket_range", "coarse", "key_of", "shape_of"]
