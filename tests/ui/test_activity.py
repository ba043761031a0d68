"""The explorer's in-memory activity series and receipt index, and who may read a receipt
(no network, no browser)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from allmende.gateway import explorer
from allmende.gateway.explorer import Activity, Explorer


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(1_000_000.0)
    monkeypatch.setattr(explorer.time, "time", fake)
    return fake


def receipt(i: int) -> dict[str, Any]:
    return {"id": f"chatcmpl-{i}", "tokens_in": 3, "tokens_out": 5}


def test_series_is_zero_filled_per_bucket_with_latency_percentiles(clock: Clock) -> None:
    activity = Activity(bucket_s=10, keep=6)
    for ms in range(1, 21):  # 20 answers of 1 … 20 ms in the first bucket
        activity.record(ms / 1000, 8, True, receipt(ms))
    activity.record(0.5, 0, False)
    clock.now += 30  # three buckets later, nothing served since

    view = activity.view()

    assert [b["t"] for b in view["series"]] == [1_000_000, 1_000_010, 1_000_020, 1_000_030]
    first = view["series"][0]
    assert (first["requests"], first["errors"], first["tokens"]) == (21, 1, 160)
    assert (first["p50_ms"], first["p95_ms"]) == (10.5, 20.0)
    idle = {"t": 1_000_030, "requests": 0, "errors": 0, "tokens": 0, "p50_ms": None, "p95_ms": None}
    assert view["series"][-1] == idle
    assert view["totals"] == {"requests": 21, "errors": 1, "tokens": 160}
    assert [r["id"] for r in view["receipts"]][:2] == ["chatcmpl-20", "chatcmpl-19"]


def test_series_keeps_only_the_last_buckets(clock: Clock) -> None:
    activity = Activity(bucket_s=10, keep=3)
    for _ in range(10):
        activity.record(0.01, 1, True)
        clock.now += 10

    series = activity.view()["series"]

    assert len(series) == 3 and series[-1]["t"] == int(clock.now) // 10 * 10


def test_receipt_index_is_bounded_and_forgets_the_oldest(clock: Clock) -> None:
    activity = Activity(receipts=4)
    for i in range(6):
        activity.record(0.01, 8, True, receipt(i))

    assert activity.receipt("chatcmpl-1") is None
    assert activity.receipt("chatcmpl-5") == receipt(5)
    assert activity.receipt("no such id") is None


def test_another_api_key_cannot_read_someone_elses_receipts(clock: Clock) -> None:
    activity = Activity(private=True)  # a gateway that requires API keys
    activity.record(0.01, 8, True, receipt(1), payer="alice-key")

    assert activity.receipt("chatcmpl-1", "bob-key") is None
    assert activity.receipt("chatcmpl-1", None) is None
    assert activity.view("bob-key")["receipts"] == [] and activity.view(None)["receipts"] == []
    assert activity.receipt("chatcmpl-1", "alice-key") == receipt(1)
    assert activity.view("alice-key")["receipts"] == [receipt(1)]
    assert activity.view(None)["totals"]["requests"] == 1  # the aggregates stay public


@pytest.mark.parametrize(
    ("header", "viewer"),
    [("Bearer alice-key", "alice-key"), ("bearer  alice-key ", "alice-key"), ("Bearer mallory", None), ("", None)],
    ids=["key", "case-and-spaces", "unknown-key", "none"],
)
def test_only_a_key_of_the_gateway_is_a_viewer(header: str, viewer: str | None) -> None:
    explorer_ = Explorer.__new__(Explorer)
    explorer_.api_keys = frozenset({"alice-key"})
    request = Request({"type": "http", "headers": [(b"authorization", header.encode())] if header else []})

    assert explorer_.viewer(request) == viewer
