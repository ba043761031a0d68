"""The x402 session scheme's messages and the agent's charge check (core/x402_session.py)."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from hypothesis import given
from hypothesis import strategies as st

from allmende.core import Domain, Receipt, request_cost, sign_receipt
from allmende.core.errors import InvalidInput, InvalidSignature
from allmende.core.x402_session import (
    STATEMENT_SIGNATURE,
    STATEMENT_TIME,
    STATEMENT_WINDOW,
    Charge,
    Overcharged,
    SessionPayment,
    canonical_json,
    check_charge,
    close_headers,
    close_requester,
    request_hash,
    sign_session_payment,
    statement_headers,
    statement_reader,
)

CHANNELS = Domain(31337, "0x" + "11" * 20)
REGISTRY = Domain(31337, "0x" + "22" * 20)
AGENT = Account.create()
PROVIDER = Account.create()
PRICE_IN, PRICE_OUT = 300_000, 900_000


SESSION = b"\x07" * 32


def payment(cumulative: int = 5, body: bytes = b"{}", session: bytes = SESSION) -> SessionPayment:
    return sign_session_payment(
        b"\x01" * 32, session, cumulative, os.urandom(32), request_hash(body), CHANNELS, bytes(AGENT.key)
    )


def charge(
    tokens_in: int = 1_000, tokens_out: int = 100, amount: int | None = None, key: bytes | None = None
) -> Charge:
    priced = request_cost(tokens_in, tokens_out, PRICE_IN, PRICE_OUT)
    receipt = Receipt(
        os.urandom(32), b"\x05" * 32, PROVIDER.address, os.urandom(32), os.urandom(32), os.urandom(32),
        tokens_in, tokens_out, priced if amount is None else amount, 1_700_000_000,
    )  # fmt: skip
    signed = sign_receipt(receipt, REGISTRY, key or bytes(PROVIDER.key))
    return Charge(os.urandom(32), receipt.amount, signed)


@given(st.integers(0, 2**128 - 1))
def test_a_session_payment_round_trips_and_names_its_payer(cumulative: int) -> None:
    signed = payment(cumulative)
    again = SessionPayment.from_payload(signed.to_payload())
    assert again == signed
    assert again.payer(CHANNELS, request_hash(b"{}")) == AGENT.address


def test_a_payment_for_another_body_names_no_payer() -> None:
    signed = payment(body=b'{"max_tokens": 4}')
    with pytest.raises(InvalidSignature, match="the voucher is signed by"):
        signed.payer(CHANNELS, request_hash(b'{"max_tokens": 4000}'))


def test_a_payment_moved_to_another_session_names_no_payer() -> None:
    """The session id is signed: a payment of an ended session cannot be relabelled into the
    live one."""
    signed = payment()
    moved = SessionPayment.from_payload({**signed.to_payload(), "sessionId": "0x" + "08" * 32})
    with pytest.raises(InvalidSignature, match="the voucher is signed by"):
        moved.payer(CHANNELS, request_hash(b"{}"))


def test_the_canonical_json_ignores_spacing_and_key_order() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1}) == b'{"a":[1,2],"b":1}'


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("cumulative", "-1", "decimal string"),
        ("cumulative", 5, "decimal string"),
        ("channelId", "0x12", "32 bytes"),
        ("voucher", "zz", "0x-hex"),
        ("nonce", "0xzz" + "00" * 31, "not hex"),
        ("sessionId", "0x" + "00" * 32, "must not be zero"),
        ("sessionId", None, "0x-hex"),
    ],
    ids=["negative", "not-a-string", "short-channel", "no-0x", "not-hex", "zero-session", "no-session"],
)
def test_a_malformed_session_payment_is_invalid_input(field: str, value: object, why: str) -> None:
    payload: dict[str, object] = {**payment().to_payload(), field: value}
    with pytest.raises(InvalidInput, match=why):
        SessionPayment.from_payload(payload)  # type: ignore[arg-type]


def test_a_fair_charge_counts_its_receipt() -> None:
    fair = charge()
    assert check_charge(fair, 10**6, REGISTRY, PRICE_IN, PRICE_OUT) == fair.amount > 0
    assert Charge.from_json(fair.to_json()) == fair


@pytest.mark.parametrize(
    ("made", "most", "why"),
    [
        (lambda: charge(), None, "not an unpaid request of this agent"),
        (lambda: charge(key=bytes(Account.create().key)), 10**6, "not by provider"),
        (lambda: Charge(os.urandom(32), 10**5, charge().receipt), 10**6, "charged 100000 units for a receipt of"),
        (lambda: charge(amount=10**5), 10**6, "at the provider's offer"),
        (lambda: charge(), 1, "authorised up to 1"),
    ],
    ids=["not-its-request", "forged-receipt", "above-the-receipt", "above-the-offer", "above-its-most"],
)
def test_an_unfair_charge_is_refused(made: object, most: int | None, why: str) -> None:
    with pytest.raises(Overcharged, match=why):
        check_charge(made(), most, REGISTRY, PRICE_IN, PRICE_OUT)  # type: ignore[operator]


@pytest.mark.parametrize(
    "line",
    [{"nonce": "0x" + "00" * 32, "amount": "x", "receipt": {}}, {"nonce": "0x" + "00" * 32, "amount": "1"}],
    ids=["bad-amount", "no-receipt"],
)
def test_a_malformed_charge_is_invalid_input(line: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        Charge.from_json(line)


def test_a_statement_read_names_its_signer_within_the_window_only() -> None:
    channel, at = b"\x07" * 32, 1_700_000_000
    headers = statement_headers(channel, at, CHANNELS, bytes(AGENT.key))
    signature = bytes.fromhex(headers[STATEMENT_SIGNATURE][2:])
    assert int(headers[STATEMENT_TIME]) == at
    assert statement_reader(channel, at, signature, at + STATEMENT_WINDOW, CHANNELS) == AGENT.address
    # another channel's or another time's read recovers someone else, never the payer
    assert statement_reader(b"\x08" * 32, at, signature, at, CHANNELS) != AGENT.address
    assert statement_reader(channel, at + 1, signature, at, CHANNELS) != AGENT.address
    for now in (at + STATEMENT_WINDOW + 1, at - STATEMENT_WINDOW - 1):
        with pytest.raises(InvalidSignature, match="not within"):
            statement_reader(channel, at, signature, now, CHANNELS)
    with pytest.raises(InvalidSignature, match="not within"):
        statement_reader(channel, -1, signature, -1, CHANNELS)


def test_a_close_request_names_its_payer_and_authorises_nothing_else() -> None:
    # Prepare: the payer signs a cooperative close of its channel at a time
    channel, at = b"\x05" * 32, 1_700_000_000
    headers = close_headers(channel, at, CHANNELS, AGENT.key)
    signature = bytes.fromhex(headers[STATEMENT_SIGNATURE][2:])

    # Execute / Assert: the gateway recovers the payer within the window
    assert int(headers[STATEMENT_TIME]) == at
    assert close_requester(channel, at, signature, at + STATEMENT_WINDOW, CHANNELS) == AGENT.address
    # another channel, another time, or the same signature read as a statement: another signer
    assert close_requester(b"\x06" * 32, at, signature, at, CHANNELS) != AGENT.address
    assert close_requester(channel, at + 1, signature, at, CHANNELS) != AGENT.address
    assert statement_reader(channel, at, signature, at, CHANNELS) != AGENT.address


@pytest.mark.parametrize("at, now", [(1_700_000_000, 1_700_000_000 + STATEMENT_WINDOW + 1), (-1, 0), (2**64, 2**64)])
def test_a_close_request_outside_the_window_is_refused(at: int, now: int) -> None:
    with pytest.raises(InvalidSignature, match="close request"):
        close_requester(b"\x05" * 32, at, b"\x00" * 65, now, CHANNELS)
