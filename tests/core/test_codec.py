"""Parsing wire values: what is accepted, and every malformed value refused as InvalidInput
(never a bare ValueError or TypeError that a wire handler would turn into a 500)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allmende.core.codec import address_field, hex_bytes, int_field
from allmende.core.errors import AmountOverflow, InvalidInput

# ------------------------------------------------------------------ hex_bytes


@pytest.mark.parametrize(
    ("value", "length", "raw"),
    [("0x0a0B", 2, b"\x0a\x0b"), ("0X0a0b", 2, b"\x0a\x0b"), ("0a0b", None, b"\x0a\x0b"), ("0x", None, b"")],
    ids=["lower-prefix", "upper-prefix", "no-prefix", "empty"],
)
def test_hex_bytes_accepts_hex_with_or_without_prefix(value: str, length: int | None, raw: bytes) -> None:
    assert hex_bytes(value, length, "field") == raw


@pytest.mark.parametrize(
    ("value", "length", "message"),
    [
        (None, 2, "field must be a 0x-prefixed hex string"),
        (b"\x0a\x0b", 2, "field must be a 0x-prefixed hex string"),
        ("0xzz", 1, "field is not valid hex"),
        ("0xabc", None, "field is not valid hex"),
        ("0x0a", 2, "field must be 2 bytes, got 1"),
    ],
    ids=["none", "bytes", "not-hex", "odd-length", "wrong-length"],
)
def test_hex_bytes_refuses_malformed_values(value: object, length: int | None, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        hex_bytes(value, length, "field")


# ------------------------------------------------------------------ int_field


@given(st.integers(0, 2**256 - 1))
def test_int_field_reads_any_uint256_as_int_or_decimal_string(value: int) -> None:
    assert int_field(value, "amount") == value
    assert int_field(str(value), "amount") == value


@pytest.mark.parametrize(
    ("value", "bits"),
    [(2**256, 256), (str(2**256), 256), (-1, 256), (2**32, 32)],
    ids=["2^256", "2^256-str", "-1", "2^32"],
)
def test_int_field_refuses_amounts_outside_the_type(value: object, bits: int) -> None:
    with pytest.raises(AmountOverflow, match=f"does not fit uint{bits}"):
        int_field(value, "amount", bits)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "must be an integer"),
        (1.0, "must be an integer"),
        (None, "must be an integer"),
        ([1], "must be an integer"),
        ("-1", "must be a decimal integer string"),
        ("0x10", "must be a decimal integer string"),
        (" 1", "must be a decimal integer string"),
        ("", "must be a decimal integer string"),
        ("1" * 81, "must be a decimal integer string"),
        ("²", "must be a decimal integer string"),
        ("١٢", "must be a decimal integer string"),
    ],
    ids=[
        "bool",
        "float",
        "none",
        "list",
        "negative",
        "hex",
        "space",
        "empty",
        "81-digits",
        "superscript",
        "arabic-indic",
    ],
)
def test_int_field_refuses_what_is_not_a_plain_integer(value: object, message: str) -> None:
    # "²" passes str.isdigit but not int(): it used to escape as a bare ValueError (a 500 at the provider)
    with pytest.raises(InvalidInput, match=f"amount {message}"):
        int_field(value, "amount")


# ------------------------------------------------------------------ address_field


def test_address_field_checksums_an_address_in_any_case() -> None:
    checksummed = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"

    assert address_field(checksummed.lower(), "payer") == checksummed
    assert address_field(checksummed.upper().replace("0X", "0x"), "payer") == checksummed


@pytest.mark.parametrize(
    "value",
    [None, 5, "0x1234", "0x" + "zz" * 20, b"\x00" * 20],
    ids=["none", "number", "short", "not-hex", "bytes"],
)
def test_address_field_refuses_what_is_not_an_address(value: object) -> None:
    with pytest.raises(InvalidInput, match="payer must be a 20-byte hex address"):
        address_field(value, "payer")
