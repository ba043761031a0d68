"""The job templates a vault runs. Each returns aggregates only; none returns a row.

- evaluate: accuracy, mean clipped loss and per-class accuracy of a model on the
  dataset, ε-differentially private (discrete Laplace on the counts and the loss sum).
- aggregate: per-group counts, means and histograms over requested columns. With an ε
  (the default) by the discrete Laplace mechanism; exact only where the data owner
  enabled it for the grant, and then audited against differencing
  (`allmende.vault.audit`): `aggregate` returns the partitions its answer reveals.
- federated_round: a DP-trained update (see `allmende.vault.model`), run through
  Flower by `allmende.vault.flower`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from allmende.vault.datasets import Table
from allmende.vault.errors import BadJob
from allmende.vault.model import REPLACED_ROWS, ModelSpec, predict
from allmende.vault.noise import RandomBytes, discrete_laplace

TEMPLATES = ("evaluate", "federated_round", "aggregate")
SUM_GRID_BITS = 16  # sums of clipped values are taken in multiples of bound·2⁻¹⁶


def evaluate(
    table: Table,
    spec: ModelSpec,
    params: list[np.ndarray],
    min_group: int,
    epsilon: float,
    loss_clip: float,
    random_bytes: RandomBytes = os.urandom,
) -> dict[str, Any]:
    """The model's accuracy, mean loss and per-class accuracy, ε-DP.

    The row count is public (`/v1/info`), so neighbouring datasets differ in one row
    replaced by another. ε is split: ½ to the number of correct predictions (sensitivity
    1), ¼ to the sum of per-row losses clipped to [0, `loss_clip`] (sensitivity
    `loss_clip`, on a grid), ¼ to the per-class counts of rows and of correct predictions
    (the replaced row may leave one class and join another: L1 sensitivity 4). The rest
    is post-processing.
    """
    if table.labels is None:
        raise BadJob("this dataset has no label column: it cannot evaluate a classifier")
    if spec.inputs != len(table.columns):
        raise BadJob(f"the model takes {spec.inputs} inputs; the dataset has {len(table.columns)} feature columns")
    if table.rows < min_group:
        raise BadJob(f"the dataset has fewer than {min_group} rows")
    if not epsilon > 0:
        raise BadJob("'epsilon' must be positive")
    if int(table.labels.max()) >= spec.classes:
        raise BadJob("the dataset has more classes than the model")
    probs = predict(spec, params, table.features)
    hits = probs.argmax(1) == table.labels
    loss = np.clip(-np.log(np.clip(probs[np.arange(table.rows), table.labels], 1e-300, 1.0)), 0.0, loss_clip)
    grid = loss_clip * 2.0**-SUM_GRID_BITS
    loss_ticks = int(np.round(loss / grid).sum())

    correct = int(hits.sum()) + int(discrete_laplace(1.0 / (0.5 * epsilon), 1, random_bytes)[0])
    loss_ticks += int(discrete_laplace(2.0**SUM_GRID_BITS / (0.25 * epsilon), 1, random_bytes)[0])
    per_class_noise = discrete_laplace(4.0 / (0.25 * epsilon), 2 * spec.classes, random_bytes)
    per_class: dict[str, float] = {}
    suppressed = 0
    for c in range(spec.classes):
        mask = table.labels == c
        count = int(mask.sum()) + int(per_class_noise[2 * c])
        if count < min_group:
            suppressed += 1
            continue
        right = int(hits[mask].sum()) + int(per_class_noise[2 * c + 1])
        per_class[str(c)] = round(min(1.0, max(0.0, right / count)), 6)
    return {
        "rows": table.rows,
        "accuracy": round(min(1.0, max(0.0, correct / table.rows)), 6),
        "loss": round(max(0.0, loss_ticks * grid / table.rows), 6),
        "loss_clip": loss_clip,
        "per_class_accuracy": per_class,
        "classes_suppressed": suppressed,
        "epsilon": epsilon,
        "mechanism": "discrete_laplace",
    }


def _check_request(table: Table, columns: list[str], bins: int) -> None:
    if not columns or not all(isinstance(c, str) for c in columns):
        raise BadJob("'columns' must be a non-empty list of column names")
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        raise BadJob(f"unknown columns: {', '.join(unknown)}")
    if not 1 <= bins <= 100:
        raise BadJob("'bins' must be between 1 and 100")


def _bin_of(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Each value's histogram bin after clipping to [lo, hi] (the last bin is closed)."""
    index = np.floor((np.clip(values, lo, hi) - lo) / (hi - lo) * bins).astype(np.int64)
    clipped: np.ndarray = np.clip(index, 0, bins - 1)
    return clipped


