"""The license rule for derived models: restricted parents cannot yield permissive children."""

from __future__ import annotations

import pytest

from allmende.core.licenses import derived_license_problem


@pytest.mark.parametrize(
    ("parent", "child"),
    [
        ("Apache-2.0", "MIT"),
        ("MIT", "CC-BY-NC-4.0"),
        ("CC-BY-4.0", "Apache-2.0"),
        ("CC0-1.0", "proprietary"),
        ("CC-BY-NC-4.0", "CC-BY-NC-4.0"),
        ("CC-BY-NC-4.0", "cc-by-nc-sa-4.0"),
        ("CC-BY-SA-4.0", "cc-by-sa-4.0"),
        ("CC-BY-NC-SA-4.0", "CC-BY-NC-SA-4.0"),
    ],
)
def test_a_compatible_child_license_passes(parent: str, child: str) -> None:
    assert derived_license_problem(parent, child) is None


@pytest.mark.parametrize(
    ("parent", "child", "words"),
    [
        ("CC-BY-NC-4.0", "MIT", "non-commercial"),
        ("CC BY NonCommercial 4.0", "Apache-2.0", "non-commercial"),
        ("CC-BY-ND-4.0", "CC-BY-ND-4.0", "no derivatives"),
        ("CC-BY-NC-ND-4.0", "CC-BY-NC-4.0", "no derivatives"),
        ("CC BY NoDerivatives", "MIT", "no derivatives"),
        ("CC-BY-NoDerivs-3.0", "MIT", "no derivatives"),
        ("CC-BY-SA-4.0", "MIT", "share-alike"),
        ("CC BY ShareAlike", "CC-BY-4.0", "share-alike"),
    ],
    ids=["nc-to-mit", "noncommercial-words", "nd", "nc-nd", "noderivatives", "noderivs", "sa-to-mit", "sharealike"],
)
def test_a_permissive_child_of_a_restricted_parent_is_refused(parent: str, child: str, words: str) -> None:
    problem = derived_license_problem(parent, child)
    assert problem is not None and words in problem
