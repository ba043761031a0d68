"""Joining a running network from another host, as an operator does: a fresh key funded by
`allmende faucet`, `allmende provider --network GATEWAY_URL`, served through the gateway, and
Ctrl-C withdrawing the offers. And everything that must stop a start before any money moves:
a network URL naming contracts that are not Allmende's, a busy port, a public URL that reaches
some other server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from eth_account import Account
from typer.testing import CliRunner

from allmende.chain import ChainClient, Contracts, Deployment, DeploymentNotFound, deploy_all
from allmende.chain.anvil import Anvil, DevnetAccount, free_port
from allmende.chain.compile import compile_contract
from allmende.chain.keys import create_keystore
from allmende.chain.network import find_on_chain, public_view, resolve_network, verify_deployment
from allmende.cli import app
from allmende.cli.common import console
from allmende.cli.status import gather, render
from allmende.engine import load_engine
from allmende.node.supervisor import Node, allmende_command, spawn

PASSWORD = "correct horse"
ALM = 10**18


def _env() -> dict[str, str]:
    return {**os.environ, "ALLMENDE_PASSWORD": PASSWORD}


def _fund_gas(anvil: Anvil, address: str) -> None:
    ChainClient(anvil.url).w3.provider.make_request("anvil_setBalance", [address, hex(10**19)])  # type: ignore[arg-type]


def _fresh_key(directory: Path) -> tuple[Path, str]:
    info = create_keystore(directory, PASSWORD)
    return info.path, info.address


@pytest.fixture(scope="module")
def gateway(
    anvil: Anvil, deployment: Deployment, deployments_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    """A gateway paying with a fresh key of its own (the session's devnet accounts stay untouched)."""
    root = tmp_path_factory.mktemp("join-gateway")
    key = Account.create()
    _fund_gas(anvil, key.address)
    Contracts(ChainClient(anvil.url, bytes(key.key)), deployment).stable.mint(key.address, 100 * 10**6)
    keyfile = root / "gateway.json"
    keyfile.write_text(json.dumps(Account.encrypt(key.key, PASSWORD)))
    port = free_port()
    args = allmende_command(
        "gateway", "--rpc", anvil.url, "--key", str(keyfile), "--deployments", str(deployments_file),
        "--state-dir", str(root / "state"), "--port", str(port), "--deposit", "2000000", "--prefer", "cheapest",
    )  # fmt: skip
    process = subprocess.Popen(args, stdout=(root / "gw.log").open("ab"), stderr=subprocess.STDOUT, env=_env())
    node = Node("gateway", process, root / "gw.log", f"http://127.0.0.1:{port}")
    try:
        node.wait_healthy(60)
        yield node
    finally:
        node.stop(timeout=10)


def _listed(gateway: Node) -> set[str]:
    """Providers the gateway routes to (its explorer's view of its directory)."""
    network = httpx.get(f"{gateway.url}/explorer/api/network", timeout=10).json()
    return {p["address"] for p in network["providers"] if p["health"] in ("healthy", "suspended")}


def _refused(*args: str) -> Result:
    """A command line that must stop before it serves (or stakes) anything, run in this process by
    typer's runner: the same parsing, checks and exit code without an interpreter start-up (about
    5 s of CPU for `allmende provider`, which imports torch). It must exit 1 with a message: an
    unhandled exception (a traceback) fails it."""
    result = CliRunner().invoke(app, list(args), env={"ALLMENDE_PASSWORD": PASSWORD})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output + repr(result.exception)
    return result


def test_a_fresh_key_joins_through_the_gateway_url_serves_and_leaves_on_ctrl_c(
    anvil: Anvil, deployment: Deployment, gateway: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a new key, funded by the devnet faucet through the gateway's URL
    keyfile, address = _fresh_key(tmp_path / "keys")
    funded = CliRunner().invoke(app, ["faucet", address, "--network", f"{gateway.url}/v1"])  # in process
    assert funded.exit_code == 0, funded.output + repr(funded.exception)
    reader = Contracts(ChainClient(anvil.url), deployment)
    assert reader.token.balance_of(address) == 6000 * ALM  # the faucet's default: a validator's minimum and more

    # Execute: join with one command
    port = free_port()
    log = tmp_path / "provider.log"
    command = allmende_command(
        "provider", "--network", gateway.url, "--key", str(keyfile), "--model", "allmende:tiny", "--claim-models",
        "--port", str(port), "--state-dir", str(tmp_path / "p"), "--stake", "1500",
        "--price-in", "1000", "--price-out", "1000",  # the cheapest: other tests' providers may share the chain
    )  # fmt: skip
    process = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=_env())
    provider = Node("provider", process, log, f"http://127.0.0.1:{port}")
    try:
        provider.wait_healthy(120)
        shown = log.read_text()
        assert f"account: {address}" in shown
        assert "bonds 1,500.0000 ALM" in shown
        assert reader.registry.account(address).stake == 1500 * ALM
        assert reader.registry.account(address).endpoint == f"http://127.0.0.1:{port}"
        gateway.wait_healthy(30, ready=lambda health: address in _listed(gateway))
        reply = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "allmende:tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["allmende"]["provider"] == address

        # Assert: `allmende status` shows the earning before any redeem, by model name, in 80 columns
        report = gather(reader, gateway.url)
        (row,) = [p for p in report["providers"] if p["address"] == address]
        assert row["pending_unredeemed"] == reply.json()["allmende"]["amount"] != "0"
        assert row["earned_unwithdrawn"] == "0"
        assert [o["name"] for o in row["offers"]] == ["allmende:tiny"]
        monkeypatch.setattr(console, "width", 80)
        with console.capture() as shown:
            render(report)
        assert "allmende:tiny" in shown.get()
        assert max(len(line) for line in shown.get().splitlines()) <= 80

        # Execute: Ctrl-C, then ask the node as a gateway would until it stops answering
        model_id = load_engine("allmende:tiny").model_id
        provider.interrupt()
        refused_while_offered: list[str] = []
        while provider.alive():
            offered = reader.registry.offer(address, model_id).active  # what a gateway routes by
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/info", timeout=5)
            except httpx.HTTPError as exc:
                if offered:
                    refused_while_offered.append(repr(exc))
                break
        provider.stop(timeout=30)
    finally:
        if provider.alive():
            provider.kill9()

    # Assert: the node answered every request sent while its offer was on chain (it closed its
    # socket first: a request routed here in between failed, a 502 counted against it)
    assert refused_while_offered == []

    # Assert: it stopped cleanly, its offer is withdrawn on chain and the gateway drops it
    assert process.returncode == 0, provider.log_tail()
    assert not reader.registry.offer(address, model_id).active
    assert address not in reader.registry.providers_of(model_id)
    gateway.wait_healthy(30, ready=lambda health: address not in _listed(gateway))
    assert reader.registry.account(address).stake == 1500 * ALM  # the stake stays bonded


class _FakeGateway(ThreadingHTTPServer):
    """Serves a chosen /v1/network answer, like a gateway would."""

    def __init__(self, answer: dict[str, object]) -> None:
        body = json.dumps(answer).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if self.path == "/v1/network" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def _attackers_registry(anvil: Anvil, deployment: Deployment) -> str:
    """Genuine Registry code, deployed by an attacker over the real ALM token: whoever stakes
    in it has approved the attacker's contract, which the attacker owns and can slash from."""
    attacker = Account.create()
    _fund_gas(anvil, attacker.address)
    artifact = compile_contract("Registry")
    client = ChainClient(anvil.url, bytes(attacker.key))
    address, _ = client.deploy(
        artifact.abi, artifact.bytecode, deployment.address("AllmendeToken"), deployment.address("Params")
    )
    return address


def test_a_network_url_naming_a_foreign_registry_is_refused_before_anything_is_staked(
    anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount], tmp_path: Path
) -> None:
    # Prepare: a funded key, and a "gateway" that names the attacker's Registry
    keyfile, address = _fresh_key(tmp_path / "keys")
    _fund_gas(anvil, address)
    Contracts(ChainClient(anvil.url, accounts[0].key), deployment).token.transfer(address, 1000 * ALM)
    fake = public_view(deployment, anvil.url)
    fake_registry = _attackers_registry(anvil, deployment)
    fake["contracts"] = {**fake["contracts"], "Registry": fake_registry}  # type: ignore[dict-item]
    server = _FakeGateway(fake)
    try:
        # Execute
        result = _refused(
            "provider", "--network", server.url, "--key", str(keyfile), "--model", "allmende:tiny",
            "--port", str(free_port()), "--state-dir", str(tmp_path / "p"),
        )  # fmt: skip
    finally:
        server.shutdown()

    # Assert: refused with the reason, and nothing moved
    assert "do not belong together" in result.stderr
    reader = Contracts(ChainClient(anvil.url), deployment)
    assert reader.token.balance_of(address) == 1000 * ALM
    assert reader.token.allowance(address, fake_registry) == 0
    assert reader.registry.account(address).role == 0


