"""Governance end to end on anvil through the CLI, as the README's "Governance" section
types it, in the layout `allmende up` leaves (<state-dir>/run/deployments.json, no
--rpc or --deployments): a token holder stakes ALM for votes, another delegates to it,
it proposes a fee change by name and value, everyone reads the decoded call in `gov
list` and `gov show`, it passes, waits out the Timelock, executes, `allmende params`
shows the new value and the next redeem pays it. A proposal that keeps failing expires
and is cancelled; bad input is one clear line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from allmende.chain import ChainClient, Contracts, Deployment, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.chain.bindings import ROLE_PROVIDER
from allmende.cli import app
from allmende.cli.gov import _when
from allmende.core import Voucher, sign_voucher, split_payment

ALM = 10**18
HOLDER, FRIEND, OUTSIDER = 5, 6, 4  # devnet accounts `up` leaves to people (providers are 1…, the gateway 9)


class Network:
    """A devnet laid out like `allmende up`'s: two providers at the minimum stake."""

    def __init__(self, node: Anvil, state: Path) -> None:
        self.node, self.state = node, state
        self.accounts = devnet_accounts(10)
        deployer = ChainClient(node.url, self.accounts[0].key)
        self.deployment = deploy_all(deployer, fund=[a.address for a in self.accounts])
        self.deployment.save(state / "run" / "deployments.json")
        for i in (1, 2):
            c = self.as_(i)
            c.token.approve(c.registry.address)
            c.registry.register(ROLE_PROVIDER, f"http://127.0.0.1:900{i}", bytes([i]) * 32, 1_000 * ALM)
        self.reader = Contracts(ChainClient(node.url), self.deployment)
        self.runner = CliRunner()

    def as_(self, index: int) -> Contracts:
        return Contracts(ChainClient(self.node.url, self.accounts[index].key), self.deployment)

    def cli(self, line: str, ok: bool = True) -> str:
        """One command line exactly as the README writes it (after `allmende `)."""
        env = {"ALLMENDE_STATE_DIR": str(self.state), "ALLMENDE_RPC": None, "ALLMENDE_DEPLOYMENTS": None}
        result = self.runner.invoke(app, _split(line), env=env)
        assert (result.exit_code == 0) == ok, result.output
        assert "Traceback" not in result.output
        return result.output


def _split(line: str) -> list[str]:
    import shlex

    return shlex.split(line)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with Anvil() as node:
        yield Network(node, tmp_path_factory.mktemp("governance") / ".allmende")


