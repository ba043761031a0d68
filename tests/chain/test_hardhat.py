"""A second node implementation: Hardhat's node (npm `hardhat`, installed by `make install`
into .tools/hardhat; the test fails where it is missing), at chain id 84532, with fresh
accounts that are not the well-known ones, behind a proxy that refuses eth_getLogs over 50
blocks: a real-network deployment with an existing token, compiled for cancun, checked as a
joining node checks it; a channel paid and redeemed; its logs read through the limit."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from allmende.chain import ChainClient, Contracts, deploy_all
from allmende.chain.anvil import free_port
from allmende.chain.compile import compile_contract
from allmende.chain.network import from_public, public_view, verify_deployment
from allmende.chain.royalties import royalty_history
from allmende.core import Voucher, sign_voucher
from tests.chain.test_log_paging import RangeLimitingProxy

HARDHAT_DIR = Path(__file__).resolve().parents[2] / ".tools" / "hardhat"
HARDHAT = HARDHAT_DIR / "node_modules" / ".bin" / "hardhat"
CHAIN_ID = 84532
MODEL = bytes.fromhex("cd" * 32)


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


def test_a_real_network_deployment_on_hardhats_node(hardhat: str) -> None:
    deployer, issuer, payer, provider = (Account.create() for _ in range(4))
    for who in (deployer, issuer, payer, provider):
        ChainClient(hardhat).w3.provider.make_request("hardhat_setBalance", [who.address, hex(10**20)])  # type: ignore[arg-type]
    issuing = ChainClient(hardhat, bytes(issuer.key))
    artifact = compile_contract("MockStable")
    usdc, _ = issuing.deploy(artifact.abi, artifact.bytecode)  # "the existing token", a third party's
    token = issuing.contract(usdc, artifact.abi)
    issuing.transact(token.functions.mint(payer.address, 10**9))

    client = ChainClient(hardhat, bytes(deployer.key))
    assert client.chain_id == CHAIN_ID
    deployment = deploy_all(
        client, devnet=False, payment_token=usdc, distribution={provider.address: 2000 * 10**18}, evm_version="cancun"
    )
    verify_deployment(ChainClient(hardhat), from_public(public_view(deployment)))
    c = Contracts(ChainClient(hardhat), deployment)
    assert c.token.balance_of(deployer.address) == 0 and c.token.balance_of(provider.address) == 2000 * 10**18

    as_payer = Contracts(ChainClient(hardhat, bytes(payer.key)), deployment)
    as_payer.stable.approve(as_payer.channels.address)
    channel = as_payer.channels.open(provider.address, 10**7)
    ChainClient(hardhat).w3.provider.make_request("hardhat_mine", [hex(120)])  # type: ignore[arg-type]
    as_provider = Contracts(ChainClient(hardhat, bytes(provider.key)), deployment)
    voucher = Voucher(channel, MODEL, 1_500_000)
    as_provider.channels.redeem([sign_voucher(voucher, as_payer.channels.voucher_domain(), bytes(payer.key))])

    proxy = RangeLimitingProxy(hardhat, 50)
    try:
        limited = Contracts(ChainClient(proxy.url), deployment)
        history = royalty_history(limited, MODEL)
        assert (history.redeems, history.redeemed) == (1, 1_500_000)
        assert proxy.refused > 0
    finally:
        proxy.stop()
