"""The one chain client every role uses: web3.py over any EVM JSON-RPC URL.

- transactions are signed locally; nonces come from a per-account counter behind
  a lock, so many threads can send at once without reusing a nonce;
- every call and transaction that reverts raises ContractReverted with the
  contract's reason string; an unreachable node raises RpcUnavailable;
- events are read in pages of blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError
from web3.types import TxReceipt

from allmende.chain.errors import ContractReverted, RpcUnavailable, TransactionFailed

T = TypeVar("T")
_REVERT_PREFIX = "execution reverted: "


@dataclass(frozen=True)
class SentTransaction:
    tx_hash: str
    receipt: TxReceipt

    @property
    def gas_used(self) -> int:
        return int(self.receipt["gasUsed"])

    @property
    def block_number(self) -> int:
        return int(self.receipt["blockNumber"])


def revert_reason(exc: BaseException) -> str:
    """The contract's reason string out of a web3 exception."""
    message = getattr(exc, "message", None) or str(exc)
    if isinstance(message, str) and message.startswith(_REVERT_PREFIX):
        return message[len(_REVERT_PREFIX) :]
    if message == "execution reverted":
        return "reverted without a reason"
    return str(message)


class ChainClient:
    """A web3 connection plus (optionally) the account that signs transactions."""

    def __init__(self, rpc_url: str, key: bytes | None = None, timeout: float = 30.0) -> None:
        self.rpc_url = rpc_url
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        self.account: LocalAccount | None = Account.from_key(key) if key else None
        self.receipt_timeout = timeout
        self._nonce_lock = threading.Lock()
        self._next_nonce: int | None = None
        self._chain_id: int | None = None

    # ------------------------------------------------------------ basics

    @property
    def address(self) -> str:
        if self.account is None:
            raise TransactionFailed("this client has no key: it can read but not send transactions")
        return str(self.account.address)

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self.rpc(lambda: int(self.w3.eth.chain_id))
        return self._chain_id

    def block_number(self) -> int:
        return self.rpc(lambda: int(self.w3.eth.block_number))

    def timestamp(self) -> int:
        return self.rpc(lambda: int(self.w3.eth.get_block("latest")["timestamp"]))

    def contract(self, address: str, abi: list[dict[str, Any]]) -> Contract:
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)

    def rpc(self, thunk: Callable[[], T], what: str = "") -> T:
        """Run one RPC interaction, turning transport and revert errors into typed ones."""
        try:
            return thunk()
        except ContractLogicError as exc:
            raise ContractReverted(revert_reason(exc), what) from None
        except (requests.ConnectionError, requests.Timeout, ConnectionError) as exc:
            raise RpcUnavailable(f"chain endpoint {self.rpc_url} unreachable: {exc.__class__.__name__}") from None

    # ------------------------------------------------------------- calls

    def call(self, fn: ContractFunction, block: Any = "latest") -> Any:
        """A read-only call."""
        return self.rpc(lambda: fn.call(block_identifier=block), fn.fn_name)

    def transact(self, fn: ContractFunction, value: int = 0, gas: int | None = None) -> SentTransaction:
        """Sign, send and await a contract transaction; raises ContractReverted on revert."""
        return self._send(lambda base: dict(fn.build_transaction(cast(Any, base))), fn.fn_name, value, gas)

    def send_value(self, to: str, amount: int) -> SentTransaction:
        """A plain ETH transfer (the devnet faucet's gas money)."""
        target = Web3.to_checksum_address(to)
        return self._send(
            lambda base: {**base, "to": target, "gasPrice": self.w3.eth.gas_price}, "transfer", amount, 21_000
        )

    def deploy(self, abi: list[dict[str, Any]], bytecode: str, *args: Any) -> tuple[str, SentTransaction]:
        """Deploy a contract; returns (address, transaction)."""
        factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        sent = self._send(lambda base: factory.constructor(*args).build_transaction(base), "constructor", 0, None)
        address = sent.receipt["contractAddress"]
        if not address:
            raise TransactionFailed("deployment produced no contract address")
        return str(address), sent

    def _send(
        self, build: Callable[[dict[str, Any]], dict[str, Any]], what: str, value: int, gas: int | None
    ) -> SentTransaction:
        account = self.account
        if account is None:
            raise TransactionFailed("this client has no key: it can read but not send transactions")
        base: dict[str, Any] = {"from": account.address, "value": value, "chainId": self.chain_id}
        if gas is not None:
            base["gas"] = gas
        # build_transaction estimates gas, so a revert surfaces here with its reason
        tx = self.rpc(lambda: build(dict(base)), what)
        if gas is None:
            # the estimate holds for the state it saw; concurrent transactions (another node
            # registering, another batch redeeming) can make ours a little dearer when mined,
            # and so can the clock: estimated in the second of the latest block, a stake
            # checkpoint (Registry, Votes) is an overwrite; mined a second later it is new
            # storage, two slots per checkpoint and up to three checkpoints per transaction
            tx["gas"] = int(tx["gas"]) * 5 // 4 + 150_000
        with self._nonce_lock:
            for attempt in range(3):
                if self._next_nonce is None:
                    self._next_nonce = self.rpc(lambda: self.w3.eth.get_transaction_count(account.address, "pending"))
                tx["nonce"] = self._next_nonce
                signed = account.sign_transaction(tx)
                try:
                    raw = signed.raw_transaction
                    tx_hash = self.rpc(lambda: self.w3.eth.send_raw_transaction(raw), what)  # noqa: B023
                    break
                except Web3RPCError as exc:
                    self._next_nonce = None  # resynchronise from the node
                    reason = revert_reason(exc)
                    # another process sent with the same key meanwhile: take the next free nonce
                    if "nonce too low" in reason.lower() and attempt < 2:
                        continue
                    raise TransactionFailed(f"{what}: node refused the transaction: {reason}") from None
                except RpcUnavailable:
                    self._next_nonce = None
                    raise
            self._next_nonce = int(tx["nonce"]) + 1
        return self.wait(tx_hash.to_0x_hex(), what)

    def wait(self, tx_hash: str, what: str = "") -> SentTransaction:
        try:
            receipt = self.rpc(
                lambda: self.w3.eth.wait_for_transaction_receipt(cast(Any, tx_hash), timeout=self.receipt_timeout),
                what,
            )
        except TimeExhausted:
            raise TransactionFailed(f"{what}: {tx_hash} not mined within {self.receipt_timeout:.0f}s") from None
        if receipt["status"] != 1:
            raise TransactionFailed(f"{what}: {tx_hash} reverted when mined")
        return SentTransaction(tx_hash, receipt)

    # ------------------------------------------------------------ events

    def events(
        self,
        contract: Contract,
        event: str,
        from_block: int,
        to_block: int | None = None,
        page: int = 2_000,
        argument_filters: dict[str, Any] | None = None,
    ) -> Iterator[Any]:
        """Every `event` log of `contract` in [from_block, to_block], fetched `page` blocks at a time."""
        last = self.block_number() if to_block is None else to_block
        start = from_block
        handle: Any = getattr(contract.events, event)
        while start <= last:
            end = min(start + page - 1, last)
            page_filter = {"from_block": start, "to_block": end, "argument_filters": argument_filters}
            logs: Any = self.rpc(partial(handle.get_logs, **page_filter), event)
            yield from logs
            start = end + 1

    # ------------------------------------------------------------ devnet

    def increase_time(self, seconds: int) -> None:
        """Devnet only (anvil): move the clock forward and mine a block."""
        self.rpc(lambda: self.w3.provider.make_request(cast(Any, "evm_increaseTime"), [seconds]))
        self.rpc(lambda: self.w3.provider.make_request(cast(Any, "evm_mine"), []))
