"""Stage layouts: a model split into pipeline stages that different providers serve.

A stage is a contiguous range of transformer blocks `[start, end)` of a model with
`n_blocks` blocks; the first stage also holds the token embedding, the last the final norm
and the head, so a chain of stages covering `0 .. n_blocks` computes the whole model.

Each stage is content-addressed twice over:
- its **slice hash** covers the tensors the stage loads (`slice_hash`: name, dtype, shape and
  SHA-256 of each tensor's little-endian bytes, sorted by name, names as in the whole
  model's checkpoint), so a provider that downloads only its slice can check it, and a
  validator can load the same slice;
- its **stage id** is keccak256 of its descriptor, a one-line text that names the base
  model, the block range and the slice hash (`StageSpec.descriptor`). The descriptor fits
  a registration's metadata URI (≤ 256 characters), so a stage is registered on chain as a
  model derived from its base (`Models.register_derived(stage_id, base, …, descriptor)`):
  no contract change, royalties flow to the base model's owner, and a provider offers a
  stage id in the Registry as it offers a model id. Anyone checks a registered stage by
  re-hashing its metadata URI (`parse_descriptor`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from eth_utils import keccak

from allmende.core.errors import InvalidInput
from allmende.core.receipts import Receipt

STAGE_SCHEME = "allmende-stage/v1"
MAX_DESCRIPTOR = 256  # a registration's metadata URI holds at most this many characters
_DESCRIPTOR = re.compile(
    rf"^{re.escape(STAGE_SCHEME)} base=0x([0-9a-f]{{64}}) blocks=(\d+)-(\d+)/(\d+) slice=0x([0-9a-f]{{64}})$"
)


class InvalidStage(InvalidInput):
    """A stage layout, descriptor or slice that does not describe a valid stage."""

    code = "invalid_stage"


@dataclass(frozen=True)
class TensorDigest:
    """One tensor of a slice, by its name in the whole model's checkpoint."""

    name: str
    dtype: str  # torch's name, e.g. "float32"
    shape: tuple[int, ...]
    sha256: str  # lowercase hex of the tensor's contiguous little-endian bytes


def slice_hash(tensors: Iterable[TensorDigest]) -> bytes:
    """The content address of a weights slice: keccak256 of one
    `name\\tdtype\\tshape\\tsha256\\n` line per tensor, sorted by name (a tensor listed
    twice is refused: a slice is a set)."""
    rows = sorted(tensors, key=lambda t: t.name.encode())
    if not rows:
        raise InvalidStage("a weights slice holds at least one tensor")
    if len({t.name for t in rows}) != len(rows):
        raise InvalidStage("a weights slice lists a tensor twice")
    lines = "".join(f"{t.name}\t{t.dtype}\t{'x'.join(map(str, t.shape))}\t{t.sha256}\n" for t in rows)
    return keccak(lines.encode())


@dataclass(frozen=True)
class StageRange:
    """Blocks `[start, end)` of a model with `n_blocks` blocks."""

    start: int
    end: int
    n_blocks: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= self.n_blocks:
            raise InvalidStage(f"blocks {self.start}-{self.end} are not a range inside 0-{self.n_blocks}")

    @property
    def embeds(self) -> bool:
        """The first stage turns token ids into hidden states."""
        return self.start == 0

    @property
    def heads(self) -> bool:
        """The last stage applies the final norm and the head, and draws the next token."""
        return self.end == self.n_blocks

    @property
    def blocks(self) -> range:
        return range(self.start, self.end)


def split_blocks(n_blocks: int, n_stages: int) -> tuple[StageRange, ...]:
    """`n_stages` contiguous ranges of as equal a size as possible covering all blocks (the
    first stages take one block more when they do not divide evenly)."""
    if not 1 <= n_stages <= n_blocks:
        raise InvalidStage(f"cannot split {n_blocks} blocks into {n_stages} stages")
    size, extra = divmod(n_blocks, n_stages)
    ranges, start = [], 0
    for i in range(n_stages):
        end = start + size + (1 if i < extra else 0)
        ranges.append(StageRange(start, end, n_blocks))
        start = end
    return tuple(ranges)


def check_covering(ranges: Iterable[StageRange]) -> tuple[StageRange, ...]:
    """The ranges in order, if they chain without gap or overlap from block 0 to the last."""
    ordered = tuple(sorted(ranges, key=lambda r: r.start))
    if not ordered:
        raise InvalidStage("a layout has at least one stage")
    n_blocks = ordered[0].n_blocks
    at = 0
    for r in ordered:
        if r.n_blocks != n_blocks or r.start != at:
            raise InvalidStage(f"stages do not chain: a stage starts at block {r.start}, expected {at}")
        at = r.end
    if at != n_blocks:
        raise InvalidStage(f"stages end at block {at}, the model has {n_blocks}")
    return ordered


