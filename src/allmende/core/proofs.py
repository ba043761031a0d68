"""TOPLOC-style proof commitments: compact fingerprints of the final hidden states.

For every chunk of 32 generated tokens the provider commits to the top-k entries (by
magnitude) of the last-layer hidden states that produced those tokens: their flat
indices and their values rounded to IEEE half precision (float16: 11 significant bits,
so the rounding itself stays ~10x below the bf16-vs-fp32 differences the check must
tolerate). A validator recomputes the same hidden
states with one forward pass over prompt + output and compares (see
`allmende.validator.checker`). Honest hardware and precision differences move the
values a little; another model, quantised weights, skipped layers or another prompt
move them a lot.

Wire form of one chunk (big-endian):
    u8 k | u8 positions | u8 index_bits | k indices, bit-packed | k float16 values
k is always min(TOP_K, positions × hidden) and the indices strictly increase: a decoder
refuses fewer values (one committed value would be far easier to match than 56) and
repeated indices (one well-matched entry counted many times).
With k = 56 a chunk is 3 + ceil(56 · bits / 8) + 112 bytes: 192 bytes for a 64-wide
model, 234 bytes for a 4096-wide one (≤ 258, TOPLOC's figure).
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass

from allmende.core.errors import InvalidInput

CHUNK_TOKENS = 32
TOP_K = 56


class ProofFormatError(InvalidInput):
    code = "bad_proof"


@dataclass(frozen=True)
class ChunkCommitment:
    positions: int  # tokens in this chunk (32, or fewer for the last one)
    indices: tuple[int, ...]  # flat indices into the (positions × hidden) block
    values: tuple[float, ...]  # float16-rounded values at those indices

    def encode(self, hidden_size: int) -> bytes:
        k = len(self.indices)
        bits = index_bits(self.positions * hidden_size)
        packed = 0
        for index in self.indices:
            if not 0 <= index < self.positions * hidden_size:
                raise ProofFormatError("index outside the hidden-state block")
            packed = (packed << bits) | index
        nbytes = (k * bits + 7) // 8
        body = packed.to_bytes(nbytes, "big") if k else b""
        values = b"".join(half_bytes(v) for v in self.values)
        return struct.pack(">BBB", k, self.positions, bits) + body + values


def committed_k(positions: int, hidden_size: int) -> int:
    """How many entries a chunk of `positions` tokens commits to: TOP_K, or the whole block
    when it is smaller."""
    return min(TOP_K, positions * hidden_size)


def index_bits(block: int) -> int:
    return max(1, (block - 1).bit_length())


def half_bytes(value: float) -> bytes:
    """float → IEEE float16 (round to nearest even), saturating at ±65504."""
    return struct.pack(">e", max(-65504.0, min(65504.0, value)))


def half_value(data: bytes) -> float:
    (value,) = struct.unpack(">e", data)
    return float(value)


def encode_proof(chunks: list[ChunkCommitment], hidden_size: int) -> bytes:
    return b"".join(c.encode(hidden_size) for c in chunks)


def decode_proof(data: bytes, hidden_size: int) -> list[ChunkCommitment]:
    """Parse a proof; raises ProofFormatError on anything malformed."""
    chunks: list[ChunkCommitment] = []
    offset = 0
    while offset < len(data):
        if offset + 3 > len(data):
            raise ProofFormatError("truncated chunk header")
        k, positions, bits = struct.unpack_from(">BBB", data, offset)
        offset += 3
        if positions == 0 or positions > CHUNK_TOKENS or bits != index_bits(positions * hidden_size):
            raise ProofFormatError("chunk header does not match the model")
        if k != committed_k(positions, hidden_size):
            raise ProofFormatError(
                f"chunk commits {k} values, not the {committed_k(positions, hidden_size)} its size requires"
            )
        nbytes = (k * bits + 7) // 8
        if offset + nbytes + 2 * k > len(data):
            raise ProofFormatError("truncated chunk body")
        packed = int.from_bytes(data[offset : offset + nbytes], "big")
        offset += nbytes
        indices = []
        for i in range(k):
            shift = (k - 1 - i) * bits
            indices.append((packed >> shift) & ((1 << bits) - 1))
        values = [half_value(data[offset + 2 * i : offset + 2 * i + 2]) for i in range(k)]
        offset += 2 * k
        if any(index >= positions * hidden_size for index in indices):
            raise ProofFormatError("index outside the hidden-state block")
        if any(a >= b for a, b in itertools.pairwise(indices)):
            raise ProofFormatError("chunk indices repeat or are out of order (they must strictly increase)")
        # NaN compares false with every threshold, so it would pass any error check;
        # `half_bytes` never writes NaN or infinity (it saturates)
        if not all(math.isfinite(value) for value in values):
            raise ProofFormatError("committed value is not a finite number")
        chunks.append(ChunkCommitment(positions, tuple(indices), tuple(values)))
    return chunks
