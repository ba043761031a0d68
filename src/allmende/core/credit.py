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

The rule takes the numbers a request asks for, not its body: `max_tokens` and `n` are
derived once, on the typed request (allmende.api.canonical), which both roles build, so the
rule that reads them from the body exists in one place (api.protocol's `sampling`).
"""

from __future__ import annotations

from allmende.core.errors import InvalidInput
from allmende.core.fees import request_cost

# max_tokens of a request that names none: until the end of the answer or of the model's
# context (the largest max_tokens a request may name, beyond every context, means the same)
UNTIL_CONTEXT = 1 << 20
# most completions one request may ask for (`n`); each may use max_tokens
MAX_CHOICES = 8


def max_generation_cost(max_tokens: int, choices: int, context_length: int, price_in: int, price_out: int) -> int:
    """Upper bound of what a generation request can be charged, in payment-token units:
    `choices` completions of at most `max_tokens` tokens each (UNTIL_CONTEXT: until the
    answer or the context ends) after a prompt that fits the context."""
    _check_context(context_length)
    if max_tokens < 1 or not 1 <= choices <= MAX_CHOICES:
        raise InvalidInput(f"max_tokens must be positive and n from 1 to {MAX_CHOICES}")
    if max_tokens == UNTIL_CONTEXT:  # any prompt p < context, then up to context − p tokens per choice
        longest_answer = request_cost(0, context_length * choices, price_in, price_out)
        return max(longest_answer, request_cost(context_length - 1, choices, price_in, price_out))
    out = min(max_tokens, context_length)
    return request_cost(context_length - out, out * choices, price_in, price_out)


def max_embedding_cost(inputs: int, context_length: int, price_in: int, price_out: int) -> int:
    """Upper bound of what embedding `inputs` texts can be charged: a context each."""
    _check_context(context_length)
    if inputs < 1:
        raise InvalidInput("an embedding request has at least one input")
    return request_cost(min(inputs * context_length, 2**32 - 1), 0, price_in, price_out)


def _check_context(context_length: int) -> None:
    if context_length < 1:
        raise InvalidInput("context_length must be positive")
