"""Errors from talking to a chain.

AllmendeError
└── ChainError (RuntimeError)
    ├── RpcUnavailable         the JSON-RPC endpoint cannot be reached
    ├── ContractReverted       a call or transaction reverted; `.reason` holds the contract's string
    ├── TransactionFailed      mined with status 0, or not mined in time
    └── DeploymentNotFound     no deployments file / contract missing from it
"""

from __future__ import annotations

from allmende.core.errors import AllmendeError


class ChainError(AllmendeError, RuntimeError):
    code = "chain_error"
    status = 503  # the chain is not this request's fault: try again, or another node


class RpcUnavailable(ChainError):
    code = "rpc_unavailable"


class ContractReverted(ChainError):
    """A revert with the contract's reason string (e.g. "channels: over deposit")."""

    code = "contract_reverted"

    def __init__(self, reason: str, function: str = "") -> None:
        self.reason = reason
        self.function = function
        where = f" in {function}" if function else ""
        super().__init__(f"reverted{where}: {reason}")


class TransactionFailed(ChainError):
    code = "transaction_failed"


class DeploymentNotFound(ChainError):
    code = "deployment_not_found"
