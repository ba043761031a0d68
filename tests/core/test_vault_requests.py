"""The grantee's vault request: its EIP-712 digest agrees with eth-account's encoder, it
recovers to the grantee, and it binds every field (another vault, operation, dataset, grant,
run, round, nonce, expiry or body, or another chain or contract, recovers to someone else);
its header parses strictly and its lifetime is bounded."""

from __future__ import annotations

import dataclasses
import json

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from allmende.core import Domain, InvalidInput, InvalidSignature
from allmende.core.vault_requests import MAX_LIFETIME, OPERATIONS, VaultRequest, from_header

KEY = keccak(text="grantee-key")
GRANTEE = Account.from_key(KEY).address
DOMAIN = Domain(31337, "0x" + "da" * 20)
BODY = b'{"template":"aggregate"}'
REQUEST = VaultRequest("0x" + "ab" * 20, "job", b"\x01" * 32, 7, 0, 0, b"\x02" * 32, 1_900_000_000, keccak(BODY))

bytes32 = st.binary(min_size=32, max_size=32)


@given(
    operation=st.sampled_from(OPERATIONS), dataset=bytes32, grant=st.integers(0, 2**256 - 1),
    run=st.integers(0, 2**64), round_=st.integers(0, 2**32), nonce=bytes32, expiry=st.integers(0, 2**64 - 1),
    body=bytes32, chain=st.integers(1, 2**64),
)  # fmt: skip
def test_vault_request_digest_matches_eth_account(
    operation: str, dataset: bytes, grant: int, run: int, round_: int, nonce: bytes, expiry: int, body: bytes,
    chain: int,
) -> None:  # fmt: skip
    domain = Domain(chain, "0x" + "cd" * 20)
    request = VaultRequest("0x" + "ef" * 20, operation, dataset, grant, run, round_, nonce, expiry, body)
    signable = encode_typed_data(full_message=request.typed_data(domain))

    assert request.digest(domain) == keccak(b"\x19" + signable.version + signable.header + signable.body)


def test_a_signed_request_recovers_to_the_grantee() -> None:
    signature = REQUEST.sign(DOMAIN, KEY)

    assert REQUEST.signer(DOMAIN, signature) == GRANTEE
    signable = encode_typed_data(full_message=REQUEST.typed_data(DOMAIN))
    assert Account.recover_message(signable, signature=signature) == GRANTEE


TAMPERED = [
    ("vault", "0x" + "ac" * 20),
    ("operation", "round_unmask"),
    ("dataset_id", b"\x03" * 32),
    ("grant_id", 8),
    ("run_id", 1),
    ("round", 1),
    ("nonce", b"\x04" * 32),
    ("expiry", 1_900_000_001),
    ("body_hash", keccak(b"{}")),
]


@pytest.mark.parametrize(("field", "value"), TAMPERED, ids=[t[0] for t in TAMPERED])
def test_tampering_any_field_breaks_the_signature(field: str, value: object) -> None:
    signature = REQUEST.sign(DOMAIN, KEY)
    other = dataclasses.replace(REQUEST, **{field: value})

    assert other.signer(DOMAIN, signature) != GRANTEE


def test_a_signature_does_not_carry_over_to_another_chain_or_contract() -> None:
    signature = REQUEST.sign(DOMAIN, KEY)

    assert REQUEST.signer(Domain(1, DOMAIN.verifying_contract), signature) != GRANTEE
    assert REQUEST.signer(Domain(DOMAIN.chain_id, "0x" + "db" * 20), signature) != GRANTEE


def test_the_header_round_trips_and_binds_the_body() -> None:
    signature = REQUEST.sign(DOMAIN, KEY)
    header = REQUEST.to_header(signature)

    parsed, parsed_signature = from_header(header, BODY)
    assert (parsed, parsed_signature) == (REQUEST, signature)
    tampered, _ = from_header(header, BODY + b" ")
    assert tampered.signer(DOMAIN, signature) != GRANTEE


def _header(**change: object) -> str:
    fields = json.loads(REQUEST.to_header(b"\x05" * 65))
    fields.update(change)
    return json.dumps({k: v for k, v in fields.items() if v is not None})


BAD_HEADERS = [
    ("not json", "{", "not JSON"),
    ("a list", "[]", "exactly"),
    ("a field missing", _header(round=None), "exactly"),
    ("an extra field", _header(limit=1), "exactly"),
    ("too long", _header(vault="x" * 2000), "too long"),
    ("not an address", _header(vault="0x12"), "address"),
    ("unknown operation", _header(operation="rows"), "operation"),
    ("dataset not hex", _header(dataset="0x" + "zz" * 32), "not hex"),
    ("dataset without 0x", _header(dataset="11" * 32), "0x-prefixed"),
    ("nonce too short", _header(nonce="0x1234"), "32 bytes"),
    ("grant a string", _header(grant="7"), "integer"),
    ("round a bool", _header(round=True), "integer"),
    ("run negative", _header(run=-1), "uint256"),
    ("expiry too large", _header(expiry=2**64), "uint64"),
    ("signature short", _header(signature="0x12"), "65 bytes"),
]


@pytest.mark.parametrize(("name", "header", "message"), BAD_HEADERS, ids=[b[0] for b in BAD_HEADERS])
def test_a_malformed_header_is_refused(name: str, header: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        from_header(header, BODY)


def test_a_bad_digest_field_is_refused() -> None:
    with pytest.raises(InvalidInput, match="body_hash"):
        VaultRequest(REQUEST.vault, "job", b"\x01" * 32, 1, 0, 0, b"\x02" * 32, 1, b"short")
    with pytest.raises(InvalidSignature):
        REQUEST.signer(DOMAIN, b"\x00" * 64)


def test_the_lifetime_is_bounded_on_both_sides() -> None:
    REQUEST.check_lifetime(REQUEST.expiry - 1)
    with pytest.raises(InvalidInput, match="expired"):
        REQUEST.check_lifetime(REQUEST.expiry)
    with pytest.raises(InvalidInput, match="ahead"):
        REQUEST.check_lifetime(REQUEST.expiry - MAX_LIFETIME - 1)
