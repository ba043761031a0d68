"""What a token holder reads when governance refuses something: what happened, why, and what to
do, with the figures (the refusals themselves are the Governor's; issue 33's list of words)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from allmende.chain.anvil import Anvil
from tests.chain.test_governance_e2e import FRIEND, HOLDER, OUTSIDER, Network


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    with Anvil() as node:
        yield Network(node, tmp_path / ".allmende")


def words(text: str) -> str:
    return " ".join(text.split())


def test_governance_refusals_say_why_with_the_figures(network: Network) -> None:
    # Prepare: a holder with stake, a friend who delegated to it, an outsider with none
    net, holder = network, network.accounts[HOLDER]
    param = net.reader.params.get
    net.cli(f"gov stake 10000 --key devnet:{HOLDER}")
    net.cli(f"gov stake 2500 --key devnet:{FRIEND}")
    net.cli(f"gov delegate {holder.address} --key devnet:{FRIEND}")

    # Execute / Assert: each refusal in turn
    refused = words(
        net.cli(f"gov propose --set protocol_fee_bps=150 --description x --key devnet:{OUTSIDER}", ok=False)
    )
    assert "has 0.0000 ALM of voting weight" in refused and "(proposal_threshold)" in refused
    unknown = words(net.cli(f"gov propose --set foo=1 --description x --key devnet:{HOLDER}", ok=False))
    assert "unknown name 'foo' in Params; it has" in unknown and "protocol_fee_bps" in unknown

    net.cli(f"gov fast-forward {param('unbonding_period') + 1}")
    out = net.cli(f'gov propose --set protocol_fee_bps=150 --description "fee" --key devnet:{HOLDER}')
    pid = re.search(r"proposal (\d+)", out).group(1)  # type: ignore[union-attr]
    grant = f'--call "AllmendeToken transfer {net.accounts[7].address} {10**24}" --no-simulate'
    granted = net.cli(f'gov propose {grant} --description "a grant" --key devnet:{HOLDER}')
    assert "(amount = 1,000,000.0000 ALM)" in granted  # in units, beside the raw 18-decimal figure
    assert "amount = 1,000,000.0000 ALM" in net.cli("gov list")
    assert "opens at" in words(net.cli(f"gov vote {pid} for --key devnet:{HOLDER}", ok=False))
    assert "has not started (it opens at" in words(net.cli(f"gov queue {pid} --key devnet:{HOLDER}", ok=False))

    net.cli(f"gov fast-forward {param('voting_delay') + 1}")
    delegated = words(net.cli(f"gov vote {pid} for --key devnet:{FRIEND}", ok=False))
    assert f"vote through its delegate {holder.address}" in delegated and "2,500.0000 ALM" in delegated
    net.cli(f"gov vote {pid} for --key devnet:{HOLDER}")
    assert "is open until" in words(net.cli(f"gov queue {pid} --key devnet:{HOLDER}", ok=False))

    net.cli(f"gov fast-forward {param('voting_period') + 1}")
    assert f"gov queue {pid}` first" in words(net.cli(f"gov execute {pid} --key devnet:{HOLDER}", ok=False))
    net.cli(f"gov queue {pid} --key devnet:{HOLDER}")
    assert "execute by" in net.cli(f"gov show {pid}")
    assert "lets it execute from" in words(net.cli(f"gov execute {pid} --key devnet:{HOLDER}", ok=False))
    net.cli(f"gov fast-forward {param('timelock_delay') + 1}")
    net.cli(f"gov execute {pid} --key devnet:{HOLDER}")
    assert "was executed already" in words(net.cli(f"gov execute {pid} --key devnet:{HOLDER}", ok=False))
    assert "was executed already" in words(net.cli(f"gov queue {pid} --key devnet:{HOLDER}", ok=False))

    # `gov unstake all`, as `stake unbond all` takes it
    assert "unstaking 2,500.0000 ALM" in net.cli(f"gov unstake all --key devnet:{FRIEND}")
