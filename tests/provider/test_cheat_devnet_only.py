"""A cheating provider (`python -m allmende.testing.cheats MODE provider …`, the README's way
to try a validator) runs on devnets only: on a chain whose id is not a devnet's, or with a
deployment that is not a devnet one, it stops with one line before it loads, stakes or signs
anything. An attacker gains nothing from this module that a modified copy would not give;
the refusal keeps an operator from pointing a test tool at real money by mistake."""

from __future__ import annotations

import signal
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from eth_account import Account

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import Anvil
from allmende.chain.keys import import_keystore
from allmende.cli import provider as provider_command
from allmende.provider import node
from allmende.testing import cheats

PASSWORD = "only on devnets"


def _cheat(tmp_path: Path, deployments: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """`python -m allmende.testing.cheats int8 provider …`: the module's main() with those
    arguments, run in this process (an interpreter start-up costs about 3.5 s of CPU: the
    provider imports torch). What main() adds to the provider command (a network check, an
    engine wrapper) and the argv and SIGINT disposition it sets are undone after the test.
    Returns its exit code and the account it was given."""
    account = Account.create()
    keyfile = import_keystore(tmp_path / "keys", account.key.hex(), PASSWORD).path
    monkeypatch.setenv("ALLMENDE_PASSWORD", PASSWORD)
    monkeypatch.setenv("ALLMENDE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("ALLMENDE_RPC", raising=False)
    monkeypatch.setattr(provider_command, "NETWORK_CHECKS", [*provider_command.NETWORK_CHECKS])
    monkeypatch.setattr(node, "ENGINE_WRAPPERS", [*node.ENGINE_WRAPPERS])
    monkeypatch.setattr(sys, "argv", [*sys.argv])
    interrupts = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as stopped:
            cheats.main(["int8", "provider", "--deployments", str(deployments), "--key", str(keyfile),
                         "--model", "allmende:tiny", "--port", "0"])  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, interrupts)
    return int(stopped.value.code or 0), account.address


@pytest.mark.timeout(120)  # in this process: a start that is not refused would serve until stopped
@pytest.mark.parametrize("where", ["deployment not a devnet one", "chain id not a devnet's"])
def test_a_cheating_provider_is_refused_off_a_devnet(
    anvil: Anvil,
    deployment: Deployment,
    tmp_path: Path,
    where: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
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
        code, address = _cheat(tmp_path, path, monkeypatch)
        out, err = capfd.readouterr()
    finally:
        if other is not None:
            other.stop()

    # Assert: one line, before any model was loaded; nothing on chain for that key
    assert code == 1, out + err
    assert "cheating providers run on devnets only" in err, err
    assert "Traceback" not in err and "loaded" not in out + err
    assert Contracts(ChainClient(anvil.url), deployment).registry.account(address).role == 0
