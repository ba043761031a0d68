"""The differencing audit of exact aggregates.

An exact answer reveals, for each group and histogram bin it releases, the count and
sums of a set of rows; withheld groups and bins are not secret either, since the total
(the row count is public) minus what was released gives their union. Sets combine: the
difference of two released sets is a set too. What an analyst can learn is exactly the
statistics of unions of the *cells* of the partition that all released sets generate
(rows fall in the same cell when every released set either holds both or neither).

Rule: an exact query is answered only if, after adding the sets it releases to those
released before on the same dataset (by any grant), every non-empty cell still holds at
least `min_group` rows. Then nothing smaller than `min_group` rows can be isolated by
subtraction, intersection or any linear combination of the answers: each is constant on
the cells. A refusal says only that some cell would be too small; it releases nothing
else and costs nothing.
"""

from __future__ import annotations

import numpy as np


def refine(cells: np.ndarray, partitions: list[np.ndarray]) -> np.ndarray:
    """The cells (one id per row) after also splitting them by each partition's labels."""
    out = np.asarray(cells, dtype=np.int64)
    for labels in partitions:
        width = int(labels.max()) + 2 if labels.size else 1
        _, out = np.unique(out * width + (labels + 1), return_inverse=True)
        out = out.astype(np.int64).reshape(-1)
    return out


def smallest_cell(cells: np.ndarray) -> int:
    """The size of the smallest non-empty cell (0 for a table without rows)."""
    counts = np.bincount(cells) if cells.size else np.zeros(0, dtype=np.int64)
    counts = counts[counts > 0]
    return int(counts.min()) if counts.size else 0


def initial_cells(rows: int) -> np.ndarray:
    """Before any exact answer, only the total is known: one cell."""
    return np.zeros(rows, dtype=np.int64)
