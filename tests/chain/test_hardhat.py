"""A second node implementation: Hardhat's node (npm `hardhat`, installed by `make install`
into .tools/hardhat; the test fails where it is missing), at chain id 84532, with fresh
accounts that are not the well-known ones, and every process reaching it only through a proxy
that refuses eth_getLogs over 50 blocks, as hosted endpoints do. The README's path as an
operator runs it off a devnet: `chain deploy` with an existing token, compiled for cancun, and
only the named accounts get ALM; a governance round through the CLI; a gateway and a provider
as processes (the provider joins through the gateway's URL and checks the code as a joining
node does); chats through the gateway; the provider redeems at the fee the round set."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from openai import OpenAI
from typer.testing import CliRunner

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import devnet_accounts, free_port
from allmende.chain.compile import compile_contract
from allmende.chain.deploy import INITIAL_ALM_SUPPLY
from allmende.chain.keys import import_keystore
from allmende.chain.royalties import royalty_history
from allmende.cli import app
from allmende.core import split_payment
from allmende.node.supervisor import Node, allmende_command
from tests.chain.test_log_paging import RangeLimitingProxy
from tests.chain.test_real_deploy import alm_recipients
from tests.conftest import wait_for

HARDHAT_DIR = Path(__file__).resolve().parents[2] / ".tools" / "hardhat"
HARDHAT = HARDHAT_DIR / "node_modules" / ".bin" / "hardhat"
CHAIN_ID = 84532
ALM, USD = 10**18, 10**6
PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def hardhat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not HARDHAT.exists():  # part of `make install`: missing is a broken install, not a reason to skip
        pytest.fail(f"Hardhat's node is not installed at {HARDHAT}: `make install` puts it there", pytrace=False)
    config = tmp_path_factory.mktemp("hardhat") / "hardhat.config.js"
    config.write_text(f"module.exports = {{ networks: {{ hardhat: {{ chainId: {CHAIN_ID} }} }} }};\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["node", str(HARDHAT), "--config", str(config), "node", "--hostname", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        args, cwd=HARDHAT_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=1)
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, "Hardhat's node did not start"
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


class Operators:
    """Fresh keys, each in a keystore as an operator keeps it, with gas money (as a bridge gives it)."""

    def __init__(self, node: str, keys: Path) -> None:
        self.node = node
        self.deployer, self.issuer, self.gateway, self.provider, self.holder = (Account.create() for _ in range(5))
        for who in (self.deployer, self.issuer, self.gateway, self.provider, self.holder):
            self.rpc("hardhat_setBalance", who.address, hex(10**20))
        self.keys = {who.address: import_keystore(keys, who.key.hex(), PASSWORD).path for who in self.all()}

    def all(self) -> list[LocalAccount]:
        return [self.deployer, self.issuer, self.gateway, self.provider, self.holder]

    def key(self, who: LocalAccount) -> str:
        return str(self.keys[who.address])

    def rpc(self, method: str, *params: object) -> object:
        return ChainClient(self.node).w3.provider.make_request(method, list(params))  # type: ignore[arg-type]

    def forward(self, seconds: int) -> None:
        """This test's own chain, so its clock may move (`gov fast-forward` is refused off a devnet)."""
        self.rpc("evm_increaseTime", seconds)
        self.rpc("evm_mine")


def _cli(line: list[str], env: dict[str, str | None]) -> str:
    result = CliRunner().invoke(app, line, env=env)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def _start(name: str, command: list[str], log: Path, url: str) -> Node:
    env = {**os.environ, "ALLMENDE_PASSWORD": PASSWORD}
    process = subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)
    return Node(name, process, log, url)


