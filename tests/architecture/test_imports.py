"""The layering of the packages, read from the source with `ast` (imports inside functions
count too): no import cycles between modules or between packages, production code never
imports the test helpers, and `core` stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "allmende"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """Every allmende module `name` imports, anywhere in its body."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `allmende.x.y.Class` → `allmende.x.y`
                target = target.rpartition(".")[0]
            if target.startswith("allmende") and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_of(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2])


def without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Package `__init__` files only re-export their own submodules: leave out the edges from a
    package to its own members, which are not dependencies between modules."""
    return {
        v: {w for w in ws if not (w.startswith(v + ".") and MODULES[v].name == "__init__.py")}
        for v, ws in graph.items()
    }


def test_no_import_cycles_between_modules() -> None:
    assert cycles(without_package_inits(GRAPH)) == []


def test_no_import_cycles_between_packages() -> None:
    packages: dict[str, set[str]] = {}
    for v, ws in GRAPH.items():
        packages.setdefault(package_of(v), set()).update(package_of(w) for w in ws if package_of(w) != package_of(v))
    assert cycles(packages) == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith("allmende.testing")))
def test_production_code_never_imports_the_test_helpers(name: str) -> None:
    assert not [m for m in GRAPH[name] if m.startswith("allmende.testing")]


def test_core_is_pure() -> None:
    """core imports nothing that does I/O and no other allmende package."""
    forbidden = ("httpx", "web3", "asyncio", "fastapi", "sqlite3", "subprocess", "socket", "torch")
    for name, path in MODULES.items():
        if not name.startswith("allmende.core"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] not in forbidden, f"{name} imports {module}"
        assert all(package_of(m) == "allmende.core" for m in GRAPH[name]), (name, GRAPH[name])


def loaded_on_import(name: str) -> set[str]:
    """The allmende modules importing `name` loads: module-level imports (not those inside
    functions or under `if TYPE_CHECKING`), followed transitively, with parent packages."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]
        tree = ast.parse(MODULES[current].read_text())
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef):
                    break
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    todo += [m for m in imports_of_node(current, inner) if m in MODULES]
    return seen


def imports_of_node(name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        module = node.module or ""
        targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
    found = []
    for target in targets:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target.startswith("allmende"):
            found.append(target)
    return found


def test_the_calibration_harness_needs_no_chain_libraries() -> None:
    """bench/verify_gpu.py runs the harness on GPU machines that lack web3 and the API stack."""
    loaded = loaded_on_import("allmende.testing.harness")
    assert "allmende.validator.checker" in loaded
    assert not {m for m in loaded if m.startswith(("allmende.chain", "allmende.provider", "allmende.gateway"))}


ROLES = ("gateway", "provider", "validator", "vault")
SHARED = ("allmende.core", "allmende.chain", "allmende.engine", "allmende.api", "allmende.node", "allmende.payer")


@pytest.mark.parametrize("role", ROLES)
def test_roles_are_siblings(role: str) -> None:
    """A role imports the shared layers and its own package, never another role (nor the CLI
    or the test helpers): what two roles share lives in a shared layer."""
    own = f"allmende.{role}"
    for name in MODULES:
        if name != own and not name.startswith(own + "."):
            continue
        foreign = {
            m
            for m in GRAPH[name]
            if m not in ("allmende", "allmende.config")
            and not m.startswith((own + ".", *(s + "." for s in SHARED)))
            and m not in (own, *SHARED)
        }
        assert not foreign, f"{name} imports {sorted(foreign)}"


def test_no_loose_modules_at_the_package_root() -> None:
    loose = {p.name for p in PACKAGE.glob("*.py")}
    assert loose <= {"__init__.py", "__main__.py", "config.py"}, sorted(loose)


def test_the_shared_layers_import_no_role() -> None:
    """core, chain, engine, api, node and payer sit below the roles: none of them reaches up."""
    roles_and_tools = tuple(f"allmende.{r}" for r in (*ROLES, "cli", "testing"))
    for name in MODULES:
        if name.startswith(tuple(s + "." for s in SHARED)) or name in SHARED:
            upward = {m for m in GRAPH[name] if m.startswith(roles_and_tools)}
            assert not upward, f"{name} imports {sorted(upward)}"
