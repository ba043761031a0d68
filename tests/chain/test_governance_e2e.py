"""Governance end to end on anvil through the CLI: a proposal raises protocol_fee_bps,
passes a stake-weighted vote, waits out the Timelock, executes — and the next redeem
pays the new fee."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from allmende.chain import ChainClient, Contracts, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.chain.bindings import ROLE_VALIDATOR
from allmende.cli import app
from allmende.core import Voucher, sign_voucher, split_payment

ALM = 10**18


def test_proposal_changes_the_fee_paid_by_the_next_redeem(tmp_path: Path) -> None:
    accounts = devnet_accounts(6)
    with Anvil() as node:
        deployment = deploy_all(ChainClient(node.url, accounts[0].key), fund=[a.address for a in accounts])
        path = tmp_path / "deployments.json"
        deployment.save(path)
        for voter in accounts[1:4]:
            c = Contracts(ChainClient(node.url, voter.key), deployment)
            c.token.approve(c.registry.address)
            c.registry.register(ROLE_VALIDATOR, "", b"\x00" * 32, 5_000 * ALM)
        reader = Contracts(ChainClient(node.url), deployment)
        runner = CliRunner()

        def gov(*args: str, key: str | None = None) -> str:
            extra = ["--rpc", node.url]
            if args[0] not in ("fast-forward",):
                extra += ["--deployments", str(path)]
            if key:
                extra += ["--key", key]
            result = runner.invoke(app, ["gov", *args, *extra])
            assert result.exit_code == 0, result.output
            return result.output

        ChainClient(node.url).increase_time(5)
        out = gov("propose", "--set", "protocol_fee_bps=150", "--description", "fund the commons", key="devnet:1")
        pid = re.search(r"proposal (\d+)", out).group(1)  # type: ignore[union-attr]
        gov("fast-forward", str(reader.params.get("voting_delay") + 1))
        gov("vote", pid, "for", key="devnet:1")
        gov("vote", pid, "for", key="devnet:2")
        gov("vote", pid, "against", key="devnet:3")
        gov("fast-forward", str(reader.params.get("voting_period") + 1))
        assert "succeeded" in gov("show", pid)
        gov("queue", pid, key="devnet:2")
        gov("fast-forward", str(reader.params.get("timelock_delay") + 1))
        gov("execute", pid, key="devnet:3")
        assert "executed" in gov("show", pid) and "executed" in gov("list")
        assert reader.params.get("protocol_fee_bps") == 150

        # the next redeem pays the new fee
        payer, provider = accounts[4], accounts[5]
        as_payer = Contracts(ChainClient(node.url, payer.key), deployment)
        as_payer.stable.approve(as_payer.channels.address)
        channel = as_payer.channels.open(provider.address, 10**7)
        treasury = reader.channels.treasury()
        before = reader.channels.earnings(treasury)
        voucher = sign_voucher(Voucher(channel, b"\x42" * 32, 1_234_567), as_payer.channels.voucher_domain(), payer.key)
        Contracts(ChainClient(node.url, provider.key), deployment).channels.redeem([voucher])

        assert reader.channels.earnings(treasury) - before == split_payment(1_234_567, 0, 150).protocol_fee == 18_518
        assert treasury == deployment.address("Timelock")


def test_bad_governance_input_is_one_clear_error(tmp_path: Path) -> None:
    accounts = devnet_accounts(1)
    with Anvil() as node:
        deployment = deploy_all(ChainClient(node.url, accounts[0].key), fund=[accounts[0].address])
        path = tmp_path / "d.json"
        deployment.save(path)
        common = ["--rpc", node.url, "--deployments", str(path), "--key", "devnet:0"]
        runner = CliRunner()
        for args, words in (
            (["propose", "--set", "protocol_fee_bps=lots", "--description", "x"], "name=integer"),
            (["propose", "--set", "no_such_param=1", "--description", "x"], "unknown name"),
            (["propose", "--description", "x"], "nothing to propose"),
            (["vote", "1", "maybe"], "for, against or abstain"),
            (["propose", "--set", "protocol_fee_bps=1", "--description", "x"], "stake below proposal threshold"),
        ):
            result = runner.invoke(app, ["gov", *args, *common])
            assert result.exit_code == 1 and words in result.output, result.output
            assert "Traceback" not in result.output
