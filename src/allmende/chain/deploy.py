"""Deploy every contract to any EVM and describe the result in a deployments JSON.

deployments.json = {chain_id, rpc_url, deploy_block, deployer, treasury, devnet,
                    contracts: {Name: {address, abi}}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allmende.chain.client import ChainClient
from allmende.chain.compile import compile_contract
from allmende.chain.errors import DeploymentNotFound
from allmende.contracts import ZERO_ADDRESS

ALM = 10**18
USD = 10**6
INITIAL_ALM_SUPPLY = 1_000_000_000 * ALM
DEVNET_ALM_PER_ACCOUNT = 1_000_000 * ALM
DEVNET_USD_PER_ACCOUNT = 1_000_000 * USD


@dataclass
class Deployment:
    chain_id: int
    rpc_url: str
    deploy_block: int
    deployer: str
    treasury: str
    devnet: bool
    contracts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def address(self, name: str) -> str:
        try:
            return str(self.contracts[name]["address"])
        except KeyError:
            raise DeploymentNotFound(f"contract {name} is not in this deployment") from None

    def abi(self, name: str) -> list[dict[str, Any]]:
        try:
            return list(self.contracts[name]["abi"])
        except KeyError:
            raise DeploymentNotFound(f"contract {name} is not in this deployment") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "rpc_url": self.rpc_url,
            "deploy_block": self.deploy_block,
            "deployer": self.deployer,
            "treasury": self.treasury,
            "devnet": self.devnet,
            "contracts": self.contracts,
        }

    def save(self, path: str | Path) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(target)  # atomic: a reader never sees half a file

    @classmethod
    def load(cls, path: str | Path) -> Deployment:
        source = Path(path)
        if not source.exists():
            raise DeploymentNotFound(f"no deployments file at {source}: run `allmende chain deploy` first")
        data = json.loads(source.read_text())
        return cls(**data)


def hand_over(client: ChainClient, deployment: Deployment, governor: str) -> None:
    """The Governor proposes through the Timelock, the Timelock owns Params, Registry,
    Channels and ALM minting (and holds the treasury), and the deployer keeps nothing."""
    timelock = client.contract(deployment.address("Timelock"), deployment.abi("Timelock"))
    for role in ("PROPOSER_ROLE", "CANCELLER_ROLE"):
        client.transact(timelock.functions.grantRole(client.call(getattr(timelock.functions, role)()), governor))
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
) -> Deployment:
    """Compile and deploy ALM, (devnet) dUSD, Params, Timelock, Registry, Models, Channels,
    Verdicts, Governor and Data, approve the payment token for Channels, then hand every admin
    power to the Timelock (the treasury too, unless `treasury` names another address). On a
    devnet, every address in `fund` receives ALM and dUSD from the deployer's initial supply.
    """
    deployer = client.address
    start_block = client.block_number()
    out: dict[str, dict[str, Any]] = {}

    def put(name: str, *args: Any) -> str:
        artifact = compile_contract(name)
        address, _ = client.deploy(artifact.abi, artifact.bytecode, *args)
        out[name] = {"address": address, "abi": artifact.abi}
        return address

    token = put("AllmendeToken", INITIAL_ALM_SUPPLY, deployer)
    stable = put("MockStable") if devnet else None
    if stable is None:
        raise DeploymentNotFound("a non-devnet deployment needs an existing payment token (not supported yet)")
    params = put("Params")
    delay = int(client.call(client.contract(params, out["Params"]["abi"]).functions.get("timelock_delay")))
    timelock = put("Timelock", delay, [], [ZERO_ADDRESS], deployer)
    treasury = treasury or timelock
    registry = put("Registry", token, params)
    models = put("Models", params, registry)
    put("Channels", stable, params, models, treasury)
    verdicts = put("Verdicts", token, registry, params, treasury)
    governor = put("Governor", registry, params, timelock)
    put("Data", registry)
    deployment = Deployment(
        chain_id=client.chain_id,
        rpc_url=client.rpc_url,
        deploy_block=start_block,
        deployer=deployer,
        treasury=treasury,
        devnet=devnet,
        contracts=out,
    )
    from allmende.chain.bindings import Contracts

    contracts = Contracts(client, deployment)
    contracts.registry.set_verdicts(verdicts)
    contracts.channels.set_payment_token_approved(True)
    hand_over(client, deployment, governor)
    if devnet and fund:
        for who in fund:
            contracts.stable.mint(who, DEVNET_USD_PER_ACCOUNT)
            if who.lower() != deployer.lower():
                contracts.token.transfer(who, DEVNET_ALM_PER_ACCOUNT)
    return deployment
