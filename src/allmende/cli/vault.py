"""`allmende vault` (a data owner's node) and `allmende data grant|grants|revoke|log|refusals|exact-aggregates`,
and the researcher's jobs `allmende data aggregate|evaluate`."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import typer

from allmende.chain.bindings import TEMPLATES, GrantRecord
from allmende.cli.common import (
    console,
    contracts_for,
    exit_stopped,
    friendly_errors,
    node_logging,
    parse_id,
    resolve_key,
)
from allmende.config import from_environment

TEMPLATE_NAMES = {v: k for k, v in TEMPLATES.items()}
RPC_HELP = "JSON-RPC URL (default $ALLMENDE_RPC, else the chain URL the deployments file records)"
DEPLOYMENTS_HELP = (
    "deployments JSON (default $ALLMENDE_DEPLOYMENTS, else <state-dir>/run/deployments.json, then "
    "<state-dir>/deployments.json)"
)
VAULT_STATE_HELP = "the vault's state directory (default $ALLMENDE_STATE_DIR/vault, i.e. ./.allmende/vault)"
VAULT_PORT = 9600  # validators default to 9500: a vault and a validator on one host do not collide
MIN_GRANT_SECONDS = 60  # a shorter grant would expire before its first job could be logged


def dataset_arg(value: str) -> bytes:
    """A dataset id from the command line: 0x and 64 hex digits, or one clear line."""
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise typer.BadParameter(f"{value!r} is not a dataset id: 0x followed by 64 hex digits "
                                 "(the vault prints its datasets' ids; `allmende data grants` lists them)",
                                 param_hint="--dataset")  # fmt: skip
    return raw


def address_arg(value: str, option: str) -> str:
    """An account address (0x and 40 hex digits), checksummed; one clear line otherwise."""
    from eth_utils import is_address, to_checksum_address

    if not is_address(value):
        raise typer.BadParameter(f"{value!r} is not an address (0x followed by 40 hex digits)", param_hint=option)
    return str(to_checksum_address(value))


data_app = typer.Typer(
    help="datasets: grants (with ε left), revocations, the access log, refusals; researchers' aggregate and "
    "evaluate jobs",
    no_args_is_help=True,
)


def vault(
    rpc: str = typer.Option(None, help=RPC_HELP),
    key: str = typer.Option(..., help="the vault key: keystore file or devnet:N"),
    data: list[Path] = typer.Option(
        ..., help="a dataset file (CSV, Parquet or JSONL; a JSONL of text or chat rows for LMs); repeat for more"
    ),
    label: str = typer.Option("label", help="the label column, if any"),
    license: str = typer.Option("proprietary", help="license recorded when a dataset is registered"),
    policy_uri: str = typer.Option("", help="data-use policy recorded when a dataset is registered"),
    port: int = typer.Option(VAULT_PORT, help="port of the vault's API"),
    host: str = typer.Option("127.0.0.1", help="address to listen on; 0.0.0.0 for every interface"),
    allowed_host: list[str] = typer.Option(
        [], help="a Host name this vault is reached by besides loopback and --host, e.g. its DNS name (repeatable)"
    ),
    deployments: Path = typer.Option(None, help=DEPLOYMENTS_HELP),
    state_dir: Path = typer.Option(
        None, help="where the vault keeps its database (default $ALLMENDE_STATE_DIR/vault, i.e. ./.allmende/vault)"
    ),
    min_group: int = typer.Option(10, help="smallest group an aggregate may describe"),
    min_noise: float = typer.Option(1.0, help="least DP noise multiplier a training round may use"),
    clip: float = typer.Option(1.0, help="per-row gradient clipping norm for DP training"),
    max_update_norm: float = typer.Option(5.0, help="largest update norm (clipping norm) a federated round releases"),
    step_slack: float = typer.Option(
        0.01, help="how much further than the clipping norm a later round's parameters may move (fraction)"
    ),
    loss_clip: float = typer.Option(5.0, help="evaluate clips each row's loss to this before summing"),
    lm: list[str] = typer.Option(
        [], help="a base language model federated LoRA and LM evaluation may use (name or folder; repeatable)"
    ),
) -> None:
    """Hold datasets and run approved job templates next to them; no row ever leaves."""
    from allmende.chain import Deployment
    from allmende.cli.common import chain_url, find_deployments
    from allmende.vault.node import VaultConfig, serve
    from allmende.vault.service import VaultPolicy

    env = from_environment()
    node_logging()
    with friendly_errors():
        # the network every other command finds: the deployments file, and the chain it records
        found = find_deployments(deployments)
        cfg = VaultConfig(
            rpc_url=chain_url(rpc, Deployment.load(found)),
            key=resolve_key(key),
            deployments=found,
            data=data,
            state_dir=state_dir or env.state_dir / "vault",
            host=host,
            port=port,
            allowed_hosts=tuple(allowed_host),
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
            language_models=tuple(lm),
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
    rpc: str = typer.Option(None, help=RPC_HELP),
    deployments: Path = typer.Option(None, help=DEPLOYMENTS_HELP),
) -> None:
    """Grant a job template on a dataset, with an expiry and an epsilon budget."""
    from allmende.vault.model import micro_epsilon
    from allmende.vault.service import ROUND_WINDOW

    if template not in TEMPLATES:
        raise typer.BadParameter(f"must be one of {', '.join(TEMPLATES)}", param_hint="--template")
    dataset_id = dataset_arg(dataset)
    who = address_arg(grantee, "--grantee")
    models = [parse_id(m, "--model") for m in model]
    if template != "aggregate" and not models:
        raise typer.BadParameter(f"a {template} grant names the model(s) it covers", param_hint="--model")
    if not MIN_GRANT_SECONDS <= days * 86_400 <= 3650 * 86_400:
        raise typer.BadParameter(
            f"must be at least {MIN_GRANT_SECONDS} s ({MIN_GRANT_SECONDS / 86_400:.5f} days) and at most 3650 days",
            param_hint="--days",
        )
    if template == "federated_round" and days * 86_400 <= ROUND_WINDOW:
        raise typer.BadParameter(
            f"a federated_round grant must last more than {ROUND_WINDOW} s ({ROUND_WINDOW / 86_400:.4f} days): a "
            "vault starts a round only under a grant that lasts until the round is surely logged",
            param_hint="--days",
        )
    if not 0.001 <= epsilon <= 1000:
        raise typer.BadParameter(
            "must be in [0.001, 1000]: a grant with no budget could run no job (the least a job may spend is 0.001)",
            param_hint="--epsilon",
        )
    with friendly_errors():
        c = contracts_for(rpc, key, deployments)
        # from the time the chain will record the grant at, not its latest block's (maybe long past)
        expires = max(c.client.timestamp() + 1, int(time.time())) + int(days * 86_400)
        grant_id = c.data.grant(dataset_id, who, TEMPLATES[template], models, expires, micro_epsilon(epsilon))
        console.print(
            f"grant [bold]{grant_id}[/bold]: {template} for {who}, ε ≤ {epsilon}, expires {time.ctime(expires)}"
        )


@data_app.command("revoke")
def revoke(
    grant_id: int = typer.Argument(..., min=1, help="the grant's id (`allmende data grants` lists them)"),
    key: str = typer.Option(..., help="the dataset owner's key"),
    rpc: str = typer.Option(None, help=RPC_HELP),
    deployments: Path = typer.Option(None, help=DEPLOYMENTS_HELP),
) -> None:
    """Revoke a grant at once."""
    with friendly_errors():
        contracts_for(rpc, key, deployments).data.revoke(grant_id)
        console.print(f"grant {grant_id} revoked")


@data_app.command("log")
def access_log(
    dataset: str = typer.Option(..., help="dataset id (0x…)"),
    rpc: str = typer.Option(None, help=RPC_HELP),
    deployments: Path = typer.Option(None, help=DEPLOYMENTS_HELP),
) -> None:
    """Every access to a dataset, as the chain recorded it: who (the grantee), which template and model, ε spent."""
    dataset_id = dataset_arg(dataset)
    with friendly_errors():
        c = contracts_for(rpc, None, deployments)
        d = c.data.dataset(dataset_id)
        console.print(f"dataset 0x{dataset_id.hex()}, owner {d.owner}, vault {d.vault}")
        grants: dict[int, GrantRecord] = {}
        accesses = c.data.accesses(dataset_id)
        for i, a in enumerate(accesses):
            g = grants.get(a.grant_id) or grants.setdefault(a.grant_id, c.data.get_grant(a.grant_id))
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a.at))
            console.print(
                f"#{i} {when} UTC  grant {a.grant_id} {TEMPLATE_NAMES.get(g.template, str(g.template))} "
                f"for {g.grantee}  model 0x{a.model_id.hex()}  job 0x{a.job_id.hex()}  "
                f"result 0x{a.result_hash.hex()}  ε {a.epsilon_spent / 1e6:.6f}",
                highlight=False,
                soft_wrap=True,
            )
        spent = sum(a.epsilon_spent for a in accesses)
        console.print(f"{len(accesses)} access(es), ε {spent / 1e6:.6f} in all", highlight=False)


@data_app.command("grants")
def grants(
    dataset: str = typer.Option(None, help="only grants on this dataset (0x…)"),
    grantee: str = typer.Option(None, help="only grants to this address"),
    owner: str = typer.Option(None, help="only grants on datasets this address owns"),
    all_: bool = typer.Option(False, "--all", help="also revoked and expired grants"),
    rpc: str = typer.Option(None, help=RPC_HELP),
    deployments: Path = typer.Option(None, help=DEPLOYMENTS_HELP),
) -> None:
    """Grants with their remaining privacy budget (ε left), expiry and state, as the chain holds them."""
    dataset_id = dataset_arg(dataset) if dataset is not None else None
    who = address_arg(grantee, "--grantee") if grantee is not None else None
    owned_by = address_arg(owner, "--owner") if owner is not None else None
    with friendly_errors():
        c = contracts_for(rpc, None, deployments)
        now = c.client.timestamp()
        owners: dict[bytes, str] = {}
        shown = 0
        for grant_id in range(1, c.data.grant_count() + 1):
            g = c.data.get_grant(grant_id)
            if dataset_id is not None and g.dataset_id != dataset_id:
                continue
            if who is not None and g.grantee.lower() != who.lower():
                continue
            if owned_by is not None:
                if g.dataset_id not in owners:
                    owners[g.dataset_id] = c.data.dataset(g.dataset_id).owner
                if owners[g.dataset_id].lower() != owned_by.lower():
                    continue
            state = "revoked" if g.revoked else "expired" if g.expires_at <= now else "active"
            if state != "active" and not all_:
                continue
            left = max(0, g.epsilon_budget - g.epsilon_spent)
            models = ", ".join("0x" + m.hex()[:8] for m in g.model_ids) or "any model"
            console.print(
                f"grant {grant_id} ({state}) {TEMPLATE_NAMES.get(g.template, str(g.template))} on dataset "
                f"0x{g.dataset_id.hex()[:12]}… for {g.grantee}: ε left {left / 1e6:.3f} of "
                f"{g.epsilon_budget / 1e6:.3f} (spent {g.epsilon_spent / 1e6:.3f}), models {models}, expires "
                f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(g.expires_at))} UTC",
                highlight=False,
            )
            shown += 1
        if not shown:
            console.print("no grants" + ("" if all_ else " active (--all shows revoked and expired ones too)"))


@data_app.command("refusals")
def refusals(
    state_dir: Path = typer.Option(None, help=VAULT_STATE_HELP),
    limit: int = typer.Option(50, min=1, max=10_000, help="how many of the latest refusals to show"),
) -> None:
    """Requests this vault refused (revoked, expired, over budget, unsigned, not granted…), newest first,
    with who asked and why. The vault also logs each one and counts them on /metrics."""
    from allmende.vault.store import VaultStore

    folder = state_dir or from_environment().state_dir / "vault"
    if not (folder / "vault.db").is_file():
        raise typer.BadParameter(f"no vault database in {folder} (the vault's --state-dir)", param_hint="--state-dir")
    with friendly_errors():
        store = VaultStore(folder / "vault.db")
        counts = store.refusal_counts()
        by_code = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        console.print(f"{sum(counts.values())} refused request(s)" + (f": {by_code}" if counts else ""))
        for r in store.refusals(limit):
            dataset_text = f" dataset 0x{r.dataset_id.hex()[:12]}…" if r.dataset_id else ""
            console.print(
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(r.at))} UTC  {r.code}  {r.path}  from "
                f"{r.signer or 'an unknown signer'}  grant {r.grant_id if r.grant_id is not None else '-'}"
                f"{dataset_text}: {r.message}",
                highlight=False,
            )


def _post_job(vault_url: str, key: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Sign and send one job to a vault; a refusal is one red line and exit code 1."""
    import httpx

    from allmende.vault.auth import post_job

    secret = resolve_key(key)
    try:
        reply = post_job(vault_url, secret, payload)  # signed for this vault, dataset and grant, once
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        console.print(f"[red]error:[/red] the vault at {vault_url} is unreachable ({exc.__class__.__name__})")
        raise typer.Exit(1) from None
    if reply.status_code != 200:
        try:
            why = reply.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            why = reply.text[:300]
        console.print(f"[red]error:[/red] the vault refused ({reply.status_code}): {why}")
        raise typer.Exit(1)
    return dict(reply.json())


