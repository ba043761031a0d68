"""Fixtures shared by every test folder that needs a real chain: one anvil per session,
the contracts deployed once, devnet accounts funded."""

from __future__ import annotations

import gc

gc.disable()  # until collection ends: see pytest_collection below

import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from allmende.chain import ChainClient, Contracts, Deployment, deploy_all  # noqa: E402
from allmende.chain.anvil import Anvil, DevnetAccount, devnet_accounts  # noqa: E402
from allmende.chain.bindings import CaseRecord  # noqa: E402
from allmende.testing.network import start_network, stop_network  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_collection(session: pytest.Session) -> Iterator[None]:
    """Loading the conftests and collecting import torch, transformers, boa, web3, …: millions of
    objects that live for the whole run on every worker. The garbage collector's passes over
    them while they are made (1.2-1.6 CPU s a worker), and its later full passes over them during
    the tests (0.7 -> 0.2 s in tests/engine/test_smollm2.py and tests/stages/test_stage_batching.py),
    are wasted: it is paused from this file's first import to the end of collection, and then
    they leave its passes (as a node's start-up does, allmende.node.heap)."""
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        gc.enable()


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def accounts() -> list[DevnetAccount]:
    return devnet_accounts(10)


@pytest.fixture(scope="session")
def deployment(anvil: Anvil, accounts: list[DevnetAccount]) -> Deployment:
    admin = ChainClient(anvil.url, accounts[0].key)
    return deploy_all(admin, fund=[a.address for a in accounts])


def contracts_for(anvil: Anvil, deployment: Deployment, account: DevnetAccount) -> Contracts:
    return Contracts(ChainClient(anvil.url, account.key), deployment)


@pytest.fixture(scope="session")
def deployments_file(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chain") / "deployments.json"
    deployment.save(path)
    return path


# ------------------------------------------------------------------------------------------
# `allmende up` with two providers, the second trying to recognise audits and serving everyone
# else from a cheap generator (allmende.testing.cheats, mode `recognise`), and two validators
# that catch it. Used by tests/validator/test_up_validators.py and by the
# explorer's browser tests (tests/ui): those tests are run one after the other, share one
# network, and it is stopped as soon as the last of them has run.

CHEATER_NETWORK = "cheater_network"
CHEATER_NETWORK_ARGS = (
    "--providers",
    "2",
    "--model",
    "allmende:tiny",
    "--validators",
    "2",
    "--validator-option=--audit-interval=2",
    "--validator-option=--publish-every=2",
)


class _SharedNetwork:
    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.data: dict[str, Any] = {}

        self.failed: BaseException | None = None

    def get(self, factory: pytest.TempPathFactory) -> dict[str, Any]:
        if self.failed is not None:  # do not wait for a failing start once per test
            raise RuntimeError("the shared network did not start (see the first test that used it)") from self.failed
        if self.process is None:
            root = factory.mktemp("up-validators")
            try:
                self.process, self.data = start_network(root, *CHEATER_NETWORK_ARGS, cheat="2:recognise")
            except BaseException as exc:
                self.failed = exc
                raise
            self.data["root"] = str(root)
        return self.data

    def stop(self) -> None:
        if self.process is not None:
            stop_network(self.process)
            self.process = None


_cheater_network = _SharedNetwork()


@pytest.fixture
def cheater_network(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """network.json of the running network (started by the first test that asks for it)."""
    return _cheater_network.get(tmp_path_factory)


# what each test folder starts (`pytest -m unit`, `-m "not e2e"`, …); see pyproject's markers
KIND_OF_FOLDER = {
    "core": "unit", "gateway": "unit", "architecture": "unit", "cli": "unit",
    "contracts": "chain", "chain": "chain",
    "provider": "process", "validator": "process", "vault": "process", "supervisor": "process",
    "faults": "process", "engine": "process",
    "e2e": "e2e", "ui": "e2e", "agent": "unit", "stages": "process",
}  # fmt: skip
TESTS = Path(__file__).parent


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark each test by what its folder starts (before `-m` selects)."""
    folder = Path(str(item.fspath)).relative_to(TESTS).parts[0]
    item.add_marker(KIND_OF_FOLDER.get(folder, "process"))


# Networks one fixture starts for many test modules: the session `network` of tests/e2e, the
# session `running` provider of tests/provider, the package's vault `world` of tests/vault (anvil,
# three vault processes, a trained base model: ~28 s of CPU a start), the validator e2e modules'
# `audit_network` of tests/validator (a chain, a gateway, an honest provider), and the cheater
# network above. Under pytest-xdist (`make test` runs `-n 3 --dist loadgroup`) every module that uses one
# runs on the same worker, so each network starts once (a package fixture is also stopped whenever
# a worker turns to another package's test: spread over the workers, `world` started on each worker
# that ran one of its modules, and again after each such turn); every other module is a group of
# its own (its module-scoped fixtures start once), and the groups are spread over the workers.
SHARED_NETWORKS = (CHEATER_NETWORK, "network", "running", "world", "audit_network")
# Models a session fixture loads for many modules, grouped the same way, so that they load once
# per run, not once on each worker that runs one of their modules: `stages3` of tests/stages (the
# default model in three stages, with the whole model to compare with and the whole model's
# answers it caches: ~2.4 s of CPU to load) and `compiled_contracts` of tests/contracts
# (titanoboa's compiled contracts: ~6.5 s of CPU to load).
SHARED_MODELS = ("stages3", "compiled_contracts")


def shared_network_of(item: pytest.Item) -> str | None:
    """The shared network a test uses, by where its fixture is defined (other folders have
    module-scoped fixtures of the same names), or None."""
    info = getattr(item, "_fixtureinfo", None)
    for name in (*SHARED_NETWORKS, *SHARED_MODELS):
        if name not in getattr(item, "fixturenames", ()):
            continue
        if name == CHEATER_NETWORK:
            return name
        definitions = info.name2fixturedefs.get(name) if info is not None else None
        if definitions and definitions[-1].scope in ("session", "package"):
            return f"{definitions[-1].baseid or '.'}::{name}"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test's worker group for pytest-xdist's loadgroup (before xdist reads the marks):
    the shared network its module uses, else its module."""
    module_networks: dict[str, str] = {}
    for item in items:
        network = shared_network_of(item)
        if network is not None:
            module_networks.setdefault(item.nodeid.split("::")[0], network)
    for item in items:
        module = item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(module_networks.get(module, module)))
    # the long groups first, so that a worker is not left with one at the end (xdist hands the
    # groups out in this order)
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in module_networks)


