"""A local data-custody network for tests and benchmarks: anvil with the contracts, and
vault processes (`allmende vault`), each holding its own split of a dataset."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from allmende.chain import ChainClient, Contracts
from allmende.chain.anvil import Anvil, DevnetAccount, devnet_accounts, free_port
from allmende.chain.bindings import TEMPLATES
from allmende.chain.deploy import Deployment, deploy_all
from allmende.node.supervisor import Node, spawn
from allmende.vault.auth import VaultAddress, post_job, signed_headers
from allmende.vault.datasets import load_table, write_table
from allmende.vault.model import MICRO

FORMATS = (".csv", ".jsonl", ".parquet")
FIRST_VAULT_ACCOUNT = 4  # devnet accounts 0-3: deployer, model owner, coordinator, validator


@functools.cache
def address_of(url: str) -> VaultAddress:
    """A vault's address and signing domain (read once per URL)."""
    return VaultAddress.of(url)


def signed_post(url: str, key: bytes, payload: object) -> httpx.Response:
    """A job signed by `key` for the vault at `url` (as `allmende data …` signs it), sent once."""
    return post_job(url, key, payload, timeout=60, to=address_of(url))


def signed_request(
    url: str,
    key: bytes,
    path: str,
    operation: str,
    body: bytes | dict[str, object],
    dataset_id: bytes,
    grant_id: int,
    run_id: int = 0,
    round_number: int = 0,
    lifetime: int = 120,
) -> httpx.Request:
    """A signed request built but not sent, for tests that send it (again, elsewhere, later)."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    kind = "application/x-protobuf" if path == "/v1/flower" else "application/json"
    headers = {"content-type": kind, **signed_headers(key, address_of(url), operation, raw, dataset_id, grant_id,
                                                      run_id, round_number, lifetime)}  # fmt: skip
    return httpx.Request("POST", url.rstrip("/") + path, content=raw, headers=headers)


def send(request: httpx.Request, url: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
    """Send a built request as it is (a replay), optionally to another vault's `url`."""
    target = request.url if url is None else httpx.URL(url.rstrip("/") + request.url.path)
    with httpx.Client(timeout=120) as http:
        return http.request("POST", target, content=request.content, headers={**request.headers, **(headers or {})})


@dataclass
class LocalVault:
    url: str
    account: DevnetAccount
    files: list[Path]
    dataset_ids: list[bytes]
    process: subprocess.Popen[bytes]

    @property
    def dataset_id(self) -> bytes:
        return self.dataset_ids[0]


@dataclass
class VaultNetwork:
    root: Path
    anvil: Anvil
    deployments: Path
    accounts: list[DevnetAccount]
    vaults: list[LocalVault] = field(default_factory=list)

    @property
    def rpc_url(self) -> str:
        return self.anvil.url

    def contracts(self, account: DevnetAccount) -> Contracts:
        return Contracts(ChainClient(self.anvil.url, account.key), Deployment.load(self.deployments))

    def reader(self) -> Contracts:
        return Contracts(ChainClient(self.anvil.url), Deployment.load(self.deployments))

    def grant(
        self,
        vault: LocalVault,
        grantee: str,
        template: str,
        models: list[bytes],
        epsilon: float,
        dataset: bytes | None = None,
        seconds: int = 86_400,
    ) -> int:
        """The vault's owner (its key is also the owner's here) grants `grantee` a template."""
        c = self.contracts(vault.account)
        expires = c.client.timestamp() + seconds
        return c.data.grant(
            dataset or vault.dataset_id, grantee, TEMPLATES[template], models, expires, round(epsilon * MICRO)
        )

    def sharing(self, root: Path, files: list[list[Path]]) -> VaultNetwork:
        """This network's chain and vault processes, seen as holding only `files[i]` in vault i
        (each a file the vault was started with; a vault with none is left out), with its own
        `root` for what a test writes. A test module whose datasets ride along in another
        fixture's vaults uses it as its own network, without starting any: never stop it."""
        vaults = []
        for vault, held in zip(self.vaults, files, strict=False):
            if held:
                ids = [vault.dataset_ids[vault.files.index(f)] for f in held]
                vaults.append(LocalVault(vault.url, vault.account, list(held), ids, vault.process))
        root.mkdir(parents=True, exist_ok=True)
        return VaultNetwork(root, self.anvil, self.deployments, self.accounts, vaults)

    def stop(self) -> None:
        for v in self.vaults:
            if v.process.poll() is None:
                v.process.terminate()
        for v in self.vaults:
            try:
                v.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                v.process.kill()
        self.anvil.stop()


