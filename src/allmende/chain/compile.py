"""Compile the Vyper sources with the `vyper` package (no committed bytecode)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from vyper.cli.vyper_compile import compile_files

from allmende.contracts import contracts_dir, source_path


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-prefixed init code


@cache
def compile_contract(name: str) -> Artifact:
    """Compile contract `name` (a key of allmende.contracts.SOURCES); cached per process."""
    path = source_path(name)
    out = compile_files([str(path)], ("abi", "bytecode"), paths=[str(contracts_dir())])
    (result,) = out.values()
    return Artifact(name=name, abi=result["abi"], bytecode=result["bytecode"])
