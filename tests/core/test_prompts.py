"""Prompt sizes without a tokenizer: the bytes a provider caps before tokenizing, and the most
prompt tokens a gateway pays for (≥ what the real tokenizers count, see tests/gateway)."""

from __future__ import annotations

import pytest

from allmende.core.prompts import (
    SPECIAL_TOKENS_PER_TEXT,
    TEMPLATE_TOKENS_PER_MESSAGE,
    TEMPLATE_TOKENS_PER_REQUEST,
    max_prompt_tokens,
    prompt_bytes,
)

CHAT = {"messages": [{"role": "system", "content": "Sei kurz."}, {"role": "user", "content": "Grüße"}]}


@pytest.mark.parametrize(
    ("kind", "body", "size"),
    [
        ("chat", CHAT, len("systemSei kurz.userGrüße".encode())),
        ("chat", {**CHAT, "allmende_continue": "ab"}, len("systemSei kurz.userGrüße".encode()) + 2),
        ("chat", {"messages": [{"role": "user", "content": 5}, "junk"]}, 4),
        ("chat", {"messages": "not a list"}, 0),
        ("completion", {"prompt": "€uro"}, 6),
        ("completion", {"prompt": ["€uro"], "allmende_continue": "x"}, 7),
        ("completion", {"prompt": None}, 0),
        ("embedding", {"input": ["short", "a longer one"]}, 12),
        ("embedding", {"input": "one"}, 3),
        ("embedding", {"input": [1, 2]}, 0),
    ],
    ids=[
        "chat",
        "chat-continued",
        "chat-wrong-types",
        "chat-not-a-list",
        "completion-utf8",
        "completion-list-continued",
        "completion-missing",
        "embedding-largest-input",
        "embedding-string",
        "embedding-token-ids",
    ],
)
def test_prompt_bytes_counts_utf8_bytes_of_all_prompt_text(kind: str, body: dict, size: int) -> None:
    assert prompt_bytes(kind, body) == size


def test_max_prompt_tokens_adds_the_template_allowance_to_the_bytes() -> None:
    chat = prompt_bytes("chat", CHAT) + 2 * TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS_PER_REQUEST

    assert max_prompt_tokens("chat", CHAT) == chat
    assert max_prompt_tokens("chat", {"messages": None}) == TEMPLATE_TOKENS_PER_REQUEST
    assert max_prompt_tokens("completion", {"prompt": "abc"}) == 3 + SPECIAL_TOKENS_PER_TEXT
    assert max_prompt_tokens("embedding", {"input": ["ab", "cde"]}) == 5 + 2 * SPECIAL_TOKENS_PER_TEXT


@pytest.mark.parametrize(
    ("kind", "body", "bound"),
    [
        ("completion", {"prompt": [5, 6, 7]}, 3 + SPECIAL_TOKENS_PER_TEXT),
        ("completion", {"prompt": [[5, 6], [7]]}, 3 + SPECIAL_TOKENS_PER_TEXT),
        ("embedding", {"input": [5, 6, 7]}, 3 + SPECIAL_TOKENS_PER_TEXT),
        ("embedding", {"input": [[5, 6], [7, 8, 9]]}, 5 + 2 * SPECIAL_TOKENS_PER_TEXT),
        ("embedding", {"input": []}, 0),
        ("embedding", {"input": [True, 1]}, 0),
    ],
    ids=["completion-ids", "completion-id-lists", "embedding-ids", "embedding-id-lists", "empty", "not-ids"],
)
def test_a_prompt_of_token_ids_counts_one_token_per_id(kind: str, body: dict, bound: int) -> None:
    # an honest provider's tokensIn for a prompt it was given as token ids is their number
    assert max_prompt_tokens(kind, body) == bound