@dataclass(frozen=True)
class StageSpec:
    """One registered stage: which model, which blocks, which weights."""

    base: bytes  # the whole model's id
    range: StageRange
    slice: bytes  # slice_hash of the tensors the stage loads

    def __post_init__(self) -> None:
        if len(self.base) != 32 or len(self.slice) != 32:
            raise InvalidStage("a stage's base model id and slice hash are 32 bytes each")

    @property
    def descriptor(self) -> str:
        r = self.range
        return (
            f"{STAGE_SCHEME} base=0x{self.base.hex()} blocks={r.start}-{r.end}/{r.n_blocks} slice=0x{self.slice.hex()}"
        )

    @property
    def stage_id(self) -> bytes:
        """keccak256 of the descriptor: the id the stage is registered and offered under."""
        return keccak(self.descriptor.encode())

    @property
    def stage_id_hex(self) -> str:
        return "0x" + self.stage_id.hex()


def parse_descriptor(text: str, stage_id: bytes | None = None) -> StageSpec:
    """The stage a descriptor (a registration's metadata URI) describes; with `stage_id`, it
    must also be the descriptor that id commits to."""
    match = _DESCRIPTOR.match(text)
    if match is None or len(text) > MAX_DESCRIPTOR:
        raise InvalidStage(f"not a stage descriptor: {text[:80]!r}")
    base, start, end, n_blocks, sliced = match.groups()
    spec = StageSpec(bytes.fromhex(base), StageRange(int(start), int(end), int(n_blocks)), bytes.fromhex(sliced))
    if spec.descriptor != text:  # leading zeros in a number would give a second spelling of one stage
        raise InvalidStage("stage descriptor is not in its canonical form")
    if stage_id is not None and spec.stage_id != stage_id:
        raise InvalidStage(f"descriptor hashes to {spec.stage_id_hex}, not to 0x{stage_id.hex()}")
    return spec


@dataclass(frozen=True)
class StageLayout:
    """A model's stages, in order: together they cover every block exactly once."""

    stages: tuple[StageSpec, ...]

    def __post_init__(self) -> None:
        if not self.stages:
            raise InvalidStage("a layout has at least one stage")
        if len({s.base for s in self.stages}) != 1:
            raise InvalidStage("every stage of a layout belongs to the same model")
        ordered = check_covering(s.range for s in self.stages)
        if tuple(s.range for s in self.stages) != ordered:
            raise InvalidStage("a layout lists its stages in block order")

    @property
    def base(self) -> bytes:
        return self.stages[0].base

    def __len__(self) -> int:
        return len(self.stages)


# --- receipts per stage ----------------------------------------------------------------------

STAGE_CALL_DOMAIN = b"allmende/stage-call/v1"


def stage_call_id(session: str, start: int, rows: int) -> bytes:
    """The request id a stage's receipt names for one call of a session: the session, the
    first position and the number of rows (a replay from 0 is a call of its own)."""
    return keccak(STAGE_CALL_DOMAIN + session.encode() + b"\x00" + start.to_bytes(8, "big") + rows.to_bytes(8, "big"))


@dataclass(frozen=True)
class StagePrice:
    """A stage's offer, in the payment token's smallest unit: per position it computes (every
    stage) and per token it draws (the last stage only)."""

    per_position: int = 0
    per_token: int = 0

    def __post_init__(self) -> None:
        if self.per_position < 0 or self.per_token < 0:
            raise InvalidStage("prices are not negative")

    def amount(self, rows: int, drawn: int) -> int:
        return self.per_position * rows + self.per_token * drawn


def stage_receipt(
    spec: StageSpec,
    provider: str,
    session: str,
    start: int,
    rows: int,
    input_hash: bytes,
    output_hash: bytes,
    proof: bytes,
    price: StagePrice,
    timestamp: int,
) -> Receipt:
    """The receipt a stage signs for one call: it binds the commitments of the activations it
    took and gave (for the last stage, the token it drew) and of its proof, so a session's
    receipts chain (one stage's output hash is the next one's input hash) and say which
    stage produced what; the amount is what the call costs at `price`."""
    drawn = 1 if spec.range.heads else 0
    return Receipt(
        request_id=stage_call_id(session, start, rows),
        model_id=spec.stage_id,
        provider=provider,
        input_hash=input_hash,
        output_hash=output_hash,
        proof_hash=keccak(proof),
        tokens_in=rows,
        tokens_out=drawn,
        amount=price.amount(rows, drawn),
        timestamp=timestamp,
    )
