"""Deploy every contract to any EVM and describe the result in a deployments JSON
(`Deployment`, in chain/deployment.py, which the bindings read too).

Two kinds of deployment:
- a devnet (only on a devnet chain id, chain/anvil.py's DEVNET_CHAIN_IDS): the mock payment
  token dUSD, whose `mint` is open to anyone, and ALM and dUSD handed to the accounts in `fund`
  (anvil's, whose keys are public); the deployer keeps the rest of the ALM;
- a real network: an existing ERC-20 as the payment token (its code and its 6 decimals checked
  on chain before anything is sent), nothing minted, the ALM distribution given explicitly
  (`distribution`: address → amount) and the rest of the supply sent to the treasury, so the
  deployer keeps neither admin power nor ALM it was not named for.

`rehearse` runs the same deployment against a local fork of the chain (anvil --fork-url) and
returns every transaction with the gas it used, for a dry run before anything is sent.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from eth_utils import is_address, to_checksum_address

from allmende.chain.anvil import Anvil, is_devnet_chain
from allmende.chain.bindings import Contracts, eip3009_supported
from allmende.chain.client import ChainClient, SentTransaction
from allmende.chain.compile import compile_contract, evm_version_of
from allmende.chain.deployment import Deployment as Deployment  # re-exported: where callers look for it
from allmende.chain.errors import ChainError
from allmende.chain.sources import ZERO_ADDRESS
from allmende.core.errors import InvalidInput

ALM = 10**18
USD = 10**6
INITIAL_ALM_SUPPLY = 1_000_000_000 * ALM
DEVNET_ALM_PER_ACCOUNT = 1_000_000 * ALM
DEVNET_USD_PER_ACCOUNT = 1_000_000 * USD
PAYMENT_DECIMALS = 6  # prices, credit limits and every amount the CLI shows are in 10**-6 units


@dataclass(frozen=True)
class PaymentToken:
    address: str
    symbol: str
    decimals: int
    eip3009: bool  # transferWithAuthorization, as USDC has it: gateways take x402 payments only in such a token


def check_payment_token(client: ChainClient, address: str) -> PaymentToken:
    """An existing ERC-20 to pay with, read on chain: code at the address, `decimals()` equal to
    PAYMENT_DECIMALS (USDC and USDT have 6), a `symbol()` and a `totalSupply()`; and whether it
    has EIP-3009, which a gateway's x402 payments (and so the agents that pay with x402) need:
    USDC has it, USDT does not. Without it the deployment still works for channels."""
    if not is_address(address):
        raise InvalidInput(f"payment token {address!r} is not an address (0x followed by 40 hex digits)")
    address = to_checksum_address(address)
    chain_id = client.chain_id
    code = client.rpc(lambda: bytes(client.w3.eth.get_code(address)), "get_code")
    if not code:
        raise InvalidInput(f"payment token {address}: no contract there on chain {chain_id}")
    abi = compile_contract("MockStable").abi  # its ERC-20 and EIP-3009 parts
    token = client.contract(address, abi)
    try:
        decimals = int(client.call(token.functions.decimals()))
        symbol = str(client.call(token.functions.symbol()))
        client.call(token.functions.totalSupply())
    except ChainError as exc:
        raise InvalidInput(f"payment token {address} on chain {chain_id} does not answer as an ERC-20: {exc}") from None
    if decimals != PAYMENT_DECIMALS:
        raise InvalidInput(
            f"payment token {address} ({symbol}) has {decimals} decimals: Allmende's prices and credit limits are in "
            f"{PAYMENT_DECIMALS}-decimal units (USDC, USDT); use a {PAYMENT_DECIMALS}-decimal stablecoin"
        )
    return PaymentToken(address, symbol, decimals, eip3009_supported(client, address, abi))


def load_distribution(path: str | Path) -> dict[str, int]:
    """The initial ALM distribution from a file: a JSON object {"0xADDRESS": "ALM amount", …} or
    CSV lines `0xADDRESS,amount` (amounts in whole ALM, up to 18 decimals; `#` lines are comments)."""
    source = Path(path)
    try:
        text = source.read_text()
    except OSError as exc:
        raise InvalidInput(f"distribution file {source}: {exc.strerror}") from None
    rows: list[tuple[str, str]]
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"distribution file {source}: not JSON: {exc}") from None
        rows = [(str(k), str(v)) for k, v in data.items()]
    else:
        rows = []
        for line in csv.reader(ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")):
            if len(line) != 2:
                raise InvalidInput(f"distribution file {source}: expected 'address,amount', got {','.join(line)!r}")
            rows.append((line[0].strip(), line[1].strip()))
    out: dict[str, int] = {}
    for who, amount in rows:
        if not is_address(who) or int(who, 16) == 0:
            raise InvalidInput(f"distribution file {source}: {who!r} is not an address")
        try:
            units = Decimal(amount) * ALM
        except InvalidOperation:
            units = Decimal(-1)
        if not units.is_finite() or units <= 0 or units != units.to_integral_value():
            raise InvalidInput(f"distribution file {source}: {who}: {amount!r} is not a positive ALM amount")
        address = to_checksum_address(who)
        if address in out:
            raise InvalidInput(f"distribution file {source}: {address} is named twice")
        out[address] = int(units)
    if sum(out.values()) > INITIAL_ALM_SUPPLY:
        raise InvalidInput(f"distribution file {source}: {sum(out.values()) / ALM:,} ALM is more than the supply")
    return out


def hand_over(client: ChainClient, deployment: Deployment, governor: str) -> None:
    """The Governor proposes and executes through the Timelock (nobody else executes, so an
    expired proposal stays dead), the Timelock owns Params, Registry, Channels and ALM
    minting (and holds the treasury), and the deployer keeps nothing."""
    timelock = client.contract(deployment.address("Timelock"), deployment.abi("Timelock"))
    for role in ("PROPOSER_ROLE", "CANCELLER_ROLE", "EXECUTOR_ROLE"):
        client.transact(timelock.functions.grantRole(client.call(getattr(timelock.functions, role)()), governor))
    executor = client.call(timelock.functions.EXECUTOR_ROLE())
    client.transact(timelock.functions.revokeRole(executor, ZERO_ADDRESS))
    for name in ("Params", "Registry", "Channels", "AllmendeToken"):
        owned = client.contract(deployment.address(name), deployment.abi(name))
        client.transact(owned.functions.transfer_ownership(timelock.address))
    admin_role = client.call(timelock.functions.DEFAULT_ADMIN_ROLE())
    client.transact(timelock.functions.renounceRole(admin_role, client.address))


def deploy_all(
    client: ChainClient,
    treasury: str | None = None,
    devnet: bool = True,
    fund: list[str] | None = None,
    *,
    payment_token: str | None = None,
    distribution: dict[str, int] | None = None,
    evm_version: str | None = None,
) -> Deployment:
    """Compile (for `evm_version`) and deploy ALM, the payment token (devnet: dUSD; else the
    existing ERC-20 `payment_token`), Params, Timelock, Registry, Models, Channels, Verdicts,
    Votes, Governor and Data, approve the payment token for Channels, then hand every admin
    power to the Timelock (the treasury too, unless `treasury` names another address).

    On a devnet (refused on any chain id but a devnet's), every address in `fund` receives ALM
    and (with the mock token) dUSD from the deployer. Elsewhere `fund` is refused, every address
    in `distribution` receives its ALM, and the rest of the supply goes to the treasury.
    Everything is checked before the first transaction is sent."""
    deployer = client.address
    chain_id = client.chain_id
    evm = evm_version_of(evm_version)
    if devnet and not is_devnet_chain(chain_id):
        raise InvalidInput(
            f"chain {chain_id} is not a devnet: a devnet deployment (a mock token anyone can mint, ALM for "
            "anvil's public keys) is refused here; deploy with an existing payment token instead"
        )
    if not devnet:
        if payment_token is None:
            raise InvalidInput("a deployment outside a devnet needs an existing payment token (its address)")
        if fund:
            raise InvalidInput("funding accounts is devnet only: name the ALM recipients in the distribution")
    if distribution and devnet:
        raise InvalidInput("an ALM distribution is for real networks; a devnet funds the accounts it is given")
    existing = check_payment_token(client, payment_token) if payment_token else None
    if treasury is not None and not is_address(treasury):
        raise InvalidInput(f"treasury {treasury!r} is not an address")
    start_block = client.block_number()
    out: dict[str, dict[str, Any]] = {}

    def put(name: str, *args: Any) -> str:
        artifact = compile_contract(name, evm)
        address, _ = client.deploy(artifact.abi, artifact.bytecode, *args, what=f"deploy {name}")
        out[name] = {"address": address, "abi": artifact.abi}
        return address

    token = put("AllmendeToken", INITIAL_ALM_SUPPLY, deployer)
    if existing is not None:
        stable = existing.address
        out["MockStable"] = {"address": stable, "abi": compile_contract("MockStable", evm).abi}
    else:
        stable = put("MockStable")
    params = put("Params")
    delay = int(client.call(client.contract(params, out["Params"]["abi"]).functions.get("timelock_delay")))
    timelock = put("Timelock", delay, [], [ZERO_ADDRESS], deployer)
    treasury = treasury or timelock
    registry = put("Registry", token, params)
    models = put("Models", params, registry)
    put("Channels", stable, params, models, treasury)
    verdicts = put("Verdicts", token, registry, params, treasury)
    votes = put("Votes", token, params)
    governor = put("Governor", registry, votes, params, timelock)
    put("Data", registry)
    deployment = Deployment(
        chain_id=client.chain_id,
        rpc_url=client.rpc_url,
        deploy_block=start_block,
        deployer=deployer,
        treasury=treasury,
        devnet=devnet,
        contracts=out,
        evm_version=evm,
    )
    contracts = Contracts(client, deployment)
    contracts.registry.set_verdicts(verdicts)
    contracts.channels.set_payment_token_approved(True)
    hand_over(client, deployment, governor)
    if devnet and fund:
        for who in fund:
            if existing is None:
                contracts.stable.mint(who, DEVNET_USD_PER_ACCOUNT)
            if who.lower() != deployer.lower():
                contracts.token.transfer(who, DEVNET_ALM_PER_ACCOUNT)
    if not devnet:
        named = distribution or {}
        for who, amount in named.items():
            if who.lower() != deployer.lower():
                contracts.token.transfer(who, amount)
        keep = next((amount for who, amount in named.items() if who.lower() == deployer.lower()), 0)
        rest = contracts.token.balance_of(deployer) - keep
        if rest > 0:
            contracts.token.transfer(deployment.treasury, rest)  # the deployer keeps only what it was named for
    return deployment


def rehearse(rpc_url: str, key: bytes, **options: Any) -> tuple[Deployment, list[tuple[str, SentTransaction]], int]:
    """The deployment `deploy_all(**options)` would make, run against a local fork of the chain
    at `rpc_url` (anvil --fork-url, same chain id, same account and nonces): every transaction it
    sends with the gas it used, and the chain's gas price now. Nothing reaches the real chain."""
    real = ChainClient(rpc_url)
    chain_id, gas_price = real.chain_id, real.rpc(lambda: int(real.w3.eth.gas_price))
    with Anvil(chain_id=chain_id, fork_url=rpc_url) as fork:
        client = ChainClient(fork.url, key)
        client.journal = []
        deployment = deploy_all(client, **options)
        return deployment, list(client.journal), gas_price
