"""`make test` runs the process-level tests with `pytest -n 3 --dist loadgroup`, and
tests/conftest.py marks every test that uses a shared network (the e2e `network`, the provider
tests' `running` provider, the cheater network) with one `xdist_group`, so that each network
starts once, on one worker. pytest 9.2 derives a node id from its structured id, and
pytest-xdist 3.8 appends the group to `item._nodeid`, which 9.2 no longer reads: the groups were
silently ignored and every worker started its own copy of every network (three of each in a CI
run). This test runs a small suite the way `make test` does and checks that a group's tests all
ran on one worker, while ungrouped modules are spread."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

GROUPED = """
import os, pathlib, pytest

@pytest.mark.xdist_group("shared")
@pytest.mark.parametrize("i", range(6))
def test_grouped(i):
    pathlib.Path(os.environ["OUT"], f"{__name__}-{i}").write_text(os.environ["PYTEST_XDIST_WORKER"])
"""

LOOSE = """
import os, pathlib, pytest

@pytest.mark.parametrize("i", range(12))
def test_loose(i):
    pathlib.Path(os.environ["OUT"], f"{__name__}-{i}").write_text(os.environ["PYTEST_XDIST_WORKER"])
"""


def test_a_groups_tests_run_on_one_worker(tmp_path: Path) -> None:
    suite, out = tmp_path / "suite", tmp_path / "out"
    suite.mkdir()
    out.mkdir()
    (suite / "test_first.py").write_text(GROUPED)
    (suite / "test_second.py").write_text(GROUPED)
    for name in ("test_loose_a.py", "test_loose_b.py", "test_loose_c.py"):
        (suite / name).write_text(LOOSE)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-n", "2",
         "--dist", "loadgroup", "-o", "addopts=", "--rootdir", str(suite), str(suite)],
        capture_output=True, text=True, timeout=300, env={"OUT": str(out), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    workers = {path.name: path.read_text() for path in out.iterdir()}
    assert len(workers) == 2 * 6 + 3 * 12
    grouped = {w for name, w in workers.items() if name.startswith(("test_first", "test_second"))}
    assert len(grouped) == 1, f"the group's 12 tests ran on {sorted(grouped)}"
    assert len(set(workers.values())) == 2  # the loose tests still use both workers
