"""The job templates on their own: what leaves, and how much noise the DP aggregate adds."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from allmende.vault.datasets import Table
from allmende.vault.errors import BadJob
from allmende.vault.model import MICRO, epsilon_of, micro_epsilon, rho_of
from allmende.vault.templates import aggregate, dp_aggregate


@pytest.fixture(scope="module")
def table() -> Table:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.min(0)) / (x.max(0) - x.min(0))
    return Table("bc", b"\x01" * 32, tuple(f"f{i}" for i in range(30)), x, "label", y.astype(np.int64))


def test_dp_aggregate_is_close_to_exact_with_a_large_epsilon(table: Table) -> None:
    exact = aggregate(table, ["f0", "f1"], "label", 4, (0.0, 1.0), 10)
    noisy = dp_aggregate(table, ["f0", "f1"], "label", 4, (0.0, 1.0), 10, 500.0, np.random.default_rng(1))
    for group in ("0", "1"):
        assert abs(noisy["groups"][group]["count"] - exact["groups"][group]["count"]) <= 2
        for column in ("f0", "f1"):
            assert noisy["groups"][group]["mean"][column] == pytest.approx(
                exact["groups"][group]["mean"][column], abs=0.02
            )
    assert noisy["epsilon"] == 500.0 and noisy["mechanism"] == "laplace"


def test_dp_aggregate_noise_matches_the_laplace_scale(table: Table) -> None:
    # ε = 1 over 1 count + 2 statistics per column → each gets ε/3; Laplace(b) has std b·√2
    rng = np.random.default_rng(7)
    counts = [
        dp_aggregate(table, ["f0"], None, 2, (0.0, 1.0), 10, 1.0, rng)["groups"]["all"]["count"] for _ in range(400)
    ]
    expected = 3.0 * np.sqrt(2.0)
    assert np.mean(counts) == pytest.approx(table.rows, abs=1.0)
    assert np.std(counts) == pytest.approx(expected, rel=0.2)


def test_dp_aggregate_groups_only_by_public_classes(table: Table) -> None:
    with pytest.raises(BadJob, match="group only by the label"):
        dp_aggregate(table, ["f0"], "f3", 2, (0.0, 1.0), 10, 1.0, np.random.default_rng(0))
    with pytest.raises(BadJob, match="positive"):
        dp_aggregate(table, ["f0"], None, 2, (0.0, 1.0), 10, 0.0, np.random.default_rng(0))
    with pytest.raises(BadJob, match="unknown columns"):
        dp_aggregate(table, ["nope"], None, 2, (0.0, 1.0), 10, 1.0, np.random.default_rng(0))


def test_exact_aggregate_suppresses_small_groups_and_bins(table: Table) -> None:
    out = aggregate(table, ["f0"], "label", 20, (0.0, 1.0), 50)
    histogram = out["groups"]["0"]["histogram"]["f0"]
    assert None in histogram  # bins with 1..49 rows are withheld
    assert all(n is None or n == 0 or n >= 50 for n in histogram)


def test_zcdp_accounting_composes_and_rounds_up() -> None:
    # ρ adds over rounds; charging the growth of ε telescopes to ε of the total
    rounds = [rho_of(25, 4.0)] * 3
    charges, spent = [], 0.0
    for rho in rounds:
        charges.append(micro_epsilon(epsilon_of(spent + rho, 1e-5)) - micro_epsilon(epsilon_of(spent, 1e-5)))
        spent += rho
    assert sum(charges) == micro_epsilon(epsilon_of(sum(rounds), 1e-5))
    assert sum(charges) / MICRO == pytest.approx(12.733, abs=0.001)
    assert micro_epsilon(0.1234567) == 123_457  # never under-charged
    with pytest.raises(ValueError):
        micro_epsilon(epsilon_of(rho_of(1, 0.0), 1e-5))
