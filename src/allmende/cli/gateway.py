"""`allmende gateway` — the OpenAI-compatible entry point; `allmende gateway-close`."""

from __future__ import annotations

from pathlib import Path

import typer

from allmende.chain import ChainClient, Contracts
from allmende.cli.common import console, exit_stopped, find_network, friendly_errors, node_logging, resolve_key
from allmende.config import from_environment


def gateway(
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC, else the deployments file's)"),
    key: str = typer.Option(..., help="payer key: keystore file or devnet:N"),
    port: int = typer.Option(8000, help="port of the OpenAI API, the explorer and /v1/network"),
    host: str = typer.Option("127.0.0.1", help="address to listen on; 0.0.0.0 for every interface"),
    public_rpc: str = typer.Option(
        None,
        help="chain URL published at /v1/network for providers joining from other hosts (default: --rpc)",
    ),
    public_host: str = typer.Option(
        None, help="this gateway's name or address as other hosts reach it (served as Host, like loopback)"
    ),
    allowed_host: list[str] = typer.Option(
        [],
        help="another Host name to serve, e.g. a DNS name or a reverse proxy's (repeatable); requests naming "
        "any other host are refused (DNS rebinding)",
    ),
    allow_origin: list[str] = typer.Option(
        [],
        help="origin of a web app allowed to call the API from a browser, e.g. https://app.example.com "
        "(repeatable; '*' = any, only with --api-key); pages on other origins are refused",
    ),
    deployments: Path = typer.Option(
        None, help="deployments JSON (default: found as every command finds it, e.g. <state-dir>/run/deployments.json)"
    ),
    state_dir: Path = typer.Option(None, help="where the gateway keeps its database"),
    deposit: int = typer.Option(10_000_000, help="deposit per provider channel, payment-token units"),
    prefer: str = typer.Option("balanced", help="routing preference: balanced, cheapest or fastest"),
    max_price: int = typer.Option(None, help="skip providers above this reference price"),
    api_key: list[str] = typer.Option([], help="accepted API key (repeat); none = open"),
    budget: list[str] = typer.Option(
        [], help="KEY=UNITS: the most an API key may spend, payment-token units (repeat); none = unlimited"
    ),
    rate_limit: float = typer.Option(50.0, help="requests per second per API key (or per client); 0 = off"),
    rate_burst: float = typer.Option(100.0, help="burst allowance per API key (or per client)"),
    max_body: int = typer.Option(4 * 1024 * 1024, help="largest request body, bytes"),
    body_timeout: float = typer.Option(10.0, help="seconds a client may take to send its body"),
    x402: bool = typer.Option(
        False,
        "--x402/--no-x402",
        help="requests without an --api-key key pay for themselves with x402 (schemes exact, session)",
    ),
    x402_timeout: int = typer.Option(300, help="seconds an x402 payment authorization may take to arrive"),
    stage_model: list[str] = typer.Option(
        [],
        help="a chat model (name, folder or hub id) to serve through chains of its pipeline stages when no provider "
        "serves it whole: the gateway loads its tokenizer only (repeatable; see `allmende stage`)",
    ),
) -> None:
    """Serve the OpenAI API over the provider network."""
    from allmende.core.routing import RoutingPolicy
    from allmende.gateway.node import GatewayConfig, serve
    from allmende.gateway.serving import GatewayLimits
    from allmende.gateway.x402_payments import X402Policy
    from allmende.payer.payments import ChannelPolicy

    env = from_environment()
    if prefer not in ("balanced", "cheapest", "fastest"):
        console.print("[red]error:[/red] --prefer must be balanced, cheapest or fastest")
        raise typer.Exit(2)
    node_logging()
    with friendly_errors():
        found = find_network(None, rpc, deployments)
        assert found.path is not None  # read from a file
        config = GatewayConfig(
            rpc_url=found.rpc_url,
            key=resolve_key(key),
            deployments=found.path,
            state_dir=state_dir or env.state_dir / "gateway",
            public_rpc=public_rpc,
            public_host=public_host,
            allowed_hosts=tuple(allowed_host),
            allowed_origins=tuple(allow_origin),
            stage_models=tuple(stage_model),
            host=host,
            port=port,
            routing=RoutingPolicy(prefer=prefer, max_price=max_price),  # type: ignore[arg-type]
            channels=ChannelPolicy(deposit=deposit),
            limits=GatewayLimits(
                api_keys=frozenset(api_key),
                budgets=budgets_of(budget, api_key),
                rate_limit=rate_limit,
                rate_burst=rate_burst,
                max_body=max_body,
                body_timeout=body_timeout,
                x402=X402Policy(
                    max_timeout_seconds=x402_timeout, ledger=(state_dir or env.state_dir / "gateway") / "x402.db"
                )
                if x402
                else None,
            ),
        )
        console.print(f"gateway on http://{host}:{port}/v1")
        serve(config)
    exit_stopped()


def gateway_close(
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC, else the deployments file's)"),
    key: str = typer.Option(..., help="the gateway's payer key: keystore file or devnet:N"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: as for `allmende gateway`)"),
    state_dir: Path = typer.Option(None, help="the gateway's state dir (default $ALLMENDE_STATE_DIR/gateway)"),
) -> None:
    """Request closing every payment channel this gateway opened."""
    from allmende.payer.payments import Payments
    from allmende.payer.store import GatewayStore

    env = from_environment()
    with friendly_errors():
        secret = resolve_key(key)
        found = find_network(None, rpc, deployments)
        contracts = Contracts(ChainClient(found.rpc_url, secret), found.deployment)
        store = GatewayStore((state_dir or env.state_dir / "gateway") / "gateway.db")
        closed = Payments(store, contracts, secret).close_all()
    console.print(f"requested closing {len(closed)} channels; withdraw after the close delay")


def budgets_of(specs: list[str], keys: list[str]) -> dict[str, int]:
    """`--budget KEY=UNITS` options as GatewayLimits.budgets; each KEY one of the `--api-key`s."""
    budgets: dict[str, int] = {}
    for spec in specs:
        key, sep, units = spec.rpartition("=")
        if not sep or not key or not units.isdigit():
            raise typer.BadParameter(f"'{spec}' is not KEY=UNITS (UNITS a whole number)", param_hint="--budget")
        if key not in keys:
            raise typer.BadParameter(f"'{key}' is not one of the --api-key values", param_hint="--budget")
        budgets[key] = int(units)
    return budgets
