"""The stage wire format: one binary message per hop, shared by stage providers and the
routers that chain them.

A message is a safetensors file (8-byte little-endian header length, a JSON header, the
raw little-endian tensor bytes): no pickle, no framing of our own, readable by any
safetensors implementation, and its string metadata carries the call's fields.

    POST /v1/stage/forward   body: {"input": int64 (rows,) token ids for the first stage,
                                             float32 (rows, hidden) hidden states otherwise}
                             metadata: stage (id hex), session, start (position of row 0);
                             the last stage also: position (output index), temperature,
                             top_p, seed (the verifiable draw's)
             reply           {"hidden": float32 (rows, hidden)}, or from the last stage
                             {"token": int64 (1,)}; metadata: proof (hex, TOPLOC-style
                             commitment of what the stage computed), input (hash of the
                             input), output (hash of the rows)

The input and output hashes are the activations' commitments a stage's receipt binds
(`activation_hash`): the chain of a session's receipts says which stage produced what.

A paid stage takes only **sealed, paid calls**. The call above, with the payment fields in
its metadata (channel, the payer's signature of `Request(callId, channelId, stageId,
inputHash)` (`core.authorization`, inputHash = the input's activation hash), and the
payer's cumulative voucher for (channel, stage) when it owes one), is encrypted to the
provider's X25519 key from its signed /v1/info (checked against the chain) with the
envelope prompts use (`core.envelope`, under a stage context of its own), bound to the
provider's address and the call id (`core.stages.stage_call_id`):

    sealed call / reply      {"sealed": uint8 ciphertext}; metadata of a call: sealed
                             ("call"), call (0x call id), enc and nonce (hex)

so a relay or an eavesdropper between hops sees the call id and the sizes, never the
activations, the session, the token drawn, the payment or the receipt. The closing of a
session at a paid stage is sealed the same way (metadata sealed "close", the close id
`close_id`), its plaintext the session id, so the session id never crosses in the clear:
knowing it is what lets one close a session.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from eth_utils import keccak
from safetensors import SafetensorError
from safetensors.numpy import load, save

from allmende.core.authorization import RequestAuthorization
from allmende.core.envelope import ResponseSealer, SealedBytes, open_bytes, seal_bytes
from allmende.core.errors import InvalidInput
from allmende.core.receipts import SignedReceipt
from allmende.core.stages import InvalidStage, stage_call_id
from allmende.core.vouchers import SignedVoucher

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

MEDIA_TYPE = "application/vnd.allmende.stage+safetensors"
FORWARD_PATH = "/v1/stage/forward"
INFO_PATH = "/v1/stage/info"
CLOSE_PATH = "/v1/stage/close"
MAX_ROWS = 32_768  # positions in one call (a replay of a long session included)
_SESSION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
STAGE_CONTEXT = b"allmende/stage/v1"  # the envelope's context for stage calls (core.envelope)


def activation_hash(array: np.ndarray) -> bytes:
    """keccak256 over dtype, shape and the little-endian bytes of an activation tensor."""
    data = np.ascontiguousarray(array)
    header = f"{data.dtype.str}:{'x'.join(map(str, data.shape))}:".encode()
    return keccak(header + data.tobytes())


def token_array(token: int) -> np.ndarray:
    """A drawn token as the last stage's output activation (what its output hash covers)."""
    return np.array([token], dtype=np.int64)


def _metadata(raw: bytes) -> dict[str, str]:
    if len(raw) < 8:
        raise InvalidStage("stage message is not a safetensors file")
    (size,) = struct.unpack("<Q", raw[:8])
    if size > min(len(raw) - 8, 1 << 20):
        raise InvalidStage("stage message header is larger than the message")
    try:
        header = json.loads(raw[8 : 8 + size])
    except (ValueError, UnicodeDecodeError):
        raise InvalidStage("stage message header is not JSON") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise InvalidStage("stage message metadata must map names to strings")
    return meta


def _tensors(raw: bytes) -> dict[str, np.ndarray]:
    try:
        return load(raw)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise InvalidStage(f"stage message is not a valid safetensors file: {exc}") from None


def _int(meta: dict[str, str], name: str, default: int | None = None) -> int:
    value = meta.get(name)
    if value is None:
        if default is None:
            raise InvalidStage(f"stage message lacks {name!r}")
        return default
    if not re.fullmatch(r"\d{1,19}", value):
        raise InvalidStage(f"{name!r} must be a non-negative integer")
    return int(value)