def _job_id() -> str:
    return "0x" + os.urandom(32).hex()


@data_app.command("aggregate")
def aggregate_job(
    vault: str = typer.Option(..., help="URL of the vault holding the dataset"),
    dataset: str = typer.Option(..., help="dataset id (0x…)"),
    grant: int = typer.Option(..., min=1, help="your aggregate grant on that dataset"),
    column: list[str] = typer.Option(..., help="a column to describe (repeat)"),
    group_by: str = typer.Option(None, help="group by this column (the label, with ε)"),
    bins: int = typer.Option(10, min=1, max=100, help="histogram bins per column (the vault's limit: 100)"),
    low: float = typer.Option(None, help="values are clipped to [--low, --high] (needed with --epsilon)"),
    high: float = typer.Option(None, help="see --low"),
    epsilon: float = typer.Option(
        None, help="privacy cost of the answer, charged to the grant (without it: exact, if the owner consented)"
    ),
    key: str = typer.Option(..., help="the grantee's key (signs the request)"),
) -> None:
    """Run an aggregate job (counts, means, histograms) inside a vault; prints the vault's answer as JSON."""
    payload: dict[str, Any] = {
        "template": "aggregate", "dataset_id": "0x" + dataset_arg(dataset).hex(), "grant_id": grant,
        "job_id": _job_id(), "columns": column, "bins": bins,
    }  # fmt: skip
    if group_by is not None:
        payload["group_by"] = group_by
    if (low is None) != (high is None):
        raise typer.BadParameter("give both --low and --high, or neither", param_hint="--low")
    if low is not None and high is not None:
        if not (math.isfinite(low) and math.isfinite(high)):
            raise typer.BadParameter("--low and --high must be finite numbers", param_hint="--low")
        if not low < high:
            raise typer.BadParameter("--low must be below --high", param_hint="--low")
        payload["range"] = [low, high]
    if epsilon is not None:
        if not 0.001 <= epsilon <= 100:  # the vault's range (smaller ε rounds to no charge)
            raise typer.BadParameter("must be in [0.001, 100]", param_hint="--epsilon")
        payload["epsilon"] = epsilon
    answer = _post_job(vault, key, payload)
    console.print_json(json.dumps({**answer["result"], "result_hash": answer["result_hash"],
                                   "access_tx": answer["access_tx"]}))  # fmt: skip


