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


def from_environment() -> Environment:
    return Environment(
        password=os.environ.get("ALLMENDE_PASSWORD"),
        state_dir=Path(os.environ.get("ALLMENDE_STATE_DIR", ".allmende")),
        rpc_url=os.environ.get("ALLMENDE_RPC", "http://127.0.0.1:8545"),
    )
