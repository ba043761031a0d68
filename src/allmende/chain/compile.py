"""Compile the Vyper sources with the `vyper` package (no committed bytecode).

Artifacts are cached per process and on disk (`<cache dir>/contracts/`, keyed by the
sources' hash, the compiler version and the target EVM version), so a node that joins a
network and checks the code at its addresses does not wait for the compiler every time it
starts.

The EVM version is the deployment's (recorded in its deployments file): a chain still at
shanghai refuses prague's opcodes, and a joining node must compile for the same target to
recognise the code it finds. None means the compiler's default (`DEFAULT_EVM_VERSION`).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import vyper
from vyper.cli.vyper_compile import compile_files
from vyper.compiler.settings import Settings
from vyper.evm.opcodes import DEFAULT_EVM_VERSION as _VYPER_DEFAULT
from vyper.evm.opcodes import EVM_VERSIONS

from allmende.chain.sources import contracts_dir, source_path
from allmende.config import from_environment
from allmende.core.errors import InvalidInput

DEFAULT_EVM_VERSION: str = _VYPER_DEFAULT
SUPPORTED_EVM_VERSIONS = tuple(EVM_VERSIONS)  # london … prague (vyper 0.4)


def evm_version_of(value: str | None) -> str:
    """A checked EVM version name; None or "" → the compiler's default."""
    version = (value or DEFAULT_EVM_VERSION).strip().lower()
    if version not in SUPPORTED_EVM_VERSIONS:
        raise InvalidInput(f"EVM version {value!r}: expected one of {', '.join(SUPPORTED_EVM_VERSIONS)}")
    return version


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


def compile_contract(name: str, evm_version: str | None = None) -> Artifact:
    """Compile contract `name` (a key of allmende.chain.sources.SOURCES) for `evm_version`
    (None: the compiler's default); cached per process and on disk."""
    return _compile(name, evm_version_of(evm_version))


def _read(name: str, cached: Path) -> Artifact | None:
    try:
        data = json.loads(cached.read_text())
        return Artifact(name=name, abi=data["abi"], bytecode=data["bytecode"], runtime=data["runtime"])
    except (OSError, ValueError, KeyError):
        return None


@contextmanager
def _compiling(cached: Path) -> Iterator[None]:
    """Held while one process compiles into `cached`: processes started together (test workers,
    the nodes of `allmende up`) after a source changed wait for the first one's artifact instead
    of each compiling all contracts again (about 15 s of CPU per EVM version). A cache folder that
    cannot be written only costs the lock."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        lock = cached.with_suffix(".lock").open("a")
    except OSError:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


@cache
def _compile(name: str, evm_version: str) -> Artifact:
    cached = from_environment().cache_dir / "contracts" / f"{name}-{evm_version}-{_sources_digest()}.json"
    found = _read(name, cached)
    if found is not None:
        return found
    with _compiling(cached):
        found = _read(name, cached)  # compiled by another process while this one waited
        return found if found is not None else _compile_into(name, evm_version, cached)


def _compile_into(name: str, evm_version: str, cached: Path) -> Artifact:
    path = source_path(name)
    out = compile_files(
        [str(path)],
        ("abi", "bytecode", "bytecode_runtime"),
        paths=[str(contracts_dir())],
        settings=Settings(evm_version=evm_version),
    )
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
