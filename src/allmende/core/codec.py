"""Parsing of wire values (hex strings, decimal integers) into typed Python values.

Every function raises InvalidInput with the field's name on bad input, so wire
handlers can turn any parse failure into a clear 4xx.
"""

from __future__ import annotations

from functools import lru_cache

from eth_utils import is_address, to_checksum_address

from allmende.core.errors import AmountOverflow, InvalidInput


def hex_bytes(value: object, length: int | None, what: str) -> bytes:
    """`"0x…"` → bytes of exactly `length` bytes (any length if None)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a 0x-prefixed hex string")
    text = value[2:] if value.startswith(("0x", "0X")) else value
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise InvalidInput(f"{what} is not valid hex") from exc
    if length is not None and len(raw) != length:
        raise InvalidInput(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def int_field(value: object, what: str, bits: int = 256) -> int:
    """A non-negative integer given as int or decimal string, fitting `bits` bits."""
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be an integer")
    if isinstance(value, str):
        # isdigit alone admits "²" (int() then raises a bare ValueError) and non-ASCII digits
        if not (value.isascii() and value.isdigit()) or len(value) > 80:
            raise InvalidInput(f"{what} must be a decimal integer string")
        value = int(value)
    if not isinstance(value, int):
        raise InvalidInput(f"{what} must be an integer")
    if value < 0 or value >= 1 << bits:
        raise AmountOverflow(f"{what} = {value} does not fit uint{bits}")
    return value


def address_field(value: object, what: str) -> str:
    """A 20-byte address in hex → checksummed form."""
    checksummed = _checksummed_address(value) if isinstance(value, str) else None
    if checksummed is None:
        raise InvalidInput(f"{what} must be a 20-byte hex address")
    return checksummed


@lru_cache(maxsize=4096)
def _checksummed_address(value: str) -> str | None:
    """The checksummed form of a valid address (None if it is not one), computed once per
    spelling: a receipt's provider is one of a few addresses, checked on every answer."""
    return str(to_checksum_address(value)) if is_address(value) else None
