"""The endpoint table: every role reads a request kind's prompt field, model kind and path here."""

from __future__ import annotations

import pytest

from allmende.core.endpoints import ENDPOINTS, KINDS, endpoint
from allmende.core.errors import InvalidInput
from allmende.core.prompts import max_prompt_tokens, prompt_bytes


def test_each_kind_names_its_prompt_field_model_kind_and_path() -> None:
    assert KINDS == ("chat", "completion", "embedding")
    rows = {k: (e.path, e.prompt_field, e.model_kind, e.generates, e.chat) for k, e in ENDPOINTS.items()}
    assert rows == {
        "chat": ("/v1/chat/completions", "messages", "generate", True, True),
        "completion": ("/v1/completions", "prompt", "generate", True, False),
        "embedding": ("/v1/embeddings", "input", "embed", False, False),
    }


@pytest.mark.parametrize("kind", ["responses", "Chat", "", None, 3, ["chat"]])
def test_an_unknown_kind_is_refused_with_the_kinds_there_are(kind: object) -> None:
    with pytest.raises(InvalidInput, match="kind must be one of chat, completion, embedding"):
        endpoint(kind)


def test_the_prompt_rules_refuse_a_kind_they_do_not_know() -> None:
    """An unknown kind used to be priced as a completion; now no rule guesses (the credit rule
    takes the numbers a typed request derived, and no request of an unknown kind parses)."""
    body = {"prompt": "hello", "max_tokens": 4}
    for rule in (lambda: prompt_bytes("edit", body), lambda: max_prompt_tokens("edit", body)):
        with pytest.raises(InvalidInput):
            rule()


def test_request_kind_is_a_row_of_the_table_or_a_clear_refusal() -> None:
    from allmende.core.endpoints import KINDS, request_kind

    assert [request_kind(k) for k in KINDS] == ["chat", "completion", "embedding"]
    for other in ("stage", "Chat", "", None, 1):
        with pytest.raises(InvalidInput, match="kind must be one of chat, completion, embedding"):
            request_kind(other)


def test_every_model_kind_has_a_name_for_errors() -> None:
    from allmende.core.endpoints import ENDPOINTS, MODEL_KIND_NAMES

    assert {e.model_kind for e in ENDPOINTS.values()} == set(MODEL_KIND_NAMES)
