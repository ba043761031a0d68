"""`allmende federated train|attest|register`: train across vaults, attest, register the lineage."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from allmende.cli.common import console, contracts_for, friendly_errors, parse_id, resolve_key

app = typer.Typer(help="federated training across vaults, attestation and lineage", no_args_is_help=True)


@app.command("train")
def train(
    vault: list[str] = typer.Option(..., help="URL,DATASET_ID,GRANT_ID of one vault's part (repeat, at least 2)"),
    base: Path = typer.Option(..., help="folder of the base model (spec.json, weights.npz), registered in Models"),
    out: Path = typer.Option(..., help="folder to write the trained model and run.json to"),
    key: str = typer.Option(..., help="the grantee's key (signs every request to the vaults)"),
    rounds: int = typer.Option(3, min=1, max=1000, help="federated rounds"),
    steps: int = typer.Option(25, min=1, help="local DP gradient steps per round"),
    lr: float = typer.Option(2.0, help="learning rate of each vault's DP-GD steps"),
    noise: float = typer.Option(4.0, help="DP noise multiplier asked of the vaults (each may raise it)"),
    clipping_norm: float = typer.Option(5.0, help="Flower: L2 bound of each vault's update"),
    server_noise: float = typer.Option(0.0, help="Flower: noise multiplier on the aggregate"),
    secagg: bool = typer.Option(True, help="secure aggregation (SecAgg+); --no-secagg for plain FedAvg"),
) -> None:
    """Run federated rounds across vaults (Flower SecAgg+ and DP); write the model and a report."""
    from allmende.vault.flower import FederatedConfig, Participant, run_federated
    from allmende.vault.model import load_model, save_model

    with friendly_errors():
        participants = []
        for spec in vault:
            parts = spec.split(",")
            if len(parts) != 3 or not parts[2].isdigit():
                console.print(f"[red]error:[/red] --vault {spec!r} must be URL,DATASET_ID,GRANT_ID")
                raise typer.Exit(2)
            participants.append(Participant(parts[0], parse_id(parts[1], "DATASET_ID"), int(parts[2])))
        model_spec, params, base_id = load_model(base)
        config = FederatedConfig(rounds, steps, lr, noise, clipping_norm, server_noise, secagg)
        with console.status(f"{rounds} rounds across {len(participants)} vaults"):
            result = run_federated(participants, resolve_key(key), model_spec, params, base_id, config)
        model_id = save_model(out, model_spec, result.params)
        report = {
            "model_id": "0x" + model_id.hex(),
            "base_model": "0x" + base_id.hex(),
            "datasets": ["0x" + p.dataset_id.hex() for p in participants],
            "grants": [p.grant_id for p in participants],
            "config": config.__dict__,
            "round_seconds": [round(s, 3) for s in result.round_seconds],
            "bytes_sent": result.bytes_sent,
            "bytes_received": result.bytes_received,
            "epsilon_per_round": {str(k): v / 1e6 for k, v in result.epsilon_micro.items()},
            "finished_at": int(time.time()),
        }
        (out / "run.json").write_text(json.dumps(report, indent=2) + "\n")
        table = Table(title=f"model 0x{model_id.hex()} in {out}")
        for col in ("round", "seconds", "ε charged (most of any vault)"):
            table.add_column(col, justify="right")
        for i, s in enumerate(result.round_seconds, start=1):
            table.add_row(str(i), f"{s:.2f}", f"{result.epsilon_micro.get(i, 0) / 1e6:.3f}")
        console.print(table)


@app.command("attest")
def attest(
    vault: str = typer.Option(..., help="URL of the vault holding the held-out dataset"),
    dataset: str = typer.Option(..., help="the held-out dataset's id"),
    grant: int = typer.Option(..., help="a grant of the evaluate template to this validator for the model"),
    model: Path = typer.Option(..., help="folder of the model to evaluate"),
    key: str = typer.Option(..., help="the validator's key (staked in Registry)"),
    epsilon: float = typer.Option(1.0, help="privacy cost of the evaluation, charged to the grant"),
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC or http://127.0.0.1:8545)"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: found in $ALLMENDE_STATE_DIR)"),
) -> None:
    """Evaluate a model on held-out data inside a vault (ε-DP) and attest its accuracy on chain."""
    import httpx
    from eth_utils import keccak

    from allmende.vault.auth import HEADER, sign_body
    from allmende.vault.model import MICRO, load_model
    from allmende.vault.service import model_payload

    with friendly_errors():
        secret = resolve_key(key)
        spec, params, model_id = load_model(model)
        job = keccak(model_id + parse_id(dataset, "--dataset") + int(time.time() * 1e6).to_bytes(8, "big"))
        body = json.dumps({
            "template": "evaluate", "dataset_id": dataset, "grant_id": grant, "job_id": "0x" + job.hex(),
            "model": model_payload(spec, params), "epsilon": epsilon,
        }).encode()  # fmt: skip
        reply = httpx.post(vault.rstrip("/") + "/v1/jobs", content=body, headers={HEADER: sign_body(secret, body)},
                           timeout=300)  # fmt: skip
        if reply.status_code != 200:
            console.print(f"[red]error:[/red] the vault refused ({reply.status_code}): {reply.text[:300]}")
            raise typer.Exit(1)
        answer = reply.json()
        accuracy = float(answer["result"]["accuracy"])
        report_hash = bytes.fromhex(answer["result_hash"].removeprefix("0x"))
        contracts = contracts_for(rpc, secret, deployments)
        contracts.data.attest(model_id, job, "accuracy", round(accuracy * MICRO), report_hash)
        console.print(
            f"attested model 0x{model_id.hex()[:12]}…: accuracy [bold]{accuracy:.4f}[/bold] on "
            f"{answer['result']['rows']} held-out rows, ε = {epsilon:g} "
            f"(job 0x{job.hex()[:12]}…, report 0x{report_hash.hex()[:12]}…)"
        )


@app.command("register")
def register(
    model: Path = typer.Option(..., help="folder of the trained model, with the run.json `train` wrote"),
    key: str = typer.Option(..., help="the registrant's key"),
    license: str = typer.Option("Apache-2.0", help="license of the derived model"),
    min_attestations: int = typer.Option(1, help="refuse unless this many validators attested the model"),
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC or http://127.0.0.1:8545)"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: found in $ALLMENDE_STATE_DIR)"),
) -> None:
    """Register the trained model in Models as derived from its base, with its datasets and attestation."""
    from allmende.vault.model import load_model

    with friendly_errors():
        _, _, model_id = load_model(model)
        run = json.loads((model / "run.json").read_text())
        if run["model_id"] != "0x" + model_id.hex():
            console.print("[red]error:[/red] the model files changed since `train` wrote run.json")
            raise typer.Exit(1)
        contracts = contracts_for(rpc, key, deployments)
        attestations = contracts.data.attestations(model_id)
        if len(attestations) < min_attestations:
            console.print(f"[red]error:[/red] {len(attestations)} attestation(s) on chain; {min_attestations} needed")
            raise typer.Exit(1)
        datasets = [bytes.fromhex(d.removeprefix("0x")) for d in run["datasets"]]
        base = bytes.fromhex(run["base_model"].removeprefix("0x"))
        uri = "allmende-attestation:" + ",".join("0x" + a.job_id.hex() for a in attestations)
        contracts.models.register_derived(model_id, base, license, datasets, uri[:256])
        payee, bps = contracts.models.royalty_info(model_id)
        console.print(
            f"registered 0x{model_id.hex()[:12]}… derived from 0x{base.hex()[:12]}…, {len(datasets)} datasets, "
            f"{len(attestations)} attestation(s); royalty {bps} bps to {payee}"
        )
