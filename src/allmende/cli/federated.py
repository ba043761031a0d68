"""`allmende federated init|train|attest|register`: make a base model, train across vaults, attest,
register the lineage."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from allmende.cli.common import console, contracts_for, friendly_errors, parse_id, resolve_key
from allmende.cli.vault import DEPLOYMENTS_HELP, RPC_HELP

if TYPE_CHECKING:
    from allmende.vault.flower import Participant

app = typer.Typer(help="federated training across vaults, attestation and lineage", no_args_is_help=True)


RUN_STATE = "run-state.json"  # in --out: what `--resume` needs (run id, vaults, base, config, rounds done)


def parse_vault(spec: str) -> Participant:
    """URL,DATASET_ID,GRANT_ID → a participant; one clear line otherwise."""
    parts = spec.split(",")
    if len(parts) != 3 or not parts[2].strip().isdigit() or not parts[0].startswith(("http://", "https://")):
        raise typer.BadParameter(f"{spec!r} must be URL,DATASET_ID,GRANT_ID (e.g. http://127.0.0.1:9600,0x…,3)",
                                 param_hint="--vault")  # fmt: skip
    try:
        dataset = bytes.fromhex(parts[1].strip().removeprefix("0x"))
    except ValueError:
        dataset = b""
    if len(dataset) != 32:
        raise typer.BadParameter(f"the dataset id in {spec!r} must be 0x followed by 64 hex digits",
                                 param_hint="--vault")  # fmt: skip
    from allmende.vault.flower import Participant

    return Participant(parts[0].strip(), dataset, int(parts[2]))


class ChainCharges:
    """What each vault of a run logged on chain since the last look (the accesses on its dataset
    under its grant): what the CLI reports a round charged, read from the chain."""

    def __init__(self, participants: list[Participant], reader: Any) -> None:
        self.participants = participants
        self.reader = reader
        self.seen = {p.dataset_id: reader.data.dataset(p.dataset_id).accesses for p in participants}

    @classmethod
    def of(cls, participants: list[Participant], rpc: str | None, deployments: Path | None) -> ChainCharges | None:
        """None without a deployments file (the run still works; the vaults' word is reported)."""
        from allmende.chain.errors import ChainError

        try:
            return cls(participants, contracts_for(rpc, None, deployments))
        except (ChainError, OSError, ValueError, KeyError):
            return None

    def since_last(self) -> list[tuple[Participant, list[Any]]]:
        """Each vault's new accesses under its grant since the last call (or since the start)."""
        out = []
        for p in self.participants:
            accesses = self.reader.data.accesses(p.dataset_id)
            new = accesses[self.seen[p.dataset_id] :]
            self.seen[p.dataset_id] = len(accesses)
            out.append((p, [a for a in new if a.grant_id == p.grant_id]))
        return out

    @staticmethod
    def describe(charged: list[tuple[Participant, list[Any]]]) -> str:
        parts = [
            f"vault {p.url} (grant {p.grant_id}) was charged ε {sum(a.epsilon_spent for a in accesses) / 1e6:.6f} "
            f"(job {', '.join('0x' + a.job_id.hex() for a in accesses)})"
            for p, accesses in charged
            if accesses
        ]
        return "; ".join(parts) if parts else "charged no vault"


def _model_folder(folder: Path) -> None:
    if not (folder / "spec.json").is_file() or not (folder / "weights.npz").is_file():
        raise typer.BadParameter(f"{folder} is not a model folder (spec.json, weights.npz)", param_hint="--model")


def _save_state(out: Path, state: dict[str, Any]) -> None:
    tmp = out / (RUN_STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(out / RUN_STATE)


@app.command("train")
def train(
    vault: list[str] = typer.Option(
        [], help="URL,DATASET_ID,GRANT_ID of one vault's part (repeat, at least 2; with --resume: the saved ones)"
    ),
    base: Path = typer.Option(None, help="folder of the base model (spec.json, weights.npz), registered in Models"),
    out: Path = typer.Option(..., help="run folder: the model after each round, run-state.json, run.json at the end"),
    key: str = typer.Option(..., help="the grantee's key (signs every request to the vaults)"),
    rounds: int = typer.Option(
        None, min=1, max=1000, help="federated rounds in all, 3 by default (with --resume: the saved run's, or more)"
    ),
    steps: int = typer.Option(25, min=1, max=200, help="local DP gradient steps per round (a vault's limit: 200)"),
    lr: float = typer.Option(2.0, help="learning rate of each vault's DP-GD steps"),
    noise: float = typer.Option(4.0, help="DP noise multiplier asked of the vaults (each may raise it)"),
    clipping_norm: float = typer.Option(5.0, help="Flower: L2 bound of each vault's update"),
    server_noise: float = typer.Option(0.0, help="Flower: noise multiplier on the aggregate"),
    secagg: bool = typer.Option(
        True,
        help="secure aggregation: Flower SecAgg+ with every vault's shares needed to unmask (works from 2 vaults; "
        "a round's ε is logged only once every vault trained). --no-secagg: plain FedAvg, each update leaves "
        "in the clear and is charged as it leaves",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="continue the run saved in --out after its last completed round (same run id)"
    ),
    rpc: str = typer.Option(None, help=RPC_HELP + "; read to report what each round charged where"),
    deployments: Path = typer.Option(None, help=DEPLOYMENTS_HELP),
) -> None:
    """Run federated rounds across vaults (Flower SecAgg+ and DP); save the model after every round.

    Every round is all or nothing: each vault checks its grant (expiry, revocation, model, ε left)
    before any vault trains, and a round that fails anywhere is aborted with no ε charged. A run
    that stops (a refusal, a budget spent, an interruption) keeps its completed rounds in --out;
    `--resume` continues it."""
    from allmende.vault.flower import FederatedConfig, RoundDone, RoundRefused, run_federated
    from allmende.vault.model import load_model, save_model

    participants = [parse_vault(v) for v in vault]
    state_file = out / RUN_STATE
    state: dict[str, Any] = {}
    if resume:
        if not state_file.is_file():
            raise typer.BadParameter(f"{out} holds no run to resume (no {RUN_STATE})", param_hint="--out")
        state = json.loads(state_file.read_text())
        if not participants:
            participants = [parse_vault(v) for v in state["vaults"]]
        base = base or Path(state["base"])
    elif state_file.is_file() and json.loads(state_file.read_text()).get("rounds_done", 0) > 0:
        raise typer.BadParameter(f"{out} holds a run already: add --resume to continue it, or pick another --out",
                                 param_hint="--out")  # fmt: skip
    if len(participants) < 2:
        raise typer.BadParameter(
            f"federated training needs at least 2 vaults (got {len(participants)}): repeat --vault",
            param_hint="--vault",
        )
    if len({(p.url, p.dataset_id) for p in participants}) != len(participants):
        raise typer.BadParameter("the same vault and dataset is named twice", param_hint="--vault")
    if base is None:
        raise typer.BadParameter("name the base model's folder (`allmende federated init` makes one)",
                                 param_hint="--base")  # fmt: skip
    if not (base / "spec.json").is_file() or not (base / "weights.npz").is_file():
        raise typer.BadParameter(f"{base} is not a model folder (spec.json, weights.npz); "
                                 "`allmende federated init` makes one", param_hint="--base")  # fmt: skip
    if rounds is None:
        rounds = int(state["config"]["rounds"]) if state else 3
    with friendly_errors():
        model_spec, base_params, base_id = load_model(base)
        config = FederatedConfig(rounds, steps, lr, noise, clipping_norm, server_noise, secagg)
        if state:
            if rounds <= state["rounds_done"]:
                raise typer.BadParameter(
                    f"the run in {out} has done {state['rounds_done']} rounds already; ask for more with --rounds",
                    param_hint="--rounds",
                )
            params = load_model(out)[1]
        else:
            params = base_params
            state = {
                "run_id": int.from_bytes(os.urandom(6), "big"),
                "base": str(base.resolve()),
                "base_model": "0x" + base_id.hex(),
                "rounds_done": 0,
                "round_seconds": [],
                "epsilon_per_round": {},
            }
        state["vaults"] = [f"{p.url},0x{p.dataset_id.hex()},{p.grant_id}" for p in participants]
        state["config"] = config.__dict__
        out.mkdir(parents=True, exist_ok=True)
        first = state["rounds_done"] + 1

        ledger = ChainCharges.of(participants, rpc, deployments)

        def checked(round_number: int, answers: list[dict[str, Any]]) -> None:
            least = min(a["left_micro"] for a in answers) / 1e6
            console.print(f"round {round_number}: all {len(answers)} vaults agreed (least ε left {least:.3f})")

        def completed(done: RoundDone) -> None:
            # the model after every round, then the state that names it: an interruption keeps both
            save_model(out, model_spec, done.params)
            (out / "rounds").mkdir(exist_ok=True)
            save_model(out / "rounds" / f"{done.round:04d}", model_spec, done.params)
            charged = ledger.since_last() if ledger else None
            most = max((sum(a.epsilon_spent for a in accesses) for _, accesses in charged), default=0) if charged else 0
            state["rounds_done"] = done.round
            state["round_seconds"].append(round(done.seconds, 3))
            state["epsilon_per_round"][str(done.round)] = (most if charged else done.epsilon_micro) / 1e6
            _save_state(out, state)
            where = f"; on chain: {ChainCharges.describe(charged)}" if charged is not None else ""
            console.print(f"round {done.round} done in {done.seconds:.2f} s, ε ≤ {done.epsilon_micro / 1e6:.3f}{where}",
                          highlight=False, soft_wrap=True)  # fmt: skip

        _save_state(out, state)
        try:
            result = run_federated(
                participants, resolve_key(key), model_spec, params, base_id, config,
                run_id=state["run_id"], first_round=first, on_checked=checked, on_round=completed,
            )  # fmt: skip
        except RoundRefused as exc:
            message = str(exc)
            if ledger is not None:  # what the chain says, not only what the vaults said
                message += f"\n  read from the chain: round {exc.round} {ChainCharges.describe(ledger.since_last())}"
            kept = (
                f"rounds 1-{exc.completed} are kept in {out}; continue with `allmende federated train --out {out} "
                f"--key … --resume` once every vault would take part"
                if exc.completed
                else "nothing was kept"
            )
            console.print(f"[red]error:[/red] {escape(message)}\n  {kept}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        model_id = save_model(out, model_spec, result.params)
        report = {
            "model_id": "0x" + model_id.hex(),
            "base_model": state["base_model"],
            "datasets": ["0x" + p.dataset_id.hex() for p in participants],
            "grants": [p.grant_id for p in participants],
            "config": config.__dict__,
            "run_id": state["run_id"],
            "round_seconds": state["round_seconds"],
            "bytes_sent": result.bytes_sent,
            "bytes_received": result.bytes_received,
            "epsilon_per_round": state["epsilon_per_round"],
            "finished_at": int(time.time()),
        }
        (out / "run.json").write_text(json.dumps(report, indent=2) + "\n")
        table = Table(title=f"model 0x{model_id.hex()} in {out}")
        for col in ("round", "seconds", "ε charged (most of any vault)"):
            table.add_column(col, justify="right")
        for i, s in enumerate(state["round_seconds"], start=1):
            table.add_row(str(i), f"{s:.2f}", f"{state['epsilon_per_round'].get(str(i), 0):.3f}")
        console.print(table)


@app.command("init")
def init(
    out: Path = typer.Option(..., help="folder to write the base model to (spec.json, weights.npz)"),
    inputs: int = typer.Option(None, min=1, max=4096, help="number of feature columns (or give --data)"),
    classes: int = typer.Option(None, min=2, max=4096, help="number of label classes (or give --data)"),
    hidden: int = typer.Option(0, min=0, max=4096, help="hidden units; 0 is logistic regression"),
    seed: int = typer.Option(0, help="seed of the initial weights (the same seed gives the same model id)"),
    data: Path = typer.Option(
        None, help="public data to pre-train on (CSV, Parquet or JSONL with a label column); never a vault's data"
    ),
    label: str = typer.Option("label", help="the label column of --data"),
    standardize: bool = typer.Option(
        True,
        help="with --data: the model standardises each feature by the mean and standard deviation of --data "
        "(public rows; part of the model, so vaults take raw rows as they are)",
    ),
    steps: int = typer.Option(40, min=0, max=10_000, help="gradient steps on --data"),
    lr: float = typer.Option(1.0, help="learning rate on --data"),
    register: bool = typer.Option(False, "--register", help="also register it in Models (with --key, --license)"),
    key: str = typer.Option(None, help="with --register: the owner's key (receives its lineage's royalties)"),
    license: str = typer.Option("Apache-2.0", help="with --register: its license"),
    royalty_bps: int = typer.Option(0, min=0, max=10_000, help="with --register: royalty share, basis points"),
    rpc: str = typer.Option(None, help=RPC_HELP),
    deployments: Path = typer.Option(None, help=DEPLOYMENTS_HELP),
) -> None:
    """Make a base model for federated training: a fresh classifier, optionally pre-trained on public data.
    With --register it is registered in Models (its owner receives the royalties of models derived from it); then
    each data owner grants `federated_round` on its id."""
    from allmende.vault.datasets import load_table
    from allmende.vault.model import ModelSpec, save_model
    from allmende.vault.model import train as gradient_descent

    if register and key is None:
        raise typer.BadParameter("--register needs --key (the model's owner)", param_hint="--key")
    with friendly_errors():
        table = load_table(data, label) if data is not None else None
        if table is not None and table.labels is None:
            raise typer.BadParameter(f"{data} has no {label!r} column", param_hint="--data")
        n_inputs = inputs or (len(table.columns) if table is not None else None)
        n_classes = classes or (int(table.labels.max()) + 1 if table is not None and table.labels is not None else None)
        if n_inputs is None or n_classes is None:
            raise typer.BadParameter("give --inputs and --classes, or --data to read them from", param_hint="--inputs")
        if table is not None and len(table.columns) != n_inputs:
            raise typer.BadParameter(f"--data has {len(table.columns)} feature columns, not {n_inputs}",
                                     param_hint="--inputs")  # fmt: skip
        spec = ModelSpec(n_inputs, max(2, n_classes), hidden)
        if table is not None and standardize and table.rows:
            spec = spec.standardized(table.features)
        params = spec.init(seed)
        if table is not None and table.labels is not None and steps:
            params = gradient_descent(spec, params, table.features, table.labels, steps, lr)
        model_id = save_model(out, spec, params)
        trained = f", pre-trained on {data}" if table else ""
        trained += ", standardising each input by --data's mean and deviation" if spec.shift is not None else ""
        console.print(f"base model [bold]0x{model_id.hex()}[/bold] in {out}: {n_inputs} inputs, "
                      f"{spec.classes} classes, {hidden} hidden{trained}")  # fmt: skip
        if register:
            c = contracts_for(rpc, key, deployments)
            c.models.register(model_id, license, royalty_bps, [], [], "")
            console.print(f"registered 0x{model_id.hex()[:12]}… in Models: owner {c.client.address}, {license}, "
                          f"royalty {royalty_bps} bps")  # fmt: skip
        else:
            console.print("next: register it (--register --key … --license …)")
        console.print(f"then ask each data owner for a federated_round grant on 0x{model_id.hex()}")


@app.command("attest")
def attest(
    vault: str = typer.Option(..., help="URL of the vault holding the held-out dataset"),
    dataset: str = typer.Option(..., help="the held-out dataset's id"),
    grant: int = typer.Option(..., help="a grant of the evaluate template to this validator for the model"),
    model: Path = typer.Option(..., help="folder of the model to evaluate"),
    key: str = typer.Option(..., help="the validator's key (staked in Registry)"),
    epsilon: float = typer.Option(1.0, help="privacy cost of the evaluation, charged to the grant"),
    rpc: str = typer.Option(None, help=RPC_HELP),
    deployments: Path = typer.Option(None, help=DEPLOYMENTS_HELP),
) -> None:
    """Evaluate a model on held-out data inside a vault (ε-DP) and attest its accuracy on chain."""
    import httpx
    from eth_utils import keccak

    from allmende.chain.bindings import ROLE_VALIDATOR
    from allmende.vault.auth import post_job
    from allmende.vault.model import MICRO, load_model
    from allmende.vault.service import model_payload

    _model_folder(model)
    with friendly_errors():
        secret = resolve_key(key)
        contracts = contracts_for(rpc, secret, deployments)
        me = contracts.client.address
        # before the evaluation is charged: only an active staked validator's attestation is taken
        if contracts.registry.role_of(me) != ROLE_VALIDATOR or not contracts.registry.is_active(me):
            console.print(
                f"[red]error:[/red] {me} is not an active validator in Registry, so the chain would refuse its "
                "attestation; nothing was evaluated or charged. Attest with a staked validator's key (`allmende "
                "validator` registers one)"
            )
            raise typer.Exit(1)
        spec, params, model_id = load_model(model)
        job = keccak(model_id + parse_id(dataset, "--dataset") + int(time.time() * 1e6).to_bytes(8, "big"))
        payload = {
            "template": "evaluate", "dataset_id": dataset, "grant_id": grant, "job_id": "0x" + job.hex(),
            "model": model_payload(spec, params), "epsilon": epsilon,
        }  # fmt: skip
        try:
            reply = post_job(vault, secret, payload)  # signed for this vault, dataset and grant, once
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            console.print(f"[red]error:[/red] the vault at {vault} is unreachable ({exc.__class__.__name__})")
            raise typer.Exit(1) from None
        if reply.status_code != 200:
            console.print(f"[red]error:[/red] the vault refused ({reply.status_code}): {reply.text[:300]}")
            raise typer.Exit(1)
        answer = reply.json()
        accuracy = float(answer["result"]["accuracy"])
        report_hash = bytes.fromhex(answer["result_hash"].removeprefix("0x"))
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
    rpc: str = typer.Option(None, help=RPC_HELP),
    deployments: Path = typer.Option(None, help=DEPLOYMENTS_HELP),
) -> None:
    """Register the trained model in Models as derived from its base, with its datasets and attestation."""
    from allmende.vault.model import load_model

    _model_folder(model)
    if not (model / "run.json").is_file():
        raise typer.BadParameter(f"{model} has no run.json (`allmende federated train` writes it when a run completes)",
                                 param_hint="--model")  # fmt: skip
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
