"""The vault's request checks one by one, in process (no chain, no sockets): strict JSON, the
fields a request may carry, results that must be finite, model archives checked before they
inflate, and the order of a round's stages."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from allmende.core.vault_requests import (
    ROUND_FIT,
    ROUND_MASKED_VECTORS,
    ROUND_SETUP,
    ROUND_SHARE_KEYS,
    ROUND_UNMASK,
)
from allmende.vault.app import strict_json
from allmende.vault.errors import BadJob, StageRefused
from allmende.vault.jobs import check_finite, only_fields
from allmende.vault.model import MAX_PARAMETERS, ModelSpec, params_from_bytes, params_to_bytes, shapes_of
from allmende.vault.rounds import RoundBook, RoundKey

SPEC = ModelSpec(4, 3)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"a": 1, "a": 2}', "twice"),
        (b'{"a": NaN}', "finite"),
        (b'{"a": [-Infinity]}', "finite"),
        (b'{"a": 1e999}', "finite"),
        (b"[1]", "object"),
        (b"\xff", "not JSON"),
        (b"[" * 100_000, "more than 1000 arrays"),
    ],
    ids=["duplicate", "nan", "infinity", "overflow", "list", "bytes", "deep"],
)
def test_strict_json_refuses(body: bytes, why: str) -> None:
    with pytest.raises(BadJob, match=why):
        strict_json(body)


def test_strict_json_keeps_a_plain_object() -> None:
    assert strict_json(b'{"a": 1.5, "b": {"c": [1, 2]}}') == {"a": 1.5, "b": {"c": [1, 2]}}


def test_a_field_a_request_cannot_use_is_refused() -> None:
    only_fields({"a": 1}, frozenset({"a", "b"}), "a job")
    with pytest.raises(BadJob, match="takes no field 'sql'"):
        only_fields({"a": 1, "sql": "SELECT *"}, frozenset({"a"}), "a job")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_a_result_that_is_not_finite_is_refused(bad: float) -> None:
    check_finite({"groups": {"all": {"mean": {"f1": 0.5}, "histogram": [1, 2]}}})
    with pytest.raises(BadJob, match="not finite"):
        check_finite({"groups": {"all": {"mean": {"f1": bad}}}})
    with pytest.raises(BadJob, match="not finite"):
        check_finite({"range": [0.0, bad]})


def _npz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_model_weights_round_trip_within_their_shapes() -> None:
    params = SPEC.init(0)
    decoded = params_from_bytes(params_to_bytes(params), shapes_of(SPEC))
    assert all(np.array_equal(a, b) for a, b in zip(params, decoded, strict=True))


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ({"arr_0.npy": _npy(np.zeros((3, 4)))}, "2 arrays"),
        ({"arr_0.npy": _npy(np.zeros((3, 4))), "x.npy": _npy(np.zeros(3))}, "2 arrays"),
        ({"arr_0.npy": _npy(np.zeros(10_000)), "arr_1.npy": _npy(np.zeros(3))}, "declares"),
        ({"arr_0.npy": _npy(np.zeros((4, 3))), "arr_1.npy": _npy(np.zeros(3))}, "not a"),
        ({"arr_0.npy": _npy(np.zeros((3, 4), dtype="<f4")), "arr_1.npy": _npy(np.zeros(3))}, "not a"),
        ({"arr_0.npy": _npy(np.zeros((3, 4)))[:-8], "arr_1.npy": _npy(np.zeros(3))}, "holds"),
    ],
    ids=["too-few", "misnamed", "too-large", "wrong-shape", "wrong-dtype", "short"],
)
def test_model_weights_are_checked_before_they_inflate(members: dict[str, bytes], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        params_from_bytes(_npz(members), shapes_of(SPEC))


def test_a_model_too_large_to_decode_is_refused_from_its_spec() -> None:
    with pytest.raises(ValueError, match=str(MAX_PARAMETERS)):
        shapes_of(ModelSpec(4096, 4096, 4096))


KEY = RoundKey("0xgrantee", 1, 7, 1)
SECURE = [ROUND_SETUP, ROUND_SHARE_KEYS, ROUND_MASKED_VECTORS, ROUND_UNMASK]


def run(book: RoundBook, key: RoundKey, stage: str) -> None:
    book.begin(key, stage)
    book.complete(key)


def test_a_round_takes_its_stages_once_and_in_order() -> None:
    book = RoundBook()
    with pytest.raises(StageRefused, match="never ran"):  # nothing before the round's own setup
        run(book, KEY, ROUND_UNMASK)
    for done, stage in enumerate(SECURE):
        if 0 < done < len(SECURE) - 1:
            with pytest.raises(StageRefused, match="out of order"):  # a refusal leaves the round as it was
                run(book, KEY, ROUND_UNMASK)
        run(book, KEY, stage)
    with pytest.raises(StageRefused, match="finished"):
        run(book, KEY, ROUND_UNMASK)
    with pytest.raises(StageRefused, match="set up already"):
        run(book, KEY, ROUND_SETUP)
    with pytest.raises(StageRefused, match="move forward"):  # an earlier round of the run
        run(book, RoundKey("0xgrantee", 1, 7, 0), ROUND_SETUP)
    run(book, RoundKey("0xgrantee", 1, 7, 2), ROUND_SETUP)  # the next round
    run(book, RoundKey("0xother", 1, 7, 1), ROUND_FIT)  # another grantee's round is its own


def test_an_aborted_or_failed_round_takes_no_more_stages() -> None:
    book = RoundBook()
    run(book, KEY, ROUND_SETUP)
    assert book.abort(KEY) is False  # it had not finished: nothing was logged
    with pytest.raises(StageRefused, match="aborted"):
        run(book, KEY, ROUND_SHARE_KEYS)
    other = RoundKey("0xgrantee", 2, 7, 1)
    assert book.abort(other) is False  # aborted before its setup: its setup is refused later
    with pytest.raises(StageRefused):
        run(book, other, ROUND_SETUP)
    fit = RoundKey("0xgrantee", 3, 7, 1)
    book.begin(fit, ROUND_FIT)
    with pytest.raises(StageRefused, match="running"):
        book.begin(fit, ROUND_UNMASK)
    book.fail(fit)
    with pytest.raises(StageRefused, match="failed"):
        run(book, fit, ROUND_UNMASK)
    done = RoundKey("0xgrantee", 4, 7, 1)
    run(book, done, ROUND_FIT)
    assert book.abort(done) is True  # it had finished: its charge is logged


def test_idle_rounds_are_forgotten() -> None:
    now = [0.0]
    book = RoundBook(ttl=10, clock=lambda: now[0])
    run(book, KEY, ROUND_SETUP)
    now[0] = 11
    run(book, RoundKey("0xgrantee", 9, 9, 1), ROUND_FIT)  # any begin forgets what idled past the ttl
    with pytest.raises(StageRefused, match="never ran"):
        run(book, KEY, ROUND_SHARE_KEYS)
