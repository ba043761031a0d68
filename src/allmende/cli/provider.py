"""`allmende provider` — serve models for pay; `allmende provider-redeem` / `provider-withdraw`."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from contextlib import nullcontext
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import typer

from allmende.chain import ChainClient, Contracts
from allmende.cli.common import (
    Network,
    alm,
    console,
    exit_stopped,
    find_network,
    friendly_errors,
    node_logging,
    resolve_key,
    usd,
)
from allmende.config import from_environment
from allmende.core.errors import InvalidInput
from allmende.provider.app import Limits
from allmende.provider.payments import CreditPolicy
from allmende.provider.settlement import SettlementPolicy

# checks of the network a provider found, run before it loads, stakes or signs anything; empty
# in production (allmende.testing.cheats adds one: cheating providers run on devnets only)
NETWORK_CHECKS: list[Callable[[Network], None]] = []


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


def parse_alm(value: str) -> int:
    """'1000' or '1500.5' ALM → base units (18 decimals), exactly."""
    try:
        amount = Decimal(value)
    except InvalidOperation:
        amount = Decimal(-1)
    units = amount * 10**18
    if not amount.is_finite() or amount < 0 or units != units.to_integral_value():
        raise InvalidInput(f"--stake {value!r}: expected an amount of ALM such as 1000 or 1500.5")
    return int(units)


def provider(
    network: str = typer.Option(
        None,
        help="join the network of this gateway URL (it publishes its chain and contracts at /v1/network) or "
        "chain JSON-RPC URL; the contracts are checked before anything is signed",
    ),
    rpc: str = typer.Option(
        None, help="JSON-RPC URL (default: the one --network names, else $ALLMENDE_RPC or http://127.0.0.1:8545)"
    ),
    deployer: str = typer.Option(None, help="with --network CHAIN_URL off a devnet: the address that deployed"),
    key: str = typer.Option(..., help="keystore file (see `allmende keys create`) or devnet:N"),
    stake: str = typer.Option(None, help="ALM to keep bonded, e.g. 1500 (default: the network's minimum)"),
    model: list[str] = typer.Option(
        [], help="model to serve: smollm2-135m-instruct, allmende:tiny, minilm, a .gguf file, a hub id or a folder"
    ),
    price_in: int = typer.Option(200_000, help="payment-token units per 1M input tokens"),
    price_out: int = typer.Option(600_000, help="payment-token units per 1M output tokens"),
    port: int = typer.Option(9000, help="port to listen on (checked before anything is staked)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on; 0.0.0.0 for every interface"),
    public_url: str = typer.Option(
        None,
        help="endpoint published on chain, e.g. http://203.0.113.7:9000 (default http://HOST:PORT); "
        "it must reach this node, which is checked before it is published",
    ),
    allowed_host: list[str] = typer.Option(
        [],
        help="another Host name this node serves besides loopback, --host and --public-url's (repeatable); "
        "requests naming any other host are refused",
    ),
    relay: str = typer.Option(
        None,
        help="accept no inbound connections: dial out to this gateway URL and be reached through it "
        "(the endpoint on chain is GATEWAY/v1/relay/ADDRESS; requests stay end-to-end encrypted)",
    ),
    config: Path = typer.Option(
        None, help="TOML file of models: one [[models]] table per model with name, price_in, price_out"
    ),
    deployments: Path = typer.Option(
        None,
        help="deployments JSON (default: STATE_DIR/deployments.json, then $ALLMENDE_STATE_DIR/deployments.json, "
        "then $ALLMENDE_STATE_DIR/run/deployments.json as `allmende up` writes it)",
    ),
    state_dir: Path = typer.Option(
        None, help="where the node keeps its database and keys (default $ALLMENDE_STATE_DIR/provider)"
    ),
    claim_models: bool = typer.Option(
        False,
        "--claim-models",
        help="devnet convenience: register every served model nobody has registered, with this node as its owner "
        "and royalty receiver. Without it such a model is served unregistered (no owner, no royalty, asked for by "
        "id); a model someone registered is never claimed",
    ),
    royalty_bps: int = typer.Option(0, help="royalty of the models this node claims (with --claim-models)"),
    max_concurrency: int = typer.Option(16, help="sequences in one model's batch at once (more wait for a slot)"),
    engine: str = typer.Option(
        "auto",
        help="backend for generative models: transformers (the reference validators run), llamacpp (GGUF models) "
        "or auto (llamacpp for GGUF models when llama-cpp-python is installed, as `make install` does)",
    ),
    torch_threads: int = typer.Option(
        None,
        help="threads for models served by transformers (default: torch's, one per core); `allmende up` shares "
        "the cores out between its providers",
    ),
    llamacpp_threads: int = typer.Option(
        None, help="llama.cpp threads (with --engine llamacpp; default: one per core, or ALLMENDE_LLAMACPP_THREADS)"
    ),
    llamacpp_weights: str = typer.Option(
        None,
        help="how llama.cpp holds a quantized GGUF's weights: native, f16 (an F16 copy, fast for batches) or mixed "
        "(with --engine llamacpp; default: f16 up to a 2 GiB copy, or ALLMENDE_LLAMACPP_WEIGHTS)",
    ),
    llamacpp_rpc: str = typer.Option(
        None,
        help="spread the GGUF model's layers over this host's CPU and these llama.cpp RPC servers, HOST:PORT,... "
        "(`ggml-rpc-server` on each of your own hosts on a trusted LAN; traffic is not encrypted); one provider "
        "on chain. Default: $ALLMENDE_LLAMACPP_RPC, else none",
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
    stage: str = typer.Option(
        None,
        help="serve one pipeline stage of the --model instead of all of it: INDEX/STAGES of an even split, e.g. "
        "1/3 (counted from 0); the model's owner registers its stages first (`allmende stage register`)",
    ),
    stage_price_position: int = typer.Option(1, help="with --stage: payment-token units per position computed"),
    stage_price_token: int = typer.Option(1, help="with --stage: payment-token units per token drawn (last stage)"),
) -> None:
    """Serve models for pay: check the network, listen, load the models, then stake, register the
    endpoint and publish the offers once the endpoint is reachable. Ctrl-C withdraws the offers."""
    from allmende.node.net import bind_socket
    from allmende.provider.node import ProviderConfig, StageServing, plan_stake, serve

    env = from_environment()
    root = state_dir or env.state_dir / "provider"
    node_logging()
    with friendly_errors():
        _check_llamacpp_options(engine, llamacpp_threads, llamacpp_weights, llamacpp_rpc)
        rpc_servers = _rpc_servers(llamacpp_rpc)
        if torch_threads is not None:
            if torch_threads < 1:
                raise InvalidInput(f"--torch-threads must be at least 1, not {torch_threads}")
            import torch

            torch.set_num_threads(torch_threads)
        target = parse_alm(stake) if stake is not None else None
        offers = _models(model, price_in, price_out, config)
        staged = StageServing.parse(stage, stage_price_position, stage_price_token) if stage else None
        if relay and public_url:
            raise InvalidInput("--relay and --public-url exclude each other: a relayed node's endpoint is the relay's")
        if host in ("0.0.0.0", "::") and not public_url and not relay:
            raise InvalidInput(f"--host {host} listens on every interface: give --public-url http://ADDRESS:{port}")
        secret = resolve_key(key)
        with console.status(f"reading and checking the network at {network}") if network else nullcontext():
            found = find_network(network, rpc, deployments, node_dir=root, deployer=deployer,
                                 save_to=root / "deployments.json" if network else None)  # fmt: skip
        for check in NETWORK_CHECKS:
            check(found)
        deployment, rpc_url, path = found.deployment, found.rpc_url, found.path
        assert path is not None  # read from a file, or saved to one
        if network:
            console.print(
                f"network: chain {deployment.chain_id} at {deployment.rpc_url}; contracts checked "
                f"(Registry {deployment.address('Registry')}); saved to {path}"
            )
        contracts = Contracts(ChainClient(rpc_url, secret), deployment)
        plan = plan_stake(contracts, target)
        _show_plan(plan, deployment.devnet)
        cfg = ProviderConfig(
            rpc_url=rpc_url,
            key=secret,
            deployments=path,
            models=offers,
            state_dir=root,
            host=host,
            port=port,
            public_url=public_url,
            allowed_hosts=tuple(allowed_host),
            relay=relay,
            stake=target,
            claim_models=claim_models,
            royalty_bps=royalty_bps,
            max_concurrency=max_concurrency,
            engine=engine,
            llamacpp_threads=llamacpp_threads,
            llamacpp_weights=llamacpp_weights,
            llamacpp_rpc=rpc_servers,
            stream_tokens_per_s=stream_tokens_per_s,
            limits=Limits(
                max_body=max_body, body_timeout=body_timeout, rate_limit=rate_limit, rate_burst=2 * rate_limit
            ),
            credit=CreditPolicy(credit_limit=credit_limit, ttl=channel_ttl),
            settlement=SettlementPolicy(threshold=redeem_threshold, interval=redeem_interval),
            stage=staged,
        )
        served = ", ".join(m.name for m in offers) + (f" (stage {stage})" if staged else "")
        if relay:
            console.print(f"no listening port: reached through the relay at {cfg.endpoint}; serving {served}")
            serve(cfg)
            exit_stopped()
        sock = bind_socket(host, port)
        console.print(f"listening on {host}:{port}; endpoint {cfg.endpoint}; serving {served}")
        serve(cfg, sock)
    exit_stopped()


def _show_plan(plan: Any, devnet: bool) -> None:
    label = " (anvil devnet account, public key)" if devnet and plan.address in _devnet_addresses() else ""
    console.print(f"account: {plan.address}{label}")
    console.print(f"balance: {plan.eth / 10**18:.4f} ETH for gas, {alm(plan.alm)}")
    if plan.add:
        console.print(
            f"stake:   bonds {alm(plan.add)} now (bonded {alm(plan.staked)}, minimum {alm(plan.minimum)}); "
            "unbond later with a delay set in Params"
        )
    else:
        console.print(f"stake:   {alm(plan.staked)} already bonded (minimum {alm(plan.minimum)}); nothing added")


def _devnet_addresses() -> set[str]:
    from allmende.chain.anvil import devnet_accounts

    return {a.address for a in devnet_accounts(10)}


def provider_redeem(
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC, else the deployments file's)"),
    key: str = typer.Option(..., help="the provider's key: keystore file or devnet:N"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: as for `allmende provider`)"),
    state_dir: Path = typer.Option(None, help="the provider's state dir (default $ALLMENDE_STATE_DIR/provider)"),
) -> None:
    """Redeem every stored voucher now (works while the node is stopped, e.g. after a crash)."""
    from allmende.provider.settlement import Settlement
    from allmende.provider.store import ProviderStore

    env = from_environment()
    root = state_dir or env.state_dir / "provider"
    with friendly_errors():
        found = find_network(None, rpc, deployments, node_dir=root)
        client = ChainClient(found.rpc_url, resolve_key(key))
        contracts = Contracts(client, found.deployment)
        store = ProviderStore(root / "provider.db")
        result = Settlement(store, contracts.channels).redeem(force=True)
    console.print(f"redeemed {result.vouchers} vouchers for {usd(result.amount)} ({result.tx_hash or 'nothing due'})")
    for dropped in result.dropped:
        console.print(f"dropped channel 0x{dropped.channel_id.hex()}: {usd(dropped.amount)} lost ({dropped.reason})")


def provider_withdraw(
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC, else the deployments file's)"),
    key: str = typer.Option(..., help="the earning account's key: keystore file or devnet:N"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: as for `allmende provider`)"),
    state_dir: Path = typer.Option(None, help="the provider's state dir, where --network saved the deployments"),
) -> None:
    """Withdraw accrued earnings (provider share, royalties or treasury fees) to the key's account."""
    env = from_environment()
    root = state_dir or env.state_dir / "provider"
    with friendly_errors():
        found = find_network(None, rpc, deployments, node_dir=root)
        client = ChainClient(found.rpc_url, resolve_key(key))
        contracts = Contracts(client, found.deployment)
        amount = contracts.channels.earnings(client.address)
        if amount == 0:
            console.print("no earnings to withdraw")
            return
        contracts.channels.withdraw_earnings()
    console.print(f"withdrew {usd(amount)} to {client.address}")


def _rpc_servers(given: str | None) -> tuple[str, ...] | None:
    """The --llamacpp-rpc servers, each checked to answer as a ggml-rpc-server of this llama.cpp
    before the network is touched (None: the engine reads $ALLMENDE_LLAMACPP_RPC)."""
    from allmende.engine.llamacpp_rpc import parse_endpoints, probe

    if given is None:
        return None
    endpoints = parse_endpoints(given)
    for endpoint in endpoints:
        probe(endpoint)
    return endpoints


def _check_llamacpp_options(engine: str, threads: int | None, weights: str | None, rpc: str | None = None) -> None:
    from allmende.engine.llamacpp import WEIGHTS

    options = (("--llamacpp-threads", threads), ("--llamacpp-weights", weights), ("--llamacpp-rpc", rpc))
    given = [flag for flag, value in options if value]
    if given and engine == "transformers":
        raise InvalidInput(f"{' and '.join(given)} go with --engine llamacpp (or auto)")
    if threads is not None and threads < 1:
        raise InvalidInput(f"--llamacpp-threads must be at least 1, not {threads}")
    if weights is not None and weights not in WEIGHTS:
        raise InvalidInput(f"--llamacpp-weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")
