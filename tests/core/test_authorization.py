"""The payer's per-request signature: its EIP-712 digest agrees with eth-account's encoder,
it recovers to the payer, and it binds every field (another request id, channel, model or
body, or another chain or contract, recovers to someone else)."""

from __future__ import annotations

import dataclasses

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from allmende.core import Domain, InvalidInput, InvalidSignature, RequestAuthorization

KEY = keccak(text="payer-key")
PAYER = Account.from_key(KEY).address
DOMAIN = Domain(31337, "0x" + "c1" * 20)
AUTH = RequestAuthorization(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32)

bytes32 = st.binary(min_size=32, max_size=32)


@given(rid=bytes32, channel=bytes32, model=bytes32, body=bytes32, chain=st.integers(1, 2**64))
def test_request_digest_matches_eth_account(rid: bytes, channel: bytes, model: bytes, body: bytes, chain: int) -> None:
    domain = Domain(chain, "0x" + "cd" * 20)
    auth = RequestAuthorization(rid, channel, model, body)
    signable = encode_typed_data(full_message=auth.typed_data(domain))

    assert auth.digest(domain) == keccak(b"\x19" + signable.version + signable.header + signable.body)


def test_request_signature_recovers_to_the_payer() -> None:
    signature = AUTH.sign(DOMAIN, KEY)

    assert len(signature) == 65
    assert AUTH.signer(DOMAIN, signature) == PAYER
    signable = encode_typed_data(full_message=AUTH.typed_data(DOMAIN))
    assert Account.recover_message(signable, signature=signature) == PAYER


@pytest.mark.parametrize("field", ["request_id", "channel_id", "model_id", "input_hash"])
def test_a_signature_does_not_carry_over_to_another_request(field: str) -> None:
    signature = AUTH.sign(DOMAIN, KEY)
    other = dataclasses.replace(AUTH, **{field: b"\xee" * 32})

    assert other.signer(DOMAIN, signature) != PAYER


def test_a_signature_does_not_carry_over_to_another_chain_or_contract() -> None:
    signature = AUTH.sign(DOMAIN, KEY)

    assert AUTH.signer(Domain(1, DOMAIN.verifying_contract), signature) != PAYER
    assert AUTH.signer(Domain(DOMAIN.chain_id, "0x" + "c2" * 20), signature) != PAYER


def test_a_malformed_request_signature_is_refused() -> None:
    with pytest.raises(InvalidSignature, match="65 bytes"):
        AUTH.signer(DOMAIN, b"\x00" * 64)


def test_request_fields_must_be_32_bytes() -> None:
    with pytest.raises(InvalidInput, match="input_hash must be 32 bytes"):
        RequestAuthorization(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 31)