def start_vault_network(
    root: Path,
    splits: list[tuple[np.ndarray, np.ndarray]],
    extra: dict[int, list[tuple[str, np.ndarray, np.ndarray]]] | None = None,
    vault_args: list[str] | None = None,
    timeout: float = 60.0,
) -> VaultNetwork:
    """Anvil, the contracts, and one vault process per split (written as CSV, JSONL, Parquet in
    turn). `extra[i]` adds named (file name under `root`, features, labels) datasets to vault i;
    each table has as many columns as its features."""
    accounts = devnet_accounts(10)
    node = Anvil(port=free_port(), log_file=root / "anvil.log")
    try:
        deployment = deploy_all(ChainClient(node.url, accounts[0].key), fund=[a.address for a in accounts])
        deployments = root / "deployments.json"
        deployment.save(deployments)
        net = VaultNetwork(root, node, deployments, accounts)
        started: list[Node] = []
        for i, (x, y) in enumerate(splits):
            account = accounts[FIRST_VAULT_ACCOUNT + i]
            files = [write_table(root / f"vault-{i}-data{FORMATS[i % len(FORMATS)]}", _columns(x), x, y)]
            for name, ex, ey in (extra or {}).get(i, []):
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                files.append(write_table(root / name, _columns(ex), ex, ey))
            port = free_port()
            args = [
                sys.executable, "-m", "allmende", "vault", "--rpc", node.url, "--key", f"devnet:{account.index}",
                "--deployments", str(deployments), "--state-dir", str(root / f"vault-{i}"), "--port", str(port),
                *(vault_args or []),
            ]  # fmt: skip
            for f in files:
                args += ["--data", str(f)]
            vault = spawn(f"vault {i}", args, root / f"vault-{i}.log", f"http://127.0.0.1:{port}")
            ids = [load_table(f).dataset_id for f in files]
            net.vaults.append(LocalVault(f"http://127.0.0.1:{port}", account, files, ids, vault.process))
            started.append(vault)
        for vault in started:  # they load in parallel; wait for each
            vault.wait_healthy(timeout)
        return net
    except BaseException:
        for v in locals().get("net", VaultNetwork(root, node, root, [])).vaults:
            v.process.kill()
        node.stop()
        raise


def _columns(features: np.ndarray) -> list[str]:
    return [f"f{i}" for i in range(features.shape[1])]


def start_file_vaults(
    root: Path, files: list[list[Path]], vault_args: list[str] | None = None, timeout: float = 90.0
) -> VaultNetwork:
    """Anvil, the contracts, and one vault process per list of data files (any kind a vault
    loads: tables, or text and chat JSONL for the language-model templates)."""
    accounts = devnet_accounts(10)
    node = Anvil(port=free_port(), log_file=root / "anvil.log")
    try:
        deployment = deploy_all(ChainClient(node.url, accounts[0].key), fund=[a.address for a in accounts])
        deployments = root / "deployments.json"
        deployment.save(deployments)
        net = VaultNetwork(root, node, deployments, accounts)
        started: list[Node] = []
        for i, held in enumerate(files):
            started.append(add_vault(net, i, held, vault_args))
        for vault in started:
            vault.wait_healthy(timeout)
        return net
    except BaseException:
        for v in locals().get("net", VaultNetwork(root, node, root, [])).vaults:
            v.process.kill()
        node.stop()
        raise


def add_vault(net: VaultNetwork, i: int, held: list[Path], vault_args: list[str] | None = None) -> Node:
    """Start vault `i` (devnet account FIRST_VAULT_ACCOUNT + i) holding `held`; wait on the returned node."""
    from allmende.vault.text import is_text_file, load_text

    account = net.accounts[FIRST_VAULT_ACCOUNT + i]
    port = free_port()
    args = [
        sys.executable, "-m", "allmende", "vault", "--rpc", net.anvil.url, "--key", f"devnet:{account.index}",
        "--deployments", str(net.deployments), "--state-dir", str(net.root / f"vault-{i}"), "--port", str(port),
        *(vault_args or []),
    ]  # fmt: skip
    for f in held:
        args += ["--data", str(f)]
    vault = spawn(f"vault {i}", args, net.root / f"vault-{i}.log", f"http://127.0.0.1:{port}")
    ids = [(load_text(f) if is_text_file(f) else load_table(f)).dataset_id for f in held]
    net.vaults.append(LocalVault(f"http://127.0.0.1:{port}", account, list(held), ids, vault.process))
    return vault
