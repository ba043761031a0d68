"""Compile the Vyper sources with the `vyper` package (no committed bytecode).

Artifacts are cached per process and on disk (`<cache dir>/contracts/`, keyed by the
sources' hash and the compiler version), so a node that joins a network and checks the
code at its addresses does not wait for the compiler every time it starts.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import vyper
from vyper.cli.vyper_compile import compile_files

from allmende.chain.sources import contracts_dir, source_path
from allmende.config import from_environment


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-prefixed init code
    runtime: str = ""  # 0x-prefixed runtime code (deployed code = runtime + immutables)


@cache
def _sources_digest() -> str:
    digest = hashlib.sha256(f"{vyper.__version__} {importlib.metadata.version('snekmate')}".encode())
    root = contracts_dir()
    for path in sorted(root.rglob("*.vy*")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:24]


@cache
def compile_contract(name: str) -> Artifact:
    """Compile contract `name` (a key of allmende.chain.sources.SOURCES); cached per process and on disk."""
    cached = from_environment().cache_dir / "contracts" / f"{name}-{_sources_digest()}.json"
    try:
        data = json.loads(cached.read_text())
        return Artifact(name=name, abi=data["abi"], bytecode=data["bytecode"], runtime=data["runtime"])
    except (OSError, ValueError, KeyError):
        pass
    path = source_path(name)
    out = compile_files([str(path)], ("abi", "bytecode", "bytecode_runtime"), paths=[str(contracts_dir())])
    (result,) = out.values()
    artifact = Artifact(name=name, abi=result["abi"], bytecode=result["bytecode"], runtime=result["bytecode_runtime"])
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"abi": artifact.abi, "bytecode": artifact.bytecode, "runtime": artifact.runtime}))
        tmp.replace(cached)  # atomic: a concurrent reader sees the whole file or none
    except OSError:
        pass  # a read-only cache only costs the compile next time
    return artifact
