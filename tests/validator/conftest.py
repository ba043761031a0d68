"""The audit network the validator e2e modules share (test_validator_e2e, test_faults_e2e,
test_accumulated_e2e, test_shapes_e2e): a chain of their own, one gateway and one honest provider.

A chain of their own, not the session's: the validators they stake would weigh in the quorum of
every later case there, and their verdicts move its clock (the voting period, the lookback). One
for the four modules, not one each: a chain, a gateway and an honest provider (whose start costs
about 6 s of CPU: torch and transformers) started once instead of four times. What one test does
there touches no other's assertions: every test audits a provider of its own for its cheats and
stakes validators of fresh accounts; the honest provider is audited and framed but never found
guilty; a juror that must carry a vote alone stakes more than every other validator on the chain
(`weigh_a_quorum`), however many tests staked before it; a test that counts votes or cases first
moves the clock past the lookback, beyond the voting period of every earlier case. A package
fixture, and one xdist group (tests/conftest.py's SHARED_NETWORKS), so it starts once per run."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import uvicorn

from allmende.chain import ChainClient, Deployment, deploy_all
from allmende.chain.anvil import Anvil, DevnetAccount, free_port
from allmende.node.supervisor import Node, allmende_command, start
from tests.conftest import wait_for
from tests.provider.conftest import ProviderProcess, start_provider

if TYPE_CHECKING:  # torch and transformers: imported where a validator is made, not by every module's collection
    from allmende.validator.service import Validator

GATEWAY_ACCOUNT = 3  # the audit gateway pays from this devnet account
HONEST_ACCOUNT = 5  # the honest provider's


@dataclass
class AuditNetwork:
    anvil: Anvil
    deployment: Deployment
    deployments_file: Path
    gateway: str  # URL of the gateway the validators send their audits through
    honest: str  # address of the honest provider, which the gateway routes to


def start_gateway(
    anvil: Anvil, deployments: Path, account: DevnetAccount, root: Path, providers: int
) -> tuple[str, Node]:
    """A gateway process paying from `account`, once it knows `providers` providers: (URL, node)."""
    url = f"http://127.0.0.1:{free_port()}"
    command = allmende_command(
        "gateway", "--rpc", anvil.url, "--key", f"devnet:{account.index}", "--deployments",
        str(deployments), "--state-dir", str(root), "--port", url.rsplit(":", 1)[1],
    )  # fmt: skip
    return url, start(
        f"gateway {root.name}", command, root / "gateway.log", url, ready=lambda h: h["providers"] >= providers
    )


def routed(gateway: str) -> set[str]:
    """Providers `gateway` routes to (its explorer's view of its directory)."""
    network = httpx.get(f"{gateway}/explorer/api/network", timeout=10).json()
    return {p["address"] for p in network["providers"] if p["health"] in ("healthy", "suspended")}


def make_validator(
    anvil: Anvil, deployments: Path, account: DevnetAccount, state: Path, gateway: str
) -> tuple[Validator, str]:
    """A staked validator of `account` in this process that audits through `gateway`, its
    evidence served at its endpoint: (validator, endpoint)."""
    from allmende.validator.app import create_app as evidence_app
    from allmende.validator.service import Validator, ValidatorConfig

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    config = ValidatorConfig(
        anvil.url, account.key, deployments, state, ["allmende:tiny"], endpoint=endpoint, gateways=(gateway,), seed=1
    )
    validator = Validator(config)
    validator.stake()
    server = uvicorn.Server(uvicorn.Config(evidence_app(validator), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(100):
        try:
            if httpx.get(f"{endpoint}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return validator, endpoint


@pytest.fixture(scope="package")
def audit_network(accounts: list[DevnetAccount], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditNetwork]:
    root = tmp_path_factory.mktemp("audit-network")
    with Anvil() as anvil:
        deployment = deploy_all(ChainClient(anvil.url, accounts[0].key), fund=[a.address for a in accounts])
        path = root / "deployments.json"
        deployment.save(path)
        honest: ProviderProcess | None = None
        gateway: Node | None = None
        try:
            honest = start_provider(anvil, path, accounts[HONEST_ACCOUNT], root / "honest", ["allmende:tiny"])
            url, gateway = start_gateway(anvil, path, accounts[GATEWAY_ACCOUNT], root / "gateway", 1)
            address = accounts[HONEST_ACCOUNT].address
            wait_for(f"the gateway to route to {address}", lambda: address in routed(url), 60)
            yield AuditNetwork(anvil, deployment, path, url, address)
        finally:
            if gateway is not None:
                gateway.stop()
            if honest is not None:
                honest.stop()
