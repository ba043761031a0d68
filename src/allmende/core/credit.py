"""The most a request can cost, computed the same way by gateway and provider.

The provider reserves this amount against a channel's credit when it admits a request
and the gateway counts the same amount as in flight before it sends one, so both sides
agree on the exposure of a channel without talking about it (see provider/payments.py
for why that makes honest concurrency unable to cause a payment error).

The bound needs no tokenizer: a generation request's prompt plus its completion never
exceed the model's context length (providers refuse longer ones), and every embedding
input is at most one context of tokens. A request without `max_tokens` generates until its
answer or the context ends (as OpenAI's do): its bound is the dearer of the two extremes,
a whole context of completion (per choice) or a prompt of all but one token.
"""

from __future__ import annotations

from collections.abc import Mapping

from allmende.core.endpoints import endpoint
from allmende.core.errors import InvalidInput
from allmende.core.fees import request_cost

# max_tokens of a request that names none: until the end of the answer or of the model's
# context (the largest max_tokens a request may name, beyond every context, means the same)
UNTIL_CONTEXT = 1 << 20
# most completions one request may ask for (`n`); each may use max_tokens
MAX_CHOICES = 8


def requested_max_tokens(body: Mapping[str, object]) -> int:
    """`max_tokens`, else `max_completion_tokens`, else UNTIL_CONTEXT; an int ≥ 1 or InvalidInput."""
    value = body.get("max_tokens")
    if value is None:
        value = body.get("max_completion_tokens")
    if value is None:
        return UNTIL_CONTEXT
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput("max_tokens must be a positive integer")
    return value


def max_request_cost(kind: str, body: Mapping[str, object], context_length: int, price_in: int, price_out: int) -> int:
    """Upper bound of what the request can be charged, in payment-token units."""
    if context_length < 1:
        raise InvalidInput("context_length must be positive")
    if not endpoint(kind).generates:
        raw = body.get(endpoint(kind).prompt_field)
        inputs = len(raw) if isinstance(raw, list) and raw and not isinstance(raw[0], int) else 1
        return request_cost(min(inputs * context_length, 2**32 - 1), 0, price_in, price_out)
    requested = requested_max_tokens(body)
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_CHOICES else 1
    if requested == UNTIL_CONTEXT:  # any prompt p < context, then up to context − p tokens per choice
        longest_answer = request_cost(0, context_length * choices, price_in, price_out)
        return max(longest_answer, request_cost(context_length - 1, choices, price_in, price_out))
    out = min(requested, context_length)
    return request_cost(context_length - out, out * choices, price_in, price_out)