@pytest.mark.parametrize(
    "tamper",
    ["registry_without_code", "registry_is_the_token", "attackers_own_registry", "other_chain_id"],
)
def test_a_network_description_with_wrong_contracts_is_refused(
    anvil: Anvil, deployment: Deployment, tamper: str
) -> None:
    # Prepare
    contracts = {name: dict(info) for name, info in deployment.contracts.items()}
    chain_id = deployment.chain_id
    if tamper == "registry_without_code":
        contracts["Registry"]["address"] = Account.create().address
    elif tamper == "registry_is_the_token":
        contracts["Registry"]["address"] = deployment.address("AllmendeToken")
    elif tamper == "attackers_own_registry":
        contracts["Registry"]["address"] = _attackers_registry(anvil, deployment)
    else:
        chain_id = 1
    lie = replace(deployment, chain_id=chain_id, contracts=contracts)

    # Execute / Assert
    with pytest.raises(DeploymentNotFound) as refused:
        verify_deployment(ChainClient(anvil.url), lie)
    expected = {
        "registry_without_code": "no contract there",
        "registry_is_the_token": "not this version's Registry",
        "attackers_own_registry": "do not belong together",
        "other_chain_id": "chain id mismatch",
    }[tamper]
    assert expected in str(refused.value)


def test_the_genuine_deployment_passes_and_is_found_from_the_chain_alone(anvil: Anvil, deployment: Deployment) -> None:
    # Prepare: a deployment of its own by a fresh deployer, so the newest one is known
    deployer = Account.create()
    _fund_gas(anvil, deployer.address)
    own = deploy_all(ChainClient(anvil.url, bytes(deployer.key)), fund=[])

    # Execute
    found = find_on_chain(ChainClient(anvil.url), deployer.address)

    # Assert
    verify_deployment(ChainClient(anvil.url), deployment)
    assert {n: i["address"] for n, i in found.contracts.items()} == {n: i["address"] for n, i in own.contracts.items()}
    assert found.deploy_block <= own.deploy_block + 1
    assert found.treasury == own.treasury
    with pytest.raises(DeploymentNotFound, match="nothing answers at"):
        resolve_network("http://127.0.0.1:9/")  # nothing listens on the discard port