@data_app.command("evaluate")
def evaluate_job(
    vault: str = typer.Option(..., help="URL of the vault holding the dataset"),
    dataset: str = typer.Option(..., help="dataset id (0x…)"),
    grant: int = typer.Option(..., min=1, help="your evaluate grant on that dataset, for this model"),
    model: Path = typer.Option(..., help="folder of the model (spec.json, weights.npz)"),
    epsilon: float = typer.Option(1.0, help="privacy cost of the evaluation, charged to the grant"),
    key: str = typer.Option(..., help="the grantee's key (signs the request)"),
) -> None:
    """Evaluate a model on a vault's data (ε-DP accuracy and loss); nothing goes on chain but the access.
    Validators attest the result with `allmende federated attest`."""
    from allmende.vault.model import load_model
    from allmende.vault.service import model_payload

    if not (model / "spec.json").is_file() or not (model / "weights.npz").is_file():
        raise typer.BadParameter(f"{model} is not a model folder (spec.json, weights.npz)", param_hint="--model")
    if not 0.001 <= epsilon <= 100:
        raise typer.BadParameter("must be in [0.001, 100]", param_hint="--epsilon")
    spec, params, model_id = load_model(model)
    answer = _post_job(vault, key, {
        "template": "evaluate", "dataset_id": "0x" + dataset_arg(dataset).hex(), "grant_id": grant,
        "job_id": _job_id(), "model": model_payload(spec, params), "epsilon": epsilon,
    })  # fmt: skip
    result = answer["result"]
    console.print(
        f"model 0x{model_id.hex()[:12]}…: accuracy [bold]{float(result['accuracy']):.4f}[/bold] on "
        f"{result['rows']} rows, ε = {epsilon:g} (access logged in {answer['access_tx']})"
    )


@data_app.command("exact-aggregates")
def exact_aggregates(
    grant_id: int = typer.Argument(..., help="the grant that may ask for exact aggregates"),
    state_dir: Path = typer.Option(None, help=VAULT_STATE_HELP),
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
