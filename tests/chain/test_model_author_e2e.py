"""A model author's journey on anvil through the CLI, in the layout `allmende up` leaves
(no --rpc or --deployments): register a model before anyone serves it, register a model
derived from it that pays the root's royalty, see what it earned with `allmende models
earnings` — exact to the unit, before withdrawing anything."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from allmende.chain import ChainClient, Contracts, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.cli import app
from allmende.cli.models import model_id_for
from allmende.core import Voucher, sign_voucher, split_increment

AUTHOR, FINE_TUNER, PAYER, PROVIDER = 5, 6, 3, 4


def _model_folder(root: Path, name: str, weights: bytes) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[Anvil, Path, Contracts]]:
    accounts = devnet_accounts(10)
    with Anvil() as node:
        deployment = deploy_all(ChainClient(node.url, accounts[0].key), fund=[a.address for a in accounts])
        state = tmp_path / ".allmende"
        deployment.save(state / "run" / "deployments.json")
        yield node, state, Contracts(ChainClient(node.url), deployment)


def _cli(state: Path, line: str, ok: bool = True) -> str:
    env = {"ALLMENDE_STATE_DIR": str(state), "ALLMENDE_RPC": None, "ALLMENDE_DEPLOYMENTS": None}
    result = CliRunner().invoke(app, shlex.split(line), env=env)
    assert (result.exit_code == 0) == ok, result.output
    assert "Traceback" not in result.output
    return result.output


def test_an_author_registers_first_and_sees_the_royalty_of_a_derived_model(chain, tmp_path: Path) -> None:
    node, state, reader = chain
    accounts = devnet_accounts(10)
    base = _model_folder(tmp_path, "base", b"\x01" * 64)
    tuned = _model_folder(tmp_path, "tuned", b"\x02" * 64)

    out = _cli(state, f"models register {base} --license Apache-2.0 --royalty-bps 500 --key devnet:{AUTHOR}")
    base_id = re.search(r"registered (0x[0-9a-f]{64})", out).group(1)  # type: ignore[union-attr]
    line = f"models register {tuned} --derived-from {base_id} --license Apache-2.0 --key devnet:{FINE_TUNER}"
    out = _cli(state, line)
    tuned_id = re.search(r"registered (0x[0-9a-f]{64})", out).group(1)  # type: ignore[union-attr]
    assert f"royalty 500 bps to {accounts[AUTHOR].address}" in out
    listing = _cli(state, "models list")
    assert base_id[:10] in listing and tuned_id[:10] in listing

    # a gateway pays a provider for the derived model in two redeems
    payer = Contracts(ChainClient(node.url, accounts[PAYER].key), reader.deployment)
    payer.stable.approve(payer.channels.address)
    channel = payer.channels.open(accounts[PROVIDER].address, 10**7)
    provider = Contracts(ChainClient(node.url, accounts[PROVIDER].key), reader.deployment)
    for cumulative in (1_000_001, 1_234_567):
        voucher = Voucher(channel, bytes.fromhex(tuned_id[2:]), cumulative)
        provider.channels.redeem([sign_voucher(voucher, payer.channels.voucher_domain(), accounts[PAYER].key)])

    expected = sum(split_increment(a, b, 500, 100).royalty for a, b in ((0, 1_000_001), (1_000_001, 1_234_567)))
    assert expected == 61_728 == reader.channels.earnings(accounts[AUTHOR].address)
    shown = _cli(state, f"models earnings {tuned_id}")
    assert f"royalty    500 bps to {accounts[AUTHOR].address}" in shown
    assert "redeemed   1.234567 dUSD for this model (2 redeems over 1 channels)" in shown
    assert f"earned     0.061728 dUSD in royalties to {accounts[AUTHOR].address}" in shown
    assert "withdrawable now 0.061728 dUSD" in shown
    assert "earned     0.000000 dUSD" in _cli(state, f"models earnings {base_id}")


def test_bad_model_author_input_and_a_license_the_parent_forbids_are_refused(chain, tmp_path: Path) -> None:
    _, state, _ = chain
    folder = _model_folder(tmp_path, "m", b"\x03" * 8)
    other = f"0x{'ab' * 32}"
    for line, words in (
        (f"models register {folder} --derived-from 0x12 --license MIT --key devnet:5", "64 hex digits"),
        (f"models register {folder} --derived-from {other} --royalty-bps 5 --license MIT --key devnet:5", "no --"),
        (f"models register {folder} --derived-from {other} --license MIT --key devnet:5", "error:"),
        (f"models earnings 0x{'cd' * 32}", "not registered"),
    ):
        output = _cli(state, line, ok=False)
        assert words in output, (line, output)

    # a non-commercial parent cannot yield a permissive child
    reader = chain[2]
    base, child = _model_folder(tmp_path, "nc", b"\x04" * 8), _model_folder(tmp_path, "child", b"\x05" * 8)
    out = _cli(state, f"models register {base} --license CC-BY-NC-4.0 --royalty-bps 100 --key devnet:{AUTHOR}")
    base_id = re.search(r"registered (0x[0-9a-f]{64})", out).group(1)  # type: ignore[union-attr]
    for how in (f"--derived-from {base_id}", f"--parent {base_id}"):
        refused = _cli(state, f"models register {child} {how} --license MIT --key devnet:{FINE_TUNER}", ok=False)
        assert "non-commercial: MIT would allow commercial use" in refused
    assert len(reader.models.all_ids()) == 1
    _cli(state, f"models register {child} --derived-from {base_id} --license CC-BY-NC-4.0 --key devnet:{FINE_TUNER}")
    assert len(reader.models.all_ids()) == 2


def test_an_author_registers_a_model_old_channels_serve_and_earnings_say_what_was_not_paid(
    chain, tmp_path: Path
) -> None:
    """Before: a channel opened before the registration paid the author 0, for ever, and
    `models earnings` did not say why. Now the service after the registration pays through the
    old channel, and earnings explains the rest."""
    node, state, reader = chain
    accounts = devnet_accounts(10)
    folder = _model_folder(tmp_path, "late", b"\x07" * 64)
    payer = Contracts(ChainClient(node.url, accounts[PAYER].key), reader.deployment)
    payer.stable.approve(payer.channels.address)
    channel = payer.channels.open(accounts[PROVIDER].address, 10**8)
    provider = Contracts(ChainClient(node.url, accounts[PROVIDER].key), reader.deployment)
    admin = ChainClient(node.url, accounts[0].key)
    model_id = model_id_for(str(folder))

    def redeem(cumulative: int) -> None:
        voucher = Voucher(channel, model_id, cumulative)
        provider.channels.redeem([sign_voucher(voucher, payer.channels.voucher_domain(), accounts[PAYER].key)])

    admin.increase_time(3_600)
    redeem(10_000_000)  # served and redeemed before anyone registered it
    admin.increase_time(3_600)
    _cli(state, f"models register {folder} --license MIT --royalty-bps 1000 --key devnet:{AUTHOR}")
    admin.increase_time(3_600)
    redeem(20_000_000)  # about half of this increment's time is after the registration
    admin.increase_time(3_600)
    redeem(30_000_000)  # all after

    earned = reader.channels.earnings(accounts[AUTHOR].address)
    assert 1_000_000 < earned < 2_000_000  # a full 10 % of the last increment, a part of the one before
    shown = _cli(state, f"models earnings 0x{model_id.hex()}")
    assert f"earned     {earned // 10**6}.{earned % 10**6:06d} dUSD in royalties" in shown, shown
    assert "not paid: 10.000000 dUSD redeemed in 1 redeem(s) before the model was registered" in shown, shown
    assert "not paid: " in shown and "whose service began before the registration" in shown, shown
