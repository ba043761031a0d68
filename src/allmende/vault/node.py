"""Starting a vault: load the datasets, register the unregistered ones on chain with
this key as their vault, serve the HTTP API."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allmende.api.guard import GuardConfig
from allmende.chain import ChainClient, Contracts, Deployment
from allmende.node.heap import freeze_startup_heap
from allmende.vault.datasets import Table, load_table
from allmende.vault.service import VaultPolicy, VaultService
from allmende.vault.store import VaultStore
from allmende.vault.text import TextDataset, is_text_file, load_text

log = logging.getLogger("allmende.vault")


@dataclass
class VaultConfig:
    rpc_url: str
    key: bytes
    deployments: Path
    data: list[Path]
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 9500
    # Host names served besides loopback and `host` (allmende.api.guard)
    allowed_hosts: tuple[str, ...] = ()
    label: str = "label"
    license: str = "proprietary"
    policy_uri: str = ""
    policy: VaultPolicy = field(default_factory=VaultPolicy)
    # base language models the LoRA and LM-evaluate templates may load (names or folders, as a
    # provider's `--model`); a request names one by its model id, never sends weights
    language_models: tuple[str, ...] = ()


def build(config: VaultConfig) -> tuple[Any, VaultService]:
    from allmende.vault.app import create_app

    contracts = Contracts(ChainClient(config.rpc_url, config.key), Deployment.load(config.deployments))
    texts = [load_text(p) for p in config.data if is_text_file(p)]
    tables: list[Table] = [load_table(p, config.label) for p in config.data if not is_text_file(p)]
    held: list[Table | TextDataset] = [*tables, *texts]
    for table in held:
        if not contracts.data.is_registered(table.dataset_id):
            contracts.data.register_dataset(
                table.dataset_id, contracts.client.address, config.license, config.policy_uri
            )
            log.info("registered dataset %s as 0x%s", table.name, table.dataset_id.hex())
        else:
            record = contracts.data.dataset(table.dataset_id)
            if record.vault.lower() != contracts.client.address.lower():
                log.warning("dataset %s is registered with another vault key (%s)", table.name, record.vault)
    store = VaultStore(config.state_dir / "vault.db")
    reconcile(store, contracts)
    models = {}
    for name in config.language_models:
        from allmende.engine import resolve_model

        resolved = resolve_model(name, progress=False)
        models[resolved.model_id] = resolved.path
        log.info("language model %s is 0x%s", name, resolved.model_id.hex())
    service = VaultService(tables, contracts, store, config.policy, texts, models)
    return create_app(service, guard=guard_of(config)), service


def guard_of(config: VaultConfig) -> GuardConfig:
    """Host and Origin as every node; bodies JSON, or Flower's protobuf on /v1/flower."""
    return GuardConfig.serving(
        config.host,
        allowed_hosts=config.allowed_hosts,
        content_types=frozenset({"application/json", "application/x-protobuf"}),
    )


def reconcile(store: VaultStore, contracts: Contracts) -> None:
    """Jobs written but not known to be logged (a crash between the two): the chain decides.
    Logged there: mark it. Not logged: its result was never released, so undo its charge."""
    for job in store.pending():
        if contracts.data.job_logged(job.dataset_id, job.job_id):
            store.logged(job.job_id, "recovered")
            log.info("job 0x%s was logged on chain before a restart", job.job_id.hex()[:12])
        else:
            store.forget(job.job_id)
            log.info("job 0x%s never reached the chain; its charge is undone", job.job_id.hex()[:12])


def serve(config: VaultConfig) -> None:
    import uvicorn

    app, _ = build(config)
    freeze_startup_heap()  # built: the collector runs again, off startup's objects (node/heap.py)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
