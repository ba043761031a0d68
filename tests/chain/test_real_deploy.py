"""A deployment on a chain that is not a devnet (issue 40): anvil with another chain id
(Base Sepolia's, 84532), accounts that are not anvil's well-known ones, an existing ERC-20 as
the payment token, the ALM distribution named in a file, the deployer's key from a keystore.
Nothing is minted and no account but those named (and the treasury, for the rest) gets ALM."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import vyper
from eth_account import Account
from typer.testing import CliRunner

from allmende.chain import ChainClient, Contracts, Deployment, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.chain.compile import DEFAULT_EVM_VERSION, compile_contract
from allmende.chain.deploy import INITIAL_ALM_SUPPLY, PaymentToken, check_payment_token, load_distribution
from allmende.chain.network import find_on_chain, verify_deployment
from allmende.cli import app
from allmende.core.errors import InvalidInput
from allmende.gateway.node import GatewayConfig, build, require_eip3009
from allmende.gateway.serving import GatewayLimits
from allmende.gateway.x402_payments import X402Policy
from allmende.provider.node import plan_stake
from allmende.testing.keystores import keystore_file

CHAIN_ID = 84532  # not a devnet's
ALM = 10**18
PASSWORD = "correct horse"


class Net:
    def __init__(self, node: Anvil) -> None:
        self.node = node
        self.deployer, self.issuer, self.alice, self.bob = (Account.create() for _ in range(4))
        for who in (self.deployer, self.issuer, self.alice, self.bob):  # gas money, as a bridge would give it
            ChainClient(node.url).w3.provider.make_request("anvil_setBalance", [who.address, hex(10**20)])  # type: ignore[arg-type]
        # "the existing token": a 6-decimal ERC-20 a third party deployed and minted to itself
        issuer = ChainClient(node.url, bytes(self.issuer.key))
        artifact = compile_contract("MockStable")
        self.usdc, _ = issuer.deploy(artifact.abi, artifact.bytecode)
        issuer.transact(issuer.contract(self.usdc, artifact.abi).functions.mint(self.issuer.address, 10**12))


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with Anvil(chain_id=CHAIN_ID) as node:
        yield Net(node)


def alm_recipients(deployment: Deployment, client: ChainClient) -> dict[str, int]:
    """Every address that ever received ALM, with the amount, from the token's Transfer logs."""
    token = client.contract(deployment.address("AllmendeToken"), deployment.abi("AllmendeToken"))
    got: dict[str, int] = {}
    for event in client.events(token, "Transfer", deployment.deploy_block):
        to = event["args"]["receiver"]
        got[to] = got.get(to, 0) + int(event["args"]["value"])
    return got


