"""Fixtures shared by every test folder that needs a real chain: one anvil per session,
the contracts deployed once, devnet accounts funded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from allmende.chain import ChainClient, Contracts, Deployment, deploy_all
from allmende.chain.anvil import Anvil, DevnetAccount, devnet_accounts


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def accounts() -> list[DevnetAccount]:
    return devnet_accounts(10)


@pytest.fixture(scope="session")
def deployment(anvil: Anvil, accounts: list[DevnetAccount]) -> Deployment:
    admin = ChainClient(anvil.url, accounts[0].key)
    return deploy_all(admin, fund=[a.address for a in accounts])


def contracts_for(anvil: Anvil, deployment: Deployment, account: DevnetAccount) -> Contracts:
    return Contracts(ChainClient(anvil.url, account.key), deployment)


@pytest.fixture(scope="session")
def deployments_file(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chain") / "deployments.json"
    deployment.save(path)
    return path
