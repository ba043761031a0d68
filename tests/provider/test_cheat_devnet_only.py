"""A cheating provider (`python -m allmende.testing.cheats MODE provider …`, the README's way
to try a validator) runs on devnets only: on a chain whose id is not a devnet's, or with a
deployment that is not a devnet one, it stops with one line before it loads, stakes or signs
anything. An attacker gains nothing from this module that a modified copy would not give;
the refusal keeps an operator from pointing a test tool at real money by mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from eth_account import Account

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import Anvil
from allmende.chain.keys import import_keystore

PASSWORD = "only on devnets"


def _cheat(tmp_path: Path, deployments: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    account = Account.create()
    keyfile = import_keystore(tmp_path / "keys", account.key.hex(), PASSWORD).path
    env = {**os.environ, "ALLMENDE_PASSWORD": PASSWORD, "ALLMENDE_STATE_DIR": str(tmp_path / "state")}
    env.pop("ALLMENDE_RPC", None)
    command = [sys.executable, "-m", "allmende.testing.cheats", "int8", "provider", "--deployments",
               str(deployments), "--key", str(keyfile), "--model", "allmende:tiny", "--port", "0"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120), account.address


@pytest.mark.parametrize("where", ["deployment not a devnet one", "chain id not a devnet's"])
def test_a_cheating_provider_is_refused_off_a_devnet(
    anvil: Anvil, deployment: Deployment, tmp_path: Path, where: str
) -> None:
    # Prepare: the session's contracts described as a real network's, or a chain with a real id
    if where == "deployment not a devnet one":
        described, other = replace(deployment, devnet=False), None
    else:
        other = Anvil(chain_id=84532)
        described = replace(deployment, rpc_url=other.url)
    path = tmp_path / "deployments.json"
    described.save(path)
    try:
        # Execute
        result, address = _cheat(tmp_path, path)
    finally:
        if other is not None:
            other.stop()

    # Assert: one line, before any model was loaded; nothing on chain for that key
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cheating providers run on devnets only" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "loaded" not in result.stdout + result.stderr
    assert Contracts(ChainClient(anvil.url), deployment).registry.account(address).role == 0
