"""Proof commitments on the wire: the documented byte layout, round trips, float16 rounding, and
every malformed proof a provider can send refused with ProofFormatError (the validator's checker
turns that into a failed check). Pure: no tensors here; the checker is tested in tests/validator."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allmende.core.errors import InvalidInput
from allmende.core.proofs import (
    CHUNK_TOKENS,
    TOP_K,
    ChunkCommitment,
    ProofFormatError,
    committed_k,
    decode_proof,
    encode_proof,
    half_bytes,
    half_value,
    index_bits,
)


@st.composite
def chunks_for(draw: st.DrawFn, hidden: int) -> ChunkCommitment:
    positions = draw(st.integers(1, CHUNK_TOKENS))
    k = committed_k(positions, hidden)
    rnd = draw(st.randoms(use_true_random=False))  # k draws each would overrun hypothesis' buffer
    indices = sorted(rnd.sample(range(positions * hidden), k))
    values = [half_value(half_bytes(rnd.choice([0.0, -1.0, 1e5, rnd.uniform(-1e3, 1e3)]))) for _ in range(k)]
    return ChunkCommitment(positions, tuple(indices), tuple(values))


# ------------------------------------------------------------------ wire form


def test_a_chunk_encodes_to_the_documented_bytes() -> None:
    # 1 position × 2 wide: block of 2, so 1 index bit and k = 2; indices 0 and 1 pack into 0b01
    chunk = ChunkCommitment(positions=1, indices=(0, 1), values=(1.0, -2.0))

    proof = chunk.encode(hidden_size=2)

    assert proof == bytes.fromhex("020101 01 3c00 c000")  # header, indices, 1.0, -2.0
    assert decode_proof(proof, hidden_size=2) == [chunk]


@pytest.mark.parametrize(("hidden", "size"), [(64, 192), (4096, 234)], ids=["64-wide", "4096-wide"])
def test_a_full_chunk_has_the_documented_size(hidden: int, size: int) -> None:
    block = CHUNK_TOKENS * hidden
    chunk = ChunkCommitment(CHUNK_TOKENS, tuple(range(0, block, block // TOP_K))[:TOP_K], (0.5,) * TOP_K)

    proof = encode_proof([chunk], hidden)

    assert len(proof) == size == 3 + math.ceil(TOP_K * index_bits(block) / 8) + 2 * TOP_K
    assert size <= 258  # TOPLOC's figure


@pytest.mark.parametrize(
    ("block", "bits"), [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (2048, 11), (2049, 12), (131072, 17)]
)
def test_index_bits_is_the_fewest_bits_that_address_the_block(block: int, bits: int) -> None:
    assert index_bits(block) == bits
    assert block - 1 < 1 << bits


def test_an_empty_proof_has_no_chunks() -> None:
    assert encode_proof([], 64) == b""
    assert decode_proof(b"", 64) == []


@pytest.mark.parametrize(("positions", "hidden", "k"), [(32, 64, TOP_K), (1, 4, 4), (3, 5, 15), (1, 56, 56)])
def test_a_chunk_commits_top_k_or_the_whole_smaller_block(positions: int, hidden: int, k: int) -> None:
    assert committed_k(positions, hidden) == k


@settings(max_examples=60, deadline=None)
@given(data=st.data(), hidden=st.sampled_from([1, 3, 64, 384, 4096]))
def test_proofs_round_trip(data: st.DataObject, hidden: int) -> None:
    chunks = data.draw(st.lists(chunks_for(hidden), max_size=3))

    decoded = decode_proof(encode_proof(chunks, hidden), hidden)

    assert decoded == chunks


@settings(max_examples=200, deadline=None)
@given(proof=st.binary(max_size=300), hidden=st.sampled_from([1, 4, 64]))
def test_arbitrary_bytes_decode_or_raise_proof_format_error(proof: bytes, hidden: int) -> None:
    # a provider controls these bytes: nothing but ProofFormatError may come out of the parser
    try:
        chunks = decode_proof(proof, hidden)
    except ProofFormatError:
        return
    for chunk in chunks:
        assert 0 < chunk.positions <= CHUNK_TOKENS
        assert len(chunk.indices) == len(chunk.values) == committed_k(chunk.positions, hidden)
        assert list(chunk.indices) == sorted(set(chunk.indices))
        assert all(0 <= i < chunk.positions * hidden for i in chunk.indices)
        assert all(math.isfinite(v) for v in chunk.values)


# ------------------------------------------------------------------ float16 values


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (1.0, 1.0),
        (1.0 + 2**-11, 1.0),  # halfway between 1 and the next half: ties go to the even one
        (1.0 + 3 * 2**-11, 1.0 + 2**-9),
        (-0.1, -0.0999755859375),
        (65504.0, 65504.0),
        (1e6, 65504.0),  # saturates instead of overflowing
        (-1e6, -65504.0),
        (math.inf, 65504.0),
        (math.nan, 65504.0),  # a NaN hidden state never goes on the wire
    ],
    ids=["one", "tie-down", "tie-up", "tenth", "max", "large", "large-negative", "inf", "nan"],
)
def test_values_are_stored_as_float16(value: float, stored: float) -> None:
    assert half_value(half_bytes(value)) == stored


# ------------------------------------------------------------------ malformed proofs

# 2 positions × 4 wide: a block of 8 entries, all committed (k = 8), 3 bits per index
GOOD = ChunkCommitment(positions=2, indices=tuple(range(8)), values=(1.0, -0.5, 3.0, 0.0, 1.0, 2.0, 4.0, 8.0)).encode(
    hidden_size=4
)


@pytest.mark.parametrize(
    ("proof", "message"),
    [
        (GOOD + GOOD[:1], "truncated chunk header"),
        (GOOD + GOOD[:2], "truncated chunk header"),
        (GOOD[:3], "truncated chunk body"),
        (GOOD[:-1], "truncated chunk body"),
        (bytes([3, 0, 3]) + GOOD[3:], "does not match the model"),
        (bytes([3, CHUNK_TOKENS + 1, 8]) + GOOD[3:], "does not match the model"),
        (bytes([3, 2, 4]) + GOOD[3:], "does not match the model"),
    ],
    ids=[
        "one-stray-byte",
        "two-stray-bytes",
        "header-only",
        "short-values",
        "zero-positions",
        "too-many-positions",
        "wrong-index-bits",
    ],
)
def test_a_malformed_proof_is_refused(proof: bytes, message: str) -> None:
    with pytest.raises(ProofFormatError, match=message):
        decode_proof(proof, hidden_size=4)


def test_a_proof_for_another_model_width_is_refused() -> None:
    proof = ChunkCommitment(CHUNK_TOKENS, (0,), (1.0,)).encode(hidden_size=64)

    with pytest.raises(ProofFormatError, match="does not match the model"):
        decode_proof(proof, hidden_size=4096)


def test_an_index_outside_the_hidden_state_block_is_refused() -> None:
    # 1 position × 3 wide (k = 3): 2 index bits can say 3, one past the block: indices 0, 1, 3
    proof = bytes([3, 1, 2, 0b000111]) + half_bytes(1.0) * 3

    with pytest.raises(ProofFormatError, match="outside the hidden-state block"):
        decode_proof(proof, hidden_size=3)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_a_commitment_to_a_non_finite_value_is_refused(value: float) -> None:
    # NaN compares false with every threshold: a proof of NaNs at the right indices would pass the
    # validator's error checks without the provider computing a single value
    proof = bytes([4, 1, 2, 0b00011011]) + half_bytes(1.0) * 3 + struct.pack(">e", value)

    with pytest.raises(ProofFormatError, match="not a finite number"):
        decode_proof(proof, hidden_size=4)


def chunk_bytes(positions: int, hidden: int, indices: list[int]) -> bytes:
    """A chunk with any indices (the encoder's checks bypassed): what a cheater can send."""
    bits = index_bits(positions * hidden)
    packed = 0
    for index in indices:
        packed = (packed << bits) | index
    body = packed.to_bytes((len(indices) * bits + 7) // 8, "big")
    return bytes([len(indices), positions, bits]) + body + half_bytes(1.0) * len(indices)


def test_a_proof_repeating_one_index_is_refused() -> None:
    # the cheat: match one hidden-state entry well and commit to it TOP_K times
    with pytest.raises(ProofFormatError, match="repeat"):
        decode_proof(chunk_bytes(CHUNK_TOKENS, 64, [17] * TOP_K), hidden_size=64)


def test_a_proof_with_indices_out_of_order_is_refused() -> None:
    indices = list(range(TOP_K))
    indices[3], indices[4] = indices[4], indices[3]

    with pytest.raises(ProofFormatError, match="out of order"):
        decode_proof(chunk_bytes(CHUNK_TOKENS, 64, indices), hidden_size=64)


@pytest.mark.parametrize("k", [1, TOP_K - 1], ids=["one-value", "one-short"])
def test_a_chunk_committing_fewer_values_than_top_k_is_refused(k: int) -> None:
    # one committed value is far easier to match than 56
    with pytest.raises(ProofFormatError, match=f"commits {k} values, not the {TOP_K}"):
        decode_proof(chunk_bytes(CHUNK_TOKENS, 64, list(range(k))), hidden_size=64)


@pytest.mark.parametrize("index", [-1, 8, 100], ids=["negative", "one-past", "far-past"])
def test_encoding_an_index_outside_the_block_is_refused(index: int) -> None:
    chunk = ChunkCommitment(positions=2, indices=(0, index), values=(1.0, 2.0))

    with pytest.raises(ProofFormatError, match="outside the hidden-state block"):
        encode_proof([chunk], hidden_size=4)


def test_proof_format_errors_are_invalid_input_with_a_stable_code() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_proof(b"\x00", 4)

    assert isinstance(caught.value, ProofFormatError)
    assert caught.value.code == "bad_proof"
