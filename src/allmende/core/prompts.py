"""Prompt sizes without a tokenizer: what a provider checks before it tokenizes, and the most
prompt tokens a gateway pays for.

Both rest on one fact about the tokenizers these models use (byte-level BPE as in GPT-2,
Llama 3, Qwen and SmolLM2; SentencePiece with byte fallback; WordPiece): every token covers
at least one UTF-8 byte of the text, so a text of b bytes is at most b tokens. What a chat
template adds (role markers, a default system prompt, the generation prompt) is covered by
a fixed allowance per message and per request, generous for the templates in use (the user
message "Hi" is 31 tokens in SmolLM2-135M-Instruct's template, 20 in allmende:tiny's; the
bound is 78).

- `prompt_bytes(kind, body)`: the UTF-8 bytes of all prompt text, counted before anything
  is tokenized. A provider refuses more than `MAX_PROMPT_BYTES_PER_TOKEN` × its context
  length: such a prompt could not fit the context in any tokenizer that packs fewer than
  16 bytes into a token, and tokenizing megabytes only to refuse them is free CPU for an
  attacker.
- Tools (a chat's `tools` and the `tool_calls` of assistant turns) are rendered as JSON by
  the template or by the fallback of `allmende.api.tools`: their bytes count twice as their JSON
  indented by 4 (templates that pretty-print them), plus `TOOL_TEMPLATE_BYTES` once for the
  template's or the fallback's instructions.
- `max_prompt_tokens(kind, body)`: the most `tokens_in` an honest receipt can state for the
  body; a gateway pays no receipt above it. Prompts given as token ids count one token each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from allmende.core.endpoints import endpoint

# a provider refuses prompts of more bytes than this × its context length, before tokenizing
MAX_PROMPT_BYTES_PER_TOKEN = 16
# tokens a chat template may add per message (markers, separators), on top of the role's bytes
TEMPLATE_TOKENS_PER_MESSAGE = 8
# tokens a chat template may add once (BOS, a default system prompt, the generation prompt)
TEMPLATE_TOKENS_PER_REQUEST = 64
# tokens a tokenizer may add around a plain prompt or one embedding input (BOS/EOS, CLS/SEP)
SPECIAL_TOKENS_PER_TEXT = 4
# bytes a template (or allmende.api.tools' fallback) may add to explain tools and the call format
TOOL_TEMPLATE_BYTES = 2048


def _json_bytes(value: object) -> int:
    """Twice the bytes of `value` as JSON indented by 4: a bound on any rendering of it."""
    if value is None or value == []:
        return 0
    return 2 * len(json.dumps(value, indent=4, ensure_ascii=False).encode())  # parsed JSON: always dumps


def _bytes(value: object) -> int:
    return len(value.encode()) if isinstance(value, str) else 0


def _texts(kind: str, body: Mapping[str, object]) -> list[str]:
    """The prompt texts of a request (completion prompt, embedding inputs); [] for chat."""
    raw = body.get(endpoint(kind).prompt_field)
    items = raw if isinstance(raw, list) else [raw]
    return [item for item in items if isinstance(item, str)]


def _id_lists(kind: str, body: Mapping[str, object]) -> list[int]:
    """Lengths of the prompts given as token ids (a completion prompt or embedding inputs may
    be the model's own token ids: one list of ints, or a list of such lists)."""
    raw = body.get(endpoint(kind).prompt_field)
    if not isinstance(raw, list) or not raw:
        return []
    if all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        return [len(raw)]
    return [len(item) for item in raw if isinstance(item, list)]


def prompt_bytes(kind: str, body: Mapping[str, object]) -> int:
    """UTF-8 bytes of the request's prompt text: every message's role and content (chat), the
    prompt (completion), the largest input (embedding, whose inputs are encoded one by one),
    plus `allmende_continue`. Parts of the wrong type count 0: parsing refuses them later."""
    carry = _bytes(body.get("allmende_continue"))
    served = endpoint(kind)
    if served.chat:
        messages = body.get("messages")
        total = _json_bytes(body.get("tools"))
        total += TOOL_TEMPLATE_BYTES if total else 0
        for message in messages if isinstance(messages, list) else []:
            if isinstance(message, Mapping):
                total += _bytes(message.get("role")) + _bytes(message.get("content"))
                total += _json_bytes(message.get("tool_calls")) + _bytes(message.get("tool_call_id"))
        return total + carry
    sizes = [_bytes(text) for text in _texts(kind, body)]
    if not served.generates:
        return max(sizes, default=0)
    return sum(sizes) + carry


def max_prompt_tokens(kind: str, body: Mapping[str, object]) -> int:
    """The most prompt tokens an honest provider can count for `body` (see the module doc)."""
    served = endpoint(kind)
    if served.chat:
        messages = body.get("messages")
        count = len(messages) if isinstance(messages, list) else 0
        return prompt_bytes(kind, body) + count * TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS_PER_REQUEST
    ids = _id_lists(kind, body)  # a token id is one token
    if not served.generates:
        texts = _texts(kind, body)
        return sum(_bytes(t) for t in texts) + sum(ids) + (len(texts) + len(ids)) * SPECIAL_TOKENS_PER_TEXT
    return prompt_bytes(kind, body) + sum(ids) + SPECIAL_TOKENS_PER_TEXT
