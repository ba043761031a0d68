"""In-process EVM fixtures (titanoboa): the money contracts deployed once per module,
rolled back after every test (titanoboa's pytest plugin anchors each test and each
hypothesis example)."""

from __future__ import annotations

from collections.abc import Iterator

import boa
import pytest

from allmende.testing.inprocess import ALM, USD, Actor, System, actor, deploy_system

__all__ = ["ALM", "USD", "Actor", "System", "actor", "deploy_system"]


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
