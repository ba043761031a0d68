"""`allmende status` fits an 80-column terminal whatever the chain holds: validators, open
and decided fraud cases, several offers, unnamed models. (Its caption under the cases table
was 84 columns wide; it showed only on a chain where some test had opened a case.)"""

from __future__ import annotations

import pytest

from allmende.cli.common import console
from allmende.cli.status import render

A = "0x" + "ab" * 20
report = {
    "pending_source": "x",
    "providers": [
        {
            "address": A,
            "health": "ok",
            "endpoint": "http://127.0.0.1:45678",
            "stake": str(1500 * 10**18),
            "active": False,
            "offers": [
                {"name": "allmende:tiny", "model_id": "0x" + "11" * 32, "price_in": "100000", "price_out": "200000"},
                {"name": None, "model_id": "0x" + "11" * 32, "price_in": "100000", "price_out": "200000"},
            ],
            "earned_unwithdrawn": "123456789",
            "pending_unredeemed": "1234567",
        }
    ],
    "validators": [
        {
            "address": A,
            "endpoint": "http://127.0.0.1:45678",
            "stake": str(100 * 10**18),
            "active": True,
            "rewards_earned": str(12345 * 10**18),
        }
    ],
    "cases": [
        {
            "case_id": 12,
            "provider": A,
            "reporters": [A, A],
            "state": "open",
            "guilty_weight": str(1234 * 10**18),
            "not_guilty_weight": str(1000 * 10**18),
            "quorum_base": str(10**22),
            "quorum_bps": 3000,
            "deadline": 1790000000,
            "seconds_left": 86000,
            "bonds": str(200 * 10**18),
            "slashed": str(150 * 10**18),
        },
        {
            "case_id": 13,
            "provider": A,
            "reporters": [A],
            "state": "inconclusive",
            "guilty_weight": "0",
            "not_guilty_weight": "0",
            "quorum_base": "0",
            "quorum_bps": 3000,
            "deadline": 1790000000,
            "seconds_left": 0,
            "bonds": str(100 * 10**18),
            "slashed": "0",
        },
    ],
    "models": [
        {
            "name": "smollm2-135m-instruct",
            "model_id": "0x" + "11" * 32,
            "owner": A,
            "license": "Apache-2.0",
            "royalty_bps": 250,
            "royalty_payee": A,
            "redeemed": "493827120",
            "royalties_paid": "12345678",
            "payee_unwithdrawn": "12345678",
        },
        {
            "name": None,
            "model_id": "0x" + "33" * 32,
            "owner": "0x" + "44" * 20,
            "license": "CC-BY-NC-4.0",
            "royalty_bps": 250,
            "royalty_payee": A,
            "redeemed": "0",
            "royalties_paid": "0",
            "payee_unwithdrawn": "12345678",
        },
    ],
    "channels": [
        {
            "channel_id": "0x" + "22" * 32,
            "payer": A,
            "provider": A,
            "deposit": "100000000000",
            "redeemed": "1234567",
            "closes_at": 0,
        }
    ],
    "treasury": {"address": A, "fees_accrued": "12345"},
}


@pytest.mark.parametrize("width", [80, 100, 200])
def test_status_fits_the_terminal_with_every_table_shown(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    monkeypatch.setattr(console, "width", width)
    with console.capture() as shown:
        render(report)
    text = shown.get()
    for title in ("providers", "validators", "fraud cases", "models", "channels (dUSD)", "treasury"):
        assert title in text
    assert max(len(line) for line in text.splitlines()) <= width
