"""The max-cost bound that gateway and provider both reserve. It takes the numbers a request
asks for (max_tokens, n, inputs), derived once on the typed request (api.canonical)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allmende.core import InvalidInput, request_cost
from allmende.core.credit import MAX_CHOICES, UNTIL_CONTEXT, max_embedding_cost, max_generation_cost


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
    bound = max_generation_cost(out, 1, ctx, price_in, price_out)
    if prompt + out <= ctx:  # providers refuse longer ones
        for produced in (0, out):
            assert request_cost(prompt, produced, price_in, price_out) <= bound


@given(
    prompt=st.integers(1, 4096),
    ctx=st.integers(1, 4096),
    n=st.integers(1, MAX_CHOICES),
    price_in=st.integers(0, 10**7),
    price_out=st.integers(0, 10**7),
)
def test_without_max_tokens_the_bound_covers_any_prompt_and_answers_up_to_the_context(
    prompt: int, ctx: int, n: int, price_in: int, price_out: int
) -> None:
    bound = max_generation_cost(UNTIL_CONTEXT, n, ctx, price_in, price_out)
    if prompt < ctx:  # providers refuse a prompt that leaves no room for one token
        assert request_cost(prompt, (ctx - prompt) * n, price_in, price_out) <= bound


def test_each_choice_may_use_max_tokens() -> None:
    assert max_generation_cost(10, 3, 100, 0, 1_000_000) == 30
    assert max_generation_cost(500, 2, 100, 0, 1_000_000) == 200  # no answer beyond the context


def test_embedding_bound_is_one_context_per_input() -> None:
    assert max_embedding_cost(3, 512, 1_000_000, 0) == 3 * 512
    assert max_embedding_cost(1, 512, 1_000_000, 0) == 512
    assert max_embedding_cost(2**20, 2**13, 1, 0) == 4_295  # tokens_in capped at 2**32 - 1


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        (lambda: max_generation_cost(8, 1, 0, 1, 1), "context_length"),
        (lambda: max_embedding_cost(1, 0, 1, 1), "context_length"),
        (lambda: max_generation_cost(0, 1, 64, 1, 1), "max_tokens"),
        (lambda: max_generation_cost(8, 0, 64, 1, 1), "n from 1"),
        (lambda: max_generation_cost(8, MAX_CHOICES + 1, 64, 1, 1), "n from 1"),
        (lambda: max_embedding_cost(0, 64, 1, 1), "at least one input"),
    ],
    ids=["context-generation", "context-embedding", "no-tokens", "no-choice", "too-many-choices", "no-inputs"],
)
def test_numbers_no_request_can_ask_for_are_refused(rule: object, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        rule()  # type: ignore[operator]
