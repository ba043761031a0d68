"""Stage layouts, their content addresses, prices and receipts (allmende.core.stages): pure, no model."""

from __future__ import annotations

import hashlib

import pytest
from eth_utils import keccak

from allmende.core.stages import (
    InvalidStage,
    StageLayout,
    StagePrice,
    StageRange,
    StageSpec,
    TensorDigest,
    check_covering,
    parse_descriptor,
    slice_hash,
    split_blocks,
    stage_call_id,
    stage_receipt,
)

BASE = bytes(range(32))
SLICE = bytes(range(32, 64))
PROVIDER = "0x" + "ab" * 20


def digest(name: str, data: bytes) -> TensorDigest:
    return TensorDigest(name, "float32", (len(data) // 4,), hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    ("blocks", "stages", "sizes"),
    [(30, 3, [10, 10, 10]), (30, 2, [15, 15]), (30, 4, [8, 8, 7, 7]), (5, 5, [1] * 5), (7, 1, [7])],
    ids=["30/3", "30/2", "30/4-uneven", "one-block-each", "one-stage"],
)
def test_split_covers_every_block_once(blocks: int, stages: int, sizes: list[int]) -> None:
    ranges = split_blocks(blocks, stages)

    assert [r.end - r.start for r in ranges] == sizes
    assert check_covering(ranges) == ranges
    assert ranges[0].embeds and ranges[-1].heads
    assert not any(r.embeds for r in ranges[1:]) and not any(r.heads for r in ranges[:-1])


@pytest.mark.parametrize(("blocks", "stages"), [(30, 0), (3, 4)], ids=["no-stage", "more-stages-than-blocks"])
def test_impossible_split_is_refused(blocks: int, stages: int) -> None:
    with pytest.raises(InvalidStage):
        split_blocks(blocks, stages)


@pytest.mark.parametrize(
    "ranges",
    [
        [StageRange(0, 10, 30), StageRange(11, 30, 30)],
        [StageRange(0, 12, 30), StageRange(10, 30, 30)],
        [StageRange(0, 10, 30), StageRange(10, 20, 30)],
        [StageRange(0, 10, 30), StageRange(10, 30, 31)],
    ],
    ids=["gap", "overlap", "short", "other-model"],
)
def test_layouts_that_do_not_chain_are_refused(ranges: list[StageRange]) -> None:
    with pytest.raises(InvalidStage):
        check_covering(ranges)


def test_descriptor_round_trips_and_its_hash_is_the_stage_id() -> None:
    spec = StageSpec(BASE, StageRange(10, 20, 30), SLICE)

    parsed = parse_descriptor(spec.descriptor, spec.stage_id)

    assert parsed == spec
    assert spec.stage_id == keccak(spec.descriptor.encode())
    assert len(spec.descriptor) <= 256  # fits a registration's metadata URI


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.replace("blocks=10-20", "blocks=010-20"),
        lambda d: d.replace("allmende-stage/v1", "allmende-stage/v2"),
        lambda d: d.replace("base=0x", "base=0X"),
        lambda d: d + " ",
        lambda d: d.replace("blocks=10-20", "blocks=20-10"),
    ],
    ids=["leading-zero", "other-scheme", "upper-hex-prefix", "trailing-space", "empty-range"],
)
def test_a_second_spelling_of_a_stage_is_refused(mutate: object) -> None:
    spec = StageSpec(BASE, StageRange(10, 20, 30), SLICE)

    with pytest.raises(InvalidStage):
        parse_descriptor(mutate(spec.descriptor))  # type: ignore[operator]


def test_a_descriptor_under_another_stage_id_is_refused() -> None:
    """A registration whose metadata URI does not hash to its id claims a layout it is not."""
    honest = StageSpec(BASE, StageRange(10, 20, 30), SLICE)
    other = StageSpec(BASE, StageRange(10, 21, 30), SLICE)

    with pytest.raises(InvalidStage, match="hashes to"):
        parse_descriptor(other.descriptor, honest.stage_id)


def test_slice_hash_covers_every_byte_and_ignores_order() -> None:
    a, b = digest("model.layers.0.w", b"\x00" * 16), digest("model.layers.1.w", b"\x01" * 16)
    flipped = digest("model.layers.1.w", b"\x01" * 15 + b"\x02")

    assert slice_hash([a, b]) == slice_hash([b, a])
    assert slice_hash([a, b]) != slice_hash([a, flipped])
    assert slice_hash([a, b]) != slice_hash([a])
    with pytest.raises(InvalidStage):
        slice_hash([a, a])
    with pytest.raises(InvalidStage):
        slice_hash([])


def test_layout_checks_its_stages() -> None:
    ranges = split_blocks(30, 3)
    specs = tuple(StageSpec(BASE, r, SLICE) for r in ranges)

    assert StageLayout(specs).base == BASE
    with pytest.raises(InvalidStage):
        StageLayout((specs[1], specs[0], specs[2]))
    with pytest.raises(InvalidStage):
        StageLayout((specs[0], StageSpec(SLICE, ranges[1], SLICE), specs[2]))


def test_a_ranges_blocks_and_an_empty_or_mixed_layout() -> None:
    first, second = split_blocks(6, 2)
    assert list(first.blocks) == [0, 1, 2] and not first.heads and second.heads
    with pytest.raises(InvalidStage, match="at least one stage"):
        check_covering([])
    with pytest.raises(InvalidStage, match="at least one stage"):
        StageLayout(())
    with pytest.raises(InvalidStage, match="32 bytes"):
        StageSpec(b"\x01", first, SLICE)
    other = bytes(range(64, 96))
    with pytest.raises(InvalidStage, match="same model"):
        StageLayout((StageSpec(BASE, first, SLICE), StageSpec(other, second, SLICE)))
    layout = StageLayout((StageSpec(BASE, first, SLICE), StageSpec(BASE, second, SLICE)))
    assert len(layout) == 2 and layout.base == BASE


def test_a_stage_call_is_priced_and_receipted_by_what_it_computed() -> None:
    first, last = split_blocks(6, 2)
    price = StagePrice(per_position=3, per_token=100)
    with pytest.raises(InvalidStage, match="not negative"):
        StagePrice(per_position=-1)
    assert price.amount(rows=5, drawn=1) == 115
    assert stage_call_id("s", 0, 5) != stage_call_id("s", 5, 5) != stage_call_id("t", 0, 5)
    head = StageSpec(BASE, last, SLICE)
    receipt = stage_receipt(head, PROVIDER, "s", 0, 5, b"\x01" * 32, b"\x02" * 32, b"proof", price, 1_700_000_000)
    body = StageSpec(BASE, first, SLICE)
    middle = stage_receipt(body, PROVIDER, "s", 0, 5, b"\x01" * 32, b"\x02" * 32, b"proof", price, 1_700_000_000)
    assert receipt.model_id == head.stage_id and receipt.request_id == stage_call_id("s", 0, 5)
    assert (receipt.tokens_in, receipt.tokens_out, receipt.amount) == (5, 1, 115)  # the last stage draws
    assert (middle.tokens_out, middle.amount) == (0, 15)
