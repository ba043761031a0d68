"""Errors from talking to a chain.

AllmendeError
└── ChainError (RuntimeError)
    ├── RpcUnavailable         the JSON-RPC endpoint cannot be reached (or answers HTTP errors)
    ├── RpcRefused             the node answered a JSON-RPC error (`.code`, `.message`)
    │   └── LogRangeTooLarge   eth_getLogs over more blocks than the node allows
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


class RpcRefused(ChainError):
    """The node answered the request with a JSON-RPC error that is not a revert."""

    code = "rpc_refused"

    def __init__(self, message: str, rpc_code: int | None = None, what: str = "") -> None:
        self.message = message
        self.rpc_code = rpc_code
        where = f"{what}: " if what else ""
        super().__init__(f"{where}the node refused the request: {message}")


class LogRangeTooLarge(RpcRefused):
    """An eth_getLogs range the node will not serve in one query (hosted endpoints cap it)."""

    code = "log_range_too_large"


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