def test_cli_deploys_with_an_existing_token_and_only_named_accounts_get_alm(
    net: Net, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keystore = keystore_file(tmp_path / "keys", net.deployer.key.hex(), PASSWORD)
    monkeypatch.setenv("ALLMENDE_PASSWORD", PASSWORD)
    spread = tmp_path / "alm.csv"
    spread.write_text(f"# the initial ALM\n{net.alice.address},1000000\n{net.bob.address},2500.5\n")
    out = tmp_path / "deployments.json"
    common = ["chain", "deploy", "--rpc", net.node.url, "--payment-token", net.usdc, "--distribution", str(spread)]
    runner = CliRunner()

    sent_before = ChainClient(net.node.url).w3.eth.get_transaction_count(net.deployer.address)
    dry = runner.invoke(app, [*common, "--key", str(keystore), "--out", str(out), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "nothing was sent" in dry.output and "deploy Channels" in dry.output and "gas" in dry.output
    assert not out.exists()
    assert ChainClient(net.node.url).w3.eth.get_transaction_count(net.deployer.address) == sent_before

    done = runner.invoke(app, [*common, "--key", str(keystore), "--out", str(out), "--evm-version", "shanghai"])
    assert done.exit_code == 0, done.output
    data = json.loads(out.read_text())
    assert data["chain_id"] == CHAIN_ID and data["evm_version"] == "shanghai" and data["devnet"] is False
    assert data["deploy_block"] > 0 and data["contracts"]["MockStable"]["address"] == net.usdc

    deployment = Deployment.load(out)
    client = ChainClient(net.node.url)
    treasury = deployment.address("Timelock")
    assert deployment.treasury == treasury
    received = alm_recipients(deployment, client)
    assert received == {
        net.deployer.address: INITIAL_ALM_SUPPLY,  # minted to the deployer by the constructor …
        net.alice.address: 1_000_000 * ALM,  # … which hands out the named amounts
        net.bob.address: 2_500_500_000_000_000_000_000,
        treasury: INITIAL_ALM_SUPPLY - 1_000_000 * ALM - 2_500_500_000_000_000_000_000,  # and the rest
    }
    c = Contracts(client, deployment)
    assert c.token.balance_of(net.deployer.address) == 0
    assert all(c.token.balance_of(a.address) == 0 for a in devnet_accounts(10))
    assert c.stable.balance_of(net.deployer.address) == 0  # nothing minted: the issuer's token untouched
    assert c.channels.contract.functions.payment_token().call() == net.usdc
    verify_deployment(client, deployment)  # a joining node compiles for shanghai and recognises the code
    found = find_on_chain(client, net.deployer.address)  # joining by the chain's URL and the deployer
    assert (found.evm_version, found.devnet, found.treasury) == ("shanghai", False, treasury)
    assert found.contracts["Registry"]["address"] == deployment.address("Registry")
    verify_deployment(client, found)


def test_devnet_behaviour_and_known_keys_refused_on_a_real_chain(net: Net, tmp_path: Path) -> None:
    runner = CliRunner()
    out = str(tmp_path / "d.json")
    no_key = runner.invoke(app, ["chain", "deploy", "--rpc", net.node.url, "--payment-token", net.usdc, "--out", out])
    assert no_key.exit_code == 1 and "--key is required" in no_key.output
    known = runner.invoke(
        app, ["chain", "deploy", "--rpc", net.node.url, "--payment-token", net.usdc, "--key", "devnet:0", "--out", out]
    )
    assert known.exit_code == 1 and "public keys" in known.output
    devnet = ["chain", "deploy", "--rpc", net.node.url, "--devnet", "--key", "devnet:0", "--out", out]
    asked = runner.invoke(app, devnet)
    assert asked.exit_code == 1 and "not a devnet" in asked.output
    client = ChainClient(net.node.url, bytes(net.deployer.key))
    with pytest.raises(InvalidInput, match="not a devnet"):
        deploy_all(client)
    with pytest.raises(InvalidInput, match="existing payment token"):
        deploy_all(client, devnet=False)
    with pytest.raises(InvalidInput, match="no contract there"):
        deploy_all(client, devnet=False, payment_token=net.alice.address)


def test_payment_token_decimals_are_checked_on_chain(net: Net) -> None:
    client = ChainClient(net.node.url, bytes(net.issuer.key))
    assert check_payment_token(client, net.usdc).decimals == 6
    # an 18-decimal ERC-20 (ALM itself) is refused: prices are in 6-decimal units
    artifact = compile_contract("AllmendeToken", DEFAULT_EVM_VERSION)
    alm, _ = client.deploy(artifact.abi, artifact.bytecode, 1, net.issuer.address)
    with pytest.raises(InvalidInput, match="18 decimals"):
        check_payment_token(client, alm)


def test_distribution_files(tmp_path: Path) -> None:
    a, b = Account.create().address, Account.create().address
    (tmp_path / "d.json").write_text(json.dumps({a: "1.5", b: 2}))
    assert load_distribution(tmp_path / "d.json") == {a: 15 * 10**17, b: 2 * ALM}
    for bad, why in ((f"{a},-1", "positive"), (f"{a},1\n{a},2", "twice"), ("0x12,1", "not an address")):
        (tmp_path / "bad.csv").write_text(bad)
        with pytest.raises(InvalidInput, match=why):
            load_distribution(tmp_path / "bad.csv")


def test_transfer_faucet_and_fast_forward_on_a_real_chain(
    net: Net, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = Account.create()  # its own deployer: the first test finds its deployer's newest deployment
    ChainClient(net.node.url).w3.provider.make_request("anvil_setBalance", [operator.address, hex(10**20)])  # type: ignore[arg-type]
    client = ChainClient(net.node.url, bytes(operator.key))
    deployment = deploy_all(client, devnet=False, payment_token=net.usdc, distribution={net.alice.address: 1000 * ALM})
    path = tmp_path / "deployments.json"
    deployment.save(path)
    monkeypatch.setenv("ALLMENDE_PASSWORD", PASSWORD)
    alice_key = keystore_file(tmp_path / "keys", net.alice.key.hex(), PASSWORD)
    issuer_key = keystore_file(tmp_path / "keys", net.issuer.key.hex(), PASSWORD)
    runner = CliRunner()
    where = ["--rpc", net.node.url, "--deployments", str(path)]
    env = {"ALLMENDE_STATE_DIR": str(tmp_path), "ALLMENDE_RPC": None, "ALLMENDE_DEPLOYMENTS": None}

    sent = runner.invoke(app, ["transfer", net.bob.address, "250.5", "--key", str(alice_key), *where], env=env)
    assert sent.exit_code == 0, sent.output
    line = ["transfer", net.bob.address, "12.25", "--token", "usd", "--key", str(issuer_key), *where]
    paid = runner.invoke(app, line, env=env)
    assert paid.exit_code == 0, paid.output
    c = Contracts(ChainClient(net.node.url), deployment)
    require_eip3009(c)  # its token has EIP-3009: a gateway on it may take x402 payments
    assert c.token.balance_of(net.bob.address) == 250_500_000_000_000_000_000
    assert c.stable.balance_of(net.bob.address) == 12_250_000
    too_much = runner.invoke(app, ["transfer", net.bob.address, "5000", "--key", str(alice_key), *where], env=env)
    assert too_much.exit_code == 1 and "less than 5000" in too_much.output

    faucet = runner.invoke(app, ["faucet", net.bob.address, *where], env=env)
    assert faucet.exit_code == 1 and "not a devnet" in faucet.output and "allmende transfer" in faucet.output
    # a provider's key without gas or ALM is told to transfer them, not to use a faucet there is none of
    newcomer = Account.create()
    with pytest.raises(InvalidInput, match=f"allmende transfer {newcomer.address} AMOUNT --token eth --key"):
        plan_stake(Contracts(ChainClient(net.node.url, bytes(newcomer.key)), deployment), None)
    with pytest.raises(InvalidInput, match=f"allmende transfer {net.bob.address} AMOUNT --token alm --key"):
        plan_stake(Contracts(ChainClient(net.node.url, bytes(net.bob.key)), deployment), 2000 * ALM)
    before = c.client.timestamp()
    forward = runner.invoke(app, ["gov", "fast-forward", "86400", *where], env=env)
    assert forward.exit_code == 1 and f"chain {CHAIN_ID} is not a devnet" in forward.output
    assert c.client.timestamp() < before + 86400


# A plain 6-decimal ERC-20 without EIP-3009, as USDT is: a third party's token, not one of ours
PLAIN_TOKEN = """
# pragma version ~=0.4.3
name: public(String[16])
symbol: public(String[8])
decimals: public(constant(uint8)) = 6
totalSupply: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])

@deploy
def __init__(supply: uint256):
    self.name = "Tether USD"
    self.symbol = "USDT"
    self.totalSupply = supply
    self.balanceOf[msg.sender] = supply

@external
def transfer(to: address, amount: uint256) -> bool:
    self.balanceOf[msg.sender] -= amount
    self.balanceOf[to] += amount
    return True

@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    return True

@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    self.allowance[owner][msg.sender] -= amount
    self.balanceOf[owner] -= amount
    self.balanceOf[to] += amount
    return True
"""


def test_eip3009_is_detected_on_chain_and_a_gateway_takes_x402_only_in_such_a_token(
    net: Net, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = vyper.compile_code(PLAIN_TOKEN, output_formats=["abi", "bytecode"])
    issuer = ChainClient(net.node.url, bytes(net.issuer.key))
    usdt, _ = issuer.deploy(compiled["abi"], compiled["bytecode"], 10**12)
    assert check_payment_token(issuer, usdt) == PaymentToken(usdt, "USDT", 6, eip3009=False)
    assert check_payment_token(issuer, net.usdc).eip3009  # MockStable has it, as USDC does

    operator = Account.create()  # its own deployer: the first test finds its deployer's newest deployment
    ChainClient(net.node.url).w3.provider.make_request("anvil_setBalance", [operator.address, hex(10**20)])  # type: ignore[arg-type]
    keystore = keystore_file(tmp_path / "keys", operator.key.hex(), PASSWORD)
    monkeypatch.setenv("ALLMENDE_PASSWORD", PASSWORD)
    out = tmp_path / "deployments.json"
    line = ["chain", "deploy", "--rpc", net.node.url, "--key", str(keystore), "--payment-token", usdt]
    line += ["--out", str(out)]
    done = CliRunner().invoke(app, line)
    assert done.exit_code == 0, done.output
    assert f"payment token USDT {usdt}: 6 decimals; EIP-3009 no" in done.output
    deployment = Deployment.load(out)
    assert not Contracts(ChainClient(net.node.url), deployment).stable.supports_eip3009()

    # a gateway on it takes API keys (channels work), but refuses x402 before it serves
    gateway = Account.create()
    config = GatewayConfig(net.node.url, bytes(gateway.key), out, tmp_path / "gateway")
    with pytest.raises(InvalidInput, match=f"--x402: the payment token {usdt} on chain {CHAIN_ID} has no EIP-3009"):
        build(replace(config, limits=GatewayLimits(x402=X402Policy())))
    app_, _, _ = build(config)
    assert app_ is not None
