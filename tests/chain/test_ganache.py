"""A third node implementation: Ganache (npm `ganache`, installed by `make install` into
.tools/ganache; the test fails where it is missing), at Arbitrum Sepolia's chain id with fresh
accounts, at the shanghai hardfork. Ganache differs from anvil and Hardhat where it matters
here: it runs no newer opcodes than shanghai's, it words a taken nonce its own way ("the tx
doesn't have the correct nonce"), and it estimates gas against its latest block, so a rule
that depends on the block's time holds there only once a later block exists."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from typer.testing import CliRunner

from allmende.chain import ChainClient, Contracts, deploy_all
from allmende.chain.anvil import free_port
from allmende.chain.compile import compile_contract
from allmende.chain.keys import import_keystore
from allmende.chain.network import from_public, public_view, verify_deployment
from allmende.cli import app
from allmende.cli.gov import _when
from allmende.core import Voucher, sign_voucher

GANACHE = Path(__file__).resolve().parents[2] / ".tools" / "ganache" / "node_modules" / ".bin" / "ganache"
CHAIN_ID = 421614  # Arbitrum Sepolia's: not a devnet's
ALM = 10**18
PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def ganache() -> Iterator[str]:
    if not GANACHE.exists():  # part of `make install`: missing is a broken install, not a reason to skip
        pytest.fail(f"Ganache is not installed at {GANACHE}: `make install` puts it there", pytrace=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["node", str(GANACHE), "--chain.chainId", str(CHAIN_ID), "--chain.hardfork", "shanghai",
            "--server.host", "127.0.0.1", "--server.port", str(port), "--wallet.totalAccounts", "0",
            "--logging.quiet"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=1)
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, "Ganache did not start"
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_real_network_deployment_on_ganache_at_shanghai(
    ganache: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployer, issuer, holder, provider = (Account.create() for _ in range(4))
    admin = ChainClient(ganache)
    for who in (deployer, issuer, holder, provider):
        admin.w3.provider.make_request("evm_setAccountBalance", [who.address, hex(10**20)])  # type: ignore[arg-type]
    # the existing token, compiled for the chain's EVM as its issuer would
    issuing = ChainClient(ganache, bytes(issuer.key))
    artifact = compile_contract("MockStable", "shanghai")
    usdc, _ = issuing.deploy(artifact.abi, artifact.bytecode)
    issuing.transact(issuing.contract(usdc, artifact.abi).functions.mint(holder.address, 10**9))

    client = ChainClient(ganache, bytes(deployer.key))
    assert client.chain_id == CHAIN_ID
    deployment = deploy_all(
        client,
        devnet=False,
        payment_token=usdc,
        distribution={holder.address: 20_000 * ALM, provider.address: 2_000 * ALM},
        evm_version="shanghai",
    )
    verify_deployment(ChainClient(ganache), from_public(public_view(deployment)))  # as a joining node checks it

    # a channel paid and redeemed
    as_holder = Contracts(ChainClient(ganache, bytes(holder.key)), deployment)
    as_holder.stable.approve(as_holder.channels.address)
    channel = as_holder.channels.open(provider.address, 10**7)
    as_provider = Contracts(ChainClient(ganache, bytes(provider.key)), deployment)
    voucher = sign_voucher(Voucher(channel, b"\x42" * 32, 1_500_000), as_holder.channels.voucher_domain(), holder.key)
    as_provider.channels.redeem([voucher])
    assert as_provider.channels.earnings(provider.address) == 1_500_000 - 15_000  # less the 1 % fee

    # a model registered by commit-reveal: the reveal is estimated against the pending block,
    # which Ganache builds on top of the commitment's
    model = bytes.fromhex("ab" * 32)
    as_provider.models.register(model, "apache-2.0", 0)
    assert as_provider.models.owner_of(model) == provider.address

    # a nonce taken by another process with the same key: Ganache's wording, resynchronised
    other = Contracts(ChainClient(ganache, bytes(provider.key)), deployment)
    other.token.approve(other.registry.address, 1)  # takes the nonce as_provider's client has cached
    as_provider.token.approve(as_provider.registry.address, 2)
    assert as_provider.token.allowance(provider.address, as_provider.registry.address) == 2

    # stake, and propose once the stake is held through the lookback by the chain's clock: Ganache
    # checks the proposal against its latest block, so it is refused until a later block exists,
    # and the refusal says from when
    path = tmp_path / "deployments.json"
    deployment.save(path)
    monkeypatch.setenv("ALLMENDE_PASSWORD", PASSWORD)
    key = import_keystore(tmp_path / "keys", holder.key.hex(), PASSWORD).path
    where = ["--rpc", ganache, "--deployments", str(path), "--key", str(key)]
    env = {"ALLMENDE_STATE_DIR": str(tmp_path), "ALLMENDE_RPC": None, "ALLMENDE_DEPLOYMENTS": None}
    runner = CliRunner()
    staked = runner.invoke(app, ["gov", "stake", "15000", *where], env=env)
    assert staked.exit_code == 0, staked.output
    reader = Contracts(ChainClient(ganache), deployment)
    ready = reader.client.timestamp() + reader.params.get("unbonding_period")
    admin.w3.provider.make_request("evm_increaseTime", [reader.params.get("unbonding_period") + 5])  # type: ignore[arg-type]
    propose = ["gov", "propose", "--set", "protocol_fee_bps=150", "--description", "fund it", *where]
    early = runner.invoke(app, propose, env=env)
    told = " ".join(early.output.split())
    assert early.exit_code == 1 and "stake below proposal threshold" in told
    assert f"reaches it in proposals made after {_when(ready)} by the chain's clock" in told
    assert "refuses it until such a block exists" in told
    admin.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    proposed = runner.invoke(app, propose, env=env)
    assert proposed.exit_code == 0 and "Params.set(name=protocol_fee_bps, new_value=150)" in proposed.output
