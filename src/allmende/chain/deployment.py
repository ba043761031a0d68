"""Where a deployment's contracts are: the deployments JSON that `deploy_all` writes and
every node reads.

deployments.json = {chain_id, rpc_url, deploy_block, deployer, treasury, devnet, evm_version,
                    contracts: {Name: {address, abi}}}

`deploy_block` is where every log read starts; `evm_version` is what the contracts were
compiled for ("" in files written before it was recorded: the compiler's default), so a
joining node compiles the same bytecode. The payment token is listed as "MockStable" whether
it is the devnet's mock or an existing ERC-20 (then `devnet` is false).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allmende.chain.errors import DeploymentNotFound


@dataclass
class Deployment:
    chain_id: int
    rpc_url: str
    deploy_block: int
    deployer: str
    treasury: str
    devnet: bool
    contracts: dict[str, dict[str, Any]] = field(default_factory=dict)
    evm_version: str = ""

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
            "evm_version": self.evm_version,
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
            raise DeploymentNotFound(
                f"no deployments file at {source}: to join a running network pass --network URL "
                "(a gateway's or the chain's), or the deployments JSON of the network you use "
                "(`allmende up` writes <state-dir>/run/deployments.json)"
            )
        try:
            return cls(**json.loads(source.read_text()))
        except (ValueError, TypeError) as exc:
            raise DeploymentNotFound(f"{source} is not a deployments file: {exc}") from None
