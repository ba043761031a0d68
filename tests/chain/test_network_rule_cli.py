"""Commands on a provider's host find the network that `allmende provider --network` saved
(STATE_DIR/provider/deployments.json) and talk to the chain URL the deployments file records,
never to the default 127.0.0.1:8545, which may be another devnet (`faucet` funded whatever
listened there, `stake show` found no network); `status --network URL` shows a network by
its URL. All of them go through one rule, `allmende.cli.common.find_network`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from typer.testing import CliRunner

from allmende.chain import ChainClient, Contracts, Deployment, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.chain.bindings import ROLE_PROVIDER
from allmende.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def network() -> Iterator[tuple[Anvil, Deployment]]:
    """A devnet of this module's own (nothing else funds or deploys on it)."""
    with Anvil() as node:
        accounts = devnet_accounts(4)
        yield node, deploy_all(ChainClient(node.url, accounts[0].key), fund=[accounts[3].address])


def _env(state: Path) -> dict[str, str | None]:
    # nothing but the state dir tells a command where the network is
    return {"ALLMENDE_STATE_DIR": str(state), "ALLMENDE_RPC": None, "ALLMENDE_DEPLOYMENTS": None}


@pytest.mark.parametrize("saved_at", ["provider/deployments.json", "deployments.json"])
def test_faucet_without_network_funds_on_the_chain_the_deployments_file_names(
    network: tuple[Anvil, Deployment], tmp_path: Path, saved_at: str
) -> None:
    # Prepare: a host where the network was saved to a file (by the provider, or by hand)
    node, deployment = network
    deployment.save(tmp_path / saved_at)
    who = Account.create().address

    # Execute
    result = runner.invoke(app, ["faucet", who, "--alm", "5000", "--usd", "0"], env=_env(tmp_path))

    # Assert: funded on the deployment's chain, with what the output says
    assert result.exit_code == 0, result.output
    contracts = Contracts(ChainClient(node.url), deployment)
    assert contracts.token.balance_of(who) == 5000 * 10**18
    assert "5,000.0000 ALM" in result.output


def test_stake_show_on_a_provider_host_finds_the_saved_network(
    network: tuple[Anvil, Deployment], tmp_path: Path
) -> None:
    # Prepare: a staked provider account, and the network saved as `allmende provider --network` saves it
    node, deployment = network
    account = devnet_accounts(4)[3]
    staker = Contracts(ChainClient(node.url, account.key), deployment)
    staker.token.approve(staker.registry.address)
    staker.registry.register(ROLE_PROVIDER, "http://127.0.0.1:9", b"\x02" * 32, 1_500 * 10**18)
    deployment.save(tmp_path / "provider" / "deployments.json")

    # Execute
    result = runner.invoke(app, ["stake", "show", account.address], env=_env(tmp_path))

    # Assert: the stake read from that network
    assert result.exit_code == 0, result.output
    assert "provider" in result.output and "1,500.0000 ALM" in result.output


def test_status_shows_the_network_named_by_its_url(network: tuple[Anvil, Deployment], tmp_path: Path) -> None:
    # Prepare: a folder with no deployments file anywhere
    node, deployment = network

    # Execute
    result = runner.invoke(app, ["status", "--network", node.url, "--json"], env=_env(tmp_path))
    nowhere = runner.invoke(app, ["status", "--json"], env=_env(tmp_path))

    # Assert: found on the chain by its URL (and checked), where the state dir has nothing
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["treasury"]["address"] == deployment.treasury
    assert nowhere.exit_code == 1 and "--network URL" in nowhere.output
