"""`allmende federated lora` and `allmende federated lora-evaluate`: fine-tune a registered causal
LM with LoRA across ≥ 3 vaults (SecAgg+, DP-SGD, dropouts tolerated), evaluate an adapter on a
vault's private text, register the merged model as derived."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import typer
from rich.markup import escape

from allmende.cli.common import console, contracts_for, friendly_errors, parse_id, resolve_key
from allmende.cli.federated import app, parse_vault
from allmende.cli.vault import DEPLOYMENTS_HELP, RPC_HELP

ADAPTER = "adapter.npz"
SPEC = "lora.json"


@app.command("lora")
def lora(
    vault: list[str] = typer.Option(..., help="URL,DATASET_ID,GRANT_ID of one vault's text dataset (at least 3)"),
    key: str = typer.Option(..., help="the grantee's key (signs every request to the vaults)"),
    out: Path = typer.Option(..., help="run folder: the adapter, its spec, the merged model in model/, run.json"),
    base: str = typer.Option("smollm2-135m-instruct", help="the registered base model (name or folder)"),
    rounds: int = typer.Option(3, min=1, max=100, help="federated rounds"),
    steps: int = typer.Option(4, min=1, max=200, help="DP-SGD steps per round in each vault"),
    lr: float = typer.Option(2.0, help="learning rate of the vaults' DP-SGD"),
    noise: float = typer.Option(1.0, help="DP noise multiplier asked of the vaults (each may raise it)"),
    clipping_norm: float = typer.Option(5.0, help="Flower: L2 bound of each vault's adapter update"),
    rank: int = typer.Option(4, min=1, max=64, help="LoRA rank"),
    alpha: float = typer.Option(8.0, help="LoRA alpha"),
    targets: str = typer.Option("q_proj,v_proj", help="the projections adapted, comma-separated"),
    max_tokens: int = typer.Option(64, min=8, max=512, help="examples are cut to this many tokens"),
    register: bool = typer.Option(False, "--register", help="register the merged model as derived from the base"),
    license: str = typer.Option("Apache-2.0", help="license of the derived model (with --register)"),
    rpc: str = typer.Option(None, help=RPC_HELP),
    deployments: Path = typer.Option(None, help=DEPLOYMENTS_HELP),
) -> None:
    """Federated LoRA: each round every vault trains the adapter on its rows with DP-SGD and only
    its masked update leaves (SecAgg+); a round completes while up to a third of the vaults drop
    out, and ε is charged on chain only to the vaults whose updates were aggregated."""
    from allmende.core.manifest import model_id_of
    from allmende.engine import resolve_model
    from allmende.vault.federated_lora import LoraRoundDone, LoraRunConfig, run_federated_lora
    from allmende.vault.flower import RoundRefused
    from allmende.vault.lora import AdapterModel, LoraSpec
    from allmende.vault.model import params_to_bytes

    participants = [parse_vault(v) for v in vault]
    if len(participants) < 3:
        raise typer.BadParameter("federated LoRA needs at least 3 vaults", param_hint="--vault")
    with friendly_errors():
        resolved = resolve_model(base)
        try:
            spec = LoraSpec.from_json({"base_model": "0x" + resolved.model_id.hex(), "rank": rank, "alpha": alpha,
                                       "targets": [t.strip() for t in targets.split(",") if t.strip()],
                                       "max_tokens": max_tokens})  # fmt: skip
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        model = AdapterModel(resolved.path, spec)
        config = LoraRunConfig(rounds, steps, lr, noise, clipping_norm)

        def report(done: LoraRoundDone) -> None:
            charged = ", ".join(f"{u} ε {m / 1e6:.6f}" for u, m in sorted(done.charged_micro.items()))
            console.print(f"round {done.round} done in {done.seconds:.1f} s: {len(done.aggregated)} vaults aggregated "
                          f"({escape(charged)})")  # fmt: skip
            for url, why in done.dropped.items():
                console.print(f"  dropped: {escape(url)}: {escape(why[:200])}")

        try:
            result = run_federated_lora(participants, resolve_key(key), spec, model.initial(secrets.randbits(31)),
                                        config, on_round=report)  # fmt: skip
        except RoundRefused as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(1) from None
        out.mkdir(parents=True, exist_ok=True)
        (out / ADAPTER).write_bytes(params_to_bytes(result.params))
        (out / SPEC).write_text(json.dumps(spec.to_json(), indent=2) + "\n")
        merged = model.save_merged(result.params, out / "model")
        new_id = model_id_of(merged)
        run = {"model_id": "0x" + new_id.hex(), "base_model": "0x" + resolved.model_id.hex(), "run_id": result.run_id,
               "datasets": ["0x" + p.dataset_id.hex() for p in participants],
               "rounds": [{"round": r.round, "seconds": r.seconds, "aggregated": list(r.aggregated),
                           "dropped": r.dropped, "charged_micro": r.charged_micro} for r in result.rounds]}  # fmt: skip
        (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        console.print(f"adapter in {out / ADAPTER}; merged model 0x{new_id.hex()} in {out / 'model'}")
        if register:
            contracts = contracts_for(rpc, key, deployments)
            datasets = [p.dataset_id for p in participants]
            contracts.models.register_derived(new_id, resolved.model_id, license, datasets, f"lora:{run['run_id']}")
            payee, bps = contracts.models.royalty_info(new_id)
            console.print(
                f"registered 0x{new_id.hex()[:12]}… derived from 0x{resolved.model_id.hex()[:12]}…; royalty {bps} "
                f"bps to {payee}; serve it with `allmende provider --model {out / 'model'}`"
            )


@app.command("lora-evaluate")
def lora_evaluate(
    vault: str = typer.Option(..., help="the vault's URL"),
    dataset: str = typer.Option(..., help="the held-out text dataset's id"),
    grant: int = typer.Option(..., min=1, help="an evaluate grant on it covering the base model"),
    key: str = typer.Option(..., help="the grantee's key"),
    run: Path = typer.Option(None, help="a `federated lora` run folder (its adapter); none: the base model alone"),
    base: str = typer.Option("smollm2-135m-instruct", help="the base model, when --run is not given"),
    epsilon: float = typer.Option(1.0, help="ε of the noisy mean loss (charged to the grant)"),
    exact_match: bool = typer.Option(
        False,
        "--exact-match",
        help="also the noisy share of chat rows whose answer greedy decoding reproduces "
        "exactly (ε split evenly between the two)",
    ),
    rpc: str = typer.Option(None, help=RPC_HELP + "; read to report the ε the grant has left"),
    deployments: Path = typer.Option(None, help=DEPLOYMENTS_HELP),
) -> None:
    """Held-out loss and perplexity of an adapter on a vault's private text, ε-DP; nothing per row leaves."""
    from allmende.engine import resolve_model
    from allmende.vault.auth import post_job
    from allmende.vault.lora import AdapterModel, LoraSpec
    from allmende.vault.lora_service import adapter_payload
    from allmende.vault.model import params_from_bytes

    with friendly_errors():
        if run is not None:
            spec = LoraSpec.from_json(json.loads((run / SPEC).read_text()))
            params = params_from_bytes((run / ADAPTER).read_bytes())
        else:
            resolved = resolve_model(base)
            spec = LoraSpec(resolved.model_id)
            params = AdapterModel(resolved.path, spec).initial(0)
        payload = {"template": "evaluate", "dataset_id": dataset, "grant_id": grant,
                   "job_id": "0x" + secrets.token_bytes(32).hex(), "lora": spec.to_json(),
                   "adapter": adapter_payload(params), "epsilon": epsilon,
                   **({"exact_match": True} if exact_match else {})}  # fmt: skip
        r = post_job(vault, resolve_key(key), payload)
        if r.status_code != 200:
            console.print(f"[red]error:[/red] the vault refused ({r.status_code}): {escape(r.text[:300])}")
            raise typer.Exit(1)
        result = r.json()["result"]
        console.print(f"held-out loss {result['mean_loss']:.4f} (perplexity {result['perplexity']:.2f}) on "
                      f"{result['rows']} rows, ε = {epsilon}; access {r.json()['access_tx']}")  # fmt: skip
        if exact_match:
            console.print(f"exact match {result['exact_match']:.1%} ({result['exact_matches']} of {result['rows']} "
                          "answers, noisy)")  # fmt: skip
        on_chain = contracts_for(rpc, None, deployments).data.get_grant(grant)
        console.print(
            f"grant {grant}: ε {on_chain.epsilon_spent / 1e6:.6f} spent of {on_chain.epsilon_budget / 1e6:.6f}"
        )


