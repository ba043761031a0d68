"""Content-addressed model ids.

model id = keccak256 of the canonical manifest: every file a model loads, as
`relative/path\\tsize\\tsha256hex\\n` lines sorted by path (UTF-8, "/" separators).
The same files anywhere give the same id; one changed byte gives another.
Hidden files and folders (".git", ".cache") are not part of a model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from eth_utils import keccak

from allmende.core.errors import InvalidManifest

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ManifestEntry:
    path: str  # relative, "/"-separated
    size: int
    sha256: str  # lowercase hex


@dataclass(frozen=True)
class Manifest:
    entries: tuple[ManifestEntry, ...]

    def canonical(self) -> bytes:
        """The exact bytes that are hashed."""
        return "".join(f"{e.path}\t{e.size}\t{e.sha256}\n" for e in self.entries).encode()

    @property
    def model_id(self) -> bytes:
        return keccak(self.canonical())

    @property
    def model_id_hex(self) -> str:
        return "0x" + self.model_id.hex()


def build_manifest(folder: str | Path) -> Manifest:
    """Hash every non-hidden file under `folder` (following no symlinks out of it)."""
    root = Path(folder)
    if not root.is_dir():
        raise InvalidManifest(f"model folder {root} does not exist or is not a directory")
    entries: list[ManifestEntry] = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        entries.append(ManifestEntry(rel.as_posix(), path.stat().st_size, digest.hexdigest()))
    if not entries:
        raise InvalidManifest(f"model folder {root} holds no files")
    entries.sort(key=lambda e: e.path.encode())
    return Manifest(tuple(entries))


def model_id_of(folder: str | Path) -> bytes:
    """The 32-byte model id of the model files in `folder`."""
    return build_manifest(folder).model_id
