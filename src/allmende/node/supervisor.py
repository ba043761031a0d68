"""Node processes: start one, wait until it is healthy, stop it, read its log — the one way
`allmende up`, the test helpers, the tests and the benches run provider, gateway, validator
and vault processes. And `NetworkInfo`, the typed form of the `network.json` that
`allmende up` writes for everything that talks to the network it started."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import httpx

from allmende.chain.anvil import die_with_parent_process
from allmende.core.errors import AllmendeError


class NodeFailed(AllmendeError):
    """A node exited while starting, or did not become healthy in time."""

    code = "node_failed"


class NodeRow(TypedDict):
    address: str
    url: str
    pid: int
    log: str


class ProviderRow(NodeRow):
    models: list[str]


class NetworkAccounts(TypedDict):
    deployer_and_treasury: str
    gateway_payer: str
    note: str


class NetworkInfo(TypedDict):
    """network.json: where everything of an `allmende up` network is."""

    rpc_url: str
    anvil_pid: int
    chain_id: int
    contracts: dict[str, str]
    deployments: str
    gateway_url: str  # …/v1, what an OpenAI client takes as base_url
    explorer_url: str
    gateway_pid: int
    providers: list[ProviderRow]
    validators: list[NodeRow]
    accounts: NetworkAccounts
    up_pid: NotRequired[int]  # the `allmende up` that started it (`allmende down` stops it first)


def load_network(path: Path) -> NetworkInfo:
    info: NetworkInfo = json.loads(path.read_text())
    return info


def save_network(path: Path, info: NetworkInfo) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(path)  # atomic: whoever waits for the file never reads half of it


def allmende_command(*args: str) -> list[str]:
    """`python -m allmende …` with this interpreter."""
    return [sys.executable, "-m", "allmende", *args]


@dataclass
class Node:
    """A running node process whose output goes to `log`."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def wait_healthy(
        self, timeout: float = 300.0, path: str = "/healthz", ready: Callable[[dict[str, Any]], bool] | None = None
    ) -> None:
        """Until GET url+path answers 200 (and `ready` accepts its JSON); NodeFailed if the
        process exits first or the time runs out."""
        assert self.url is not None, "a node without a URL has no health endpoint"
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as http:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise NodeFailed(f"{self.name} exited while starting; last lines of {self.log}:\n{self.log_tail()}")
                try:
                    reply = http.get(self.url + path)
                    if reply.status_code == 200 and (ready is None or ready(reply.json())):
                        return
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.2)
        raise NodeFailed(f"{self.name} did not become healthy within {timeout:.0f}s; see {self.log}")

    def stop(self, timeout: float = 30.0) -> None:
        """Ctrl-C, as a user would; killed if it does not stop in time."""
        if self.alive():
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def interrupt(self) -> None:
        """Ctrl-C without waiting (see stop_together)."""
        if self.alive():
            self.process.send_signal(signal.SIGINT)

    def kill9(self) -> None:
        self.process.kill()
        self.process.wait()


def stop_together(nodes: Sequence[Node], timeout: float) -> None:
    """Ctrl-C every node at once, then wait for all of them within one `timeout`; kill the
    ones still running after it. Stopping them one by one would add up their shutdowns."""
    for node in nodes:
        node.interrupt()
    deadline = time.monotonic() + timeout
    for node in nodes:
        try:
            node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()


def spawn(name: str, command: Sequence[str], log: Path, url: str | None = None, die_with_parent: bool = False) -> Node:
    """Start `command` with its output appended to `log` (not waiting for it), in a session of
    its own, as anvil is: a terminal's Ctrl-C then reaches only the supervisor, which stops each
    node once and in order. (Sharing the terminal's process group, a node got the Ctrl-C and
    then the supervisor's SIGINT, and uvicorn's shutdown ended in a logged traceback.) With
    `die_with_parent` the node gets SIGTERM (its clean stop) when the supervisor dies, even by
    kill -9 (chain.anvil.die_with_parent_process)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent_process if die_with_parent else None,
        )
    return Node(name, process, log, url)


def start(
    name: str,
    command: Sequence[str],
    log: Path,
    url: str,
    timeout: float = 300.0,
    ready: Callable[[dict[str, Any]], bool] | None = None,
) -> Node:
    """Spawn and wait until healthy; the process is killed if it never gets there."""
    node = spawn(name, command, log, url)
    try:
        node.wait_healthy(timeout, ready=ready)
    except BaseException:
        if node.alive():
            node.kill9()
        raise
    return node
