"""The job templates a vault runs. Each returns aggregates only; none returns a row.

- evaluate: accuracy and mean loss of a model on the dataset, per-class accuracy for
  classes with at least `min_group` rows.
- aggregate: per-group counts, means and histograms over requested columns; a group
  or a histogram bin with fewer than `min_group` rows is suppressed.
- federated_round: a DP-trained update (see `allmende.vault.model`), run through
  Flower by `allmende.vault.flower`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from allmende.vault.datasets import Table
from allmende.vault.errors import BadJob
from allmende.vault.model import ModelSpec, predict

TEMPLATES = ("evaluate", "federated_round", "aggregate")


def evaluate(table: Table, spec: ModelSpec, params: list[np.ndarray], min_group: int) -> dict[str, Any]:
    if table.labels is None:
        raise BadJob("this dataset has no label column: it cannot evaluate a classifier")
    if spec.inputs != len(table.columns):
        raise BadJob(f"the model takes {spec.inputs} inputs; the dataset has {len(table.columns)} feature columns")
    if table.rows < min_group:
        raise BadJob(f"the dataset has fewer than {min_group} rows")
    probs = predict(spec, params, table.features)
    if int(table.labels.max()) >= spec.classes:
        raise BadJob("the dataset has more classes than the model")
    hits = probs.argmax(1) == table.labels
    loss = -np.log(np.clip(probs[np.arange(table.rows), table.labels], 1e-12, 1.0))
    per_class: dict[str, float] = {}
    suppressed = 0
    for c in range(spec.classes):
        mask = table.labels == c
        if mask.sum() >= min_group:
            per_class[str(c)] = round(float(hits[mask].mean()), 6)
        elif mask.any():
            suppressed += 1
    return {
        "rows": table.rows,
        "accuracy": round(float(hits.mean()), 6),
        "loss": round(float(loss.mean()), 6),
        "per_class_accuracy": per_class,
        "classes_suppressed": suppressed,
    }


def _check_request(table: Table, columns: list[str], bins: int) -> None:
    if not columns or not all(isinstance(c, str) for c in columns):
        raise BadJob("'columns' must be a non-empty list of column names")
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        raise BadJob(f"unknown columns: {', '.join(unknown)}")
    if not 1 <= bins <= 100:
        raise BadJob("'bins' must be between 1 and 100")


def aggregate(
    table: Table,
    columns: list[str],
    group_by: str | None,
    bins: int,
    value_range: tuple[float, float] | None,
    min_group: int,
) -> dict[str, Any]:
    _check_request(table, columns, bins)
    if group_by is None:
        groups = {"all": np.ones(table.rows, dtype=bool)}
    elif group_by == table.label_column and table.labels is not None:
        groups = {str(v): table.labels == v for v in np.unique(table.labels)}
    elif group_by in table.columns:
        values = table.features[:, table.columns.index(group_by)]
        distinct = np.unique(values)
        if len(distinct) > 64:
            raise BadJob(f"{group_by!r} has more than 64 distinct values: it cannot group")
        groups = {repr(float(v)): values == v for v in distinct}
    else:
        raise BadJob(f"unknown group_by column {group_by!r}")
    lo, hi = value_range if value_range is not None else (0.0, 1.0)
    if not hi > lo:
        raise BadJob("'range' must be [low, high] with high > low")
    index = [table.columns.index(c) for c in columns]
    out: dict[str, Any] = {}
    suppressed = 0
    for name, mask in groups.items():
        count = int(mask.sum())
        if count < min_group:
            suppressed += 1
            continue
        block = table.features[mask][:, index]
        histograms = {}
        for j, c in enumerate(columns):
            counts, _ = np.histogram(np.clip(block[:, j], lo, hi), bins=bins, range=(lo, hi))
            histograms[c] = [int(n) if n >= min_group or n == 0 else None for n in counts]  # None = suppressed
        out[name] = {
            "count": count,
            "mean": {c: round(float(block[:, j].mean()), 6) for j, c in enumerate(columns)},
            "histogram": histograms,
        }
    return {"groups": out, "groups_suppressed": suppressed, "min_group": min_group, "range": [lo, hi], "bins": bins}


def dp_aggregate(
    table: Table,
    columns: list[str],
    group_by: str | None,
    bins: int,
    value_range: tuple[float, float],
    min_group: int,
    epsilon: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """`aggregate` with ε-differential privacy (the Laplace mechanism, add/remove-one-row).

    Groups are disjoint (parallel composition); inside a group ε is split evenly over the
    released statistics: the count, and per column the clipped sum and the histogram (a row
    falls into one bin, so a histogram has L1 sensitivity 1). Means are noisy sum ÷ noisy
    count. Suppression uses the noisy counts, so it is post-processing and leaks nothing.
    Groups come from public metadata only (the label's class ids), never from the data.
    """
    if not epsilon > 0:
        raise BadJob("'epsilon' must be positive")
    _check_request(table, columns, bins)
    lo, hi = value_range
    if not hi > lo:
        raise BadJob("'range' must be [low, high] with high > low")
    if group_by is None:
        groups = {"all": np.ones(table.rows, dtype=bool)}
    elif group_by == table.label_column and table.labels is not None:
        classes = int(table.describe()["classes"])  # type: ignore[call-overload]
        groups = {str(c): table.labels == c for c in range(classes)}
    else:
        raise BadJob("with 'epsilon', group only by the label column (its classes are public) or not at all")
    per_stat = epsilon / (1 + 2 * len(columns))
    bound = max(abs(lo), abs(hi))
    index = [table.columns.index(c) for c in columns]
    out: dict[str, Any] = {}
    suppressed = 0
    for name, mask in groups.items():
        count = float(mask.sum()) + rng.laplace(0.0, 1.0 / per_stat)
        if count < min_group:
            suppressed += 1
            continue
        block = np.clip(table.features[mask][:, index], lo, hi)
        means, histograms = {}, {}
        for j, c in enumerate(columns):
            total = float(block[:, j].sum()) + rng.laplace(0.0, bound / per_stat)
            means[c] = round(float(np.clip(total / count, lo, hi)), 6)
            raw, _ = np.histogram(block[:, j], bins=bins, range=(lo, hi))
            noisy = raw + rng.laplace(0.0, 1.0 / per_stat, size=raw.shape)
            histograms[c] = [round(float(n)) if n >= min_group else None for n in noisy]
        out[name] = {"count": round(count), "mean": means, "histogram": histograms}
    return {
        "groups": out,
        "groups_suppressed": suppressed,
        "min_group": min_group,
        "range": [lo, hi],
        "bins": bins,
        "epsilon": epsilon,
        "mechanism": "laplace",
    }
