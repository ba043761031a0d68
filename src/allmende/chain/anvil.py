"""A local devnet: anvil from `.tools/` (npm package @foundry-rs/anvil).

anvil's accounts come from the public test mnemonic; they hold devnet ETH only and
are labelled as such wherever they are shown.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from eth_account import Account

from allmende.chain.errors import RpcUnavailable
from allmende.config import from_environment

DEVNET_MNEMONIC = "test test test test test test test test test test test junk"
DEVNET_CHAIN_ID = 31337
# chain ids that only local development nodes use (anvil and Hardhat: 31337; Ganache and geth
# --dev: 1337): devnet behaviour (mock token, gifts to anvil's public keys, moving the clock) is
# allowed on these alone
DEVNET_CHAIN_IDS = frozenset({31337, 1337})


def is_devnet_chain(chain_id: int) -> bool:
    return chain_id in DEVNET_CHAIN_IDS


_ANVIL_REL = Path(".tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")


@dataclass(frozen=True)
class DevnetAccount:
    """One of anvil's well-known accounts: public keys, devnet use only."""

    index: int
    address: str
    key: bytes
    label: str = field(default="")


def devnet_accounts(count: int = 10) -> list[DevnetAccount]:
    """anvil's default accounts, derived from the public test mnemonic."""
    Account.enable_unaudited_hdwallet_features()
    accounts = []
    for i in range(count):
        acct = Account.from_mnemonic(DEVNET_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        accounts.append(DevnetAccount(i, acct.address, bytes(acct.key), f"anvil devnet account #{i} (public key)"))
    return accounts


def find_anvil() -> Path:
    """The anvil binary: $ALLMENDE_ANVIL, the project's .tools/, or PATH."""
    override = from_environment().anvil
    if override:
        return override
    here = Path(__file__).resolve()
    for root in [Path.cwd(), *here.parents]:
        candidate = root / _ANVIL_REL
        if candidate.exists():
            return candidate
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise RpcUnavailable("anvil not found: run `make install` (it installs anvil into .tools/)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent_process() -> None:
    """In a child between fork and exec: ask the kernel (Linux's PR_SET_PDEATHSIG) to send it
    SIGTERM when the process that started it dies, however it dies: a supervisor killed with
    -9 then leaves no node running. A no-op where prctl is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Anvil:
    """A running anvil process. Use as a context manager or call stop()."""

    def __init__(
        self,
        port: int | None = None,
        chain_id: int = DEVNET_CHAIN_ID,
        block_time: float | None = None,
        state_file: Path | None = None,
        log_file: Path | None = None,
        host: str = "127.0.0.1",  # 0.0.0.0 lets nodes on other hosts reach the devnet
        die_with_parent: bool = False,  # stopped by the kernel if this process dies (even by kill -9)
        fork_url: str | None = None,  # a local copy of that chain's state (a deploy's dry run)
        hardfork: str | None = None,  # an older chain (e.g. "berlin": no base fee; "shanghai": no cancun opcodes)
    ) -> None:
        self.port = port or free_port()
        self.chain_id = chain_id
        self.url = f"http://127.0.0.1:{self.port}"
        args = [str(find_anvil()), "--host", host, "--port", str(self.port), "--chain-id", str(chain_id), "--silent"]
        if block_time:
            args += ["--block-time", str(block_time)]
        if state_file:
            args += ["--state", str(state_file)]
        if fork_url:
            args += ["--fork-url", fork_url]
        if hardfork:
            args += ["--hardfork", hardfork]
        out = log_file.open("ab") if log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent_process if die_with_parent else None,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RpcUnavailable(f"anvil exited with code {self.process.returncode} (port {self.port} in use?)")
            try:
                reply = httpx.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}, timeout=1)
                if reply.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RpcUnavailable(f"anvil did not answer on {self.url} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Anvil:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
