"""Settling up before a close: a payer's last answered requests are paid by vouchers carried
on its *next* request, so the work a payer gets just before it stops using a channel was
never vouched for. `Payments.settle_up` delivers those vouchers to the provider's
`POST /v1/vouchers`, so a provider that closes is paid for every receipt it signed, and an
agent (or gateway) pays exactly its receipts. The endpoint takes only vouchers the channel's
payer signed, within the deposit."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from allmende.api.canonical import checked
from allmende.core import Voucher, sign_voucher
from tests.gateway.fakes import GATEWAY_KEY, MODEL_ID, VOUCHERS, FakeProvider, network

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 4}
CHANNEL = b"\x01" * 32  # the fake network's channel to its first provider


def held(provider: FakeProvider) -> int:
    return sum(row.cumulative for row in provider.store.ledger(CHANNEL))


def test_the_last_answers_are_paid_by_vouchers_delivered_on_their_own(tmp_path: Path) -> None:
    # Prepare: three answered requests; the third's cost is vouched for by no request
    provider = FakeProvider(tmp_path)
    net = network(tmp_path, [provider])
    for _ in range(3):
        asyncio.run(net.service.complete(checked("chat", dict(CHAT)), None))
    owed = net.store.total_owed(CHANNEL)
    assert 0 < held(provider) < owed  # what a close now would leave unpaid

    # Execute
    with TestClient(provider.app) as http:
        delivered = net.service.payments.settle_up({provider.address.lower(): str(http.base_url)}, http)
        again = net.service.payments.settle_up({provider.address.lower(): str(http.base_url)}, http)

    # Assert: the provider holds a voucher for everything its receipts say, and knows it once
    assert delivered == 1 and again == 0
    assert held(provider) == owed == sum(amount for _, _, amount, _ in net.store.receipts())


@pytest.mark.parametrize(
    ("signer", "amount", "code"),
    [(os.urandom(32), 1_000, "bad_voucher"), (GATEWAY_KEY, 10**12, "bad_voucher")],
    ids=["signed-by-a-stranger", "beyond-the-deposit"],
)
def test_a_voucher_the_payer_did_not_sign_or_the_deposit_cannot_cover_is_refused(
    tmp_path: Path, signer: bytes, amount: int, code: str
) -> None:
    provider = FakeProvider(tmp_path)
    voucher = sign_voucher(Voucher(CHANNEL, MODEL_ID, amount), VOUCHERS, signer)

    with TestClient(provider.app) as http:
        reply = http.post("/v1/vouchers", json={"vouchers": [voucher.to_json()]})

    assert reply.status_code == 402 and reply.json()["error"]["code"] == code
    assert held(provider) == 0


def test_a_malformed_delivery_is_a_400(tmp_path: Path) -> None:
    provider = FakeProvider(tmp_path)
    with TestClient(provider.app) as http:
        assert http.post("/v1/vouchers", json={"vouchers": []}).status_code == 400
        assert http.post("/v1/vouchers", json={"vouchers": [{"voucher": "no"}]}).status_code == 400
        assert http.post("/v1/vouchers", json=[1, 2]).status_code == 400
