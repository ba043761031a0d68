"""Data files a vault reads (and refuses), and the torch classifier it trains with DP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from allmende.vault.datasets import load_table, write_table
from allmende.vault.errors import BadDataFile
from allmende.vault.model import ModelSpec, accuracy, load_model, model_id, save_model, train


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_every_format_round_trips_to_the_same_table(tmp_path: Path, suffix: str) -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    y = np.array([0, 1, 1, 2])
    path = write_table(tmp_path / f"d{suffix}", ["a", "b", "c"], x, y)
    table = load_table(path)
    assert table.columns == ("a", "b", "c") and table.label_column == "label"
    np.testing.assert_allclose(table.features, x)
    assert table.labels is not None and table.labels.tolist() == [0, 1, 1, 2]
    assert table.describe() == {
        "dataset_id": "0x" + table.dataset_id.hex(),
        "name": "d",
        "rows": 4,
        "columns": ["a", "b", "c"],
        "label": "label",
        "classes": 3,
    }
    # one changed value gives another id
    x[0, 0] += 1.0
    assert load_table(write_table(tmp_path / f"e{suffix}", ["a", "b", "c"], x, y)).dataset_id != table.dataset_id


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.csv", "a,label\nx,1\n", "not numeric"),
        ("d.csv", "a,label\n0.5,-1\n", "class ids"),
        ("d.csv", "a,label\n0.5,1.5\n", "class ids"),
        ("d.csv", "", "no header"),
        ("d.jsonl", '{"a": 1}\n{"b": 2}\n', "columns differ"),
        ("d.jsonl", "[1, 2]\n", "JSON object"),
        ("d.jsonl", "{nope\n", "not JSON"),
        ("d.xlsx", "whatever", "unsupported format"),
        ("d.parquet", "PAR1 not really parquet PAR1", "unreadable"),
    ],
)
def test_bad_files_are_refused_with_a_clear_error(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(BadDataFile, match=message):
        load_table(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BadDataFile, match="no such file"):
        load_table(tmp_path / "absent.csv")


def source(seed: int) -> Callable[[int], bytes]:
    return np.random.default_rng(seed).bytes


def test_a_hidden_layer_classifier_trains_with_dp_and_is_content_addressed(tmp_path: Path) -> None:
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    spec = ModelSpec(64, 10, hidden=32)
    start = spec.init(3)
    trained = train(spec, start, x[:600], y[:600], steps=40, lr=1.5, clip=1.0, noise=1.0, random_bytes=source(5))
    assert accuracy(spec, trained, x[1500:], y[1500:]) > accuracy(spec, start, x[1500:], y[1500:]) + 0.3
    # the same noise source gives the same noise (tests only: a vault draws from os.urandom)
    again = train(spec, start, x[:600], y[:600], steps=40, lr=1.5, clip=1.0, noise=1.0, random_bytes=source(5))
    assert all(np.array_equal(a, b) for a, b in zip(trained, again, strict=True))
    fresh = train(spec, start, x[:600], y[:600], steps=1, lr=1.5, clip=1.0, noise=1.0)
    assert not np.array_equal(fresh[0], train(spec, start, x[:600], y[:600], 1, 1.5, 1.0, 1.0)[0])
    saved = save_model(tmp_path / "m", spec, trained)
    assert saved == model_id(spec, trained) != model_id(spec, start)
    loaded_spec, _, loaded_id = load_model(tmp_path / "m")
    assert loaded_spec == spec and loaded_id == saved
    (tmp_path / "m" / "notes.txt").write_text("not part of the model")
    assert load_model(tmp_path / "m")[2] == saved
    with pytest.raises(ValueError, match="do not fit"):
        train(ModelSpec(64, 10), trained, x[:10], y[:10], steps=1, lr=1.0)


def test_a_model_standardises_raw_features_with_its_specs_numbers(tmp_path: Path) -> None:
    # Prepare: raw features on wildly different scales; the spec standardises by a public sample
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)) * np.array([1000.0, 1.0, 0.01]) + np.array([5000.0, 0.0, 0.1])
    y = (x[:, 0] > 5000).astype(int)
    plain = ModelSpec(3, 2)
    spec = plain.standardized(x[:40])

    # Execute
    params = train(spec, spec.init(0), x, y, steps=60, lr=1.0)
    save_model(tmp_path, spec, params)
    loaded, _, loaded_id = load_model(tmp_path)

    # Assert: it learns from raw rows; the numbers are part of the spec and of the model id; a spec
    # without them is what it was (same json, same parameters from the same seed)
    assert accuracy(spec, params, x, y) > 0.9
    assert loaded == spec and loaded_id == model_id(spec, params) != model_id(plain, params)
    assert plain.to_json() == {"inputs": 3, "hidden": 0, "classes": 2}
    assert [p.shape for p in spec.init(0)] == [p.shape for p in plain.init(0)]
    for bad, why in [
        ({"inputs": 3, "classes": 2, "shift": [0, 0, 0]}, "both shift and scale"),
        ({"inputs": 3, "classes": 2, "shift": [0, 0], "scale": [1, 1]}, "3 finite numbers"),
        ({"inputs": 3, "classes": 2, "shift": [0, 0, 0], "scale": [1, 0, 1]}, "positive"),
    ]:
        with pytest.raises(ValueError, match=why):
            ModelSpec.from_json(bad)
