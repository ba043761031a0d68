"""`allmende provider` — serve models for pay; `allmende provider-redeem` / `provider-withdraw`."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import typer

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.cli.common import console, friendly_errors, node_logging, resolve_key, usd
from allmende.config import from_environment
from allmende.core.errors import InvalidInput
from allmende.provider.app import Limits
from allmende.provider.payments import CreditPolicy
from allmende.provider.settlement import SettlementPolicy


def _models(model: list[str], price_in: int, price_out: int, config: Path | None) -> list[Any]:
    from allmende.provider.node import ModelOffer

    specs = [ModelOffer(name, price_in, price_out) for name in model]
    if config is not None:
        data = tomllib.loads(config.read_text())
        for entry in data.get("models", []):
            if not isinstance(entry, dict) or "name" not in entry:
                raise InvalidInput(f"{config}: every [[models]] entry needs a name")
            specs.append(
                ModelOffer(
                    str(entry["name"]), int(entry.get("price_in", price_in)), int(entry.get("price_out", price_out))
                )
            )
    if not specs:
        raise InvalidInput("give at least one --model (or a --config file with [[models]])")
    return specs


def provider(
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC)"),
    key: str = typer.Option(..., help="keystore file or devnet:N"),
    model: list[str] = typer.Option(
        [], help="model to serve: smollm2-135m-instruct, allmende:tiny, minilm, a .gguf file, a hub id or a folder"
    ),
    price_in: int = typer.Option(200_000, help="payment-token units per 1M input tokens"),
    price_out: int = typer.Option(600_000, help="payment-token units per 1M output tokens"),
    port: int = typer.Option(9000),
    host: str = typer.Option("127.0.0.1"),
    public_url: str = typer.Option(None, help="endpoint published on chain (default http://host:port)"),
    config: Path = typer.Option(None, help="TOML file with [[models]] name, price_in, price_out"),
    deployments: Path = typer.Option(None, help="deployments JSON (default <state-dir>/deployments.json)"),
    state_dir: Path = typer.Option(None, help="where the node keeps its database and keys"),
    register_models: bool = typer.Option(True, help="register unregistered models (becoming their owner)"),
    royalty_bps: int = typer.Option(0, help="royalty for models this node registers"),
    max_concurrency: int = typer.Option(16, help="sequences in one model's batch at once (more wait for a slot)"),
    engine: str = typer.Option(
        "transformers", help="backend for generative models: transformers (reference) or llamacpp (GGUF models)"
    ),
    credit_limit: int = typer.Option(
        1_000_000, help="most a payer may owe (unpaid work plus requests in flight), payment-token units"
    ),
    channel_ttl: float = typer.Option(30.0, help="seconds a channel's state read from chain is trusted"),
    redeem_threshold: int = typer.Option(1_000_000, help="redeem once this much is unredeemed"),
    redeem_interval: float = typer.Option(5.0, help="seconds between settlement checks"),
    stream_tokens_per_s: float = typer.Option(None, help="cap on tokens per second per stream"),
    rate_limit: float = typer.Option(200.0, help="requests per second per peer; 0 = off"),
    max_body: int = typer.Option(2 * 1024 * 1024, help="largest request body, bytes"),
    body_timeout: float = typer.Option(10.0, help="seconds a client may take to send its body"),
) -> None:
    """Serve models: load, register, stake, publish offers, then answer encrypted requests."""
    from allmende.provider.node import ProviderConfig, serve

    env = from_environment()
    root = state_dir or env.state_dir / "provider"
    node_logging()
    with friendly_errors():
        cfg = ProviderConfig(
            rpc_url=rpc or env.rpc_url,
            key=resolve_key(key),
            deployments=deployments or env.state_dir / "deployments.json",
            models=_models(model, price_in, price_out, config),
            state_dir=root,
            host=host,
            port=port,
            public_url=public_url,
            register_models=register_models,
            royalty_bps=royalty_bps,
            max_concurrency=max_concurrency,
            engine=engine,
            stream_tokens_per_s=stream_tokens_per_s,
            limits=Limits(
                max_body=max_body, body_timeout=body_timeout, rate_limit=rate_limit, rate_burst=2 * rate_limit
            ),
            credit=CreditPolicy(credit_limit=credit_limit, ttl=channel_ttl),
            settlement=SettlementPolicy(threshold=redeem_threshold, interval=redeem_interval),
        )
        console.print(f"provider {cfg.endpoint} serving {', '.join(m.name for m in cfg.models)}")
        serve(cfg)


def provider_redeem(
    rpc: str = typer.Option(None),
    key: str = typer.Option(...),
    deployments: Path = typer.Option(None),
    state_dir: Path = typer.Option(None),
) -> None:
    """Redeem every stored voucher now (works while the node is stopped, e.g. after a crash)."""
    from allmende.provider.settlement import Settlement
    from allmende.provider.store import ProviderStore

    env = from_environment()
    with friendly_errors():
        client = ChainClient(rpc or env.rpc_url, resolve_key(key))
        contracts = Contracts(client, Deployment.load(deployments or env.state_dir / "deployments.json"))
        store = ProviderStore((state_dir or env.state_dir / "provider") / "provider.db")
        result = Settlement(store, contracts.channels).redeem(force=True)
    console.print(f"redeemed {result.vouchers} vouchers for {usd(result.amount)} ({result.tx_hash or 'nothing due'})")


def provider_withdraw(
    rpc: str = typer.Option(None),
    key: str = typer.Option(...),
    deployments: Path = typer.Option(None),
) -> None:
    """Withdraw accrued earnings (provider share, royalties or treasury fees) to the key's account."""
    env = from_environment()
    with friendly_errors():
        client = ChainClient(rpc or env.rpc_url, resolve_key(key))
        contracts = Contracts(client, Deployment.load(deployments or env.state_dir / "deployments.json"))
        amount = contracts.channels.earnings(client.address)
        if amount == 0:
            console.print("no earnings to withdraw")
            return
        contracts.channels.withdraw_earnings()
    console.print(f"withdrew {usd(amount)} to {client.address}")