@app.command("lora-attest")
def lora_attest(
    vault: str = typer.Option(..., help="URL of the vault holding the held-out text dataset"),
    dataset: str = typer.Option(..., help="the held-out dataset's id"),
    grant: int = typer.Option(..., min=1, help="an evaluate grant on it to this validator covering the base model"),
    run: Path = typer.Option(..., help="the `federated lora` run folder (adapter, spec, merged model, run.json)"),
    key: str = typer.Option(..., help="the validator's key (staked in Registry)"),
    base: str = typer.Option("smollm2-135m-instruct", help="the base model the run adapted (name or folder)"),
    metric: str = typer.Option("heldout_loss", help="heldout_loss, perplexity or exact_match"),
    epsilon: float = typer.Option(1.0, help="privacy cost of the evaluation, charged to the grant"),
    rpc: str = typer.Option(None, help=RPC_HELP),
    deployments: Path = typer.Option(None, help=DEPLOYMENTS_HELP),
) -> None:
    """Evaluate a LoRA fine-tune inside the vault holding held-out text (ε-DP) and attest its
    metric on chain for the run's merged model, as `federated attest` does for tabular models."""
    from allmende.engine import resolve_model
    from allmende.vault.lm_attest import METRICS, attest_lora

    if metric not in METRICS:
        raise typer.BadParameter(f"one of {', '.join(METRICS)}", param_hint="--metric")
    dataset_id = parse_id(dataset, "--dataset")
    with friendly_errors():
        secret = resolve_key(key)
        contracts = contracts_for(rpc, secret, deployments)
        done = attest_lora(contracts, secret, vault, dataset_id, grant, run, resolve_model(base).path, epsilon, metric)
        console.print(
            f"attested model 0x{done.model_id.hex()[:12]}…: {metric} [bold]{done.value_ppm / 1e6:.4f}[/bold] on "
            f"{done.report['rows']} held-out rows, ε = {epsilon:g} (job 0x{done.job_id.hex()[:12]}…, report "
            f"0x{done.report_hash.hex()[:12]}…, in {escape(str(run / f'attestation-{done.job_id.hex()[:16]}.json'))})"
        )
