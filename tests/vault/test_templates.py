"""The job templates on their own: what leaves, how much noise the DP answers add, the
noise samplers, and the differencing audit of exact aggregates."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from allmende.vault.audit import initial_cells, refine, smallest_cell
from allmende.vault.datasets import Table
from allmende.vault.errors import BadJob
from allmende.vault.model import MICRO, ModelSpec, epsilon_of, micro_epsilon, rho_of
from allmende.vault.noise import discrete_gaussian, discrete_laplace
from allmende.vault.templates import aggregate, dp_aggregate, evaluate


def seeded(seed: int) -> Callable[[int], bytes]:
    """A reproducible byte source for these tests; a vault always draws from os.urandom."""
    return np.random.default_rng(seed).bytes


@pytest.fixture(scope="module")
def table() -> Table:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.min(0)) / (x.max(0) - x.min(0))
    return Table("bc", b"\x01" * 32, tuple(f"f{i}" for i in range(30)), x, "label", y.astype(np.int64))


def test_dp_aggregate_is_close_to_exact_with_a_large_epsilon(table: Table) -> None:
    exact, _ = aggregate(table, ["f0", "f1"], "label", 4, (0.0, 1.0), 10)
    noisy = dp_aggregate(table, ["f0", "f1"], "label", 4, (0.0, 1.0), 10, 500.0, seeded(1))
    for group in ("0", "1"):
        assert abs(noisy["groups"][group]["count"] - exact["groups"][group]["count"]) <= 2
        for column in ("f0", "f1"):
            assert noisy["groups"][group]["mean"][column] == pytest.approx(
                exact["groups"][group]["mean"][column], abs=0.02
            )
    assert noisy["epsilon"] == 500.0 and noisy["mechanism"] == "discrete_laplace"
    assert all(isinstance(n, int) for n in noisy["groups"]["0"]["histogram"]["f0"] if n is not None)


def test_dp_aggregate_noise_matches_the_laplace_scale(table: Table) -> None:
    # ε = 1 over 1 count + 2 statistics per column → each gets ε/3, and a replaced row moves a
    # count by up to 1 in two groups → discrete Laplace(b = 6), variance 2q/(1-q)² with q = exp(-1/b)
    source = seeded(7)
    counts = [
        dp_aggregate(table, ["f0"], None, 2, (0.0, 1.0), 10, 1.0, source)["groups"]["all"]["count"] for _ in range(400)
    ]
    q = np.exp(-1 / 6)
    expected = np.sqrt(2 * q) / (1 - q)
    assert np.mean(counts) == pytest.approx(table.rows, abs=1.0)
    assert np.std(counts) == pytest.approx(expected, rel=0.2)


def test_dp_aggregate_groups_only_by_public_classes(table: Table) -> None:
    with pytest.raises(BadJob, match="group only by the label"):
        dp_aggregate(table, ["f0"], "f3", 2, (0.0, 1.0), 10, 1.0, seeded(0))
    with pytest.raises(BadJob, match="positive"):
        dp_aggregate(table, ["f0"], None, 2, (0.0, 1.0), 10, 0.0, seeded(0))
    with pytest.raises(BadJob, match="unknown columns"):
        dp_aggregate(table, ["nope"], None, 2, (0.0, 1.0), 10, 1.0, seeded(0))


def test_exact_aggregate_suppresses_small_groups_and_bins(table: Table) -> None:
    out, _ = aggregate(table, ["f0"], "label", 20, (0.0, 1.0), 50)
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
    assert sum(charges) / MICRO == pytest.approx(30.153, abs=0.001)  # ρ = 3 · 25 · 2² / (2 · 4²)
    assert micro_epsilon(0.1234567) == 123_457  # never under-charged
    with pytest.raises(ValueError):
        micro_epsilon(epsilon_of(rho_of(1, 0.0), 1e-5))


def test_noise_samplers_have_their_distributions() -> None:
    laplace = discrete_laplace(3.0, 50_000, seeded(11))
    q = np.exp(-1 / 3)
    assert laplace.dtype == np.int64
    assert laplace.var() == pytest.approx(2 * q / (1 - q) ** 2, rel=0.05)
    assert abs(laplace.mean()) < 0.1
    gauss = discrete_gaussian(4.0, 50_000, seeded(12))
    assert gauss.dtype == np.int64 and gauss.std() == pytest.approx(4.0, rel=0.03)
    huge = discrete_gaussian(4.0 * 2**20, 10_000, seeded(13))  # the training grid's scale
    assert huge.std() == pytest.approx(4.0 * 2**20, rel=0.05)
    # the default source is the OS CSPRNG: two vault draws never repeat each other
    assert not np.array_equal(discrete_gaussian(4.0, 64), discrete_gaussian(4.0, 64))
    with pytest.raises(ValueError):
        discrete_laplace(0.0, 1)


def test_evaluate_is_noisy_and_charges_what_it_releases(table: Table) -> None:
    spec = ModelSpec(30, 2)
    params = [np.zeros((2, 30)), np.array([0.0, 5.0])]  # always class 1
    exact = float((table.labels == 1).mean())  # type: ignore[union-attr]
    close = evaluate(table, spec, params, 10, 100.0, 5.0, seeded(3))
    assert close["accuracy"] == pytest.approx(exact, abs=0.01)
    assert close["epsilon"] == 100.0 and close["mechanism"] == "discrete_laplace"
    answers = {evaluate(table, spec, params, 10, 0.5, 5.0, seeded(s))["accuracy"] for s in range(20)}
    assert len(answers) > 5  # a small ε gives a different count each time
    with pytest.raises(BadJob, match="positive"):
        evaluate(table, spec, params, 10, 0.0, 5.0)


def test_the_audit_refuses_a_small_group_derived_against_the_total(table: Table) -> None:
    # a class of 3 rows: withheld from the per-label answer, yet the total minus the rest is it
    labels = np.where(np.arange(table.rows) < 3, 2, table.labels)  # type: ignore[arg-type]
    small = Table("bc3", table.dataset_id, table.columns, table.features, "label", labels)
    answer, partitions = aggregate(small, ["f0"], "label", 1, (0.0, 1.0), 10)
    assert answer["groups_suppressed"] == 1
    assert smallest_cell(refine(initial_cells(small.rows), partitions)) == 3


def test_the_audit_refuses_differencing_across_two_answers(table: Table) -> None:
    # each answer alone is safe; their histogram edges, 0.5 and 0.52, isolate the rows between
    values = table.features[:, 0]
    between = int(((values >= 0.5) & (values < 0.52)).sum())
    assert 0 < between < 10
    _, p1 = aggregate(table, ["f0"], None, 2, (0.0, 1.0), 1)
    _, p2 = aggregate(table, ["f0"], None, 2, (0.0, 1.04), 1)
    cells = initial_cells(table.rows)
    assert smallest_cell(refine(cells, p1)) >= 10 and smallest_cell(refine(cells, p2)) >= 10
    assert smallest_cell(refine(refine(cells, p1), p2)) == between
