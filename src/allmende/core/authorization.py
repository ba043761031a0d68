"""The payer's signature on every request: `Request(requestId, channelId, modelId, inputHash)`.

A provider serves a request on a channel's credit only if the channel's payer signed this
authorisation, under the same Channels domain as its vouchers. It binds the request id
(which the provider admits once), the channel, the model and `inputHash`, the keccak of the
canonical request (`allmende.api.protocol.input_hash`, the same value the provider's receipt
commits to). Knowing a channel id, which is public on chain, is therefore not enough to
spend it; nor is an old voucher, which becomes public when it is redeemed.
"""

from __future__ import annotations

from dataclasses import dataclass

from allmende.core.eip712 import (
    DOMAIN_FIELDS,
    REQUEST_TYPE,
    REQUEST_TYPEHASH,
    Domain,
    check_bytes32,
    keccak256,
    recover_digest,
    sign_digest,
    type_fields,
    typed_digest,
)


@dataclass(frozen=True)
class RequestAuthorization:
    """`Request(bytes32 requestId, bytes32 channelId, bytes32 modelId, bytes32 inputHash)`."""

    request_id: bytes
    channel_id: bytes
    model_id: bytes
    input_hash: bytes

    def __post_init__(self) -> None:
        for name in ("request_id", "channel_id", "model_id", "input_hash"):
            check_bytes32(getattr(self, name), name)

    def struct_hash(self) -> bytes:
        return keccak256(REQUEST_TYPEHASH + self.request_id + self.channel_id + self.model_id + self.input_hash)

    def digest(self, domain: Domain) -> bytes:
        """The EIP-712 digest under the Channels domain (the vouchers' domain)."""
        return typed_digest(domain, self.struct_hash())

    def typed_data(self, domain: Domain) -> dict[str, object]:
        """The full typed-data dict (for wallets and eth-account)."""
        return {
            "types": {"EIP712Domain": DOMAIN_FIELDS, "Request": type_fields(REQUEST_TYPE)},
            "primaryType": "Request",
            "domain": domain.as_dict(),
            "message": {
                "requestId": self.request_id,
                "channelId": self.channel_id,
                "modelId": self.model_id,
                "inputHash": self.input_hash,
            },
        }

    def sign(self, domain: Domain, private_key: bytes) -> bytes:
        """The payer's 65-byte signature."""
        return sign_digest(self.digest(domain), private_key)

    def signer(self, domain: Domain, signature: bytes) -> str:
        """The address that signed it (raises InvalidSignature if malformed)."""
        return recover_digest(self.digest(domain), signature)
