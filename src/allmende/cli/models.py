"""`allmende models register|name|list|show`: content-addressed models, their public
name, license, lineage and royalties on chain."""

from __future__ import annotations

import datetime
from pathlib import Path

import typer
from rich.table import Table

from allmende.chain import Contracts
from allmende.chain.royalties import RoyaltyHistory, royalty_history
from allmende.cli.common import console, contracts_for, friendly_errors, parse_id, usd
from allmende.core.errors import InvalidInput, InvalidModelName
from allmende.core.licenses import derived_license_problem
from allmende.core.model_names import canonical_name

EARNINGS_LINES = 50  # redeems `models earnings` lists one by one (the newest)

app = typer.Typer(
    help="models on chain: register, name, list, show (name, license, lineage, royalties)", no_args_is_help=True
)


def model_id_for(name: str) -> bytes:
    """The content address of a model given by name (allmende:tiny, minilm, smollm2-135m-instruct),
    folder, .gguf file or hub id (a GGUF model's id is that of its GGUF file)."""
    from allmende.engine import resolve_model

    return resolve_model(name).model_id


def model_arg(c: Contracts, model: str) -> bytes:
    """A model given on the command line: its id (0x…), its name on chain, or files to hash
    (a folder, a .gguf file, allmende:tiny, minilm, a hub id)."""
    if model.startswith("0x"):
        return parse_id(model, "model")
    if not Path(model).exists():
        try:
            named = c.models.model_by_name(canonical_name(model))
        except InvalidModelName:
            named = None
        if named is not None:
            return named
    return model_id_for(model)


@app.command("register")
def register(
    model: str = typer.Argument(..., help="a model folder, hub id, allmende:tiny or minilm; its files give its id"),
    key: str = typer.Option(..., help="the owner's key (receives the royalties)"),
    license: str = typer.Option(..., help="SPDX id or short license name, e.g. Apache-2.0"),
    royalty_bps: int = typer.Option(0, help="share of every payment for this model, in basis points"),
    parent: list[str] = typer.Option(
        [], help="a model this one derives from, by id, name or files (repeat; records lineage only)"
    ),
    derived_from: str = typer.Option(
        None,
        help="the model this one was derived from (fine-tuned, merged…), by id (0x…), name on chain or files: "
        "it pays that lineage's royalty "
        "to the lineage's root owner, as the README's royalty rule says (not with --royalty-bps or --parent)",
    ),
    dataset: list[str] = typer.Option([], help="id of a dataset it was trained on (repeat)"),
    uri: str = typer.Option("", help="where the model card lives"),
    name: str = typer.Option(
        None, help="its public name, what gateways list and users ask for (lower-cased; first come, first served)"
    ),
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC or http://127.0.0.1:8545)"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: found in $ALLMENDE_STATE_DIR)"),
) -> None:
    """Register a model by its content address, with license, royalty, lineage and name."""
    with friendly_errors():
        canonical = canonical_name(name) if name is not None else None  # a bad name fails before any transaction
        if derived_from is not None and (parent or royalty_bps):
            raise InvalidInput("--derived-from takes its royalty from the parent: no --royalty-bps or --parent")
        model_id = model_id_for(model)
        c = contracts_for(rpc, key, deployments)
        # a parent by id, by its name on chain or by its files, as every other models command takes it
        base = model_arg(c, derived_from) if derived_from is not None else None
        parents = [model_arg(c, p) for p in parent]
        parent_ids = [base] if base is not None else parents
        for parent_id in parent_ids:
            problem = derived_license_problem(c.models.get(parent_id).license, license)
            if problem:
                raise InvalidInput(f"cannot register a model derived from 0x{parent_id.hex()}: {problem}")
        if base is not None:
            c.models.register_derived(model_id, base, license, [parse_id(d) for d in dataset], uri)
            payee, bps = c.models.royalty_info(model_id)
            console.print(
                f"registered [bold]0x{model_id.hex()}[/bold] ({license}) derived from 0x{base.hex()}: "
                f"royalty {bps} bps to {payee}"
            )
            if canonical is not None:
                _set_name(c, model_id, canonical)
            return
        c.models.register(model_id, license, royalty_bps, parents, [parse_id(d) for d in dataset], uri)
        console.print(f"registered [bold]0x{model_id.hex()}[/bold] ({license}, royalty {royalty_bps} bps)")
        if canonical is not None:
            _set_name(c, model_id, canonical)


@app.command("name")
def name(
    model: str = typer.Argument(..., help="a model id (0x…), or a name/folder to hash"),
    new_name: str = typer.Argument(None, help="the name, e.g. smollm2-135m-instruct (lower-cased)"),
    release: bool = typer.Option(False, "--release", help="give up the model's name instead"),
    key: str = typer.Option(..., help="the model owner's key"),
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC, else the deployments file's)"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: found in $ALLMENDE_STATE_DIR)"),
) -> None:
    """Name (or rename, or with --release unname) a model you own. Gateways list and resolve
    only names set here; a name another model holds, or one that reads like it, is refused."""
    with friendly_errors():
        if release == (new_name is not None):
            raise InvalidInput("give either a new name or --release")
        canonical = "" if release else canonical_name(new_name)
        model_id = parse_id(model, "model") if model.startswith("0x") else model_id_for(model)
        _set_name(contracts_for(rpc, key, deployments), model_id, canonical)


def _set_name(c: Contracts, model_id: bytes, name: str) -> None:
    holder = c.models.model_by_name(name) if name else None
    if holder is not None and holder != model_id:
        raise InvalidInput(f"the name {name!r} belongs to model 0x{holder.hex()}; choose another")
    c.models.set_name(model_id, name)
    if name:
        console.print(f"named 0x{model_id.hex()} [bold]{name}[/bold]: ask for it as model={name!r}")
    else:
        console.print(f"0x{model_id.hex()} has no name now; ask for it as model='0x{model_id.hex()}'")


