"""Where the Vyper sources live and the order they deploy in.

The sources are compiled from `contracts/` at deploy time (no committed
bytecode). `ALLMENDE_CONTRACTS` overrides the folder for installs outside a checkout.
"""

from __future__ import annotations

from pathlib import Path

from allmende.config import from_environment

SOURCES = {
    "AllmendeToken": "allmende_token.vy",
    "MockStable": "mocks/mock_stable.vy",
    "Params": "params.vy",
    "Models": "models.vy",
    "Registry": "registry.vy",
    "Channels": "channels.vy",
    "Verdicts": "verdicts.vy",
    "Timelock": "timelock.vy",
    "Votes": "votes.vy",
    "Governor": "governor.vy",
    "Data": "data.vy",
}
ZERO_ADDRESS = "0x" + "00" * 20


def contracts_dir() -> Path:
    """The folder holding the `.vy` sources."""
    override = from_environment().contracts_dir
    if override:
        return override
    return Path(__file__).resolve().parents[3] / "contracts"  # src/allmende/chain -> checkout


def source_path(name: str) -> Path:
    """Path of contract `name` (a key of SOURCES)."""
    return contracts_dir() / SOURCES[name]
