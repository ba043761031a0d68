"""Receipts: the provider's signed statement of what it served and charged.

Every answer carries one. The gateway checks the signature and the amount before
it pays; a validator that finds a bad proof takes the receipt on chain as
evidence, where `Registry.receipt_signer` rebuilds the same digest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from allmende.core.codec import address_field, hex_bytes, int_field
from allmende.core.eip712 import (
    DOMAIN_FIELDS,
    RECEIPT_TYPE,
    RECEIPT_TYPEHASH,
    Domain,
    check_bytes32,
    check_uint,
    checksum_address,
    keccak256,
    recover_digest,
    sign_digest,
    type_fields,
    typed_digest,
    word,
)
from allmende.core.errors import InvalidSignature


@dataclass(frozen=True)
class Receipt:
    """`Receipt(requestId, modelId, provider, inputHash, outputHash, proofHash,
    tokensIn, tokensOut, amount, timestamp)`."""

    request_id: bytes
    model_id: bytes
    provider: str
    input_hash: bytes
    output_hash: bytes
    proof_hash: bytes
    tokens_in: int
    tokens_out: int
    amount: int
    timestamp: int

    def __post_init__(self) -> None:
        for name in ("request_id", "model_id", "input_hash", "output_hash", "proof_hash"):
            check_bytes32(getattr(self, name), name)
        object.__setattr__(self, "provider", checksum_address(self.provider))
        check_uint(self.tokens_in, 32, "tokens_in")
        check_uint(self.tokens_out, 32, "tokens_out")
        check_uint(self.amount, 256, "amount")
        check_uint(self.timestamp, 64, "timestamp")

    def struct_hash(self) -> bytes:
        # the fields were range-checked in __post_init__: each packs into its ABI word as is
        return keccak256(
            RECEIPT_TYPEHASH
            + self.request_id
            + self.model_id
            + bytes.fromhex(self.provider[2:]).rjust(32, b"\x00")
            + self.input_hash
            + self.output_hash
            + self.proof_hash
            + word(self.tokens_in)
            + word(self.tokens_out)
            + word(self.amount)
            + word(self.timestamp)
        )

    def digest(self, domain: Domain) -> bytes:
        """The EIP-712 digest under the Registry domain."""
        return typed_digest(domain, self.struct_hash())

    def as_tuple(self) -> tuple[object, ...]:
        """The Registry `Receipt` struct as an ABI tuple."""
        return tuple(asdict(self).values())

    def typed_data(self, domain: Domain) -> dict[str, object]:
        names = [f["name"] for f in type_fields(RECEIPT_TYPE)]
        return {
            "types": {"EIP712Domain": DOMAIN_FIELDS, "Receipt": type_fields(RECEIPT_TYPE)},
            "primaryType": "Receipt",
            "domain": domain.as_dict(),
            "message": dict(zip(names, self.as_tuple(), strict=True)),
        }


@dataclass(frozen=True)
class SignedReceipt:
    """A receipt with the provider's 65-byte signature."""

    receipt: Receipt
    signature: bytes

    def signer(self, domain: Domain) -> str:
        return recover_digest(self.receipt.digest(domain), self.signature)

    def verify(self, domain: Domain) -> None:
        """Raise InvalidSignature unless the receipt's own provider signed it."""
        signer = self.signer(domain)
        if signer != self.receipt.provider:
            raise InvalidSignature(f"receipt signed by {signer}, not by provider {self.receipt.provider}")

    def to_json(self) -> dict[str, object]:
        r = self.receipt
        return {
            "request_id": "0x" + r.request_id.hex(),
            "model_id": "0x" + r.model_id.hex(),
            "provider": r.provider,
            "input_hash": "0x" + r.input_hash.hex(),
            "output_hash": "0x" + r.output_hash.hex(),
            "proof_hash": "0x" + r.proof_hash.hex(),
            "tokens_in": r.tokens_in,
            "tokens_out": r.tokens_out,
            "amount": str(r.amount),
            "timestamp": r.timestamp,
            "signature": "0x" + self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SignedReceipt:
        """Parse `to_json` output; raises InvalidInput on any malformed field."""
        return cls(
            Receipt(
                request_id=hex_bytes(data.get("request_id"), 32, "request_id"),
                model_id=hex_bytes(data.get("model_id"), 32, "model_id"),
                provider=address_field(data.get("provider"), "provider"),
                input_hash=hex_bytes(data.get("input_hash"), 32, "input_hash"),
                output_hash=hex_bytes(data.get("output_hash"), 32, "output_hash"),
                proof_hash=hex_bytes(data.get("proof_hash"), 32, "proof_hash"),
                tokens_in=int_field(data.get("tokens_in"), "tokens_in", 32),
                tokens_out=int_field(data.get("tokens_out"), "tokens_out", 32),
                amount=int_field(data.get("amount"), "amount"),
                timestamp=int_field(data.get("timestamp"), "timestamp", 64),
            ),
            hex_bytes(data.get("signature"), 65, "signature"),
        )


def sign_receipt(receipt: Receipt, domain: Domain, private_key: bytes) -> SignedReceipt:
    """Sign `receipt` with the provider's key."""
    return SignedReceipt(receipt, sign_digest(receipt.digest(domain), private_key))
