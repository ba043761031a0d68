"""`allmende status`: providers, stakes, offers, channels, earnings, royalties, the
treasury, validators and fraud cases of the network `allmende up` started, read from the
chain."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from allmende.chain import ChainClient, Contracts, Deployment, DeploymentNotFound
from allmende.cli.common import alm, console, friendly_errors, usd
from allmende.config import from_environment
from allmende.supervisor import load_network


def status(state_dir: Path = typer.Option(None, help="the state dir of `allmende up`")) -> None:
    """Providers, stakes, offers, channels, earnings, royalties and the treasury, read from chain."""
    root = state_dir or from_environment().state_dir
    with friendly_errors():
        path = root / "network.json"
        if not path.exists():
            raise DeploymentNotFound(f"no {path}: start the network with `allmende up` first")
        network = load_network(path)
        deployment = Deployment.load(network["deployments"])
        contracts = Contracts(ChainClient(network["rpc_url"]), deployment)
        providers = Table("provider", "endpoint", "stake", "active", "offers", "earned (unwithdrawn)")
        for address in contracts.registry.all_accounts():
            account = contracts.registry.account(address)
            if account.role != 1:
                continue
            offers = []
            for model_id in contracts.registry.models_of(address):
                offer = contracts.registry.offer(address, model_id)
                if offer.active:
                    offers.append(f"0x{model_id.hex()[:8]}… in {offer.price_in}/out {offer.price_out}")
            providers.add_row(
                address,
                account.endpoint,
                alm(account.stake),
                str(contracts.registry.is_active(address)),
                "\n".join(offers),
                usd(contracts.channels.earnings(address)),
            )
        console.print(providers)
        validators = Table("validator", "evidence endpoint", "stake", "active")
        for address in contracts.registry.all_accounts():
            account = contracts.registry.account(address)
            if account.role == 2:
                validators.add_row(
                    address, account.endpoint, alm(account.stake), str(contracts.registry.is_active(address))
                )
        if validators.row_count:
            console.print(validators)
            cases = contracts.verdicts.case_count()
            if cases:
                status_names = {1: "open", 2: "guilty", 3: "not guilty", 4: "no quorum"}
                verdicts = Table("case", "provider", "reporter", "status", "slashed")
                for case_id in range(1, cases + 1):
                    case = contracts.verdicts.case(case_id)
                    verdicts.add_row(
                        str(case_id),
                        case.provider,
                        case.reporter,
                        status_names.get(case.status, "?"),
                        alm(case.slashed),
                    )
                console.print(verdicts)
        models = Table("model id", "name", "owner", "license", "royalty", "owner earnings")
        for model_id in contracts.models.all_ids():
            record = contracts.models.get(model_id)
            models.add_row(
                "0x" + model_id.hex()[:16] + "…",
                contracts.models.name_of(model_id) or "-",
                record.owner,
                record.license,
                f"{record.royalty_bps / 100:.2f} %",
                usd(contracts.channels.earnings(record.owner)),
            )
        console.print(models)
        channels = Table("channel", "payer", "provider", "deposit", "spent (redeemed)", "closes at")
        for event in contracts.client.events(contracts.channels.contract, "ChannelOpened", deployment.deploy_block):
            cid = bytes(event["args"]["channel_id"])
            state = contracts.channels.channel(cid)
            channels.add_row(
                "0x" + cid.hex()[:16] + "…",
                state.payer,
                state.provider,
                usd(state.deposit),
                usd(state.spent),
                str(state.closes_at or "-"),
            )
        console.print(channels)
        treasury = contracts.channels.treasury()
        console.print(f"treasury {treasury}: {usd(contracts.channels.earnings(treasury))} in protocol fees accrued")
