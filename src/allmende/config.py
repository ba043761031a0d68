"""Configuration read from the environment — the only place that reads it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Environment:
    # password for keystore files; None means "prompt"
    password: str | None
    # where `allmende up`, keys and node databases live
    state_dir: Path
    # default JSON-RPC endpoint
    rpc_url: str
    # whether ALLMENDE_RPC gave it (otherwise a network's own deployments file names its endpoint)
    rpc_url_set: bool
    # the deployments JSON of the network every command talks to, if not found in the state dir
    deployments: Path | None
    # where generated and converted models are cached (the tiny model, GGUF conversions)
    cache_dir: Path
    # the anvil binary, if not the project's .tools/ install or one on PATH
    anvil: Path | None
    # the folder of the contracts' .vy sources, if not the one beside the package
    contracts_dir: Path | None
    # ALLMENDE_DEBUG=1: the CLI shows an error's traceback instead of one line (as --debug does)
    debug: bool = False
    # ALLMENDE_RECEIPT_TIMEOUT: seconds to await a transaction's receipt (default: the RPC timeout,
    # 30 s); a chain with slow or congested blocks needs more. Checked where it is used (the chain client)
    receipt_timeout: str = ""


def from_environment() -> Environment:
    return Environment(
        password=os.environ.get("ALLMENDE_PASSWORD"),
        state_dir=Path(os.environ.get("ALLMENDE_STATE_DIR", ".allmende")),
        rpc_url=os.environ.get("ALLMENDE_RPC") or "http://127.0.0.1:8545",
        rpc_url_set=bool(os.environ.get("ALLMENDE_RPC")),
        deployments=_path("ALLMENDE_DEPLOYMENTS"),
        cache_dir=Path(os.environ.get("ALLMENDE_CACHE") or Path.home() / ".cache" / "allmende"),
        anvil=_path("ALLMENDE_ANVIL"),
        contracts_dir=_path("ALLMENDE_CONTRACTS"),
        debug=os.environ.get("ALLMENDE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"),
        receipt_timeout=os.environ.get("ALLMENDE_RECEIPT_TIMEOUT", "").strip(),
    )


def _path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None
