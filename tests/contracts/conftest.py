"""In-process EVM fixtures (titanoboa): the money contracts deployed once per module,
rolled back after every test (titanoboa's pytest plugin anchors each test and each
hypothesis example)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boa
import pytest

from allmende.testing.inprocess import ALM, USD, Actor, System, actor, deploy_system, deployer

__all__ = ["ALM", "USD", "Actor", "System", "actor", "deploy_system"]


@pytest.fixture(scope="session", autouse=True)
def compiled_contracts() -> Callable[[str], Any]:
    """The compiled contracts, each loaded once per process when first deployed (`deployer`:
    about 6.5 s of CPU for all of them). A session fixture of every test here, so that
    tests/conftest.py (SHARED_MODELS) runs these modules on one xdist worker and they are
    loaded once per run, not once on each worker."""
    return deployer


@pytest.fixture(scope="module")
def system_module() -> System:
    return deploy_system()


@pytest.fixture
def system(system_module: System) -> Iterator[System]:
    with boa.env.anchor():
        yield system_module


@pytest.fixture(scope="module", autouse=True)
def _fresh_debug_traces() -> None:
    # titanoboa keeps global keccak/SSTORE traces only to pretty-print storage in error
    # messages; traces left by other modules can make that printer crash on a revert
    boa.env.sha3_trace.clear()
    boa.env.sstore_trace.clear()