def test_a_busy_port_stops_the_provider_before_anything_is_staked(
    anvil: Anvil, deployment: Deployment, deployments_file: Path, accounts: list[DevnetAccount], tmp_path: Path
) -> None:
    # Prepare: the port is taken; a funded fresh key
    keyfile, address = _fresh_key(tmp_path / "keys")
    _fund_gas(anvil, address)
    Contracts(ChainClient(anvil.url, accounts[0].key), deployment).token.transfer(address, 1000 * ALM)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Execute
        result = _refused(
            "provider", "--rpc", anvil.url, "--deployments", str(deployments_file), "--key", str(keyfile),
            "--model", "allmende:tiny", "--port", str(port), "--state-dir", str(tmp_path / "p"),
        )  # fmt: skip

    # Assert
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    reader = Contracts(ChainClient(anvil.url), deployment)
    assert reader.registry.account(address).role == 0
    assert reader.token.balance_of(address) == 1000 * ALM


def test_a_provider_cannot_publish_a_url_that_reaches_another_server(
    anvil: Anvil, deployment: Deployment, deployments_file: Path, accounts: list[DevnetAccount],
    gateway: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Prepare
    monkeypatch.setenv("ALLMENDE_PASSWORD", PASSWORD)
    keyfile, address = _fresh_key(tmp_path / "keys")
    _fund_gas(anvil, address)
    Contracts(ChainClient(anvil.url, accounts[0].key), deployment).token.transfer(address, 1000 * ALM)

    # Execute: the gateway's URL as this provider's public URL (the mistake the issue saw)
    log = tmp_path / "provider.log"
    node = spawn(
        "provider",
        allmende_command(
            "provider", "--rpc", anvil.url, "--deployments", str(deployments_file), "--key", str(keyfile),
            "--model", "allmende:tiny", "--port", str(free_port()), "--public-url", str(gateway.url),
            "--state-dir", str(tmp_path / "p"),
        ),
        log,
    )  # fmt: skip
    node.process.wait(timeout=120)

    # Assert: it exits with the reason; the URL was never registered and nothing staked
    assert node.process.returncode == 1, node.log_tail()
    assert f"the public URL {gateway.url} does not reach this node" in node.log_tail()
    reader = Contracts(ChainClient(anvil.url), deployment)
    assert reader.registry.account(address).role == 0
    assert reader.token.balance_of(address) == 1000 * ALM


def test_key_errors_say_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    keyfile, _ = _fresh_key(tmp_path / "keys")
    runner = CliRunner()
    monkeypatch.delenv("ALLMENDE_PASSWORD", raising=False)

    # Execute: a missing file (no password prompt first), then a wrong password
    missing = runner.invoke(app, ["provider", "--key", str(tmp_path / "nope.json"), "--model", "allmende:tiny"])
    monkeypatch.setenv("ALLMENDE_PASSWORD", "wrong")
    wrong = runner.invoke(app, ["provider", "--key", str(keyfile), "--model", "allmende:tiny"])

    # Assert
    assert missing.exit_code == 1 and "no keystore file at" in missing.output, missing.output
    assert "password" not in missing.output
    assert wrong.exit_code == 1 and "wrong password for" in wrong.output, wrong.output


def test_an_unfunded_key_is_told_how_to_fund_it_before_anything_is_sent(
    anvil: Anvil, deployments_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a brand-new key with nothing on it
    keyfile, address = _fresh_key(tmp_path / "keys")
    monkeypatch.setenv("ALLMENDE_PASSWORD", PASSWORD)
    args = ["--rpc", anvil.url, "--deployments", str(deployments_file), "--key", str(keyfile)]

    # Execute
    result = CliRunner().invoke(app, ["provider", *args, "--model", "allmende:tiny", "--state-dir", str(tmp_path)])

    # Assert: the reason and the faucet command, not "insufficient funds for gas * price + value"
    assert result.exit_code == 1, result.output
    assert f"account {address} has no ETH to pay gas" in result.output
    assert f"allmende faucet {address}" in result.output


def test_the_faucet_hands_out_nothing_off_a_devnet(
    anvil: Anvil, deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the same contracts, described as a production deployment
    production = tmp_path / "deployments.json"
    replace(deployment, devnet=False).save(production)
    monkeypatch.setenv("ALLMENDE_RPC", anvil.url)
    who = Account.create().address

    # Execute
    result = CliRunner().invoke(app, ["faucet", who, "--deployments", str(production)])

    # Assert
    assert result.exit_code == 1, result.output
    assert "is not a devnet" in result.output
    assert Contracts(ChainClient(anvil.url), deployment).token.balance_of(who) == 0
