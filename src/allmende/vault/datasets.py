"""Datasets a vault holds: CSV, Parquet or JSONL files of numeric columns.

A dataset's id is the keccak256 of its file manifest (the same rule as model ids,
`allmende.core.manifest`): one changed byte gives another id. The label column is
`label` unless the file's name says otherwise (`name.csv` with `--label`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from eth_utils import keccak

from allmende.core.manifest import Manifest, ManifestEntry
from allmende.vault.errors import BadDataFile

FORMATS = (".csv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Table:
    """A dataset in memory. Never serialised out of the vault."""

    name: str
    dataset_id: bytes
    columns: tuple[str, ...]  # feature columns, in order
    features: np.ndarray = field(repr=False)  # (rows, len(columns)) float64
    label_column: str | None = None
    labels: np.ndarray | None = field(default=None, repr=False)  # (rows,) int64

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])

    def describe(self) -> dict[str, object]:
        """What anyone may know about the dataset: its shape, never its rows."""
        return {
            "dataset_id": "0x" + self.dataset_id.hex(),
            "name": self.name,
            "rows": self.rows,
            "columns": list(self.columns),
            "label": self.label_column,
            "classes": int(self.labels.max()) + 1 if self.labels is not None and self.rows else 0,
        }


def dataset_id_of(path: Path) -> bytes:
    data = path.read_bytes()
    entry = ManifestEntry(path.name, len(data), hashlib.sha256(data).hexdigest())
    return keccak(Manifest((entry,)).canonical())


def _records(path: Path) -> dict[str, list[object]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise BadDataFile(f"{path.name}: no header row")
            cols: dict[str, list[object]] = {c: [] for c in reader.fieldnames}
            for row in reader:
                for c in reader.fieldnames:
                    cols[c].append(row[c])
            return cols
    if suffix == ".jsonl":
        cols = {}
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BadDataFile(f"{path.name}:{n + 1}: not JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise BadDataFile(f"{path.name}:{n + 1}: each line must be a JSON object")
                if not cols:
                    cols = {k: [] for k in obj}
                if set(obj) != set(cols):
                    raise BadDataFile(f"{path.name}:{n + 1}: columns differ from the first line")
                for k, v in obj.items():
                    cols[k].append(v)
        return cols
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return {name: table.column(name).to_pylist() for name in table.column_names}
    raise BadDataFile(f"{path.name}: unsupported format (use {', '.join(FORMATS)})")


def load_table(path: str | Path, label: str | None = "label", name: str | None = None) -> Table:
    """Load a data file; every column must be numeric. `label` (if present) holds class ids."""
    p = Path(path)
    if not p.is_file():
        raise BadDataFile(f"{p}: no such file")
    try:
        cols = _records(p)
    except BadDataFile:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # a damaged Parquet file, bytes that are not UTF-8
        raise BadDataFile(f"{p.name}: unreadable ({exc.__class__.__name__}: {exc})") from None
    if not cols:
        raise BadDataFile(f"{p.name}: no columns")
    numeric: dict[str, np.ndarray] = {}
    for c, values in cols.items():
        try:
            numeric[c] = np.asarray([float(v) for v in values], dtype=np.float64)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BadDataFile(f"{p.name}: column {c!r} is not numeric") from None
    labels = None
    label_column = label if label in numeric else None
    if label_column is not None:
        raw = numeric.pop(label_column)
        if np.any(raw != np.round(raw)) or np.any(raw < 0):
            raise BadDataFile(f"{p.name}: label column {label_column!r} must hold class ids 0, 1, 2, …")
        labels = raw.astype(np.int64)
    columns = tuple(numeric)
    features = np.stack([numeric[c] for c in columns], axis=1) if columns else np.zeros((0, 0))
    return Table(name or p.stem, dataset_id_of(p), columns, features, label_column, labels)


def write_table(path: str | Path, columns: list[str], features: np.ndarray, labels: np.ndarray | None) -> Path:
    """Write a table in the format the suffix names (used by `allmende vault sample-data` and tests)."""
    p = Path(path)
    names = [*columns, *(["label"] if labels is not None else [])]
    rows = [
        [*(float(x) for x in features[i]), *([int(labels[i])] if labels is not None else [])]
        for i in range(features.shape[0])
    ]
    suffix = p.suffix.lower()
    if suffix == ".csv":
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(names)
            w.writerows(rows)
    elif suffix == ".jsonl":
        with p.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(dict(zip(names, r, strict=True))) + "\n")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}), p)
    else:
        raise BadDataFile(f"{p.name}: unsupported format (use {', '.join(FORMATS)})")
    return p
