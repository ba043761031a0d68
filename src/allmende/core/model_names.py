"""Public model names, as the `Models` contract defines them.

A model's name is set on chain by its owner, and names are canonical so that look-alikes
cannot squat each other: 1 to 64 bytes of lower-case ASCII letters, digits and the
separators ``- . _ : /``, beginning and ending with a letter or digit, no two separators in
a row. Two names collide when their skeletons are equal: ``0`` reads as ``o``, ``1`` and
``i`` as ``l``, every separator as ``-``. `name_key` is the contract's uniqueness key,
byte for byte (tests/contracts/test_model_names.py checks the two agree).

What a user types is first lower-cased (`canonical_name`), so "SmolLM2-135M-Instruct" asks
for "smollm2-135m-instruct". A model id (``0x`` and 64 hex digits) is never a name: names
are at most 64 bytes long.
"""

from __future__ import annotations

import re

from eth_utils import keccak

from allmende.core.errors import InvalidModelName

MAX_NAME_LENGTH = 64
SEPARATORS = "-._:/"
_CANONICAL = re.compile(r"[a-z0-9]([a-z0-9]|[-._:/](?=[a-z0-9]))*")
_MODEL_ID = re.compile(r"0x[0-9a-f]{64}")
_FOLD = str.maketrans({"0": "o", "1": "l", "i": "l", ".": "-", "_": "-", ":": "-", "/": "-"})


def is_model_id(text: str) -> bool:
    """Whether `text` is a model id written as 0x and 64 hex digits (any case)."""
    return bool(_MODEL_ID.fullmatch(text.lower()))


def canonical_name(text: str) -> str:
    """The canonical form of a name a person typed (lower-cased); raises `InvalidModelName`
    with the reason when no canonical name can be made of it."""
    if not text:
        raise InvalidModelName("a model name cannot be empty")
    for ch in text:
        if not ch.isascii():
            raise InvalidModelName(f"model names are ASCII only: {ch!r} (U+{ord(ch):04X}) may only look like a letter")
    name = text.lower()
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidModelName(f"a model name has at most {MAX_NAME_LENGTH} characters; {len(name)} given")
    if not _CANONICAL.fullmatch(name):
        raise InvalidModelName(
            f"{text!r} is not a model name: use letters, digits and single '-', '.', '_', ':' or '/' between them"
        )
    return name


def skeleton(name: str) -> str:
    """What a canonical name reads as: the form on which names must be unique."""
    return name.translate(_FOLD)


def name_key(name: str) -> bytes:
    """The contract's uniqueness key of a canonical name: keccak256 of its skeleton padded to 64 bytes."""
    if canonical_name(name) != name:
        raise InvalidModelName(f"{name!r} is not canonical; did you mean {canonical_name(name)!r}?")
    return keccak(skeleton(name).encode("ascii").ljust(2 * 32, b"\x00"))
