"""The GGUF header reader (allmende.engine.gguf_header) against the `gguf` package's own
reader, on the default chat model's 4-bit file and its F16 copy: the same metadata, the same
tensors, the same (file type, weights) for the llama.cpp engine's choice of weights. A file
that is not GGUF, or is cut short, is a typed error."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader, GGUFValueType

from allmende.config import from_environment
from allmende.engine import DEFAULT_CHAT_MODEL, EngineError, load_engine, resolve_model
from allmende.engine.gguf_header import read_header
from allmende.engine.llamacpp import gguf_layers, gguf_shape


def smollm2_files() -> list[Path]:
    """The 4-bit file, and its F16 copy where the llama.cpp engine has made it (in the cache)."""
    resolved = resolve_model(DEFAULT_CHAT_MODEL, progress=False)
    assert resolved.gguf is not None and resolved.gguf_id is not None
    copy = from_environment().cache_dir / "gguf" / f"0x{resolved.gguf_id.hex()}-f16.gguf"
    return [resolved.gguf, *([copy] if copy.exists() else [])]


def field_value(field: object) -> object:
    """A GGUFReader field as the header reader gives it: a scalar, a string, None for an array."""
    kind = field.types[0]  # type: ignore[attr-defined]
    if kind == GGUFValueType.ARRAY:
        return None
    value = field.parts[field.data[0]]  # type: ignore[attr-defined]
    return bytes(value).decode() if kind == GGUFValueType.STRING else value[0].item()


@pytest.mark.parametrize("which", [0, 1], ids=["q4_1", "f16-copy"])
def test_the_header_is_what_the_gguf_package_reads(which: int) -> None:
    files = smollm2_files()
    if which >= len(files):
        load_engine(DEFAULT_CHAT_MODEL, max_concurrency=1, engine="llamacpp")  # makes the F16 copy
        files = smollm2_files()
    path = files[which]

    header = read_header(path)
    reader = GGUFReader(str(path))

    expected = {name: field_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    assert header.fields == expected
    assert header.tensors == {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert header.weights == sum(int(t.n_elements) for t in reader.tensors) > 100_000_000
    file_type = expected["general.file_type"]
    assert gguf_shape(path) == (file_type, header.weights) and file_type == (3 if which == 0 else 1)
    assert gguf_layers(path) == 30


def test_a_file_that_is_not_gguf_or_is_cut_short_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(EngineError, match="not a readable GGUF"):
        read_header(tmp_path / "text.gguf")
    whole = smollm2_files()[0].read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[:200_000])  # inside the tokenizer's strings
    with pytest.raises(EngineError, match="not a readable GGUF"):
        read_header(tmp_path / "cut.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(EngineError, match="not a readable GGUF"):
        read_header(tmp_path / "empty.gguf")