@pytest.fixture
def network(deployed: Network) -> Iterator[Network]:
    """The module's network as deployed, for each test: anvil's snapshot of it is reverted after
    the test (its clock too), so every test starts from the same fresh state without a chain
    and a deployment of its own."""
    rpc = deployed.reader.client.w3.provider.make_request
    snapshot = rpc("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    yield deployed
    assert rpc("evm_revert", [snapshot])["result"] is True  # type: ignore[arg-type]


def _listed_id(listing: str) -> str:
    """The id column of `gov list` (the prefix it shows is what `show` and `vote` take)."""
    match = re.search(r"^(\d{10,})\s+\w+", listing, re.MULTILINE)
    assert match, listing
    return match.group(1)


def test_a_token_holder_stakes_proposes_a_decoded_change_and_it_executes(network: Network) -> None:
    net, holder, friend = network, network.accounts[HOLDER], network.accounts[FRIEND]
    shown = net.cli("params")
    assert re.search(r"protocol_fee_bps\s*│\s*100\s*│\s*1 %\s*│\s*0 % – 100 %", shown), shown
    assert re.search(r"fraud_voting_period\s*│\s*86400\s*│\s*1 d\s*│\s*1 min – 14 d\s", shown), shown

    staked = " ".join(net.cli(f"gov stake 10000 --key devnet:{HOLDER}").split())
    # proposing at once is refused with the chain time from which the stake weighs, which holds
    # also where a node checks the transaction against its latest block (not the clock's second)
    staked_at, lookback = net.reader.client.timestamp(), net.reader.params.get("unbonding_period")
    early = net.cli(f'gov propose --set protocol_fee_bps=150 --description "early" --key devnet:{HOLDER}', ok=False)
    early = " ".join(early.split())  # as one line, however the console wrapped it
    assert "stake below proposal threshold" in early
    assert f"held through the 7 d before the chain's latest block ({_when(staked_at)})" in early
    assert f"reaches it in proposals made after {_when(staked_at + lookback)} by the chain's clock" in early
    assert f"it weighs in proposals made after {_when(staked_at + lookback)} by the chain's clock" in staked
    net.cli(f"gov stake 2500.5 --key devnet:{FRIEND}")
    delegated = net.cli(f"gov delegate {holder.address} --key devnet:{FRIEND}")
    assert f"your 2,500.5000 ALM staked for votes now vote through {holder.address}" in delegated, delegated
    nothing = net.cli(f"gov delegate {holder.address} --key devnet:{OUTSIDER}")
    assert "you have no ALM staked for votes" in nothing, nothing
    power = net.cli(f"gov power --key devnet:{HOLDER}")
    assert "power at stake     12,500.5000 ALM" in power and "node stake         0.0000 ALM" in power
    assert "voting power now   0.0000 ALM" in power  # not yet held through the lookback
    # stake weighs in proposals once held through the lookback (the unbonding period), as `gov stake` says
    net.cli(f"gov fast-forward {net.reader.params.get('unbonding_period') + 1}")
    assert "voting power now   12,500.5000 ALM" in net.cli(f"gov power --key devnet:{HOLDER}")

    out = net.cli(f'gov propose --set protocol_fee_bps=150 --description "fund the commons" --key devnet:{HOLDER}')
    assert "Params.set(name=protocol_fee_bps, new_value=150)" in out
    pid = int(re.search(r"proposal (\d+)", out).group(1))  # type: ignore[union-attr]
    listing = net.cli("gov list")
    short = _listed_id(listing)
    assert str(pid).startswith(short) and "→ Params.set(protocol_fee_bps, 150)" in listing
    shown = net.cli(f"gov show {short}")
    assert f"proposal {pid}" in shown and "pending" in shown and "fund the commons" in shown
    assert "1. Params.set(name=protocol_fee_bps, new_value=150)" in shown
    assert "protocol_fee_bps: 100 → 150 (1.5 %; bound 10000)" in shown

    net.cli(f"gov fast-forward {net.reader.params.get('voting_delay') + 1}")
    assert "with 12,500.5000 ALM" in net.cli(f"gov vote {short} for --key devnet:{HOLDER}")
    assert "no stake at snapshot" in net.cli(f"gov vote {short} for --key devnet:{FRIEND}", ok=False)
    net.cli(f"gov vote {short} against --key devnet:1")
    net.cli(f"gov fast-forward {net.reader.params.get('voting_period') + 1}")
    assert "succeeded" in net.cli(f"gov show {short}")
    net.cli(f"gov queue {short} --key devnet:{HOLDER}")
    net.cli(f"gov fast-forward {net.reader.params.get('timelock_delay') + 1}")
    net.cli(f"gov execute {short} --key devnet:{HOLDER}")

    assert re.search(r"protocol_fee_bps\s*│\s*150\s*│\s*1.5 %", net.cli("params"))
    executed = net.cli(f"gov show {pid}")
    assert "executed" in executed and "protocol_fee_bps set to 150 (now 150; 1.5 %; bound 10000)" in executed
    # the next redeem pays the new fee
    payer, provider = net.accounts[3], net.accounts[4]
    as_payer = net.as_(3)
    as_payer.stable.approve(as_payer.channels.address)
    channel = as_payer.channels.open(provider.address, 10**7)
    treasury = net.reader.channels.treasury()
    before = net.reader.channels.earnings(treasury)
    voucher = sign_voucher(Voucher(channel, b"\x42" * 32, 1_234_567), as_payer.channels.voucher_domain(), payer.key)
    net.as_(4).channels.redeem([voucher])
    assert net.reader.channels.earnings(treasury) - before == split_payment(1_234_567, 0, 150).protocol_fee == 18_518
    assert net.reader.votes.votes_of(holder.address) == 12_500_5 * ALM // 10
    assert net.reader.votes.votes_of(friend.address) == 0


def test_a_proposal_that_keeps_failing_expires_and_anyone_cancels_it(network: Network) -> None:
    net = network
    net.cli(f"gov stake 5000 --key devnet:{HOLDER}")
    net.cli(f"gov fast-forward {net.reader.params.get('unbonding_period') + 1}")
    too_much = f'--call "AllmendeToken transfer {net.accounts[7].address} {10**30}"'
    refused = net.cli(f'gov propose {too_much} --description "x" --key devnet:{HOLDER}', ok=False)
    assert "would fail if executed now" in refused and "AllmendeToken.transfer(" in refused
    out = net.cli(f'gov propose {too_much} --no-simulate --description "send it" --key devnet:{HOLDER}')
    pid = re.search(r"proposal (\d+)", out).group(1)  # type: ignore[union-attr]
    net.cli(f"gov fast-forward {net.reader.params.get('voting_delay') + 1}")
    net.cli(f"gov vote {pid} for --key devnet:{HOLDER}")
    net.cli(f"gov fast-forward {net.reader.params.get('voting_period') + 1}")
    net.cli(f"gov queue {pid} --key devnet:{HOLDER}")
    net.cli(f"gov fast-forward {net.reader.params.get('timelock_delay') + 1}")
    assert "error:" in net.cli(f"gov execute {pid} --key devnet:{HOLDER}", ok=False)
    assert "cannot be cancelled" in net.cli(f"gov cancel {pid} --key devnet:7", ok=False)
    net.cli(f"gov fast-forward {net.reader.params.get('proposal_grace_period') + 1}")
    assert "expired" in net.cli(f"gov show {pid}")
    net.cli(f"gov cancel {pid} --key devnet:7")
    assert "canceled" in net.cli(f"gov show {pid}") and "canceled" in net.cli("gov list")

    # the holder's stake leaves in two steps
    net.cli(f"gov unstake 5000 --key devnet:{HOLDER}")
    assert "still unbonding" in net.cli(f"gov withdraw --key devnet:{HOLDER}", ok=False)
    net.cli(f"gov fast-forward {net.reader.params.get('unbonding_period') + 1}")
    assert "withdrew 5,000.0000 ALM" in net.cli(f"gov withdraw --key devnet:{HOLDER}")


def test_bad_governance_input_is_one_clear_error(network: Network, tmp_path: Path) -> None:
    net = network
    target = net.accounts[7].address
    for line, words in (
        ("gov propose --set protocol_fee_bps=lots --description x --key devnet:1", "name=integer"),
        ("gov propose --set no_such_param=1 --description x --key devnet:1", "unknown name"),
        ("gov propose --set protocol_fee_bps=20000 --description x --key devnet:1", "above its bound 10000"),
        ("gov propose --set fraud_voting_period=0 --description x --key devnet:1", "below its lower bound 60"),
        ("gov propose --description x --key devnet:1", "nothing to propose"),
        ("gov propose --call Params --description x --key devnet:1", "TARGET FUNCTION ARG"),
        ("gov propose --call '' --description x --key devnet:1", "TARGET FUNCTION ARG"),
        ("gov propose --call 'Oracle set x 1' --description x --key devnet:1", "neither an address"),
        ("gov propose --call 'Params set protocol_fee_bps' --description x --key devnet:1", "takes 2 arguments"),
        ("gov propose --call 'Params nothing 1' --description x --key devnet:1", "no function 'nothing'"),
        (f"gov propose --call 'AllmendeToken transfer {target} -1' --description x --key devnet:1", "cannot encode"),
        (f"gov propose --call '{target} transfer 1' --description x --key devnet:1", "give a signature"),
        ("gov propose --set protocol_fee_bps=1 --description x --key devnet:3", "stake below proposal threshold"),
        ("gov vote 1 maybe --key devnet:1", "for, against or abstain"),
        ("gov show 12345", "no proposal with id 12345"),
        ("gov show 0xabc", "must be digits"),
        ("gov stake lots --key devnet:5", "not a number of ALM"),
        ("gov stake 0 --key devnet:5", "positive number"),
        ("gov stake 0.0000000000000000001 --key devnet:5", "at most 18 decimals"),
        ("gov stake 2000000 --key devnet:5", "holds"),
        ("gov delegate 0x1234 --key devnet:5", "not an address"),
        ("gov unstake 1 --key devnet:5", "unstake above stake"),
        ("gov power", "give an ADDRESS or --key"),
    ):
        output = net.cli(line, ok=False)
        assert words in output and output.startswith("error:"), (line, output)
        assert len(output.strip().splitlines()) <= 2, output  # one message (rich may wrap it once)

    # outside any state dir: the error names where it looked and never suggests deploying
    result = net.runner.invoke(app, ["gov", "list"], env={"ALLMENDE_STATE_DIR": str(tmp_path / "elsewhere")})
    assert result.exit_code == 1 and "no deployments file" in result.output
    assert "chain deploy" not in result.output and "run/deployments.json" in result.output
    # the same network joined through $ALLMENDE_DEPLOYMENTS from any folder
    moved = tmp_path / "joined.json"
    Deployment.load(net.state / "run" / "deployments.json").save(moved)
    env: dict[str, Any] = {"ALLMENDE_STATE_DIR": str(tmp_path / "empty"), "ALLMENDE_DEPLOYMENTS": str(moved)}
    result = net.runner.invoke(app, ["params"], env=env)
    assert result.exit_code == 0 and "protocol_fee_bps" in result.output, result.output


def test_a_node_operator_unbonds_and_withdraws_its_registry_stake(network: Network) -> None:
    net, provider = network, network.accounts[1].address
    shown = net.cli("stake show --key devnet:1")
    assert "provider (active)" in shown and "stake       1,000.0000 ALM" in shown
    out = net.cli("stake unbond all --key devnet:1")
    assert "unbonding 1,000.0000 ALM" in out and "no longer active" in out
    assert not net.reader.registry.is_active(provider)
    assert "still unbonding" in net.cli("stake withdraw --key devnet:1", ok=False)
    net.cli(f"gov fast-forward {net.reader.params.get('unbonding_period') + 1}")
    before = net.reader.token.balance_of(provider)
    assert "withdrew 1,000.0000 ALM" in net.cli("stake withdraw --key devnet:1")
    assert net.reader.token.balance_of(provider) == before + 1_000 * ALM
    for line, words in (
        ("stake unbond all --key devnet:1", "no stake to unbond"),
        ("stake unbond 5000 --key devnet:2", "not 5,000.0000 ALM"),
        ("stake unbond lots --key devnet:2", "not a number of ALM"),
        ("stake withdraw --key devnet:2", "nothing unbonding"),
        ("stake show 0x12", "not an address"),
        ("stake show", "give an ADDRESS or --key"),
    ):
        assert words in net.cli(line, ok=False), line
    assert "role        none (not active)" in net.cli(f"stake show {net.accounts[7].address}")
