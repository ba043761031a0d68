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
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field

import numpy as np
from eth_utils import keccak
from safetensors import SafetensorError
from safetensors.numpy import load, save

from allmende.core.errors import InvalidInput
from allmende.core.receipts import SignedReceipt
from allmende.core.stages import InvalidStage

MEDIA_TYPE = "application/vnd.allmende.stage+safetensors"
FORWARD_PATH = "/v1/stage/forward"
INFO_PATH = "/v1/stage/info"
CLOSE_PATH = "/v1/stage/close"
MAX_ROWS = 32_768  # positions in one call (a replay of a long session included)
_SESSION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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
class ForwardRequest:
    stage: bytes  # the stage id the caller means (a provider serving another stage refuses)
    session: str
    start: int  # position of the first input row
    input: np.ndarray
    draw: Draw | None = None  # for the last stage

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
        return cls(bytes.fromhex(stage[2:]), session, _int(meta, "start"), array, draw)


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
