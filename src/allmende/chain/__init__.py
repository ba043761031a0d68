"""The chain client, devnet, compilation, deployment and contract bindings."""

from allmende.chain.bindings import Contracts
from allmende.chain.client import ChainClient, SentTransaction
from allmende.chain.deploy import Deployment, deploy_all
from allmende.chain.errors import (
    ChainError,
    ContractReverted,
    DeploymentNotFound,
    RpcUnavailable,
    TransactionFailed,
)

__all__ = [
    "ChainClient",
    "ChainError",
    "ContractReverted",
    "Contracts",
    "Deployment",
    "DeploymentNotFound",
    "RpcUnavailable",
    "SentTransaction",
    "TransactionFailed",
    "deploy_all",
]
