"""`allmende status`: providers, stakes, offers, channels, earnings (redeemed and still owed),
royalties, the treasury, validators and fraud cases of a network, read from the chain and,
for what is owed but not yet redeemed, from the gateway's books.

The tables abbreviate addresses and ids so they fit an 80-column terminal; `--json` gives
every value in full (amounts as decimal strings of base units, like the explorer's API).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import httpx
import typer
from rich import box
from rich.table import Column, Table

from allmende.chain import Contracts
from allmende.chain.royalties import royalty_history
from allmende.cli.common import alm, console, find_network, friendly_errors, usd
from allmende.config import from_environment
from allmende.node.supervisor import load_network

WIDE = 160  # columns from which addresses and ids are shown in full
TABLE: dict[str, Any] = {"box": box.SIMPLE_HEAD, "pad_edge": False, "collapse_padding": True, "title_justify": "left"}
CASE_STATES = {1: "open", 2: "guilty", 3: "not guilty", 4: "no quorum"}


def status(
    network: str = typer.Option(
        None, help="a gateway's URL or the chain's JSON-RPC URL: the network to show (its contracts checked on chain)"
    ),
    state_dir: Path = typer.Option(None, help="the state dir to find the network in (default $ALLMENDE_STATE_DIR)"),
    deployments: Path = typer.Option(
        None, help="deployments JSON of the network (default: $ALLMENDE_DEPLOYMENTS, else found in the state dir)"
    ),
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC, else the deployments file's)"),
    gateway: str = typer.Option(
        None,
        help="a gateway's URL, for what it owes providers (default: --network's, else the gateway `allmende up` "
        "started)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object with every value in full"),
) -> None:
    """Providers, stakes, offers, channels, earnings (redeemed and pending), royalties and the treasury,
    of any network: found as every command finds it (--network, --deployments, $ALLMENDE_DEPLOYMENTS,
    the state dir)."""
    from allmende.chain import ChainClient

    root = state_dir or from_environment().state_dir
    with friendly_errors():
        found = find_network(network, rpc, deployments, state_dir=state_dir)
        contracts = Contracts(ChainClient(found.rpc_url), found.deployment)
        described = root / "network.json"
        if gateway is None and network:
            gateway = network  # a gateway's URL answers for its books; a chain URL does not (nothing shown)
        elif gateway is None and described.exists() and found.path is not None:
            up = load_network(described)  # the gateway of the `up` network, if that is this one
            if Path(up["deployments"]).resolve() == found.path.resolve():
                gateway = up["gateway_url"]
        report = gather(contracts, gateway.removesuffix("/").removesuffix("/v1") if gateway else None)
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        render(report)


def gather(contracts: Contracts, gateway_url: str | None = None) -> dict[str, Any]:
    """Everything `status` shows, as plain data (amounts in base units, as strings)."""
    registry, channels = contracts.registry, contracts.channels
    names = {m: contracts.models.name_of(m) or "" for m in contracts.models.all_ids()}
    pending = _pending_by_provider(gateway_url)
    health = _health_by_provider(gateway_url)
    providers, validators = [], []
    for address in registry.all_accounts():
        account = registry.account(address)
        row: dict[str, Any] = {
            "address": address,
            "endpoint": account.endpoint,
            "stake": str(account.stake),
            "active": registry.is_active(address),
        }
        if account.role == 1:
            offers = []
            for model_id in registry.models_of(address):
                offer = registry.offer(address, model_id)
                if offer.active:
                    offers.append(
                        {"model_id": "0x" + model_id.hex(), "name": names.get(model_id) or "", "price_in":
                         str(offer.price_in), "price_out": str(offer.price_out)}
                    )  # fmt: skip
            row["offers"] = offers
            row["earned_unwithdrawn"] = str(channels.earnings(address))
            row["pending_unredeemed"] = None if pending is None else str(pending.get(address.lower(), 0))
            # as the gateway sees it: healthy, suspended (failing requests), unreachable, inactive
            row["health"] = health.get(address.lower()) if health is not None else None
            if not offers:
                row["health"] = "no offers"  # stopped: it withdrew them (or never published)
            providers.append(row)
        elif account.role == 2:
            row["rewards_earned"] = str(contracts.verdicts.rewards_of(address))
            row["stopped"] = not account.endpoint  # a validator withdraws its endpoint when it stops
            validators.append(row)
    models = []
    for model_id, name in names.items():
        record = contracts.models.get(model_id)
        payee, bps = contracts.models.royalty_info(model_id)  # a derived model pays its lineage's root
        history = royalty_history(contracts, model_id)  # as Channels paid it (chain.royalties)
        redeemed, royalties = history.redeemed, history.royalties
        models.append(
            {"model_id": "0x" + model_id.hex(), "name": name, "owner": record.owner, "license": record.license,
             "royalty_bps": bps, "royalty_payee": payee, "redeemed": str(redeemed),
             "royalties_paid": str(royalties), "payee_unwithdrawn": str(channels.earnings(payee))}
        )  # fmt: skip
    channel_rows = []
    for event in contracts.client.events(channels.contract, "ChannelOpened", contracts.deployment.deploy_block):
        cid = bytes(event["args"]["channel_id"])
        state = channels.channel(cid)
        channel_rows.append(
            {"channel_id": "0x" + cid.hex(), "payer": state.payer, "provider": state.provider,
             "deposit": str(state.deposit), "redeemed": str(state.spent), "closes_at": state.closes_at}
        )  # fmt: skip
    cases = []
    now = contracts.client.timestamp()
    for case_id in range(1, contracts.verdicts.case_count() + 1) if validators else []:
        case = contracts.verdicts.case(case_id)
        reporters = [r.reporter for r in contracts.verdicts.reports(case_id)]
        cases.append(
            {"case_id": case_id, "provider": case.provider, "model_id": "0x" + case.model_id.hex(),
             "reporter": case.reporter, "reporters": reporters, "state": CASE_STATES.get(case.status, "?"),
             "guilty_weight": str(case.guilty_weight), "not_guilty_weight": str(case.innocent_weight),
             "quorum_base": str(case.total_stake), "quorum_bps": case.quorum_bps,
             "bond_each": str(case.bond), "bonds": str(case.bond * len(reporters)), "deadline": case.deadline,
             "seconds_left": max(0, case.deadline - now) if case.status == 1 else 0,
             "slashed": str(case.slashed)}
        )  # fmt: skip
    treasury = channels.treasury()
    return {
        "providers": providers,
        "validators": validators,
        "cases": cases,
        "chain_time": now,
        "models": models,
        "channels": channel_rows,
        "treasury": {"address": treasury, "fees_accrued": str(channels.earnings(treasury))},
        "pending_source": None if pending is None else gateway_url,
    }


def _pending_by_provider(gateway_url: str | None) -> dict[str, int] | None:
    """What the gateway owes each provider beyond what was redeemed (its receipts, not yet
    redeemed); None when no gateway answers."""
    if not gateway_url:
        return None
    try:
        money = httpx.get(f"{gateway_url}/explorer/api/money", timeout=10).json()
        owed: dict[str, int] = {}
        for row in money["channels"]:
            if row.get("pending") is not None:
                who = str(row["provider"]).lower()
                owed[who] = owed.get(who, 0) + int(row["pending"])
        return owed
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _health_by_provider(gateway_url: str | None) -> dict[str, str] | None:
    if not gateway_url:
        return None
    try:
        network = httpx.get(f"{gateway_url}/explorer/api/network", timeout=10).json()
        return {str(p["address"]).lower(): str(p["health"]) for p in network["providers"]}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _when(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


def short(value: str, head: int = 10, tail: int = 4) -> str:
    """0x12345678…abcd: enough to tell accounts apart on a narrow screen (in full on a wide
    one, and always with --json)."""
    if console.width >= WIDE or len(value) <= head + tail + 1:
        return value
    return f"{value[:head]}…{value[-tail:]}" if tail else f"{value[:head]}…"


def _plain_usd(amount: str) -> str:
    return usd(int(amount)).removesuffix(" dUSD")


def _whole_alm(amount: int) -> str:
    text = alm(amount).removesuffix(" ALM")
    return text.removesuffix(".0000")


def render(report: dict[str, Any]) -> None:
    pending_known = report["pending_source"] is not None
    providers = Table(
        "provider",
        Column("endpoint", overflow="fold"),
        "ALM",
        Column("offers", overflow="fold"),
        "earned",
        "pending",
        title="providers",
        **TABLE,
    )
    for p in report["providers"]:
        offers = "\n".join(
            f"{o['name'] or short(o['model_id'], 12, 0)} {int(o['price_in']) / 10**6:g}/{int(o['price_out']) / 10**6:g}"
            for o in p["offers"]
        )
        providers.add_row(
            short(p["address"]) + (f"\n{p['health']}" if p.get("health") else ""),
            p["endpoint"],
            _whole_alm(int(p["stake"])) + ("" if p["active"] else " (inactive)"),
            offers or "-",
            _plain_usd(p["earned_unwithdrawn"]),
            _plain_usd(p["pending_unredeemed"]) if p["pending_unredeemed"] is not None else "?",
        )
    console.print(providers)
    console.print(
        "[dim]ALM: stake; offers: dUSD per 1M tokens in/out\nearned (dUSD): redeemed, not withdrawn; "
        f"pending: owed, not yet redeemed{'' if pending_known else ' (no gateway answered)'}[/dim]"
    )
    if report["validators"]:
        validators = Table(
            "validator", "evidence endpoint", "stake (ALM)", "active", "rewards (ALM)", title="validators", **TABLE
        )
        for v in report["validators"]:
            validators.add_row(short(v["address"]), v["endpoint"] or "- (stopped)",
                               alm(int(v["stake"])).removesuffix(" ALM"), "yes" if v["active"] else "no",
                               _whole_alm(int(v["rewards_earned"])))  # fmt: skip
        console.print(validators)
    if report["cases"]:
        cases = Table(
            "case", "provider", "reporters", "state", "votes guilty/not (ALM)", "bonds", "deadline", "slashed",
            title="fraud cases", **TABLE,
        )  # fmt: skip
        for c in report["cases"]:
            votes = f"{_whole_alm(int(c['guilty_weight']))}/{_whole_alm(int(c['not_guilty_weight']))}"
            deadline = _when(c["deadline"])
            if c["state"] == "open":
                quorum = int(c["quorum_base"]) * c["quorum_bps"] // 10_000
                votes += f"\nneeds >{_whole_alm(quorum)}"
                deadline += f"\nin {_duration(c['seconds_left'])}"
            cases.add_row(str(c["case_id"]), short(c["provider"]), "\n".join(short(r) for r in c["reporters"]),
                          c["state"], votes, _whole_alm(int(c["bonds"])), deadline,
                          _whole_alm(int(c["slashed"])))  # fmt: skip
        console.print(cases)
        console.print(
            "[dim]votes: stake-weighted, guilty/not guilty; guilty needs more than the quorum\n"
            "and more than not guilty; `allmende gov fast-forward` moves a devnet past\na deadline[/dim]"
        )
    models = Table(
        Column("model", overflow="fold"),
        "id",
        Column("owner", no_wrap=True),
        "license",
        "royalty",
        "royalties",
        title="models (royalties: paid for the model on redeems so far, dUSD)",
        **TABLE,
    )
    for m in report["models"]:
        payee = "" if m["royalty_payee"] == m["owner"] else f"\nto {short(m['royalty_payee'])}"
        models.add_row(m["name"] or "-", short(m["model_id"], 10, 0), short(m["owner"]), m["license"],
                       f"{m['royalty_bps'] / 100:.2f} %{payee}", _plain_usd(m["royalties_paid"]))  # fmt: skip
    console.print(models)
    channels = Table("channel", "payer", "provider", "deposit", "redeemed", "closes", title="channels (dUSD)", **TABLE)
    for c in report["channels"]:
        channels.add_row(short(c["channel_id"], 12, 0), short(c["payer"]), short(c["provider"]),
                         _plain_usd(c["deposit"]), _plain_usd(c["redeemed"]), str(c["closes_at"] or "-"))  # fmt: skip
    console.print(channels)
    treasury = report["treasury"]
    console.print(f"treasury {short(treasury['address'])}: {usd(int(treasury['fees_accrued']))} in protocol fees")