def aggregate(
    table: Table,
    columns: list[str],
    group_by: str | None,
    bins: int,
    value_range: tuple[float, float] | None,
    min_group: int,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Exact per-group counts, means and histograms; groups and bins under `min_group` rows
    are withheld. Returns the answer and the partitions of the rows it reveals (one label
    per row; -1 for rows whose set is only known as "the rest", the total minus what was
    released), for the differencing audit."""
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
    released = np.full(table.rows, -1, dtype=np.int64)  # the groups partition
    binned = [np.full(table.rows, -1, dtype=np.int64) for _ in columns]  # one partition per histogram
    for g, (name, mask) in enumerate(groups.items()):
        count = int(mask.sum())
        if count < min_group:
            suppressed += 1
            continue
        released[mask] = g
        block = table.features[mask][:, index]
        histograms = {}
        for j, c in enumerate(columns):
            which = _bin_of(block[:, j], lo, hi, bins)
            counts = np.bincount(which, minlength=bins)
            shown = [int(n) if n >= min_group or n == 0 else None for n in counts]  # None = suppressed
            histograms[c] = shown
            # withheld bins of a released group are known together: the group's count minus the rest
            binned[j][mask] = g * (bins + 1) + np.where([shown[b] is None for b in which], bins, which)
        out[name] = {
            "count": count,
            "mean": {c: round(float(block[:, j].mean()), 6) for j, c in enumerate(columns)},
            "histogram": histograms,
        }
    answer = {"groups": out, "groups_suppressed": suppressed, "min_group": min_group, "range": [lo, hi], "bins": bins}
    return answer, [released, *binned]


def dp_aggregate(
    table: Table,
    columns: list[str],
    group_by: str | None,
    bins: int,
    value_range: tuple[float, float],
    min_group: int,
    epsilon: float,
    random_bytes: RandomBytes = os.urandom,
) -> dict[str, Any]:
    """`aggregate` with ε-differential privacy (the discrete Laplace mechanism), noise
    from `random_bytes` (the OS CSPRNG in a vault).

    Neighbouring datasets differ in one row replaced by another (the row count is
    public). Inside a group ε is split evenly over the released statistics: the count,
    and per column the clipped sum and the histogram. Every noise scale is twice the
    add/remove-one-row scale: a replaced row either stays in its group (its count is
    unchanged, a sum moves by at most 2·max(|low|, |high|), a histogram by 2 in L1) or
    leaves one group for another (each of the two moves as under add/remove, so half of ε
    each). Sums are taken in integer multiples of max(|low|, |high|)·2⁻¹⁶, so every noisy
    statistic is an integer. Means are noisy sum ÷ noisy count. Suppression uses the noisy
    counts, so it is post-processing. Groups come from public metadata only (the label's
    class ids), never from the data.
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
    per_stat = epsilon / (1 + 2 * len(columns)) / REPLACED_ROWS  # the ε of each statistic under add/remove
    bound = max(abs(lo), abs(hi))
    grid = bound * 2.0**-SUM_GRID_BITS
    index = [table.columns.index(c) for c in columns]
    out: dict[str, Any] = {}
    suppressed = 0
    for name, mask in groups.items():
        count = int(mask.sum()) + int(discrete_laplace(1.0 / per_stat, 1, random_bytes)[0])
        if count < min_group:
            suppressed += 1
            continue
        block = np.clip(table.features[mask][:, index], lo, hi)
        means, histograms = {}, {}
        for j, c in enumerate(columns):
            ticks = int(np.round(block[:, j] / grid).sum())
            ticks += int(discrete_laplace(2.0**SUM_GRID_BITS / per_stat, 1, random_bytes)[0])
            means[c] = round(float(np.clip(ticks * grid / count, lo, hi)), 6)
            raw = np.bincount(_bin_of(block[:, j], lo, hi, bins), minlength=bins)
            noisy = raw + discrete_laplace(1.0 / per_stat, bins, random_bytes)
            histograms[c] = [int(n) if n >= min_group else None for n in noisy]
        out[name] = {"count": count, "mean": means, "histogram": histograms}
    return {
        "groups": out,
        "groups_suppressed": suppressed,
        "min_group": min_group,
        "range": [lo, hi],
        "bins": bins,
        "epsilon": epsilon,
        "mechanism": "discrete_laplace",
    }
