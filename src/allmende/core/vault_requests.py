"""The grantee's signature on every vault request: one EIP-712 `VaultRequest`.

    VaultRequest(address vault, string operation, bytes32 datasetId, uint256 grantId,
                 uint256 runId, uint256 round, bytes32 nonce, uint64 expiry, bytes32 bodyHash)

under the domain `{name: "Allmende", version: "1", chainId, verifyingContract: Data}`. It names
everything that decides what a vault does with a request: the chain (domain), the vault that
must run it (its address), the operation (the API path, and for a federated round each stage
as its own operation), the dataset, the grant, the federated run and round (0 and 0 for a
one-off job), a fresh nonce, an expiry, and the keccak of the exact body bytes. A vault runs a
request only if it is the addressee, the operation is the one the request asks for, the expiry
is near and in the future, and it has not seen the nonce from that signer before (it keeps
nonces until they expire). So a captured request cannot be sent again (same vault), elsewhere
(another vault, another chain, another grant or dataset), as another stage, or later.

The request travels in one header (`HEADER`), compact JSON of the fields and the signature;
`from_header` parses it strictly (every field, nothing else, each of its type).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from eth_abi import encode
from eth_utils import is_address, keccak, to_checksum_address

from allmende.core.eip712 import (
    DOMAIN_FIELDS,
    Domain,
    check_bytes32,
    check_uint,
    recover_digest,
    sign_digest,
    type_fields,
    typed_digest,
)
from allmende.core.errors import InvalidInput

HEADER = "x-allmende-request"
VAULT_REQUEST_TYPE = (
    "VaultRequest(address vault,string operation,bytes32 datasetId,uint256 grantId,uint256 runId,"
    "uint256 round,bytes32 nonce,uint64 expiry,bytes32 bodyHash)"
)
VAULT_REQUEST_TYPEHASH = keccak(text=VAULT_REQUEST_TYPE)
MAX_LIFETIME = 600  # seconds: the furthest expiry a vault accepts, so it keeps nonces no longer

# what a request may ask a vault to do; each federated stage is its own operation
JOB = "job"  # /v1/jobs: evaluate or aggregate
ROUND_CHECK = "round_check"  # /v1/rounds/check: would the vault run this round
ROUND_ABORT = "round_abort"  # /v1/rounds/abort: undo this round's reservation
ROUND_PREPARE = "round_prepare"  # /v1/rounds/prepare: would the vault log its reserved round now
ROUND_SETUP = "round_setup"  # /v1/flower, SecAgg+ stages in their order
ROUND_SHARE_KEYS = "round_share_keys"
ROUND_MASKED_VECTORS = "round_masked_vectors"
ROUND_UNMASK = "round_unmask"
ROUND_FIT = "round_fit"  # /v1/flower, a plain FedAvg round (one stage)
SECURE_STAGES = (ROUND_SETUP, ROUND_SHARE_KEYS, ROUND_MASKED_VECTORS, ROUND_UNMASK)
OPERATIONS = (JOB, ROUND_CHECK, ROUND_ABORT, ROUND_PREPARE, *SECURE_STAGES, ROUND_FIT)

_FIELDS = ("vault", "operation", "dataset", "grant", "run", "round", "nonce", "expiry", "signature")


@dataclass(frozen=True)
class VaultRequest:
    """One request to one vault, as the grantee signs it."""

    vault: str  # the vault's address (its key): no other vault runs it
    operation: str  # one of OPERATIONS
    dataset_id: bytes
    grant_id: int
    run_id: int  # federated run (0 for a one-off job)
    round: int  # federated round (0 for a one-off job)
    nonce: bytes  # 32 random bytes; a vault runs each (signer, nonce) once
    expiry: int  # unix seconds; refused after it (and more than MAX_LIFETIME before it)
    body_hash: bytes  # keccak256 of the body bytes

    def __post_init__(self) -> None:
        if not isinstance(self.vault, str) or not is_address(self.vault):
            raise InvalidInput("vault must be an address")
        object.__setattr__(self, "vault", to_checksum_address(self.vault))
        if self.operation not in OPERATIONS:
            raise InvalidInput(f"operation must be one of {', '.join(OPERATIONS)}")
        for name in ("dataset_id", "nonce", "body_hash"):
            check_bytes32(getattr(self, name), name)
        for name in ("grant_id", "run_id", "round"):
            check_uint(getattr(self, name), 256, name)
        check_uint(self.expiry, 64, "expiry")

    def struct_hash(self) -> bytes:
        return keccak(
            encode(
                [
                    "bytes32",
                    "address",
                    "bytes32",
                    "bytes32",
                    "uint256",
                    "uint256",
                    "uint256",
                    "bytes32",
                    "uint64",
                    "bytes32",
                ],
                [
                    VAULT_REQUEST_TYPEHASH,
                    self.vault,
                    keccak(text=self.operation),
                    self.dataset_id,
                    self.grant_id,
                    self.run_id,
                    self.round,
                    self.nonce,
                    self.expiry,
                    self.body_hash,
                ],
            )
        )

    def digest(self, domain: Domain) -> bytes:
        """The EIP-712 digest under the Data contract's domain."""
        return typed_digest(domain, self.struct_hash())

    def typed_data(self, domain: Domain) -> dict[str, object]:
        """The full typed-data dict (for wallets and eth-account)."""
        return {
            "types": {"EIP712Domain": DOMAIN_FIELDS, "VaultRequest": type_fields(VAULT_REQUEST_TYPE)},
            "primaryType": "VaultRequest",
            "domain": domain.as_dict(),
            "message": {
                "vault": self.vault,
                "operation": self.operation,
                "datasetId": self.dataset_id,
                "grantId": self.grant_id,
                "runId": self.run_id,
                "round": self.round,
                "nonce": self.nonce,
                "expiry": self.expiry,
                "bodyHash": self.body_hash,
            },
        }

    def sign(self, domain: Domain, private_key: bytes) -> bytes:
        """The grantee's 65-byte signature."""
        return sign_digest(self.digest(domain), private_key)

    def signer(self, domain: Domain, signature: bytes) -> str:
        """The address that signed it (raises InvalidSignature if malformed)."""
        return recover_digest(self.digest(domain), signature)

    def to_header(self, signature: bytes) -> str:
        """The `HEADER` value: the fields (the body hash is the body's) and the signature."""
        return json.dumps(
            {
                "vault": self.vault,
                "operation": self.operation,
                "dataset": "0x" + self.dataset_id.hex(),
                "grant": self.grant_id,
                "run": self.run_id,
                "round": self.round,
                "nonce": "0x" + self.nonce.hex(),
                "expiry": self.expiry,
                "signature": "0x" + signature.hex(),
            },
            separators=(",", ":"),
        )

    def check_lifetime(self, now: float) -> None:
        """Raises InvalidInput unless `now` is before the expiry and the expiry within MAX_LIFETIME."""
        if self.expiry <= now:
            raise InvalidInput(f"the request expired at {self.expiry} (now {int(now)}): sign a fresh one")
        if self.expiry > now + MAX_LIFETIME:
            raise InvalidInput(f"the request's expiry is more than {MAX_LIFETIME} s ahead")


