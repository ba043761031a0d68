"""Model ids: the same files anywhere give the same id; one changed byte gives another."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_utils import keccak

from allmende.core import InvalidManifest, build_manifest, model_id_of


def write_model(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "weights.bin").write_bytes(b"\x00\x01\x02")
    (root / ".cache").mkdir()
    (root / ".cache" / "junk").write_text("ignored")
    return root


def test_same_files_in_different_places_give_same_id(tmp_path: Path) -> None:
    assert model_id_of(write_model(tmp_path / "a")) == model_id_of(write_model(tmp_path / "b"))


def test_id_is_keccak_of_the_documented_canonical_form(tmp_path: Path) -> None:
    manifest = build_manifest(write_model(tmp_path))

    canonical = (
        b"config.json\t8\tf9d86028c6e0d64e225186f96acb69338b2c59764df79162107f5c4bb34d1310\n"
        b"sub/weights.bin\t3\tae4b3280e56e2faf83f414a6e3dabe9d5fbe18976544c05fed121accb85b53fc\n"
    )
    assert manifest.canonical() == canonical
    assert manifest.model_id == keccak(canonical)


def test_model_id_hex_is_the_0x_form_of_the_id(tmp_path: Path) -> None:
    manifest = build_manifest(write_model(tmp_path))

    assert manifest.model_id_hex == "0x" + keccak(manifest.canonical()).hex()
    assert bytes.fromhex(manifest.model_id_hex[2:]) == manifest.model_id


def test_one_changed_byte_changes_the_id(tmp_path: Path) -> None:
    root = write_model(tmp_path)
    before = model_id_of(root)
    (root / "sub" / "weights.bin").write_bytes(b"\x00\x01\x03")
    assert model_id_of(root) != before


def test_hidden_files_do_not_count(tmp_path: Path) -> None:
    root = write_model(tmp_path)
    before = model_id_of(root)
    (root / ".cache" / "junk").write_text("changed")
    assert model_id_of(root) == before


def test_missing_or_empty_folder_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidManifest, match="does not exist"):
        model_id_of(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidManifest, match="no files"):
        model_id_of(tmp_path / "empty")