def _float(meta: dict[str, str], name: str, default: float) -> float:
    value = meta.get(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise InvalidStage(f"{name!r} must be a number") from None
    if not np.isfinite(number):
        raise InvalidStage(f"{name!r} must be a finite number")
    return number


@dataclass(frozen=True)
class Draw:
    """How the last stage draws the next token (`allmende.engine.sampling.sample_token`)."""

    position: int  # output index of the token drawn
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class CallPayment:
    """How a paid call pays: on `channel`, signed by its payer, with the payer's cumulative
    voucher for (channel, stage) when it owes the provider something."""

    channel: bytes
    signature: bytes  # the payer's 65-byte signature of the call's `RequestAuthorization`
    voucher: SignedVoucher | None = None


@dataclass(frozen=True)
class ForwardRequest:
    stage: bytes  # the stage id the caller means (a provider serving another stage refuses)
    session: str
    start: int  # position of the first input row
    input: np.ndarray
    draw: Draw | None = None  # for the last stage
    payment: CallPayment | None = None  # for a paid stage

    @property
    def call_id(self) -> bytes:
        """The request id of this call: its receipt's, its authorization's and its envelope's."""
        return stage_call_id(self.session, self.start, int(self.input.shape[0]))

    def authorization(self, channel: bytes) -> RequestAuthorization:
        """What the payer signs for this call on `channel`: the call id, the stage and the
        commitment of the input (the same input hash the stage's receipt binds)."""
        return RequestAuthorization(self.call_id, channel, self.stage, activation_hash(self.input))

    def encode(self) -> bytes:
        meta = {"stage": "0x" + self.stage.hex(), "session": self.session, "start": str(self.start)}
        if self.draw is not None:
            d = self.draw
            meta |= {
                "position": str(d.position),
                "temperature": repr(d.temperature),
                "top_p": repr(d.top_p),
                "seed": str(d.seed),
            }
        if self.payment is not None:
            p = self.payment
            meta |= {"channel": "0x" + p.channel.hex(), "signature": "0x" + p.signature.hex()}
            if p.voucher is not None:
                meta["voucher"] = json.dumps(p.voucher.to_json())
        return bytes(save({"input": np.ascontiguousarray(self.input)}, metadata=meta))

    @classmethod
    def decode(cls, raw: bytes) -> ForwardRequest:
        meta = _metadata(raw)
        tensors = _tensors(raw)
        if set(tensors) != {"input"}:
            raise InvalidStage("a stage call carries exactly one tensor, 'input'")
        session = meta.get("session", "")
        if not _SESSION.match(session):
            raise InvalidStage("session must be 1-64 letters, digits, '-' or '_'")
        stage = meta.get("stage", "")
        if not re.fullmatch(r"0x[0-9a-f]{64}", stage):
            raise InvalidStage("stage must be a 32-byte id in 0x-hex")
        array = tensors["input"]
        if array.ndim not in (1, 2) or not 1 <= array.shape[0] <= MAX_ROWS:
            raise InvalidStage(f"input must hold 1-{MAX_ROWS} positions")
        draw = None
        if "position" in meta:
            draw = Draw(
                _int(meta, "position"),
                _float(meta, "temperature", 0.0),
                _float(meta, "top_p", 1.0),
                _int(meta, "seed", 0),
            )
        payment = _payment(meta) if "channel" in meta else None
        return cls(bytes.fromhex(stage[2:]), session, _int(meta, "start"), array, draw, payment)


def _hex(meta: dict[str, str], name: str, size: int) -> bytes:
    value = meta.get(name, "")
    if not re.fullmatch(f"0x[0-9a-fA-F]{{{2 * size}}}", value):
        raise InvalidStage(f"{name!r} must be {size} bytes in 0x-hex")
    return bytes.fromhex(value[2:])


def _payment(meta: dict[str, str]) -> CallPayment:
    voucher = None
    if "voucher" in meta:
        try:
            voucher = SignedVoucher.from_json(json.loads(meta["voucher"]))
        except (ValueError, AttributeError, KeyError, TypeError, InvalidInput) as exc:
            raise InvalidStage(f"the call's voucher is malformed: {exc}") from None
    return CallPayment(_hex(meta, "channel", 32), _hex(meta, "signature", 65), voucher)


@dataclass(frozen=True)
class ForwardReply:
    proof: bytes
    input_hash: bytes
    output_hash: bytes
    hidden: np.ndarray | None = None  # a middle or first stage's output rows
    token: int | None = None  # the last stage's draw
    receipt: SignedReceipt | None = None  # a paid stage's signed receipt for this call
    meta: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        tensors = {"token": token_array(self.token)} if self.token is not None else {}
        if self.hidden is not None:
            tensors["hidden"] = np.ascontiguousarray(self.hidden, dtype=np.float32)
        meta = {"proof": self.proof.hex(), "input": self.input_hash.hex(), "output": self.output_hash.hex()}
        if self.receipt is not None:
            meta["receipt"] = json.dumps(self.receipt.to_json())
        return bytes(save(tensors, metadata=meta))

    @classmethod
    def decode(cls, raw: bytes) -> ForwardReply:
        meta = _metadata(raw)
        tensors = _tensors(raw)
        try:
            proof, inp, out = (bytes.fromhex(meta[k]) for k in ("proof", "input", "output"))
        except (KeyError, ValueError):
            raise InvalidStage("stage reply lacks its proof or activation hashes") from None
        hidden = tensors.get("hidden")
        token = tensors.get("token")
        if (hidden is None) == (token is None):
            raise InvalidStage("a stage reply carries either hidden states or a token")
        if token is not None and token.shape != (1,):
            raise InvalidStage("a stage reply carries one token")
        receipt = None
        if "receipt" in meta:
            try:
                receipt = SignedReceipt.from_json(json.loads(meta["receipt"]))
            except (ValueError, AttributeError, InvalidInput) as exc:
                raise InvalidStage(f"stage reply carries a malformed receipt: {exc}") from None
        return cls(proof, inp, out, hidden, int(token[0]) if token is not None else None, receipt, meta)


# --- sealed calls ------------------------------------------------------------------------------


def is_sealed(raw: bytes) -> bool:
    """True for a sealed call (its metadata says so); False for a plain one. InvalidStage if
    the message is no safetensors file at all."""
    return _metadata(raw).get("sealed") == "call"


def seal_call(call: ForwardRequest, provider_key: bytes, provider: str) -> tuple[bytes, ResponseSealer]:
    """Encrypt a call to a stage provider's X25519 key (its signed /v1/info's, which the
    chain confirms), bound to its address and the call id; returns the sealed message and
    the opener of its reply."""
    call_id = call.call_id
    sealed, sealer = seal_bytes(provider_key, provider, call_id, call.encode(), STAGE_CONTEXT)
    return _sealed_message("call", call_id, sealed), sealer


def open_call(private: X25519PrivateKey, provider: str, raw: bytes) -> tuple[ForwardRequest, ResponseSealer]:
    """Decrypt a call sealed to this provider (`core.envelope.EnvelopeError` if it was sealed
    to another key or provider or altered on the way) and check that it is the call its
    envelope names."""
    plaintext, sealer = _open(private, provider, raw, "call")
    call = ForwardRequest.decode(plaintext)
    if call.call_id != _hex(_metadata(raw), "call", 32):
        raise InvalidStage("the sealed call is not the call its envelope names")
    return call, sealer


def close_id(session: str) -> bytes:
    """The request id a sealed close of `session` is bound to."""
    return keccak(STAGE_CONTEXT + b"|close|" + session.encode())


def seal_close(session: str, provider_key: bytes, provider: str) -> bytes:
    """The closing of a session at a paid stage, sealed to its provider like its calls."""
    sealed, _ = seal_bytes(provider_key, provider, close_id(session), session.encode(), STAGE_CONTEXT)
    return _sealed_message("close", close_id(session), sealed)


def open_close(private: X25519PrivateKey, provider: str, raw: bytes) -> str:
    """The session a sealed close names (EnvelopeError or InvalidStage if it is not one)."""
    plaintext, _ = _open(private, provider, raw, "close")
    try:
        session = plaintext.decode()
    except UnicodeDecodeError:
        raise InvalidStage("a sealed close names a session") from None
    if not _SESSION.match(session) or close_id(session) != _hex(_metadata(raw), "call", 32):
        raise InvalidStage("the sealed close is not the close its envelope names")
    return session


def _open(private: X25519PrivateKey, provider: str, raw: bytes, kind: str) -> tuple[bytes, ResponseSealer]:
    meta = _metadata(raw)
    if meta.get("sealed") != kind:
        raise InvalidStage(f"not a sealed stage {kind}")
    request_id = _hex(meta, "call", 32)
    try:
        enc, nonce = bytes.fromhex(meta.get("enc", "")), bytes.fromhex(meta.get("nonce", ""))
    except ValueError:
        raise InvalidStage("a sealed message's enc and nonce must be hex") from None
    return open_bytes(private, provider, request_id, SealedBytes(enc, nonce, _ciphertext(raw)), STAGE_CONTEXT)


def seal_reply(sealer: ResponseSealer, reply: ForwardReply) -> bytes:
    return bytes(save({"sealed": _bytes_tensor(sealer.seal_bytes(0, reply.encode()))}, metadata={"sealed": "reply"}))


def open_reply(sealer: ResponseSealer, raw: bytes) -> ForwardReply:
    """The reply to a sealed call (`EnvelopeError` if it is not from the provider it was sealed to)."""
    if _metadata(raw).get("sealed") != "reply":
        raise InvalidStage("the reply to a sealed call is not sealed")
    return ForwardReply.decode(sealer.open_bytes(0, _ciphertext(raw)))


def _sealed_message(kind: str, request_id: bytes, sealed: SealedBytes) -> bytes:
    meta = {"sealed": kind, "call": "0x" + request_id.hex(), "enc": sealed.enc.hex(), "nonce": sealed.nonce.hex()}
    return bytes(save({"sealed": _bytes_tensor(sealed.ciphertext)}, metadata=meta))


def _bytes_tensor(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _ciphertext(raw: bytes) -> bytes:
    tensors = _tensors(raw)
    sealed = tensors.get("sealed")
    if set(tensors) != {"sealed"} or sealed is None or sealed.dtype != np.uint8 or sealed.ndim != 1:
        raise InvalidStage("a sealed message carries exactly one uint8 tensor, 'sealed'")
    return sealed.tobytes()