class _CheaterNetworkOrder:
    """Runs the tests on the cheater network one after the other, where the first of them was
    (after any shuffling: pytest-randomly reorders in its own modifyitems)."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        users = [item for item in items if CHEATER_NETWORK in getattr(item, "fixturenames", ())]
        if users:
            first = items.index(users[0])
            rest = [item for item in items if item not in users]
            items[:] = rest[:first] + users + rest[first:]


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_CheaterNetworkOrder(), "allmende-cheater-network-order")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    if CHEATER_NETWORK in getattr(item, "fixturenames", ()) and (
        nextitem is None or CHEATER_NETWORK not in getattr(nextitem, "fixturenames", ())
    ):
        _cheater_network.stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def cheater_verdict(network: dict[str, Any]) -> CaseRecord:
    """The first fraud case against the cheating provider, once it is resolved: waits for
    the case and the other validator's vote, then moves the chain past the voting period
    (unless an earlier test did) and waits for a validator to resolve it."""
    reader = Contracts(ChainClient(network["rpc_url"]), Deployment.load(network["deployments"]))
    cheater = network["providers"][1]["address"]
    validators = [v["address"] for v in network["validators"]]

    def votable(case: CaseRecord) -> bool:
        """The other validator had stake the second before the case opened (votes are weighted
        by that snapshot: a case opened in the very second the other one staked is not)."""
        other = next(v for v in validators if v != case.reporter)
        return reader.verdicts.voted(case.case_id, other) or reader.verdicts.vote_weight(case.case_id, other) > 0

    def case_against_cheater() -> CaseRecord | None:
        for case in reader.verdicts.all_cases():
            if case.provider != cheater:
                continue
            if votable(case):
                return case
            if case.status == 1 and reader.client.timestamp() < case.deadline:
                # opened before the other validator's stake counted: nobody can vote on it, and
                # it holds the fault's one open case; let it end (inconclusive) so a new one opens
                deployer = devnet_accounts(1)[0]
                ChainClient(network["rpc_url"], deployer.key).increase_time(reader.params.get("fraud_voting_period"))
        return None

    case = wait_for("a fraud case against the cheating provider", case_against_cheater, 240)
    assert case.reporter in validators
    other = next(v for v in validators if v != case.reporter)
    wait_for("the other validator's vote", lambda: reader.verdicts.voted(case.case_id, other), 120)
    if reader.verdicts.case(case.case_id).status == 1 and reader.client.timestamp() <= case.deadline:
        deployer = devnet_accounts(1)[0]
        ChainClient(network["rpc_url"], deployer.key).increase_time(reader.params.get("fraud_voting_period") + 1)
    return wait_for(
        "the case to be resolved by a validator",
        lambda: (c := reader.verdicts.case(case.case_id)).status != 1 and c,
        120,
    )
