"""The gateway's check of every answer's receipt before it pays (or shows) anything.

A receipt is the provider's signed claim of what it served; its signature only proves who
claims it. Before a receipt is paid the gateway recomputes what it can from what it sent and
what it received, without the provider's tokenizer or model:

- `requestId`, `modelId` and `provider` are this attempt's (checked with the signature in
  `provider.client`), `inputHash` is the keccak of the canonical request it sent
  (`protocol.input_hash`);
- `outputHash` is the keccak of the text it received (the generated text, or for an
  embedding the JSON of the vectors);
- `tokensOut` is the number of token ids it received (an embedding: 0), at most the request's
  `max_tokens` × `n` (read from the canonical request it sent, as the credit rule and the
  provider read them), and a stream's text deltas never carried more tokens than that;
- `tokensIn` is at most `core.prompts.max_prompt_tokens` of the body it sent: its UTF-8 bytes
  plus a chat-template allowance. The exact count needs the provider's tokenizer, which the
  gateway does not load; validators recompute it exactly (`tokens_in == len(prompt_ids)`) when
  they audit, so an inflation inside the bound is a slashable fraud, and outside it is not paid;
- prompt and completion together fit the model's context;
- the completion ends where it must, as far as the text shows: no text holds a requested stop
  string (the provider cuts before it), and a `length` end has exactly `max_tokens` tokens.
  Tokens drawn past EOS or past a stop string whose text was cut need the model to see:
  validators refuse those (validator/checker.py), and the receipt is slashable;
- `amount` is at most usage × the provider's prices on chain (asking less is its own loss).

A receipt that fails any of these raises BadReceipt: it is not paid, the attempt is blamed on
the provider, and a one-shot request goes to another provider.
"""

from __future__ import annotations

import json
from typing import Any

from allmende.api.canonical import CanonicalRequest
from allmende.core import SignedReceipt, request_cost
from allmende.core.credit import UNTIL_CONTEXT
from allmende.core.eip712 import keccak256 as keccak  # eth-utils' keccak, without its type dispatch
from allmende.core.errors import UpstreamError


class BadReceipt(UpstreamError):
    """A receipt that does not match what was sent and received, or asks too much: not paid."""

    code = "bad_receipt"


def output_bytes(sent: CanonicalRequest, output: dict[str, Any], streamed_text: str | None = None) -> bytes:
    """What the receipt's `outputHash` commits to: the text, the JSON list of the choices'
    texts (n > 1), or the embeddings' JSON."""
    if not sent.generates:
        return json.dumps(output.get("embeddings")).encode()
    choices = output.get("choices")
    if isinstance(choices, list):
        return json.dumps([c.get("text", "") if isinstance(c, dict) else "" for c in choices]).encode()
    text = streamed_text if streamed_text is not None else output.get("text", "")
    return str(text).encode()


def received_tokens(sent: CanonicalRequest, output: dict[str, Any]) -> int:
    """How many tokens the answer carries: its token ids (0 for an embedding)."""
    if not sent.generates:
        return 0
    choices = output.get("choices")
    if isinstance(choices, list):  # n > 1: every choice's tokens
        return sum(received_tokens(sent, c if isinstance(c, dict) else {}) for c in choices)
    token_ids = output.get("token_ids")
    if not isinstance(token_ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in token_ids):
        raise BadReceipt("the answer carries no list of token ids")
    return len(token_ids)


def ending_problems(sent: CanonicalRequest, output: dict[str, Any], streamed_text: str | None) -> list[str]:
    """What the gateway can see, without the tokenizer, of a completion that runs past its end."""
    if not sent.generates:
        return []
    stops = [s for s in sent.stop if s]
    limit = sent.max_tokens  # UNTIL_CONTEXT: the context's end, which needs the prompt's length
    raw = output.get("choices")
    choices = [c if isinstance(c, dict) else {} for c in raw] if isinstance(raw, list) else [output]
    problems = []
    for i, choice in enumerate(choices):
        where = f"choice {i + 1}: " if len(choices) > 1 else ""
        text = streamed_text if streamed_text is not None and len(choices) == 1 else choice.get("text", "")
        if isinstance(text, str) and any(s in text for s in stops):
            problems.append(f"{where}the text holds a requested stop string (it runs past its end)")
        token_ids = choice.get("token_ids")
        count = len(token_ids) if isinstance(token_ids, list) else None
        if choice.get("finish_reason") == "length" and count is not None and limit not in (count, UNTIL_CONTEXT):
            problems.append(f"{where}finish_reason length after {count} tokens, not max_tokens")
    return problems


def check_receipt(
    receipt: SignedReceipt,
    sent: CanonicalRequest,
    output: dict[str, Any],
    prices: tuple[int, int],
    context_length: int,
    streamed_text: str | None = None,
    streamed_tokens: int = 0,
) -> None:
    """Raise BadReceipt unless the receipt states what the gateway sent (`sent`, the request
    as forwarded: its body, the hash the payer signed, its max_tokens and n) and received
    (`output`; for a stream, the text of its deltas and the tokens they carried), priced at no
    more than `prices` (in, out) per 1M tokens."""
    r = receipt.receipt
    problems = []
    if r.input_hash != sent.input_hash:
        problems.append("inputHash is not the hash of the request sent")
    if r.output_hash != keccak(output_bytes(sent, output, streamed_text)):
        problems.append("outputHash is not the hash of the output received")
    tokens = received_tokens(sent, output)
    if r.tokens_out != tokens:
        problems.append(f"tokensOut {r.tokens_out}, but {tokens} tokens were received")
    generates = sent.generates
    most = sent.max_tokens * sent.n
    if generates and tokens > most:
        problems.append(f"{tokens} tokens received, more than max_tokens × n = {most}")
    if streamed_tokens > tokens:
        problems.append(f"the stream's deltas carried {streamed_tokens} tokens, the final token ids only {tokens}")
    problems += ending_problems(sent, output, streamed_text)
    bound = sent.max_prompt_tokens
    if r.tokens_in > bound:
        problems.append(f"tokensIn {r.tokens_in} exceeds {bound}, the most this prompt can be")
    if generates and r.tokens_in + r.tokens_out > context_length:
        problems.append(f"tokensIn + tokensOut exceed the context length {context_length}")
    fair = request_cost(r.tokens_in, r.tokens_out, *prices)
    if r.amount > fair:
        problems.append(f"amount {r.amount}, but usage × the price on chain is {fair}")
    if problems:
        raise BadReceipt("receipt refused: " + "; ".join(problems))
