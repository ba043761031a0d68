"""A GGUF file's header, read with `struct`: its scalar and string metadata and its tensors'
shapes, nothing else.

Why not the `gguf` package's `GGUFReader`: it builds numpy views of every part of every
field, the tokenizer's 49,152 token strings and 48,900 merges included, and of every
tensor's data. For SmolLM2-135M's 4-bit file that took 2.4 s of CPU, paid at the start of
every llama.cpp engine (which weights to serve is decided from the file's type and size)
and so of every provider serving a GGUF model; a header read here skips the arrays by their
lengths. The layout (GGUF version 2 and 3, either byte order): magic `GGUF`, version (u32),
tensor count and metadata count (u64), the metadata as (key, value type, value), then per
tensor its name, dimensions, element type and offset."""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from allmende.engine.base import EngineError

# GGUF metadata value types: the fixed-size ones by struct format, then string and array
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
Value = int | float | bool | str | None  # None: an array (skipped; only its place is read)


@dataclass(frozen=True)
class GGUFHeader:
    fields: dict[str, Value]
    tensors: dict[str, tuple[int, ...]]  # name -> dimensions

    @property
    def weights(self) -> int:
        """How many weights the file's tensors hold."""
        return sum(math.prod(dims) for dims in self.tensors.values())


def read_header(path: Path) -> GGUFHeader:
    """The header of the GGUF file at `path`; EngineError if it is not one."""
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _Parser(data).header()
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise EngineError(f"{path} is not a readable GGUF file: {exc}") from None


class _Parser:
    def __init__(self, data: mmap.mmap) -> None:
        self.data, self.at = data, 4
        if data[:4] != b"GGUF":
            raise ValueError("no GGUF magic")
        self.order = "<"
        version = self._read("I")
        if version & 0xFFFF == 0:  # written big-endian
            self.order = ">"
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (2 and 3 are read)")

    def header(self) -> GGUFHeader:
        tensor_count, field_count = self._read("Q"), self._read("Q")
        fields: dict[str, Value] = {}
        for _ in range(field_count):
            key = self._string()
            fields[key] = self._value(self._read("I"))
        tensors: dict[str, tuple[int, ...]] = {}
        for _ in range(tensor_count):
            name = self._string()
            dims = tuple(self._read("Q") for _ in range(self._read("I")))
            self.at += 4 + 8  # element type, data offset
            tensors[name] = dims
        return GGUFHeader(fields, tensors)

    def _read(self, fmt: str) -> int:
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return int(value)

    def _string(self) -> str:
        size = self._read("Q")
        text = bytes(self.data[self.at : self.at + size]).decode()
        self.at += size
        return text

    def _value(self, kind: int) -> Value:
        if kind in SCALARS:
            fmt = self.order + SCALARS[kind]
            (value,) = struct.unpack_from(fmt, self.data, self.at)
            self.at += struct.calcsize(fmt)
            return value  # type: ignore[no-any-return]
        if kind == STRING:
            return self._string()
        if kind == ARRAY:
            item, count = self._read("I"), self._read("Q")
            if item in SCALARS:
                self.at += count * struct.calcsize(SCALARS[item])
            elif item == STRING:
                unpack, at = struct.Struct(self.order + "Q").unpack_from, self.at
                for _ in range(count):
                    at += 8 + unpack(self.data, at)[0]
                self.at = at
            else:  # arrays of arrays
                for _ in range(count):
                    self._value(item)
            return None
        raise ValueError(f"unknown GGUF value type {kind}")
