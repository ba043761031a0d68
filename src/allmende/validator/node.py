"""The validator node: wiring and the run loop. The logic is in service.py (audits,
cases, votes, scores), the HTTP API in app.py, evidence in evidence.py, state in store.py."""

from __future__ import annotations

import contextlib
import logging
import threading

import httpx

from allmende.api.guard import GuardConfig
from allmende.chain.errors import ChainError
from allmende.node.heap import freeze_startup_heap
from allmende.node.net import bind_socket
from allmende.validator.app import create_app
from allmende.validator.service import AuditRecord, Validator, ValidatorConfig

log = logging.getLogger("allmende.validator")


def serve(
    config: ValidatorConfig,
    host: str,
    port: int,
    audit_interval: float,
    publish_every: int,
    allowed_hosts: tuple[str, ...] = (),
) -> None:
    """Run the validator: evidence, /status and /metrics over HTTP, audits, reviews,
    resolutions, scores. Stopping it withdraws its evidence endpoint from the Registry.
    Its HTTP API serves loopback, `host`, the endpoint's host and `allowed_hosts` (allmende.api.guard)."""
    import uvicorn

    sock = bind_socket(host, port)  # a busy port stops the start before anything is staked
    validator = Validator(config)
    validator.stake()
    app = create_app(validator, GuardConfig.serving(host, [config.endpoint], allowed_hosts))
    stopping = threading.Event()

    worker = threading.Thread(target=run_rounds, args=(validator, stopping, audit_interval, publish_every), daemon=True)
    freeze_startup_heap()  # models loaded, app built: the collector runs again (node/heap.py)
    worker.start()
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it already handled
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    stopping.set()
    worker.join(timeout=5)  # a round in flight ends on its own; the chain client's nonces are locked
    validator.withdraw_endpoint()


def run_rounds(validator: Validator, stopping: threading.Event, audit_interval: float, publish_every: int) -> None:
    """The validator's schedule until `stopping`: audits, votes on open cases, resolutions of
    due ones, and every `publish_every` rounds its scores. Nothing in a round waits on a
    case's evidence server: downloads run on the validator's fetcher (validator/fetcher.py)."""
    rounds = 0
    while not stopping.is_set():
        try:
            validator.audit_round()
            validator.stage_round()  # stage providers, audited directly (with --stage-deposit)
            validator.review_cases()
            validator.resolve_due()
            rounds += 1
            if rounds % publish_every == 0:
                validator.publish_scores()
        except (ChainError, httpx.HTTPError) as exc:
            log.warning("validator round failed, retrying: %s", exc)
        stopping.wait(audit_interval * (0.5 + validator.rng.random()))  # jittered like user traffic


__all__ = ["AuditRecord", "Validator", "ValidatorConfig", "run_rounds", "serve"]
