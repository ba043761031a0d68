"""Public model names, as the `Models` contract defines them.

A model's name is set on chain by its owner, and names are canonical so that look-alikes
cannot squat each other: 1 to 64 bytes of lower-case ASCII letters, digits and the
separators ``- . _ : /``, beginning and ending with a letter or digit, no two separators in
a row. Two names collide when their skeletons are equal. The skeleton follows Unicode's
confusables table (UTS #39 ``confusables.txt``; `UNICODE_CONFUSABLES` holds its entries
within the name alphabet, lower-cased): ``0`` reads as ``o``, ``1`` as ``l``, ``m`` as
``rn``. UTS #39 maps single code points only, so the letter sequences that read as one
letter in common fonts (``vv`` as ``w``, ``cl`` as ``d``) come from `SEQUENCE_CONFUSABLES`;
``i`` reads as ``l`` (as before) and every separator as ``-``. Each character is replaced
by its prototype (as UTS #39's skeleton does), so "rnm", "mrn" and "rnrn" share one
skeleton, as do "vvv", "vw" and "wv". `name_key` is the contract's uniqueness key, byte for
byte (tests/contracts/test_model_names.py checks the two agree).

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
SKELETON_BYTES = 2 * MAX_NAME_LENGTH  # a skeleton is at most twice the name (each m is rn)
# Unicode confusables.txt (UTS #39, version 13.0.0), every entry whose source and prototype
# lie in the name alphabet once lower-cased (I -> l is the same as 1 -> l after lower-casing):
#   0030 ;	004F ;	MA	# ( 0 → O ) DIGIT ZERO → LATIN CAPITAL LETTER O
#   0031 ;	006C ;	MA	# ( 1 → l ) DIGIT ONE → LATIN SMALL LETTER L
#   0049 ;	006C ;	MA	# ( I → l ) LATIN CAPITAL LETTER I → LATIN SMALL LETTER L
#   006D ;	0072 006E ;	MA	# ( m → rn ) LATIN SMALL LETTER M → LATIN SMALL LETTER R, LATIN SMALL LETTER N
UNICODE_CONFUSABLES = {"0": "o", "1": "l", "m": "rn"}
# letters that read as a sequence of two in proportional and monospace fonts, which UTS #39
# cannot list (its sources are single code points); the letter maps to the sequence, as m does
SEQUENCE_CONFUSABLES = {"w": "vv", "d": "cl"}
_FOLD = str.maketrans({**UNICODE_CONFUSABLES, **SEQUENCE_CONFUSABLES, "i": "l", ".": "-", "_": "-", ":": "-", "/": "-"})


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
    """The contract's uniqueness key of a canonical name: keccak256 of its skeleton padded to 128 bytes."""
    if canonical_name(name) != name:
        raise InvalidModelName(f"{name!r} is not canonical; did you mean {canonical_name(name)!r}?")
    return keccak(skeleton(name).encode("ascii").ljust(SKELETON_BYTES, b"\x00"))
