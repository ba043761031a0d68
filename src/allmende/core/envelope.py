"""End-to-end encryption of prompts and answers between a payer and a provider.

HPKE-style, built from the `cryptography` package: the sender makes an ephemeral
X25519 key, does Diffie-Hellman with the provider's published X25519 key, derives
keys with HKDF-SHA256 and seals with ChaCha20-Poly1305. The associated data binds
the provider's address and the request id, so a ciphertext cannot be replayed to
another provider or under another request id. Answers are sealed under a second
key from the same secret, with the chunk's sequence number as the nonce.

Wire form of a request: {"request_id", "enc", "nonce", "ciphertext"} (base64 fields).
Pipeline stage calls (`allmende.api.stages`) carry binary activations: they use the same
construction through `seal_bytes`/`open_bytes` (raw fields, no base64) under a context of
their own in the associated data, so a sealed stage call is never a sealed request.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from functools import cached_property

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from allmende.core.errors import InvalidInput

_INFO_REQUEST = b"allmende/v1 request"
_INFO_RESPONSE = b"allmende/v1 response"
MAX_CIPHERTEXT = 8 * 1024 * 1024


class EnvelopeError(InvalidInput):
    """An envelope that is malformed or does not decrypt (wrong key, tampered, replayed elsewhere)."""

    code = "bad_envelope"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: object, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeError(f"envelope field {what} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise EnvelopeError(f"envelope field {what} is not valid base64") from None
    if size is not None and len(raw) != size:
        raise EnvelopeError(f"envelope field {what} must be {size} bytes")
    return raw


REQUEST_CONTEXT = b"allmende/v1"


def _aad(provider: str, request_id: bytes, context: bytes = REQUEST_CONTEXT) -> bytes:
    return context + b"|" + provider.lower().encode() + b"|" + request_id


def _keys(shared: bytes, enc: bytes, recipient: bytes) -> tuple[bytes, bytes]:
    def derive(info: bytes) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt=enc + recipient, info=info).derive(shared)

    return derive(_INFO_REQUEST), derive(_INFO_RESPONSE)


def public_key_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class ResponseSealer:
    """Seals (provider) or opens (payer) the answer chunks of one request."""

    key: bytes
    aad: bytes

    @cached_property
    def _aead(self) -> ChaCha20Poly1305:
        """The cipher, set up once per request rather than once per streamed chunk."""
        return ChaCha20Poly1305(self.key)

    def seal(self, seq: int, plaintext: bytes) -> dict[str, object]:
        nonce = seq.to_bytes(12, "big")
        return {"seq": seq, "ciphertext": _b64(self._aead.encrypt(nonce, plaintext, self.aad))}

    def seal_bytes(self, seq: int, plaintext: bytes) -> bytes:
        """One answer message as raw ciphertext (a binary wire, e.g. a stage's reply)."""
        return self._aead.encrypt(seq.to_bytes(12, "big"), plaintext, self.aad)

    def open_bytes(self, seq: int, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(seq.to_bytes(12, "big"), ciphertext, self.aad)
        except InvalidTag:
            raise EnvelopeError("answer does not decrypt: tampered or not from this provider") from None

    def open(self, message: object, expected_seq: int) -> bytes:
        if not isinstance(message, dict):
            raise EnvelopeError("answer chunk must be a JSON object with seq and ciphertext")
        if message.get("seq") != expected_seq:
            raise EnvelopeError(f"answer chunk out of order: expected {expected_seq}, got {message.get('seq')}")
        nonce = expected_seq.to_bytes(12, "big")
        try:
            return self._aead.decrypt(nonce, _unb64(message.get("ciphertext"), "ciphertext"), self.aad)
        except InvalidTag:
            raise EnvelopeError("answer does not decrypt: tampered or not from this provider") from None


@dataclass(frozen=True)
class SealedBytes:
    """A sealed message in raw form: the sender's ephemeral X25519 key, the nonce, the ciphertext."""

    enc: bytes
    nonce: bytes
    ciphertext: bytes


def seal_bytes(
    provider_key: bytes, provider: str, request_id: bytes, plaintext: bytes, context: bytes = REQUEST_CONTEXT
) -> tuple[SealedBytes, ResponseSealer]:
    """Encrypt `plaintext` to a provider's X25519 key, bound to its address, the request id
    and `context`; returns the sealed message and the answer opener."""
    if len(provider_key) != 32:
        raise EnvelopeError("provider X25519 key must be 32 bytes")
    ephemeral = X25519PrivateKey.generate()
    enc = public_key_bytes(ephemeral)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(provider_key))
    request_key, response_key = _keys(shared, enc, provider_key)
    aad = _aad(provider, request_id, context)
    nonce = os.urandom(12)
    ciphertext = ChaCha20Poly1305(request_key).encrypt(nonce, plaintext, aad)
    return SealedBytes(enc, nonce, ciphertext), ResponseSealer(response_key, aad)


def open_bytes(
    private: X25519PrivateKey, provider: str, request_id: bytes, sealed: SealedBytes, context: bytes = REQUEST_CONTEXT
) -> tuple[bytes, ResponseSealer]:
    """Decrypt a message sealed to this provider under `request_id` and `context`: (plaintext,
    answer sealer). EnvelopeError if it was sealed to another key or provider, under another
    request id or context, or altered on the way."""
    if len(sealed.enc) != 32 or len(sealed.nonce) != 12:
        raise EnvelopeError("sealed message: enc must be 32 bytes and nonce 12")
    recipient = public_key_bytes(private)
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(sealed.enc))
    except ValueError:
        raise EnvelopeError("envelope enc is not a valid X25519 public key") from None
    request_key, response_key = _keys(shared, sealed.enc, recipient)
    aad = _aad(provider, request_id, context)
    try:
        plaintext = ChaCha20Poly1305(request_key).decrypt(sealed.nonce, sealed.ciphertext, aad)
    except InvalidTag:
        raise EnvelopeError("envelope does not decrypt: wrong key, wrong provider or tampered") from None
    return plaintext, ResponseSealer(response_key, aad)


