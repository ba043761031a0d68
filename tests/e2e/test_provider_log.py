"""A slashed provider's own log says so (issue 38: it said nothing; its operator learnt of the
slash from `allmende status` or the explorer). On the shared `up` network whose second provider
cheats and whose validators catch it: the cheater's log tells the case opened against it and
its verdict, with what was slashed and the stake left, as the chain records them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from allmende.chain import ChainClient, Contracts, Deployment
from tests.conftest import cheater_verdict, wait_for


def test_a_slashed_providers_own_log_tells_the_case_and_the_slash(cheater_network: dict[str, Any]) -> None:
    # Prepare / Execute: the validators catch the cheater and a verdict is reached
    network = cheater_network
    case = cheater_verdict(network)
    reader = Contracts(ChainClient(network["rpc_url"]), Deployment.load(network["deployments"]))
    (row,) = (p for p in network["providers"] if p["address"] == case.provider)
    log = Path(row["log"])

    # Assert: its log names the case, the verdict, the slash and the stake left
    told = f"fraud case {case.case_id} against this provider: guilty"
    wait_for("the verdict in the provider's own log", lambda: told in log.read_text(), 60)
    line = next(line for line in log.read_text().splitlines() if told in line)
    stake = reader.registry.account(case.provider).stake
    whole, frac = divmod(case.slashed, 10**18)
    assert f"slashed {whole:,}.{frac // 10**14:04d} ALM" in line
    assert f"stake now {stake // 10**18:,}." in line
    assert f"fraud case {case.case_id} opened against this provider" in log.read_text()
