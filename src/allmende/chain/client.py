"""The one chain client every role uses: web3.py over any EVM JSON-RPC URL.

- transactions are signed locally; nonces come from a per-account counter behind
  a lock, so many threads can send at once without reusing a nonce;
- every call and transaction that reverts raises ContractReverted with the
  contract's reason string; an unreachable node (or an HTTP error such as 429) raises
  RpcUnavailable; any other JSON-RPC error raises RpcRefused;
- transactions are EIP-1559 where the chain has a base fee, legacy (gasPrice) where not;
- every log read goes through `logs`/`events`: pages of blocks from the caller's first block
  (the deployment's, never 0), halved whenever the node refuses a range (hosted endpoints cap
  eth_getLogs at 1,000–10,000 blocks), the smaller page kept for the next read.
"""

from __future__ import annotations

import threading
import time
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
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import RPCEndpoint, TxReceipt

from allmende.chain.errors import (
    ChainError,
    ContractReverted,
    LogRangeTooLarge,
    RpcRefused,
    RpcUnavailable,
    TransactionFailed,
)
from allmende.config import from_environment
from allmende.core.errors import InvalidInput

T = TypeVar("T")
_REVERT_PREFIX = "execution reverted: "
# what a node answers when the nonce we used is no longer ours to use (another process sent
# with the same key): resynchronise the nonce and sign again
_NONCE_TAKEN = ("nonce too low", "replacement transaction underpriced", "already known")
_NONCE_TRIES = 10  # each retry reads the node's count again; other senders may take it meanwhile
# how nodes word a refused eth_getLogs range: Alchemy ("query exceeds max block range 1000",
# "Log response size exceeded"), Infura ("query returned more than 10000 results"), QuickNode
# ("eth_getLogs is limited to a 10,000 range"), geth/erigon ("block range too large") …
_RANGE_WORDS = ("range", "exceed", "more than", "too many", "limit", "too large")
LOG_PAGE = 10_000  # blocks per eth_getLogs to start with; halved on every range refusal


