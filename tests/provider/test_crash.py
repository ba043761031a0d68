"""kill -9 a provider between serving and redeeming: after a restart nothing is lost,
its registration is not repeated, and its earnings are redeemed in full."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
from typer.testing import CliRunner

from allmende.api.client import Answer, build_envelope, fetch_info, infer_stream
from allmende.chain.anvil import Anvil, DevnetAccount
from allmende.chain.deploy import Deployment
from allmende.cli import app
from allmende.provider.store import ProviderStore
from tests.conftest import contracts_for
from tests.provider.conftest import Running, start_provider
from tests.provider.test_provider import CHAT, Payer


def test_kill9_then_restart_loses_nothing(
    anvil: Anvil, deployment: Deployment, deployments_file: Path, accounts: list[DevnetAccount], tmp_path: Path
) -> None:
    provider_account, payer_account = accounts[5], accounts[6]
    state = tmp_path / "p"
    # streams paced at 20 tokens/s, so a 400-token stream is surely still running at the kill
    proc = start_provider(
        anvil,
        deployments_file,
        provider_account,
        state,
        ["allmende:tiny"],
        extra=["--redeem-interval", "3600", "--stream-tokens-per-s", "20"],
    )
    as_payer = contracts_for(anvil, deployment, payer_account)
    as_payer.stable.approve(as_payer.channels.address)
    with httpx.Client(timeout=60) as http:
        info = fetch_info(http, proc.url)
    running = Running(
        proc, info, payer_account, as_payer, as_payer.registry.receipt_domain(), as_payer.channels.voucher_domain()
    )
    model = bytes.fromhex(info.models[0]["model_id"][2:])
    payer = Payer(running)
    costs = [payer.ask(model, "chat", CHAT).receipt.receipt.amount for _ in range(5)]
    registrations = len(list(as_payer.client.events(as_payer.registry.contract, "Registered", deployment.deploy_block)))

    # a stream in flight when the process dies
    rid, env, sealer = build_envelope(
        info,
        model,
        "chat",
        {**CHAT, "stream": True, "max_tokens": 400},
        running.signer,
        payer.channel,
        payer.voucher(model),
    )
    got_first, finished, cut = threading.Event(), threading.Event(), threading.Event()

    def consume() -> None:
        try:
            for item in infer_stream(payer.http, proc.url, info, running.receipt_domain, env, sealer, rid):
                if isinstance(item, Answer):
                    finished.set()
                got_first.set()
        except Exception:
            cut.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert got_first.wait(60), "the stream never started"
    assert not finished.is_set()  # it is in flight now
    proc.kill9()
    reader.join(30)
    assert cut.is_set() and not finished.is_set()  # the kill cut it

    restarted = start_provider(
        anvil,
        deployments_file,
        provider_account,
        state,
        ["allmende:tiny"],
        port=int(proc.url.rsplit(":", 1)[1]),
        extra=["--redeem-interval", "3600"],
    )
    try:
        # the voucher for all five answers is accepted: the ledger survived, cumulatives still rise
        costs.append(payer.ask(model, "chat", CHAT).receipt.receipt.amount)
        after = len(list(as_payer.client.events(as_payer.registry.contract, "Registered", deployment.deploy_block)))
        redeem = CliRunner().invoke(app, [  # in this process: no interpreter start-up, ~1.5 s of CPU
            "provider-redeem", "--rpc", anvil.url, "--key", f"devnet:{provider_account.index}",
            "--deployments", str(deployments_file), "--state-dir", str(state),
        ])  # fmt: skip
    finally:
        restarted.stop()

    assert redeem.exit_code == 0, redeem.output + repr(redeem.exception)
    assert after == registrations  # restart did not re-register
    assert as_payer.channels.redeemed(payer.channel, model) == sum(costs[:5])
    store = ProviderStore(state / "provider.db")
    assert store.receipt_count() >= 6
    assert [r for r in store.all_ledger() if r.cumulative > r.redeemed] == []
