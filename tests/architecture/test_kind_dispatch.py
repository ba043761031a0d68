"""Request kinds are rows of one table (core/endpoints.py): what differs between chat,
completion and embedding is data there, not `kind == "…"` branches spread over the roles.
Other things the code compares by a string (a JSON schema's type, a content block's type, an
ABI type) are named for what they are, so that a `kind` compared to a string literal outside
the registry is the sign of a new endpoint branch."""

from __future__ import annotations

import re
from pathlib import Path

import allmende

PACKAGE = Path(allmende.__file__).parent
BRANCH = re.compile(r"""kind\s*==\s*["']""")  # what `grep -rn 'kind == "'` finds, and more


def test_only_the_endpoint_registry_compares_a_kind_to_a_string() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if BRANCH.search(line)
    ]
    assert [f.split(":")[0] for f in found] == ["core/endpoints.py"], found
