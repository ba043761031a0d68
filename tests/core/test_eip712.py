"""Voucher and Receipt hashing agrees with eth-account's generic EIP-712 encoder,
and signatures round-trip or fail with typed errors."""

from __future__ import annotations

import threading

import eth_abi
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from allmende.core import (
    AmountOverflow,
    Domain,
    InvalidInput,
    InvalidSignature,
    Receipt,
    SignedReceipt,
    SignedVoucher,
    Voucher,
    sign_receipt,
    sign_voucher,
)
from allmende.core.eip712 import SECP256K1_HALF_N, recover_digest

KEY = keccak(text="core-test-key")
ADDRESS = Account.from_key(KEY).address
DOMAIN = Domain(31337, "0x" + "ab" * 20)

bytes32 = st.binary(min_size=32, max_size=32)
u32 = st.integers(0, 2**32 - 1)


def eth_account_digest(typed: dict) -> bytes:
    signable = encode_typed_data(full_message=typed)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


@given(channel=bytes32, model=bytes32, amount=st.integers(0, 2**128 - 1), chain=st.integers(1, 2**64))
def test_voucher_digest_matches_eth_account(channel: bytes, model: bytes, amount: int, chain: int) -> None:
    domain = Domain(chain, "0x" + "cd" * 20)
    voucher = Voucher(channel, model, amount)

    assert voucher.digest(domain) == eth_account_digest(voucher.typed_data(domain))


@given(rid=bytes32, tin=u32, tout=u32, amount=st.integers(0, 2**256 - 1), ts=st.integers(0, 2**64 - 1))
def test_receipt_digest_matches_eth_account(rid: bytes, tin: int, tout: int, amount: int, ts: int) -> None:
    receipt = Receipt(rid, b"\x01" * 32, ADDRESS, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, tin, tout, amount, ts)

    assert receipt.digest(DOMAIN) == eth_account_digest(receipt.typed_data(DOMAIN))


def test_voucher_sign_recover_and_json_round_trip() -> None:
    signed = sign_voucher(Voucher(b"\x01" * 32, b"\x02" * 32, 10**12), DOMAIN, KEY)

    again = SignedVoucher.from_json(signed.to_json())

    assert again == signed
    assert again.signer(DOMAIN) == ADDRESS
    again.verify(DOMAIN, ADDRESS.lower())


def test_voucher_as_tuple_is_the_channels_voucher_struct() -> None:
    # contracts/channels.vy: struct Voucher {channel_id, model_id, cumulative_amount, signature}
    signed = sign_voucher(Voucher(b"\x01" * 32, b"\x02" * 32, 7), DOMAIN, KEY)
    struct = ["(bytes32,bytes32,uint256,bytes)"]

    (decoded,) = eth_abi.decode(struct, eth_abi.encode(struct, [signed.as_tuple()]))

    assert decoded == (b"\x01" * 32, b"\x02" * 32, 7, signed.signature)


def test_voucher_signed_by_other_key_fails_verify() -> None:
    signed = sign_voucher(Voucher(b"\x01" * 32, b"\x02" * 32, 1), DOMAIN, keccak(text="someone else"))
    with pytest.raises(InvalidSignature, match="expected payer"):
        signed.verify(DOMAIN, ADDRESS)


def test_voucher_for_other_domain_fails_verify() -> None:
    signed = sign_voucher(Voucher(b"\x01" * 32, b"\x02" * 32, 1), DOMAIN, KEY)
    with pytest.raises(InvalidSignature):
        signed.verify(Domain(1, DOMAIN.verifying_contract), ADDRESS)


def test_receipt_sign_verify_and_json_round_trip() -> None:
    receipt = Receipt(b"\x05" * 32, b"\x01" * 32, ADDRESS, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, 7, 9, 123, 99)
    signed = sign_receipt(receipt, DOMAIN, KEY)

    again = SignedReceipt.from_json(signed.to_json())

    assert again == signed
    again.verify(DOMAIN)