def _hex(value: object, size: int, name: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise InvalidInput(f"{name} must be 0x-prefixed hex")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise InvalidInput(f"{name} is not hex") from None
    if len(raw) != size:
        raise InvalidInput(f"{name} must be {size} bytes")
    return raw


def _integer(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{name} must be an integer")
    return value


def from_header(value: str, body: bytes) -> tuple[VaultRequest, bytes]:
    """Parse a `HEADER` value for `body`: (the request, its signature). Strict: every field,
    nothing else, each of its type; raises InvalidInput otherwise."""
    if len(value) > 1024:
        raise InvalidInput(f"the {HEADER} header is too long")
    try:
        fields = json.loads(value)
    except ValueError:
        raise InvalidInput(f"the {HEADER} header is not JSON") from None
    if not isinstance(fields, dict) or sorted(fields) != sorted(_FIELDS):
        raise InvalidInput(f"the {HEADER} header must hold exactly: {', '.join(_FIELDS)}")
    request = VaultRequest(
        vault=fields["vault"],
        operation=fields["operation"],
        dataset_id=_hex(fields["dataset"], 32, "dataset"),
        grant_id=_integer(fields["grant"], "grant"),
        run_id=_integer(fields["run"], "run"),
        round=_integer(fields["round"], "round"),
        nonce=_hex(fields["nonce"], 32, "nonce"),
        expiry=_integer(fields["expiry"], "expiry"),
        body_hash=keccak(body),
    )
    return request, _hex(fields["signature"], 65, "signature")
