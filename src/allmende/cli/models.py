"""`allmende models register|list|show`: content-addressed models, their license, lineage
and royalties on chain."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from allmende.cli.common import console, contracts_for, friendly_errors, parse_id

app = typer.Typer(help="models on chain: register, list, show (license, lineage, royalties)", no_args_is_help=True)


def model_id_for(name: str) -> bytes:
    """The content address of a model given by name (allmende:tiny, minilm, smollm2-135m-instruct),
    folder, .gguf file or hub id (a GGUF model's id is that of its GGUF file)."""
    from allmende.engine import resolve_model

    return resolve_model(name).model_id


@app.command("register")
def register(
    model: str = typer.Argument(..., help="a model folder, hub id, allmende:tiny or minilm; its files give its id"),
    key: str = typer.Option(..., help="the owner's key (receives the royalties)"),
    license: str = typer.Option(..., help="SPDX id or short license name, e.g. Apache-2.0"),
    royalty_bps: int = typer.Option(0, help="share of every payment for this model, in basis points"),
    parent: list[str] = typer.Option([], help="id of a model this one derives from (repeat)"),
    dataset: list[str] = typer.Option([], help="id of a dataset it was trained on (repeat)"),
    uri: str = typer.Option("", help="where the model card lives"),
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC or http://127.0.0.1:8545)"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: found in $ALLMENDE_STATE_DIR)"),
) -> None:
    """Register a model by its content address, with license, royalty and lineage."""
    with friendly_errors():
        model_id = model_id_for(model)
        c = contracts_for(rpc, key, deployments)
        c.models.register(
            model_id, license, royalty_bps, [parse_id(p) for p in parent], [parse_id(d) for d in dataset], uri
        )
        console.print(f"registered [bold]0x{model_id.hex()}[/bold] ({license}, royalty {royalty_bps} bps)")


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
        console.print(table)


@app.command("show")
def show(
    model: str = typer.Argument(..., help="a model id (0x…), or a name/folder to hash"),
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC or http://127.0.0.1:8545)"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: found in $ALLMENDE_STATE_DIR)"),
) -> None:
    """Everything the chain records about one model, its attestations included."""
    with friendly_errors():
        model_id = parse_id(model, "model") if model.startswith("0x") else model_id_for(model)
        c = contracts_for(rpc, None, deployments)
        m = c.models.get(model_id)
        payee, bps = c.models.royalty_info(model_id)
        console.print(f"model      0x{model_id.hex()}")
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
