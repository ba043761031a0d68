"""Vouchers: the payer's signed promise of a cumulative amount per (channel, model).

A voucher says "on channel C, for model M, I owe you N in total so far". Each
new voucher replaces the last, so a provider stores one per (channel, model) and
redeems only the latest; the contract pays the increase over what it paid before.
"""

from __future__ import annotations

from dataclasses import dataclass

from allmende.core.codec import hex_bytes, int_field
from allmende.core.eip712 import (
    DOMAIN_FIELDS,
    VOUCHER_TYPE,
    VOUCHER_TYPEHASH,
    Domain,
    check_bytes32,
    check_uint,
    keccak256,
    recover_digest,
    sign_digest,
    type_fields,
    typed_digest,
    word,
)
from allmende.core.errors import InvalidSignature

# Channels packs deposit and spent into 128 bits each.
MAX_CHANNEL_AMOUNT = 2**128 - 1
# The most vouchers one Channels.redeem takes (its MAX_BATCH): more go in several transactions.
REDEEM_BATCH = 64


@dataclass(frozen=True)
class Voucher:
    """`Voucher(bytes32 channelId, bytes32 modelId, uint256 cumulativeAmount)`."""

    channel_id: bytes
    model_id: bytes
    cumulative_amount: int

    def __post_init__(self) -> None:
        check_bytes32(self.channel_id, "channel_id")
        check_bytes32(self.model_id, "model_id")
        check_uint(self.cumulative_amount, 128, "cumulative_amount")

    def struct_hash(self) -> bytes:
        return keccak256(VOUCHER_TYPEHASH + self.channel_id + self.model_id + word(self.cumulative_amount))

    def digest(self, domain: Domain) -> bytes:
        """The EIP-712 digest under the Channels domain."""
        return typed_digest(domain, self.struct_hash())

    def typed_data(self, domain: Domain) -> dict[str, object]:
        """The full typed-data dict (for wallets and eth-account)."""
        return {
            "types": {
                "EIP712Domain": DOMAIN_FIELDS,
                "Voucher": type_fields(VOUCHER_TYPE),
            },
            "primaryType": "Voucher",
            "domain": domain.as_dict(),
            "message": {
                "channelId": self.channel_id,
                "modelId": self.model_id,
                "cumulativeAmount": self.cumulative_amount,
            },
        }


@dataclass(frozen=True)
class SignedVoucher:
    """A voucher with the payer's 65-byte signature."""

    voucher: Voucher
    signature: bytes

    def signer(self, domain: Domain) -> str:
        """The address that signed it (raises InvalidSignature if malformed)."""
        return recover_digest(self.voucher.digest(domain), self.signature)

    def verify(self, domain: Domain, payer: str) -> None:
        """Raise InvalidSignature unless `payer` signed this voucher under `domain`."""
        signer = self.signer(domain)
        if signer.lower() != payer.lower():
            raise InvalidSignature(f"voucher signed by {signer}, expected payer {payer}")

    def as_tuple(self) -> tuple[bytes, bytes, int, bytes]:
        """The Channels `Voucher` struct as an ABI tuple."""
        return (
            self.voucher.channel_id,
            self.voucher.model_id,
            self.voucher.cumulative_amount,
            self.signature,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "channel_id": "0x" + self.voucher.channel_id.hex(),
            "model_id": "0x" + self.voucher.model_id.hex(),
            "cumulative_amount": str(self.voucher.cumulative_amount),
            "signature": "0x" + self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SignedVoucher:
        """Parse `to_json` output; raises InvalidInput on any malformed field."""
        return cls(
            Voucher(
                channel_id=hex_bytes(data.get("channel_id"), 32, "channel_id"),
                model_id=hex_bytes(data.get("model_id"), 32, "model_id"),
                cumulative_amount=int_field(data.get("cumulative_amount"), "cumulative_amount"),
            ),
            hex_bytes(data.get("signature"), 65, "signature"),
        )


def sign_voucher(voucher: Voucher, domain: Domain, private_key: bytes) -> SignedVoucher:
    """Sign `voucher` with the payer's key."""
    return SignedVoucher(voucher, sign_digest(voucher.digest(domain), private_key))
