"""A model author's journey on a network `allmende up` started, with the README's commands
and in its layout (ALLMENDE_STATE_DIR, no --rpc or --deployments): the author registers a
model before anyone serves it, a provider joins and serves it, users ask for it by its
name, and the royalty reaches the author at settlement. A provider never becomes the owner
of a model it did not author: it serves a model nobody registered as unregistered, and
cannot take an author's model, or the royalty of a model it serves, for itself."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import devnet_accounts, free_port
from allmende.cli import app
from allmende.engine.tiny import write_tiny_model
from allmende.node.supervisor import Node
from tests.e2e.conftest import Network

AUTHOR, PROVIDER = 5, 4  # devnet accounts `allmende up` gives no role
NAME = "my-model"


@dataclass
class Served:
    authored: bytes  # registered by the author before the provider started
    orphan: bytes  # registered by nobody
    folders: dict[str, Path]
    reader: Contracts
    provider: Node


def cli(network: Network, line: str, ok: bool = True, **env: str | None) -> str:
    """`allmende LINE` as the README writes it, from the folder `allmende up` ran in."""
    environment = {"ALLMENDE_STATE_DIR": str(network.root), "ALLMENDE_RPC": None, "ALLMENDE_DEPLOYMENTS": None, **env}
    result = CliRunner().invoke(app, shlex.split(line), env=environment)
    assert (result.exit_code == 0) == ok, (line, result.output)
    assert "Traceback" not in result.output
    return result.output


def _listing(network: Network) -> dict[str, dict[str, object]]:
    data = httpx.get(network.data["gateway_url"] + "/models", timeout=10).json()["data"]
    return {m["allmende"]["model_id"]: m for m in data}


def _until(what: str, check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _settled(read, quiet: float = 3.0) -> int:  # type: ignore[no-untyped-def]
    """`read()` once it has not changed for `quiet` seconds (the provider redeems every second)."""
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.5)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return int(value)


@pytest.fixture(scope="module")
def served(network: Network, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("author")
    folders = {"authored": write_tiny_model(root / "my-model", 2001), "orphan": write_tiny_model(root / "other", 2002)}
    # the author registers first, as the README says: before anyone serves the model
    said = cli(
        network,
        f"models register {folders['authored']} --license Apache-2.0 --royalty-bps 500 --name {NAME} "
        f"--key devnet:{AUTHOR}",
    )
    authored = bytes.fromhex(re.search(r"registered (0x[0-9a-f]{64})", said).group(1)[2:])  # type: ignore[union-attr]
    # a provider joins the network in up's layout and serves it, and a model nobody registered
    port = free_port()
    command = [
        sys.executable, "-m", "allmende", "provider", "--key", f"devnet:{PROVIDER}", "--port", str(port),
        "--state-dir", str(root / "provider"), "--model", str(folders["authored"]), "--model", str(folders["orphan"]),
        "--redeem-interval", "1", "--redeem-threshold", "1", "--price-in", "50000000", "--price-out", "50000000",
    ]  # fmt: skip
    env = {**os.environ, "ALLMENDE_STATE_DIR": str(network.root)}
    env.pop("ALLMENDE_RPC", None)
    env.pop("ALLMENDE_DEPLOYMENTS", None)
    log = root / "provider.log"
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    provider = Node("provider", process, log, f"http://127.0.0.1:{port}")
    ours: set[str] = set()
    try:
        provider.wait_healthy(180)
        reader = Contracts(ChainClient(network.data["rpc_url"]), Deployment.load(network.data["deployments"]))
        from allmende.engine import resolve_model

        orphan = resolve_model(str(folders["orphan"]), progress=False).model_id
        _until(
            "the gateway to list both models",
            lambda: {"0x" + authored.hex(), "0x" + orphan.hex()} <= set(_listing(network)),
        )
        ours = {"0x" + authored.hex(), "0x" + orphan.hex()}
        yield Served(authored, orphan, folders, reader, provider)
    finally:
        provider.stop(timeout=10)  # Ctrl-C withdraws its offers; the shared network's other
        # tests expect its own models only, so wait until the gateway has dropped these
        _until("the gateway to drop the provider's models", lambda: not ours & set(_listing(network)))


def test_an_author_registers_first_a_provider_serves_it_and_the_author_is_paid(
    network: Network, served: Served
) -> None:
    author = devnet_accounts(AUTHOR + 1)[AUTHOR].address
    listed = _listing(network)["0x" + served.authored.hex()]
    assert (listed["id"], listed["owned_by"]) == (NAME, author)
    assert served.reader.models.owner_of(served.authored) == author

    for _ in range(3):
        network.client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "royalties"}], max_tokens=4
        )
    _until("the provider to redeem", lambda: served.reader.channels.earnings(author))
    owed = _settled(lambda: served.reader.channels.earnings(author))

    shown = cli(network, f"models earnings {NAME}")  # by its name on chain (or its 0x id)
    assert f"model      0x{served.authored.hex()}" in shown
    whole, frac = divmod(owed, 10**6)
    assert f"royalty    500 bps to {author}" in shown
    assert f"earned     {whole}.{frac:06d} dUSD in royalties to {author}" in shown, shown

    # `models list` and `status` work outside the state dir `up` made, with --deployments
    elsewhere = {"ALLMENDE_STATE_DIR": str(network.root / "nowhere")}
    deployments = network.data["deployments"]
    assert served.authored.hex()[:8] in cli(network, f"models list --deployments {deployments}", **elsewhere)
    status = cli(network, f"status --deployments {deployments}", **elsewhere)
    provider = devnet_accounts(PROVIDER + 1)[PROVIDER].address
    assert provider[:6] in status and NAME in status, status
    report = json.loads(cli(network, f"status --json --deployments {deployments}", **elsewhere))
    (row,) = [m for m in report["models"] if m["model_id"] == "0x" + served.authored.hex()]
    assert (row["royalty_payee"], int(row["royalties_paid"])) == (author, owed)  # the royalties, not all earnings
    print(shown, status, file=sys.stderr)  # the closing note of issue 20 quotes them


def test_a_provider_cannot_take_a_model_it_did_not_author(network: Network, served: Served) -> None:
    provider = devnet_accounts(PROVIDER + 1)[PROVIDER].address
    author = devnet_accounts(AUTHOR + 1)[AUTHOR].address
    orphan = "0x" + served.orphan.hex()

    # serving a model nobody registered did not make the provider its owner: it is served unregistered
    assert served.reader.models.owner_of(served.orphan) is None
    assert _listing(network)[orphan]["id"] == orphan
    assert _listing(network)[orphan]["owned_by"] == "unregistered"
    # nor can it register the author's model (registration is commit-reveal: no front-running it)
    taken = cli(
        network, f"models register {served.folders['authored']} --license MIT --key devnet:{PROVIDER}", ok=False
    )
    assert "models: already registered" in taken
    assert served.reader.models.owner_of(served.authored) == author != provider
    assert served.reader.models.owner_of(served.orphan) is None

    # its author registers it with a royalty although it is served already (offers block no
    # registration; the royalty applies to service after it): the API shows the owner at once
    cli(network, f"models register {served.folders['orphan']} --license MIT --royalty-bps 500 --key devnet:{AUTHOR}")
    _until("the gateway to show the new owner", lambda: _listing(network)[orphan]["owned_by"] == author, 15)
