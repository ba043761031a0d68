"""The request protocol every role shares: what a valid OpenAI-style request is, the
sampling parameters it asks for, and its canonical form (what a receipt's `inputHash`
commits to). The gateway checks requests with it, the provider derives what it runs from
it, and a validator re-derives the same from the evidence, so the three cannot drift.

    check_request(kind, body)     the gateway's validation, naming the bad parameter
    sampling_params(body)         max_tokens, temperature, top_p, seed, stop
    canonical_request(body)       the bytes `inputHash` is the keccak of
    input_hash(body)
"""

from __future__ import annotations

import json
from typing import Any

from eth_utils import keccak

from allmende.core.credit import requested_max_tokens
from allmende.core.errors import InvalidInput
from allmende.engine.base import SamplingParams


class InvalidParameter(InvalidInput):
    """A request parameter OpenAI would refuse; `param` names it."""

    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def check_request(kind: str, body: dict[str, Any]) -> None:
    """Reject what OpenAI would reject, naming the offending parameter (InvalidParameter), and
    normalise in place what OpenAI accepts in several forms (text content parts → a string,
    a one-element prompt list → the string)."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidParameter("'messages' must be a non-empty array", "messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer", "tool"):
                raise InvalidParameter(
                    f"messages[{i}].role must be system, user, assistant, developer or tool", f"messages[{i}].role"
                )
            content = m.get("content")
            if isinstance(content, list):  # OpenAI's content parts: these models read text only
                if not content or not all(
                    isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
                ):
                    raise InvalidParameter(
                        f"messages[{i}].content: only text parts are supported by these models",
                        f"messages[{i}].content",
                    )
                texts = [p["text"] for p in content]
                m["content"] = "".join(str(t) for t in texts)
            elif not isinstance(content, str):
                raise InvalidParameter(f"messages[{i}].content must be a string", f"messages[{i}].content")
    elif kind == "completion":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise InvalidParameter("'prompt' must be a string", "prompt")
        body["prompt"] = prompt
    elif kind == "embedding":
        raw = body.get("input")
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw or not all(isinstance(t, str) and t for t in raw):
            raise InvalidParameter("'input' must be a non-empty string or array of non-empty strings", "input")
        if body.get("encoding_format", "float") not in ("float", "base64"):
            raise InvalidParameter("'encoding_format' must be float or base64", "encoding_format")
    if "model" in body and not isinstance(body["model"], str):
        raise InvalidParameter("'model' must be a string", "model")
    if not isinstance(body.get("stream", False), bool):
        raise InvalidParameter("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and (
        not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool)
    ):
        raise InvalidParameter("'stream_options' must be an object with a boolean include_usage", "stream_options")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidParameter("'user' must be a string", "user")
    if kind == "embedding" and isinstance(body.get("input"), list) and len(body["input"]) > 256:
        raise InvalidParameter("'input' may hold at most 256 strings", "input")
    if kind != "embedding":
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise InvalidParameter("'seed' must be a non-negative integer", "seed")
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**20):
                raise InvalidParameter(f"'{name}' must be an integer between 1 and 1048576", name)
        for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
            value = body.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high
            ):
                raise InvalidParameter(f"'{name}' must be a number between {low} and {high}", name)
        n = body.get("n")
        if n not in (None, 1):
            raise InvalidParameter("only n=1 is supported", "n")
        if "stop" in body and body["stop"] is not None:
            stop = body["stop"]
            if isinstance(stop, str):
                stop = [stop]
            if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
                raise InvalidParameter("'stop' must be a string or up to 4 strings", "stop")


def sampling_params(body: dict[str, Any]) -> SamplingParams:
    """The sampling parameters a generation request asks for: the provider runs exactly these
    and a validator re-checks with exactly these (InvalidInput if they are not valid)."""

    def number(name: str, default: float) -> float:
        value = body.get(name, default)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{name} must be a number")
        return float(value)

    max_tokens = requested_max_tokens(body)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InvalidInput("seed must be a non-negative integer")
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise InvalidInput("stop must be a string or a list of strings")
    try:
        return SamplingParams(max_tokens, number("temperature", 1.0), number("top_p", 1.0), seed, tuple(stop))
    except InvalidInput:
        raise


def canonical_request(body: dict[str, Any]) -> bytes:
    """The request as the provider ran it, in one byte form: sorted keys, no spaces, ASCII."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def input_hash(body: dict[str, Any]) -> bytes:
    """What a receipt's `inputHash` is: keccak256 of the canonical request."""
    return keccak(canonical_request(body))
