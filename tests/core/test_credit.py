"""The max-cost bound that gateway and provider both reserve."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allmende.core import InvalidInput, request_cost
from allmende.core.credit import UNTIL_CONTEXT, max_request_cost, requested_max_tokens


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, UNTIL_CONTEXT),
        ({"max_tokens": 7}, 7),
        ({"max_completion_tokens": 9}, 9),
        ({"max_tokens": None, "max_completion_tokens": 5}, 5),
        ({"max_tokens": 3, "max_completion_tokens": 5}, 3),
    ],
    ids=["default", "max_tokens", "max_completion_tokens", "null-falls-through", "max_tokens-wins"],
)
def test_requested_max_tokens(body: dict[str, object], expected: int) -> None:
    assert requested_max_tokens(body) == expected


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "8"], ids=["zero", "negative", "bool", "float", "string"])
def test_requested_max_tokens_refuses_nonsense(value: object) -> None:
    with pytest.raises(InvalidInput, match="max_tokens"):
        requested_max_tokens({"max_tokens": value})


@given(
    prompt=st.integers(0, 4096),
    out=st.integers(1, 4096),
    ctx=st.integers(1, 4096),
    price_in=st.integers(0, 10**7),
    price_out=st.integers(0, 10**7),
)
def test_the_bound_covers_every_request_the_provider_would_serve(
    prompt: int, out: int, ctx: int, price_in: int, price_out: int
) -> None:
    bound = max_request_cost("chat", {"max_tokens": out}, ctx, price_in, price_out)
    if prompt + out <= ctx:  # providers refuse longer ones
        for produced in (0, out):
            assert request_cost(prompt, produced, price_in, price_out) <= bound


@given(
    prompt=st.integers(1, 4096),
    ctx=st.integers(1, 4096),
    n=st.integers(1, 8),
    price_in=st.integers(0, 10**7),
    price_out=st.integers(0, 10**7),
)
def test_without_max_tokens_the_bound_covers_any_prompt_and_answers_up_to_the_context(
    prompt: int, ctx: int, n: int, price_in: int, price_out: int
) -> None:
    bound = max_request_cost("chat", {"n": n}, ctx, price_in, price_out)
    if prompt < ctx:  # providers refuse a prompt that leaves no room for one token
        assert request_cost(prompt, (ctx - prompt) * n, price_in, price_out) <= bound
    assert bound == max_request_cost("chat", {"max_tokens": UNTIL_CONTEXT, "n": n}, ctx, price_in, price_out)


def test_embedding_bound_is_one_context_per_input() -> None:
    assert max_request_cost("embedding", {"input": ["a", "b", "c"]}, 512, 1_000_000, 0) == 3 * 512
    assert max_request_cost("embedding", {"input": "a"}, 512, 1_000_000, 0) == 512
    assert max_request_cost("embedding", {"input": [1, 2, 3]}, 512, 1_000_000, 0) == 512  # one token array


def test_a_context_length_below_one_is_refused() -> None:
    with pytest.raises(InvalidInput, match="context_length"):
        max_request_cost("chat", {}, 0, 1, 1)
