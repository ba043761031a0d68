"""A real provider process (`allmende provider`) on a real anvil, and a payer that talks
to it through the Python provider client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from allmende.api.client import PayerKey, ProviderInfo, fetch_info
from allmende.chain import Contracts, Deployment
from allmende.chain.anvil import Anvil, DevnetAccount, free_port
from allmende.core import Domain
from allmende.node.supervisor import Node, start
from tests.conftest import contracts_for

PRICE_IN, PRICE_OUT = 200_000, 600_000


@dataclass
class ProviderProcess:
    node: Node
    args: list[str]

    @property
    def url(self) -> str:
        assert self.node.url is not None
        return self.node.url

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.node.process

    @property
    def log(self) -> Path:
        return self.node.log

    def kill9(self) -> None:
        self.node.kill9()

    def stop(self) -> None:
        self.node.stop(timeout=10)


def start_provider(
    anvil: Anvil,
    deployments: Path,
    account: DevnetAccount,
    state_dir: Path,
    models: list[str],
    port: int | None = None,
    extra: list[str] | None = None,
    cheat: str | None = None,
) -> ProviderProcess:
    """`allmende provider` as a subprocess; `cheat` (int8 | skip-layer) starts it through
    allmende.testing.cheats so its engine cheats."""
    port = port or free_port()
    launcher = ["allmende.testing.cheats", cheat] if cheat else ["allmende"]
    args = [
        sys.executable,
        "-m",
        *launcher,
        "provider",
        "--rpc",
        anvil.url,
        "--key",
        f"devnet:{account.index}",
        "--deployments",
        str(deployments),
        "--state-dir",
        str(state_dir),
        "--port",
        str(port),
        "--price-in",
        str(PRICE_IN),
        "--price-out",
        str(PRICE_OUT),
        *[arg for m in models for arg in ("--model", m)],
        "--claim-models",  # the session's chain has no model authors: the providers name the models
        *(extra or []),
    ]
    url = f"http://127.0.0.1:{port}"
    node = start(f"provider {account.address}", args, state_dir / "provider.log", url, timeout=180)
    return ProviderProcess(node, args)


@dataclass
class Running:
    provider: ProviderProcess
    info: ProviderInfo
    payer: DevnetAccount
    as_payer: Contracts
    receipt_domain: Domain
    voucher_domain: Domain

    @property
    def signer(self) -> PayerKey:
        """The payer's key as the provider client signs requests with it."""
        return PayerKey(self.payer.key, self.voucher_domain)


@pytest.fixture(scope="session")
def running(
    anvil: Anvil,
    deployment: Deployment,
    deployments_file: Path,
    accounts: list[DevnetAccount],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Running]:
    state = tmp_path_factory.mktemp("provider")
    proc = start_provider(
        anvil,
        deployments_file,
        accounts[2],
        state,
        ["allmende:tiny", "minilm"],
        extra=["--redeem-interval", "3600", "--credit-limit", "1000"],
    )
    payer = accounts[3]
    as_payer = contracts_for(anvil, deployment, payer)
    as_payer.stable.approve(as_payer.channels.address)
    with httpx.Client(timeout=60) as http:
        info = fetch_info(http, proc.url)
    try:
        yield Running(
            proc, info, payer, as_payer, as_payer.registry.receipt_domain(), as_payer.channels.voucher_domain()
        )
    finally:
        proc.stop()
