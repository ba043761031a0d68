"""The contracts' compile cache shared by processes started together: after a source changed, the
test workers and the nodes of `allmende up` each missed the cache and compiled every contract
again (about 15 s of CPU per EVM version each). The first one compiles; the others wait for its
artifact and read it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from allmende.chain import compile as compiling
from allmende.chain.compile import DEFAULT_EVM_VERSION


def test_compilers_started_together_compile_a_contract_once_and_get_the_same_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: an empty cache, and a compiler slow enough that two callers overlap
    monkeypatch.setenv("ALLMENDE_CACHE", str(tmp_path))
    compiled: list[str] = []
    real = compiling.compile_files

    def slow_compile(*args: Any, **kwargs: Any) -> Any:
        compiled.append(threading.current_thread().name)
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(compiling, "compile_files", slow_compile)
    uncached = compiling._compile.__wrapped__  # each call as a new process makes it: no in-process cache
    results: dict[str, compiling.Artifact] = {}

    def build(who: str) -> None:
        results[who] = uncached("AllmendeToken", DEFAULT_EVM_VERSION)

    # Execute: two at once (threads hold separate lock files as processes do)
    threads = [threading.Thread(target=build, args=(f"compiler-{i}",), name=f"compiler-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    # Assert: one compile, and both got its artifact (the second read it from the cache)
    assert len(compiled) == 1, compiled
    assert results["compiler-0"] == results["compiler-1"]
    assert results["compiler-0"].bytecode.startswith("0x") and results["compiler-0"].abi
    assert list((tmp_path / "contracts").glob("AllmendeToken-*.json"))