class _Replaced(Exception):
    """Our transaction was dropped: another one from the same account took its nonce."""


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

    def __init__(
        self, rpc_url: str, key: bytes | None = None, timeout: float = 30.0, receipt_timeout: float | None = None
    ) -> None:
        self.rpc_url = rpc_url
        # web3 asks the node for its chain id before every call and transaction (twice per
        # eth_call): an RPC URL's chain id is cached for the client's life, and nothing else is
        # (a devnet's blocks are reverted and mined again under the same numbers)
        provider = Web3.HTTPProvider(
            rpc_url,
            request_kwargs={"timeout": timeout},
            cache_allowed_requests=True,
            cacheable_requests={RPCEndpoint("eth_chainId")},
        )
        self.w3 = Web3(provider)
        self.account: LocalAccount | None = Account.from_key(key) if key else None
        self.receipt_timeout = _receipt_timeout(timeout) if receipt_timeout is None else receipt_timeout
        self.log_page = LOG_PAGE
        # every transaction this client sends, in order, when set to a list (a deploy's dry run)
        self.journal: list[tuple[str, SentTransaction]] | None = None
        self._nonce_lock = threading.Lock()
        self._next_nonce: int | None = None
        self._chain_id: int | None = None
        self._legacy_gas: bool | None = None

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
        except Web3RPCError as exc:
            error = (exc.rpc_response or {}).get("error") if isinstance(exc.rpc_response, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            message = str(error.get("message")) if isinstance(error, dict) and error.get("message") else str(exc)
            raise RpcRefused(message, code if isinstance(code, int) else None, what) from None
        except (requests.ConnectionError, requests.Timeout, ConnectionError) as exc:
            raise RpcUnavailable(f"chain endpoint {self.rpc_url} unreachable: {exc.__class__.__name__}") from None
        except requests.HTTPError as exc:  # 429 rate limits, 5xx: the endpoint, not this request
            raise RpcUnavailable(f"chain endpoint {self.rpc_url} answered {exc}") from None

    def legacy_gas(self) -> bool:
        """Whether this chain prices gas the pre-London way (no `baseFeePerGas` in its blocks)."""
        if self._legacy_gas is None:
            block = self.rpc(lambda: self.w3.eth.get_block("latest"))
            self._legacy_gas = block.get("baseFeePerGas") is None
        return self._legacy_gas

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
            lambda base: {"gasPrice": self.w3.eth.gas_price, **base, "to": target}, "transfer", amount, 21_000
        )

    def deploy(
        self, abi: list[dict[str, Any]], bytecode: str, *args: Any, what: str = "constructor"
    ) -> tuple[str, SentTransaction]:
        """Deploy a contract; returns (address, transaction)."""
        factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        sent = self._send(lambda base: factory.constructor(*args).build_transaction(base), what, 0, None)
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
        if self.legacy_gas():
            base["gasPrice"] = self.rpc(lambda: int(self.w3.eth.gas_price))  # no base fee: a legacy transaction
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
        for _ in range(3):
            tx_hash, nonce = self._sign_and_send(tx, what)
            try:
                sent = self.wait(tx_hash, what, nonce=nonce)
                if self.journal is not None:
                    self.journal.append((what, sent))
                return sent
            except _Replaced:
                # another process sending with the same key (a shared faucet account) took
                # this nonce with its own transaction, and ours was dropped: send it again
                continue
        raise TransactionFailed(f"{what}: replaced by other transactions from {account.address} three times")

    def _sign_and_send(self, tx: dict[str, Any], what: str) -> tuple[str, int]:
        account = cast(LocalAccount, self.account)
        with self._nonce_lock:
            for attempt in range(_NONCE_TRIES):
                if self._next_nonce is None:
                    self._next_nonce = self.rpc(lambda: self.w3.eth.get_transaction_count(account.address, "pending"))
                tx["nonce"] = self._next_nonce
                signed = account.sign_transaction(tx)
                try:
                    raw = signed.raw_transaction
                    tx_hash = self.rpc(lambda: self.w3.eth.send_raw_transaction(raw), what)  # noqa: B023
                    break
                except (RpcRefused, ContractReverted) as exc:
                    self._next_nonce = None  # resynchronise from the node
                    reason = exc.message if isinstance(exc, RpcRefused) else exc.reason
                    # another process sent with the same key meanwhile: take the next free nonce.
                    # Known by the node's own count, not only by its wording (Ganache says
                    # "doesn't have the correct nonce"): a count past ours means ours was taken
                    taken = any(word in reason.lower() for word in _NONCE_TAKEN) or self._nonce_taken(
                        account.address, int(tx["nonce"])
                    )
                    if taken and attempt < _NONCE_TRIES - 1:
                        time.sleep(0.01 * 2**attempt)  # the node's count may lag behind what it is mining
                        continue
                    raise TransactionFailed(f"{what}: node refused the transaction: {reason}") from None
                except RpcUnavailable:
                    self._next_nonce = None
                    raise
            self._next_nonce = int(tx["nonce"]) + 1
        return tx_hash.to_0x_hex(), int(tx["nonce"])

    def _nonce_taken(self, sender: str, nonce: int) -> bool:
        """Whether the node already counts a transaction from `sender` at `nonce` (ours was refused
        because another one holds that nonce)."""
        try:
            return int(self.rpc(lambda: self.w3.eth.get_transaction_count(cast(Any, sender), "pending"))) > nonce
        except ChainError:
            return False

    def wait(self, tx_hash: str, what: str = "", nonce: int | None = None) -> SentTransaction:
        """The receipt of `tx_hash`, once mined. Given the transaction's `nonce`, a transaction
        that the node dropped because another one from the same account took that nonce
        raises _Replaced at once rather than after the timeout."""
        deadline = time.monotonic() + self.receipt_timeout
        sender = self.account.address if self.account is not None else None
        pause = 0.05
        while True:
            receipt = self.rpc(lambda: self._receipt(tx_hash), what)
            if receipt is not None:
                break
            if nonce is not None and sender is not None and self.rpc(lambda: self._replaced(tx_hash, sender, nonce)):
                raise _Replaced(tx_hash)
            if time.monotonic() > deadline:
                raise TransactionFailed(f"{what}: {tx_hash} not mined within {self.receipt_timeout:.0f}s")
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
        if receipt["status"] != 1:
            raise TransactionFailed(f"{what}: {tx_hash} reverted when mined")
        return SentTransaction(tx_hash, receipt)

    def _receipt(self, tx_hash: str) -> TxReceipt | None:
        try:
            return self.w3.eth.get_transaction_receipt(cast(Any, tx_hash))
        except TransactionNotFound:
            return None

    def _replaced(self, tx_hash: str, sender: str, nonce: int) -> bool:
        """Whether the account's `nonce` was used by a mined transaction other than ours."""
        if self.w3.eth.get_transaction_count(cast(Any, sender), "latest") <= nonce:
            return False  # the nonce is still free: ours may yet be mined
        if self._receipt(tx_hash) is not None:
            return False  # mined is mined
        # the nonce is used and our receipt not there (yet): a node may count a block's nonces
        # before it serves the block's receipts (anvil under load did), so ours is replaced only
        # if the node no longer knows it at all: a dropped transaction leaves its pool
        try:
            self.w3.eth.get_transaction(cast(Any, tx_hash))
        except TransactionNotFound:
            return True
        return False

    # ------------------------------------------------------------ events

    def events(
        self,
        contract: Contract,
        event: str,
        from_block: int,
        to_block: int | None = None,
        page: int | None = None,
        argument_filters: dict[str, Any] | None = None,
    ) -> Iterator[Any]:
        """Every `event` log of `contract` in [from_block, to_block], decoded, read through `paged`."""
        handle: Any = getattr(contract.events, event)

        def fetch(start: int, end: int) -> list[Any]:
            page_filter = {"from_block": start, "to_block": end, "argument_filters": argument_filters}
            return list(self.rpc(partial(handle.get_logs, **page_filter), event))

        yield from self.paged(fetch, from_block, to_block, page)

    def logs(self, query: dict[str, Any], from_block: int, to_block: int | None = None) -> Iterator[Any]:
        """Every raw log matching `query` (address, topics) in [from_block, to_block], read through `paged`."""

        def fetch(start: int, end: int) -> list[Any]:
            q: Any = {**query, "fromBlock": start, "toBlock": end}
            return list(self.rpc(lambda: self.w3.eth.get_logs(q), "eth_getLogs"))

        yield from self.paged(fetch, from_block, to_block)

    def paged(
        self,
        fetch: Callable[[int, int], list[Any]],
        from_block: int,
        to_block: int | None = None,
        page: int | None = None,
    ) -> Iterator[Any]:
        """The one way logs are read: `fetch(start, end)` over [from_block, to_block] (the head
        when None) a page of blocks at a time, the page halved whenever the node refuses the
        range, and the smaller page kept for this client's next read. Other errors are the
        typed ones `rpc` raises."""
        last = self.block_number() if to_block is None else to_block
        size = max(1, min(page or self.log_page, self.log_page))
        start = max(0, from_block)
        while start <= last:
            end = min(start + size - 1, last)
            try:
                logs = fetch(start, end)
            except RpcRefused as exc:
                if not _range_refusal(exc):
                    raise
                if size == 1:
                    raise LogRangeTooLarge(exc.message, exc.rpc_code, "eth_getLogs") from None
                size //= 2
                self.log_page = min(self.log_page, size)
                continue
            yield from logs
            start = end + 1

    # ------------------------------------------------------------ devnet

    def increase_time(self, seconds: int) -> None:
        """Devnet only (anvil, Hardhat): move the clock forward and mine a block. A node that
        does not know these methods raises RpcRefused (checked: its answer is an error object)."""
        for method, params in (("evm_increaseTime", [seconds]), ("evm_mine", [])):
            reply: Any = self.rpc(lambda m=method, p=params: self.w3.provider.make_request(cast(Any, m), p))  # type: ignore[misc]
            error = reply.get("error") if isinstance(reply, dict) else None
            if error:
                message = error.get("message", error) if isinstance(error, dict) else error
                raise RpcRefused(str(message), None, method)


def _receipt_timeout(default: float) -> float:
    """ALLMENDE_RECEIPT_TIMEOUT (seconds to await a receipt), else `default`."""
    value = from_environment().receipt_timeout
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise InvalidInput(f"ALLMENDE_RECEIPT_TIMEOUT={value!r}: expected a positive number of seconds")
    return seconds


def _range_refusal(exc: ChainError) -> bool:
    """Whether a refused eth_getLogs reads as "too many blocks or results at once"."""
    if isinstance(exc, LogRangeTooLarge):
        return True
    message = exc.message.lower() if isinstance(exc, RpcRefused) else str(exc).lower()
    return any(word in message for word in _RANGE_WORDS)