def test_receipt_claiming_another_provider_fails_verify() -> None:
    receipt = Receipt(
        b"\x05" * 32, b"\x01" * 32, "0x" + "11" * 20, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, 1, 1, 1, 1
    )
    with pytest.raises(InvalidSignature, match="not by provider"):
        sign_receipt(receipt, DOMAIN, KEY).verify(DOMAIN)


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        (b"\x00" * 64, "65 bytes"),
        (b"\x00" * 64 + b"\x05", "v must be 27 or 28"),
        (b"\x01" * 32 + (SECP256K1_HALF_N + 1).to_bytes(32, "big") + b"\x1b", "malleable"),
        (b"\x00" * 64 + b"\x1b", "does not recover"),
    ],
    ids=["short", "bad-v", "high-s", "zero-r"],
)
def test_recover_rejects_malformed_signatures(signature: bytes, message: str) -> None:
    with pytest.raises(InvalidSignature, match=message):
        recover_digest(b"\x00" * 32, signature)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"cumulative_amount": -1}, AmountOverflow),
        ({"cumulative_amount": 2**128}, AmountOverflow),
        ({"cumulative_amount": 1.5}, AmountOverflow),
        ({"channel_id": b"\x01" * 31}, InvalidInput),
    ],
    ids=["negative", "overflow", "float", "short-id"],
)
def test_voucher_rejects_bad_fields(kwargs: dict, error: type[Exception]) -> None:
    fields = {"channel_id": b"\x01" * 32, "model_id": b"\x02" * 32, "cumulative_amount": 1, **kwargs}
    with pytest.raises(error):
        Voucher(**fields)


@pytest.mark.parametrize(
    "patch",
    [
        {"channel_id": "0xzz"},
        {"cumulative_amount": "-3"},
        {"signature": "0x00"},
        {"model_id": 5},
        {"cumulative_amount": True},
        {"cumulative_amount": "²"},
    ],
    ids=["bad-hex", "negative-string", "short-signature", "not-a-string", "bool", "superscript-digit"],
)
def test_voucher_from_json_rejects_malformed(patch: dict) -> None:
    good = sign_voucher(Voucher(b"\x01" * 32, b"\x02" * 32, 1), DOMAIN, KEY).to_json()
    with pytest.raises(InvalidInput):
        SignedVoucher.from_json({**good, **patch})


def test_an_r_that_is_no_point_on_the_curve_does_not_recover() -> None:
    """r in range and s low, but no curve point has x = r: libsecp256k1 refuses to recover."""
    digest = keccak(b"any message")
    for r in range(1, 100):  # about half of all x have no point; the first such r is small
        signature = r.to_bytes(32, "big") + (1).to_bytes(32, "big") + bytes([27])
        try:
            recover_digest(digest, signature)
        except InvalidSignature as exc:
            assert "does not recover" in str(exc)
            return
    raise AssertionError("every r recovered")


def test_keccak_failures_in_the_c_library_raise_instead_of_hashing_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: this thread's keccak state exists; the C library then reports errors
    from allmende.core import eip712

    assert eip712.keccak256(b"commons") == keccak(b"commons")
    real = eip712._KECCAK

    class Failing:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def keccak_absorb(self, *_: object) -> int:
            return 1

        def keccak_init(self, *_: object) -> int:
            return 1

    monkeypatch.setattr(eip712, "_KECCAK", Failing())
    raised: list[BaseException] = []

    def in_a_new_thread() -> None:
        try:
            eip712.keccak256(b"commons")
        except RuntimeError as exc:
            raised.append(exc)

    # Execute
    with pytest.raises(ValueError, match="keccak failed"):
        eip712.keccak256(b"commons")
    thread = threading.Thread(target=in_a_new_thread)
    thread.start()
    thread.join()

    # Assert: a new thread's state that cannot be made is an error too
    assert len(raised) == 1 and "not initialised" in str(raised[0])
