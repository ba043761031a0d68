"""`allmende vault` (a data owner's node) and `allmende data grant|revoke|log|exact-aggregates`."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from allmende.cli.common import (
    console,
    contracts_for,
    deployments_path,
    exit_stopped,
    friendly_errors,
    node_logging,
    resolve_key,
)
from allmende.config import from_environment

data_app = typer.Typer(help="datasets on chain: grants, revocations, the access log", no_args_is_help=True)


def vault(
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC)"),
    key: str = typer.Option(..., help="the vault key: keystore file or devnet:N"),
    data: list[Path] = typer.Option(..., help="a dataset file (CSV, Parquet or JSONL); repeat for more"),
    label: str = typer.Option("label", help="the label column, if any"),
    license: str = typer.Option("proprietary", help="license recorded when a dataset is registered"),
    policy_uri: str = typer.Option("", help="data-use policy recorded when a dataset is registered"),
    port: int = typer.Option(9500, help="port of the vault's API"),
    host: str = typer.Option("127.0.0.1", help="address to listen on; 0.0.0.0 for every interface"),
    deployments: Path = typer.Option(None, help="deployments JSON (default <state-dir>/deployments.json)"),
    state_dir: Path = typer.Option(None, help="where the vault keeps its database"),
    min_group: int = typer.Option(10, help="smallest group an aggregate may describe"),
    min_noise: float = typer.Option(1.0, help="least DP noise multiplier a training round may use"),
    clip: float = typer.Option(1.0, help="per-row gradient clipping norm for DP training"),
    max_update_norm: float = typer.Option(5.0, help="largest update norm (clipping norm) a federated round releases"),
    step_slack: float = typer.Option(
        0.01, help="how much further than the clipping norm a later round's parameters may move (fraction)"
    ),
    loss_clip: float = typer.Option(5.0, help="evaluate clips each row's loss to this before summing"),
) -> None:
    """Hold datasets and run approved job templates next to them; no row ever leaves."""
    from allmende.vault.node import VaultConfig, serve
    from allmende.vault.service import VaultPolicy

    env = from_environment()
    node_logging()
    with friendly_errors():
        cfg = VaultConfig(
            rpc_url=rpc or env.rpc_url,
            key=resolve_key(key),
            deployments=deployments_path(deployments),
            data=data,
            state_dir=state_dir or env.state_dir / "vault",
            host=host,
            port=port,
            label=label,
            license=license,
            policy_uri=policy_uri,
            policy=VaultPolicy(
                min_group=min_group,
                min_noise=min_noise,
                clip=clip,
                max_update_norm=max_update_norm,
                step_slack=step_slack,
                loss_clip=loss_clip,
            ),
        )
        console.print(f"vault on http://{host}:{port} holding {len(data)} dataset(s)")
        serve(cfg)
    exit_stopped()


@data_app.command("grant")
def grant(
    dataset: str = typer.Option(..., help="dataset id (0x…)"),
    grantee: str = typer.Option(..., help="address allowed to run jobs"),
    template: str = typer.Option(..., help="evaluate, federated_round or aggregate"),
    model: list[str] = typer.Option([], help="model id the grantee may evaluate or train (repeat)"),
    days: float = typer.Option(30.0, help="the grant expires after this many days"),
    epsilon: float = typer.Option(1.0, help="differential-privacy budget (epsilon)"),
    key: str = typer.Option(..., help="the dataset owner's key"),
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC or http://127.0.0.1:8545)"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: found in $ALLMENDE_STATE_DIR)"),
) -> None:
    """Grant a job template on a dataset, with an expiry and an epsilon budget."""
    from allmende.chain.bindings import TEMPLATES
    from allmende.vault.model import micro_epsilon

    with friendly_errors():
        if template not in TEMPLATES:
            console.print(f"[red]error:[/red] --template must be one of {', '.join(TEMPLATES)}")
            raise typer.Exit(2)
        c = contracts_for(rpc, key, deployments)
        expires = c.client.timestamp() + int(days * 86_400)
        grant_id = c.data.grant(
            bytes.fromhex(dataset.removeprefix("0x")),
            grantee,
            TEMPLATES[template],
            [bytes.fromhex(m.removeprefix("0x")) for m in model],
            expires,
            micro_epsilon(epsilon),
        )
        console.print(
            f"grant [bold]{grant_id}[/bold]: {template} for {grantee}, ε ≤ {epsilon}, expires {time.ctime(expires)}"
        )


@data_app.command("revoke")
def revoke(
    grant_id: int = typer.Argument(...),
    key: str = typer.Option(..., help="the dataset owner's key"),
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC or http://127.0.0.1:8545)"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: found in $ALLMENDE_STATE_DIR)"),
) -> None:
    """Revoke a grant at once."""
    with friendly_errors():
        contracts_for(rpc, key, deployments).data.revoke(grant_id)
        console.print(f"grant {grant_id} revoked")


@data_app.command("log")
def access_log(
    dataset: str = typer.Option(..., help="dataset id (0x…)"),
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC or http://127.0.0.1:8545)"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: found in $ALLMENDE_STATE_DIR)"),
) -> None:
    """Every access to a dataset, as the chain recorded it."""
    with friendly_errors():
        c = contracts_for(rpc, None, deployments)
        dataset_id = bytes.fromhex(dataset.removeprefix("0x"))
        d = c.data.dataset(dataset_id)
        table = Table(title=f"dataset 0x{dataset_id.hex()[:12]}…, owner {d.owner}, vault {d.vault}")
        for col in ("#", "grant", "job", "model", "result hash", "ε spent", "when (UTC)"):
            table.add_column(col)
        for i, a in enumerate(c.data.accesses(dataset_id)):
            table.add_row(
                str(i),
                str(a.grant_id),
                "0x" + a.job_id.hex()[:8],
                "0x" + a.model_id.hex()[:8],
                "0x" + a.result_hash.hex()[:8],
                f"{a.epsilon_spent / 1e6:.3f}",
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a.at)),
            )
        console.print(table)


@data_app.command("exact-aggregates")
def exact_aggregates(
    grant_id: int = typer.Argument(..., help="the grant that may ask for exact aggregates"),
    state_dir: Path = typer.Option(None, help="the vault's state directory (default $ALLMENDE_STATE_DIR/vault)"),
    off: bool = typer.Option(False, "--off", help="withdraw the consent"),
) -> None:
    """Let one grant ask this vault for exact (noise-free) aggregates, still audited against
    differencing; every other grant gets differentially private answers only."""
    from allmende.vault.store import VaultStore

    with friendly_errors():
        folder = state_dir or from_environment().state_dir / "vault"
        if not (folder / "vault.db").is_file():
            console.print(f"[red]error:[/red] no vault database in {folder} (start the vault there first)")
            raise typer.Exit(1)
        VaultStore(folder / "vault.db").allow_exact(grant_id, not off)
        said = "may no longer ask for" if off else "may ask for"
        console.print(f"grant {grant_id} {said} exact aggregates from the vault in {folder}")
