"""Deploy every contract to any EVM and describe the result in a deployments JSON
(`Deployment`, in chain/deployment.py, which the bindings read too)."""

from __future__ import annotations

from typing import Any

from allmende.chain.bindings import Contracts
from allmende.chain.client import ChainClient
from allmende.chain.compile import compile_contract
from allmende.chain.deployment import Deployment as Deployment  # re-exported: where callers look for it
from allmende.chain.errors import DeploymentNotFound
from allmende.chain.sources import ZERO_ADDRESS

ALM = 10**18
USD = 10**6
INITIAL_ALM_SUPPLY = 1_000_000_000 * ALM
DEVNET_ALM_PER_ACCOUNT = 1_000_000 * ALM
DEVNET_USD_PER_ACCOUNT = 1_000_000 * USD


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
) -> Deployment:
    """Compile and deploy ALM, (devnet) dUSD, Params, Timelock, Registry, Models, Channels,
    Verdicts, Votes, Governor and Data, approve the payment token for Channels, then hand every admin
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
    )
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