def seal_request(
    provider_key: bytes, provider: str, request_id: bytes, plaintext: bytes
) -> tuple[dict[str, str], ResponseSealer]:
    """Encrypt a request to a provider's X25519 key; returns the envelope and the answer opener."""
    sealed, sealer = seal_bytes(provider_key, provider, request_id, plaintext)
    envelope = {
        "request_id": "0x" + request_id.hex(),
        "enc": _b64(sealed.enc),
        "nonce": _b64(sealed.nonce),
        "ciphertext": _b64(sealed.ciphertext),
    }
    return envelope, sealer


def open_request(private: X25519PrivateKey, provider: str, envelope: object) -> tuple[bytes, bytes, ResponseSealer]:
    """Decrypt an envelope addressed to this provider: (request_id, plaintext, answer sealer)."""
    if not isinstance(envelope, dict):
        raise EnvelopeError("envelope must be a JSON object with request_id, enc, nonce, ciphertext")
    rid = envelope.get("request_id")
    if not isinstance(rid, str) or not rid.startswith("0x") or len(rid) != 66:
        raise EnvelopeError("envelope request_id must be 0x + 64 hex characters")
    try:
        request_id = bytes.fromhex(rid[2:])
    except ValueError:
        raise EnvelopeError("envelope request_id is not hex") from None
    if len(request_id) != 32:  # bytes.fromhex skips spaces: "0x00 00 …" would give a short id
        raise EnvelopeError("envelope request_id is not hex")
    enc = _unb64(envelope.get("enc"), "enc", 32)
    nonce = _unb64(envelope.get("nonce"), "nonce", 12)
    ciphertext = _unb64(envelope.get("ciphertext"), "ciphertext")
    if len(ciphertext) > MAX_CIPHERTEXT:
        raise EnvelopeError("envelope ciphertext too large")
    plaintext, sealer = open_bytes(private, provider, request_id, SealedBytes(enc, nonce, ciphertext))
    return request_id, plaintext, sealer