def test_the_readme_path_on_hardhats_node_behind_a_log_range_limit(
    hardhat: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = Operators(hardhat, tmp_path / "keys")
    monkeypatch.setenv("ALLMENDE_PASSWORD", PASSWORD)
    env: dict[str, str | None] = {
        "ALLMENDE_STATE_DIR": str(tmp_path / "state"),
        "ALLMENDE_RPC": None,
        "ALLMENDE_DEPLOYMENTS": None,
    }
    # "the existing token": a third party's 6-decimal ERC-20 with EIP-3009, as USDC on Base Sepolia
    issuer = ChainClient(hardhat, bytes(ops.issuer.key))
    artifact = compile_contract("MockStable")
    usdc, _ = issuer.deploy(artifact.abi, artifact.bytecode)
    issuer.transact(issuer.contract(usdc, artifact.abi).functions.mint(ops.gateway.address, 100 * USD))
    proxy = RangeLimitingProxy(hardhat, 50)
    nodes: list[Node] = []
    try:
        # Deploy, as 'Deploy on a real chain' types it
        spread = tmp_path / "alm.csv"
        spread.write_text(f"{ops.provider.address},2000\n{ops.holder.address},20000\n")
        out = tmp_path / "deployments.json"
        deployed = _cli(
            ["chain", "deploy", "--rpc", proxy.url, "--key", ops.key(ops.deployer), "--payment-token", usdc,
             "--distribution", str(spread), "--evm-version", "cancun", "--out", str(out)],
            env,
        )  # fmt: skip
        assert f"payment token dUSD {usdc}: 6 decimals; EIP-3009 yes" in deployed
        assert f"chain {CHAIN_ID}, EVM cancun" in deployed
        deployment = Deployment.load(out)
        assert (deployment.devnet, deployment.evm_version, deployment.rpc_url) == (False, "cancun", proxy.url)
        ops.rpc("hardhat_mine", hex(100))  # a chain with history: every log read below spans more than 50 blocks
        reader = Contracts(ChainClient(proxy.url), deployment)
        treasury = deployment.treasury
        assert alm_recipients(deployment, reader.client) == {  # every Transfer log, paged through the limit
            ops.deployer.address: INITIAL_ALM_SUPPLY,  # minted by the constructor, all handed on:
            ops.provider.address: 2000 * ALM,
            ops.holder.address: 20_000 * ALM,
            treasury: INITIAL_ALM_SUPPLY - 22_000 * ALM,
        }
        assert reader.token.balance_of(ops.deployer.address) == 0
        assert all(reader.token.balance_of(a.address) == 0 for a in devnet_accounts(10))
        assert proxy.refused > 0  # the limit was met, and the read got through it

        # A gateway, as a process (it starts while the governance round below runs)
        where = ["--rpc", proxy.url, "--deployments", str(out)]
        gateway_port, provider_port = free_port(), free_port()
        gateway = _start(
            "gateway",
            allmende_command("gateway", "--key", ops.key(ops.gateway), *where, "--port", str(gateway_port),
                             "--state-dir", str(tmp_path / "gateway"), "--deposit", str(2 * USD)),
            tmp_path / "gateway.log", f"http://127.0.0.1:{gateway_port}",
        )  # fmt: skip
        nodes.append(gateway)

        # A governance round through the CLI: the holder stakes, proposes a fee of 1.5 %, votes,
        # queues, executes. This chain is the test's own, so its clock may be moved
        holder = ["--key", ops.key(ops.holder), *where]
        _cli(["gov", "stake", "15000", *holder], env)
        ops.forward(reader.params.get("unbonding_period") + 1)
        proposed = _cli(["gov", "propose", "--set", "protocol_fee_bps=150", "--description", "fund it", *holder], env)
        pid = re.search(r"proposal (\d+)", proposed).group(1)  # type: ignore[union-attr]

        # A provider joins through the gateway's URL: chain id, code (compiled for cancun) and
        # wiring checked as a joining node checks them; it stakes, claims and names its model
        gateway.wait_healthy(120)
        provider = _start(
            "provider",
            allmende_command("provider", "--network", gateway.url or "", "--key", ops.key(ops.provider),
                             "--model", "allmende:tiny", "--claim-models", "--port", str(provider_port),
                             "--state-dir", str(tmp_path / "provider"), "--redeem-threshold", "1",
                             "--redeem-interval", "1", "--price-in", "50000000", "--price-out", "50000000"),
            tmp_path / "provider.log", f"http://127.0.0.1:{provider_port}",
        )  # fmt: skip
        nodes.append(provider)

        ops.forward(reader.params.get("voting_delay") + 1)
        assert "with 15,000.0000 ALM" in _cli(["gov", "vote", pid, "for", *holder], env)
        ops.forward(reader.params.get("voting_period") + 1)
        _cli(["gov", "queue", pid, *holder], env)
        ops.forward(reader.params.get("timelock_delay") + 1)
        _cli(["gov", "execute", pid, *holder], env)
        assert reader.params.get("protocol_fee_bps") == 150

        provider.wait_healthy(120)
        assert reader.registry.account(ops.provider.address).stake == 1000 * ALM

        # Two chats through the gateway, with the official client (each request carries the
        # voucher for the work answered before it, so the second pays for the first)
        client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=60)
        wait_for("the gateway to route to the provider", lambda: _routes_to(gateway, ops.provider.address), 60)
        paid = []
        for question in ("hi", "and again"):
            reply = client.chat.completions.create(
                model="allmende:tiny", messages=[{"role": "user", "content": question}], max_tokens=8
            )
            paid.append(reply.model_extra["allmende"])  # type: ignore[index]
        assert {p["provider"] for p in paid} == {ops.provider.address}
        amount = int(paid[0]["amount"])
        fee = split_payment(amount, 0, 150).protocol_fee
        assert fee > 0

        # The provider redeems the voucher on its own, and the Channels contract takes the fee the round set
        wait_for("the redeem", lambda: reader.channels.earnings(ops.provider.address) > 0, 60)
        assert reader.channels.earnings(ops.provider.address) == amount - fee
        assert reader.channels.earnings(treasury) == fee
        model = bytes.fromhex(paid[0]["model_id"].removeprefix("0x"))
        history = royalty_history(reader, model)  # Channels' logs, paged through the limit
        assert (history.redeems, history.redeemed) == (1, amount)
    finally:
        for node in reversed(nodes):
            node.stop(timeout=20)
        proxy.stop()


def _routes_to(gateway: Node, address: str) -> bool:
    network = httpx.get(f"{gateway.url}/explorer/api/network", timeout=10).json()
    return any(p["address"] == address and p["health"] == "healthy" for p in network["providers"])
