"""A node command starts with the garbage collector paused (allmende.node.heap,
`python -m allmende`), so every node must call `freeze_startup_heap` before it serves: a
server start that did not would run its node for ever without the cyclic collector. This
reads each function of the package that starts a uvicorn server, and `up`'s supervisor."""

from __future__ import annotations

import ast
from pathlib import Path

import allmende

PACKAGE = Path(allmende.__file__).parent
# in-process servers of the test helpers run in the test's own process, which never paused
EXEMPT = ("testing/",)


def server_starts() -> list[tuple[str, ast.FunctionDef]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith(EXEMPT):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            calls = [c for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)]
            runs_uvicorn = any(
                (isinstance(c.func.value, ast.Name) and c.func.value.id == "uvicorn" and c.func.attr == "run")
                or (c.func.attr == "run" and any(k.arg == "sockets" for k in c.keywords))
                for c in calls
            )
            if runs_uvicorn:
                found.append((f"{relative}:{node.name}", node))
    return found


def calls_freeze(function: ast.FunctionDef) -> bool:
    return any(
        isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == "freeze_startup_heap"
        for c in ast.walk(function)
    )


def test_every_node_server_runs_the_collector_again_before_it_serves() -> None:
    starts = server_starts()
    names = {name for name, _ in starts}
    # the nodes `allmende` starts: provider (direct and relayed), gateway, validator, vault, stage
    for expected in ("provider/node.py:serve", "gateway/node.py:serve", "validator/node.py:serve",
                     "vault/node.py:serve", "cli/stage.py:serve"):  # fmt: skip
        assert expected in names, f"{expected} no longer found: {sorted(names)}"
    missing = [name for name, function in starts if not calls_freeze(function)]
    assert missing == [], f"these start a server without freeze_startup_heap: {missing}"


def test_up_runs_the_collector_again_once_its_nodes_have_started() -> None:
    source = (PACKAGE / "cli" / "up.py").read_text()
    up = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == "up")
    assert calls_freeze(up)
