"""Which licenses a model derived from another may carry (pure, no I/O).

The rule, by the markers of the parent's license (SPDX ids or the usual short names,
compared case-insensitively):

| parent license | a derived model may carry |
| --- | --- |
| no-derivatives (`-ND`, e.g. CC-BY-ND-4.0, CC-BY-NC-ND-4.0) | nothing: no derived model |
| share-alike (`-SA`, e.g. CC-BY-SA-4.0) | the same license |
| non-commercial (`-NC`, e.g. CC-BY-NC-4.0) | a license that is non-commercial too |
| anything else (Apache-2.0, MIT, BSD, CC-BY, CC0, OpenRAIL…) | any license |

The chain records what authors declare; this rule is what the CLI enforces before it
registers a derived model, so a permissive child of a restricted parent is refused.
"""

from __future__ import annotations

import re


def _markers(license_id: str) -> set[str]:
    words = set(re.split(r"[^a-z]+", license_id.lower()))
    found = set()
    if "nd" in words or "noderivatives" in words or "noderivs" in words:
        found.add("nd")
    if "nc" in words or "noncommercial" in words:
        found.add("nc")
    if "sa" in words or "sharealike" in words:
        found.add("sa")
    return found


def derived_license_problem(parent: str, child: str) -> str | None:
    """Why a model under `parent`'s license cannot yield one under `child`; None if it can."""
    parent_markers, child_markers = _markers(parent), _markers(child)
    if "nd" in parent_markers:
        return f"the parent's license {parent} allows no derivatives"
    if "sa" in parent_markers and parent.strip().lower() != child.strip().lower():
        return f"the parent's license {parent} is share-alike: a derived model must carry {parent} too"
    if "nc" in parent_markers and "nc" not in child_markers:
        return f"the parent's license {parent} is non-commercial: {child} would allow commercial use"
    return None
