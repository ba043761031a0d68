"""Who sent a vault request: an EIP-191 signature over keccak256(body).

The grantee signs each job request with its key; the vault recovers the address
and checks it against the grant on chain."""

from __future__ import annotations

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak

from allmende.vault.errors import AccessDenied

HEADER = "x-allmende-signature"


def sign_body(key: bytes, body: bytes) -> str:
    return "0x" + bytes(Account.sign_message(encode_defunct(primitive=keccak(body)), key).signature).hex()


def signer_of(body: bytes, signature: str | None) -> str:
    if not signature:
        raise AccessDenied(f"requests must be signed by the grantee ({HEADER} header)")
    try:
        raw = bytes.fromhex(signature.removeprefix("0x"))
        return str(Account.recover_message(encode_defunct(primitive=keccak(body)), signature=raw))
    except Exception:
        raise AccessDenied("the request signature is malformed") from None
