"""`allmende validator` — audit providers as a mystery shopper, vote on fraud cases.

Its stake is a Registry stake like a provider's: `allmende stake show|unbond|withdraw
--key ...` shows it, takes it out of service and takes it back."""

from __future__ import annotations

from pathlib import Path

import typer

from allmende.cli.common import console, exit_stopped, find_network, friendly_errors, node_logging, resolve_key
from allmende.config import from_environment


def validator(
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC, else the deployments file's)"),
    key: str = typer.Option(..., help="keystore file or devnet:N"),
    model: list[str] = typer.Option(["allmende:tiny"], help="models this validator loads and audits"),
    port: int = typer.Option(9500, help="port of the evidence server"),
    host: str = typer.Option("127.0.0.1", help="address to listen on; 0.0.0.0 for every interface"),
    public_url: str = typer.Option(None, help="evidence endpoint published on chain (default http://host:port)"),
    allowed_host: list[str] = typer.Option(
        [], help="another Host name this node serves besides loopback, --host and --public-url's (repeatable)"
    ),
    deployments: Path = typer.Option(
        None, help="deployments JSON (default: found as every command finds it, e.g. <state-dir>/run/deployments.json)"
    ),
    state_dir: Path = typer.Option(None, help="where the validator keeps its database"),
    gateway: list[str] = typer.Option(
        [], help="gateway URL to send audits through, as user requests (repeatable; none: only review cases)"
    ),
    gateway_key: str = typer.Option(None, help="API key for the gateways, if they require one"),
    prompts: Path = typer.Option(None, help="file of your own audit prompts, one per line (mixed in)"),
    audit_interval: float = typer.Option(30.0, help="mean seconds between audit rounds (jittered)"),
    publish_every: int = typer.Option(10, help="publish reputation scores every N rounds"),
    accumulated_cases: bool = typer.Option(
        True,
        "--accumulated-cases/--no-accumulated-cases",
        help="open and convict fraud cases on evidence accumulated over many audits (README: accumulated "
        "evidence); off, the ledger only reports and, as a juror, this validator votes not guilty on such cases",
    ),
    stage_deposit: int = typer.Option(
        0,
        help="audit the stage providers of the loaded models directly, paying them from this validator's own "
        "channels with this deposit each (payment-token units; the account needs that many payment tokens); "
        "0: stage providers are not audited",
    ),
    stage_payer_key: str = typer.Option(
        None,
        help="keystore file or devnet:N of the account stage audits pay from (default: the validator's own, "
        "which a provider can recognise as a validator's: use an account not linked to it)",
    ),
) -> None:
    """Stake, then audit every provider of the loaded models, open, join and vote on fraud
    cases. Serves /status and /metrics beside the evidence; stopping it withdraws its
    endpoint (the stake stays: `allmende stake unbond`)."""
    from allmende.validator.node import ValidatorConfig, serve

    env = from_environment()
    node_logging()
    with friendly_errors():
        found = find_network(None, rpc, deployments)
        assert found.path is not None  # read from a file
        config = ValidatorConfig(
            rpc_url=found.rpc_url,
            key=resolve_key(key),
            deployments=found.path,
            state_dir=state_dir or env.state_dir / "validator",
            models=model,
            endpoint=public_url or f"http://{host}:{port}",
            gateways=tuple(g.rstrip("/").removesuffix("/v1") for g in gateway),
            gateway_key=gateway_key,
            prompts=prompts,
            accumulated_cases=accumulated_cases,
            stage_deposit=stage_deposit,
            stage_payer_key=resolve_key(stage_payer_key) if stage_payer_key else None,
        )
        if gateway:
            console.print(
                f"validator auditing {', '.join(model)} through {', '.join(config.gateways)}; "
                f"evidence on {config.endpoint}"
            )
        else:
            console.print(
                f"validator reviewing cases only (no --gateway to audit through); evidence on {config.endpoint}"
            )
        serve(config, host, port, audit_interval, publish_every, tuple(allowed_host))
    exit_stopped()
