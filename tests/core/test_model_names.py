"""The name rule of the Models contract, in Python: what a person types becomes a canonical
name or a clear refusal, and look-alikes share one uniqueness key (the contract's own key is
compared with this one in tests/contracts/test_model_names.py)."""

from __future__ import annotations

import pytest

from allmende.core.errors import InvalidModelName
from allmende.core.model_names import (
    SEQUENCE_CONFUSABLES,
    UNICODE_CONFUSABLES,
    canonical_name,
    is_model_id,
    name_key,
    skeleton,
)


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
        ("Allmende:Tiny", "allmende:tiny"),
        ("MiniLM", "minilm"),
        ("org/model-v1.2_q4", "org/model-v1.2_q4"),
        ("z" * 64, "z" * 64),
    ],
)
def test_what_a_person_types_is_lower_cased(typed: str, canonical: str) -> None:
    assert canonical_name(typed) == canonical


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("", "empty"),
        ("ѕmollm2", r"U\+0455"),  # Cyrillic dze posing as s
        ("ｓmollm2", r"U\+FF53"),  # full-width s
        ("smollm2\u200b", r"U\+200B"),  # zero-width space
        ("a" * 65, "at most 64"),
        ("/home/me/model", "not a model name"),  # a folder path is no name
        ("./model", "not a model name"),
        ("a b", "not a model name"),
        ("a--b", "not a model name"),
        ("a-", "not a model name"),
    ],
)
def test_a_name_that_cannot_be_canonical_is_refused_with_the_reason(typed: str, reason: str) -> None:
    with pytest.raises(InvalidModelName, match=reason):
        canonical_name(typed)


def test_look_alikes_share_one_key() -> None:
    assert skeleton("sm0ll1m2:l35m_instruct") == "srnolllrn2-l35rn-lnstruct"
    key = name_key("smollm2-135m-instruct")
    for look_alike in [
        "smo11m2-135m-instruct",
        "sm0llm2-l35m-instruct",
        "smollm2_135m.lnstruct",
        "smollm2:135m/instruct",
        "smollm2-135rn-instruct",  # rn reads as m
        "srnollrn2-135rn-instruct",
    ]:
        assert name_key(look_alike) == key
    assert name_key("smollm3-135m-instruct") != key
    assert len(key) == 32


@pytest.mark.parametrize(
    ("name", "look_alike"),
    [
        ("smollm2-135m-instruct", "smollm2-135rn-instruct"),
        ("wizardlm-2-7b", "vvizardlm-2-7b"),
        ("dolly-v2", "clolly-v2"),
        ("dolly-v2", "c1olly-v2"),
        ("mm", "rnrn"),
        ("vw", "wv"),
        ("o1", "0l"),
    ],
    ids=["rn-m", "vv-w", "cl-d", "c1-d", "mm-rnrn", "vw-wv", "digits"],
)
def test_a_squatter_names_a_model_with_a_sequence_that_reads_as_another(name: str, look_alike: str) -> None:
    assert name_key(look_alike) == name_key(name)
    assert skeleton(look_alike) == skeleton(name)


def test_the_fold_is_unicode_confusables_within_the_name_alphabet() -> None:
    """UTS #39 confusables.txt 13.0.0, every entry with source and prototype in [a-z0-9] once
    lower-cased: 0030 -> 004F, 0031 -> 006C, 0049 -> 006C, 006D -> 0072 006E."""
    entries = {"0030": "004F", "0031": "006C", "0049": "006C", "006D": "0072 006E"}
    table = {
        chr(int(src, 16)).lower(): "".join(chr(int(c, 16)) for c in tgt.split()).lower() for src, tgt in entries.items()
    }
    assert {k: v for k, v in table.items() if k != "i"} == UNICODE_CONFUSABLES
    assert all(skeleton(k) == skeleton(v) for k, v in table.items())
    assert all(len(v) == 2 for v in SEQUENCE_CONFUSABLES.values())
    assert len(skeleton("m" * 64)) == 128


def test_the_key_is_only_made_of_canonical_names() -> None:
    with pytest.raises(InvalidModelName, match="did you mean 'smollm2'"):
        name_key("SmolLM2")


def test_a_model_id_is_never_a_name() -> None:
    model_id = "0x" + "ab" * 32
    assert is_model_id(model_id) and is_model_id(model_id.upper().replace("0X", "0x"))
    assert not is_model_id("0x" + "ab" * 31) and not is_model_id("smollm2")
    with pytest.raises(InvalidModelName):
        canonical_name(model_id)  # 66 characters: longer than any name
