"""What an operator reads (issue 38): the faucet says what it sent and what the account now
holds; a provider short of ALM is told how much more it needs (not the whole stake); an
early `stake withdraw` names the date it can be done from; `models register --derived-from`
takes a name as other commands do; `models earnings` lists what each redeem paid."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak
from typer.testing import CliRunner

from allmende.chain import ChainClient, Contracts, Deployment, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.chain.bindings import ROLE_PROVIDER
from allmende.cli import app
from allmende.cli.models import model_id_for
from allmende.core import Voucher, sign_voucher
from allmende.core.errors import InvalidInput
from allmende.provider.node import plan_stake

ALM = 10**18
runner = CliRunner()


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Anvil, Deployment, Path]]:
    """A devnet of this module's own (its clock moves), and its deployments file."""
    accounts = devnet_accounts(6)
    with Anvil() as node:
        deployment = deploy_all(ChainClient(node.url, accounts[0].key), fund=[a.address for a in accounts])
        path = tmp_path_factory.mktemp("net") / "deployments.json"
        deployment.save(path)
        yield node, deployment, path


def _cli(path: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args], env={"ALLMENDE_DEPLOYMENTS": str(path), "ALLMENDE_RPC": None})
    return result.exit_code, result.output


def test_faucet_says_what_it_sent_and_what_the_account_holds(network: tuple[Anvil, Deployment, Path]) -> None:
    _, _, path = network
    who = Account.create().address
    code, output = _cli(path, "faucet", who, "--alm", "100", "--usd", "5")
    assert code == 0, output
    assert "sent 10.0000 ETH, 100.0000 ALM and 5.000000 dUSD to" in output
    code, output = _cli(path, "faucet", who, "--eth", "0", "--alm", "50", "--usd", "0")
    assert "sent 0.0000 ETH, 50.0000 ALM and 0.000000 dUSD" in output
    assert "it now holds 10.0000 ETH, 150.0000 ALM" in output


def test_a_provider_short_of_alm_is_told_how_much_more(network: tuple[Anvil, Deployment, Path]) -> None:
    node, deployment, path = network
    key = Account.create().key
    me = Account.from_key(key).address
    _cli(path, "faucet", me, "--alm", "500", "--usd", "0")
    with pytest.raises(InvalidInput) as refused:
        plan_stake(Contracts(ChainClient(node.url, key), deployment), None)  # the minimum: 1,000 ALM
    assert "holds 500.0000 ALM but staking 1,000.0000 ALM needs 500.0000 ALM more" in str(refused.value)


def test_an_early_withdraw_names_the_date_it_can_be_done_from(network: tuple[Anvil, Deployment, Path]) -> None:
    # Prepare: a provider that unbonds everything
    node, deployment, path = network
    account = devnet_accounts(4)[3]
    c = Contracts(ChainClient(node.url, account.key), deployment)
    c.token.approve(c.registry.address)
    c.registry.register(ROLE_PROVIDER, "http://127.0.0.1:9", b"\x04" * 32, 1_000 * ALM)
    c.registry.unbond(1_000 * ALM)
    unbond_at = c.registry.account(account.address).unbond_at

    # Execute / Assert: refused with the date, then allowed once the chain is past it
    code, output = _cli(path, "stake", "withdraw", "--key", f"devnet:{account.index}")
    assert code == 1 and "can be withdrawn from" in output and "not yet" in output, output
    assert datetime.datetime.fromtimestamp(unbond_at, datetime.UTC).strftime("%Y-%m-%d") in output
    c.client.increase_time(unbond_at - c.client.timestamp() + 1)
    code, output = _cli(path, "stake", "withdraw", "--key", f"devnet:{account.index}")
    assert code == 0 and "withdrew 1,000.0000 ALM" in output, output


def test_derived_from_takes_a_name_and_earnings_list_each_redeem(network: tuple[Anvil, Deployment, Path]) -> None:
    # Prepare: a named parent model with a royalty, redeemed twice
    node, deployment, path = network
    owner, payer, provider = devnet_accounts(6)[1], devnet_accounts(6)[2], devnet_accounts(6)[4]
    name = f"parent-{os.urandom(3).hex()}"
    parent = keccak(os.urandom(32))
    as_owner = Contracts(ChainClient(node.url, owner.key), deployment)
    as_owner.models.register(parent, "Apache-2.0", 500)
    as_owner.models.set_name(parent, name)
    as_payer = Contracts(ChainClient(node.url, payer.key), deployment)
    as_payer.stable.approve(as_payer.channels.address)
    channel = as_payer.channels.open(provider.address, 10**7)
    as_provider = Contracts(ChainClient(node.url, provider.key), deployment)
    for cumulative in (100_000, 300_000):
        voucher = sign_voucher(Voucher(channel, parent, cumulative), as_payer.channels.voucher_domain(), payer.key)
        as_provider.channels.redeem([voucher])

    # Execute
    code, registered = _cli(path, "models", "register", "allmende:tiny", "--key", f"devnet:{owner.index}",
                            "--license", "Apache-2.0", "--derived-from", name)  # fmt: skip
    _, earned = _cli(path, "models", "earnings", f"0x{parent.hex()}")

    # Assert
    assert code == 0, registered
    child = model_id_for("allmende:tiny")
    assert as_owner.models.get(child).parents == [parent]
    lines = [line for line in earned.splitlines() if "redeemed 0." in line and "royalty" in line]
    assert len(lines) == 2, earned
    assert "redeemed 0.100000 dUSD: royalty 0.005000 dUSD" in lines[0]
    assert "redeemed 0.200000 dUSD: royalty 0.010000 dUSD" in lines[1]