def _short(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}"


@app.command("list")
def list_models(
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC or http://127.0.0.1:8545)"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: found in $ALLMENDE_STATE_DIR)"),
) -> None:
    """Every registered model."""
    with friendly_errors():
        c = contracts_for(rpc, None, deployments)
        table = Table(title="models on chain")
        for col in ("model", "owner", "license", "bps", "royalty to", "parents", "datasets"):
            table.add_column(col, no_wrap=True)
        names = Table(title="names on chain (what gateways list; others are asked for by id)")
        names.add_column("model", no_wrap=True)
        names.add_column("name", overflow="fold")
        for model_id in c.models.all_ids():
            m = c.models.get(model_id)
            payee, bps = c.models.royalty_info(model_id)
            table.add_row(
                "0x" + model_id.hex()[:8],
                _short(m.owner),
                m.license,
                str(bps),
                _short(payee),
                str(len(m.parents)),
                str(len(m.datasets)),
            )
            name = c.models.name_of(model_id)
            if name:
                names.add_row("0x" + model_id.hex()[:8], name)
        console.print(table)
        if names.row_count:
            console.print(names)


@app.command("show")
def show(
    model: str = typer.Argument(..., help="a model id (0x…), its name on chain, or a folder/file to hash"),
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC or http://127.0.0.1:8545)"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: found in $ALLMENDE_STATE_DIR)"),
) -> None:
    """Everything the chain records about one model, its attestations included."""
    with friendly_errors():
        c = contracts_for(rpc, None, deployments)
        model_id = model_arg(c, model)
        m = c.models.get(model_id)
        payee, bps = c.models.royalty_info(model_id)
        console.print(f"model      0x{model_id.hex()}")
        console.print(f"name       {c.models.name_of(model_id) or '(none: ask for it by its id)'}")
        console.print(f"owner      {m.owner}")
        console.print(f"license    {m.license}")
        console.print(f"royalty    {bps} bps to {payee}")
        for p in m.parents:
            console.print(f"parent     0x{p.hex()}")
        for d in m.datasets:
            console.print(f"dataset    0x{d.hex()}")
        if m.metadata_uri:
            console.print(f"card       {m.metadata_uri}")
        for a in c.data.attestations(model_id):
            console.print(
                f"attested   {a.metric} = {a.value_ppm / 1e6:.4f} by {a.validator} (job 0x{a.job_id.hex()[:12]}…)"
            )


@app.command("earnings")
def earnings(
    model: str = typer.Argument(..., help="a model id (0x…), its name on chain, or a folder/file to hash"),
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC, else the deployments file's)"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: found in $ALLMENDE_STATE_DIR)"),
) -> None:
    """What a model has earned its royalty payee, redeem by redeem, what the payee can withdraw
    now, and why any royalty was not paid."""
    with friendly_errors():
        c = contracts_for(rpc, None, deployments)
        model_id = model_arg(c, model)
        record = c.models.get(model_id)
        payee, bps = c.models.royalty_info(model_id)
        history = royalty_history(c, model_id)
        owed = c.channels.earnings(payee)
    console.print(f"model      0x{model_id.hex()}")
    console.print(f"owner      {record.owner}")
    console.print(f"royalty    {bps} bps to {payee}")
    spread = f"{history.redeems} redeems over {history.channels} channels"
    console.print(f"redeemed   {usd(history.redeemed)} for this model ({spread})")
    console.print(f"earned     {usd(history.royalties)} in royalties to {payee}")
    shown = history.paid[-EARNINGS_LINES:]
    if len(history.paid) > len(shown):
        console.print(f"  (the last {len(shown)} of {len(history.paid)} redeems)")
    for paid in shown:  # as Channels.redeem split each (chain.royalties)
        when = datetime.datetime.fromtimestamp(paid.at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        console.print(
            f"  {when} channel 0x{paid.channel_id.hex()[:10]}… redeemed {usd(paid.amount)}: "
            f"royalty {usd(paid.royalty)}, fee {usd(paid.fee)}"
        )
    for line in unpaid_reasons(history):
        console.print(f"  not paid: {line}")
    console.print(
        f"withdrawable now {usd(owed)} (all of {payee}'s unwithdrawn earnings: royalties of every model it "
        "is paid for, provider shares; `allmende provider-withdraw --key …` withdraws them)"
    )
    console.print("  (served but not yet redeemed by providers does not show until they redeem)")


def unpaid_reasons(history: RoyaltyHistory) -> list[str]:
    """Why a model's royalty was not paid on part of what was redeemed, one line per reason."""
    lines = []
    if history.before_registration_redeems:
        lines.append(
            f"{usd(history.before_registration)} redeemed in {history.before_registration_redeems} redeem(s) "
            "before "
            "the model was registered: service before a registration pays no royalty"
        )
    if history.spanning_redeems:
        lines.append(
            f"{usd(history.spanning_unpaid)} of royalty on {history.spanning_redeems} redeem(s) whose service "
            "began "
            "before the registration: only the share of their time after it pays"
        )
    if history.capped_unpaid:
        lines.append(
            f"{usd(history.capped_unpaid)} above the royalty cap ({history.bps} bps registered, at most "
            f"{history.cap_bps} bps paid)"
        )
    return lines


def royalties_paid(c: Contracts, model_id: bytes) -> tuple[int, int, int, int]:
    """(redeemed, royalties, redeems, channels) of a model over its whole history on chain."""
    h = royalty_history(c, model_id)
    return h.redeemed, h.royalties, h.redeems, h.channels
