"""The x402 `session` scheme's messages and its money rule, with no I/O.

A session pays from a channel in `Channels` from the agent's key to the gateway (the
channel's "provider" is the gateway's address). The channel outlives the session: the
agent's first payment opens it (or tops it up), and every later session from the same
wallet to the same gateway pays from it again, with no transaction. Each session is a
window on the channel's one cumulative voucher, named by a `session id` the agent draws;
the first payment of a new session id ends the channel's earlier session at the gateway,
whose payments are refused from then on (`session_ended`), whatever their nonces. Each paid
request carries a `SessionPayment`:

- a `Voucher(channelId, SESSION_MODEL, cumulative)`: everything the agent has been charged
  *and has checked* on this channel before this request (the sum of the provider receipts
  the gateway showed it), never more; the gateway redeems the highest one in `Channels`, in
  batches (when what is unredeemed passes its threshold, or when the channel closes);
- a `Request(requestId = nonce, channelId, sessionId, inputHash = requestHash)`
  authorisation under the same domain: the request id is the agent's fresh nonce (admitted
  once: a replayed payment is refused), the session id its window, the input hash is
  keccak256 of the request's canonical JSON (a payment for one body buys no other), and the
  signer must be the channel's payer (a channel id is public; a voucher from another key is
  refused).

`SESSION_MODEL` is the zero id: `Models` refuses to register it, and `Channels` redeems a
zero-model voucher as a payment to a relay: no royalty and no protocol fee on this hop, into
the gateway's relay balance, which it spends on its provider channels (`fund`), where the
providers' redeems take the fee. So a session request pays the treasury once, as an `exact`
one does (contracts/channels.vy).

A session's statement (its charges, with the providers' receipts) is read only by the
channel's payer: each read carries `statement_signature`, the payer's signature over
`Request(STATEMENT_READ, channelId, SESSION_MODEL, keccak("statement" ‖ time))`, valid for
STATEMENT_WINDOW seconds around the gateway's clock. STATEMENT_READ is no nonce the agent
ever pays with, the zero model no session id and the input hash no request's hash (a keccak
preimage), so a read's signature authorises no payment.

A cooperative close is asked the same way: the payer's signature over
`Request(CLOSE_REQUEST, channelId, SESSION_MODEL, keccak("close" ‖ time))` (`close_headers`),
which authorises nothing else.

`check_charge` is the agent's side of "overpayment is impossible": a charge counts only if
it is one of the agent's own paid requests (its nonce), shown once, with a receipt its
provider signed, for no more than the receipt, no more than usage × the provider's offer on
chain, and no more than the most the agent authorised for that request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak

from allmende.core.authorization import RequestAuthorization
from allmende.core.eip712 import Domain, recover_digest, sign_digest, word
from allmende.core.errors import InvalidInput, InvalidSignature
from allmende.core.fees import request_cost
from allmende.core.receipts import SignedReceipt
from allmende.core.vouchers import Voucher

SCHEME = "session"
SESSION_MODEL = bytes(32)  # unregistrable (Models: "empty id"), so no royalty on the session's redeem


STATEMENT_READ = keccak(b"allmende/x402-session-statement")  # the request id a statement read signs
CLOSE_REQUEST = keccak(b"allmende/x402-session-close")  # the request id a cooperative close signs
STATEMENT_WINDOW = 300  # seconds a statement read's signature is accepted around the gateway's clock
STATEMENT_TIME = "X-Allmende-Session-Time"  # the headers a statement read carries
STATEMENT_SIGNATURE = "X-Allmende-Session-Signature"


def close_request(channel_id: bytes, at: int) -> RequestAuthorization:
    """What the payer signs to ask the gateway to close its channel at once (a cooperative
    close, Channels.redeem with `release`) at unix time `at`. Its request id is no nonce a
    payment or a statement read signs, so the signature authorises nothing else."""
    return RequestAuthorization(CLOSE_REQUEST, channel_id, SESSION_MODEL, keccak(b"close" + word(at)))


def close_headers(channel_id: bytes, at: int, domain: Domain, key: bytes) -> dict[str, str]:
    """The headers of a cooperative close asked by the channel's payer (`key`) at `at`."""
    signature = close_request(channel_id, at).sign(domain, key)
    return {STATEMENT_TIME: str(at), STATEMENT_SIGNATURE: "0x" + signature.hex()}


def close_requester(channel_id: bytes, at: int, signature: bytes, now: float, domain: Domain) -> str:
    """Who signed a close request (InvalidSignature if malformed or not within
    STATEMENT_WINDOW of `now`); the gateway closes only for the channel's payer."""
    if not 0 <= at < 2**64 or abs(now - at) > STATEMENT_WINDOW:
        raise InvalidSignature(f"the close request's time {at} is not within {STATEMENT_WINDOW} s of now")
    return close_request(channel_id, at).signer(domain, signature)


def statement_read(channel_id: bytes, at: int) -> RequestAuthorization:
    """What the payer signs to read its session's statement at unix time `at`."""
    return RequestAuthorization(STATEMENT_READ, channel_id, SESSION_MODEL, keccak(b"statement" + word(at)))


def statement_headers(channel_id: bytes, at: int, domain: Domain, key: bytes) -> dict[str, str]:
    """The headers of a statement read by the channel's payer (`key`) at unix time `at`."""
    signature = statement_read(channel_id, at).sign(domain, key)
    return {STATEMENT_TIME: str(at), STATEMENT_SIGNATURE: "0x" + signature.hex()}


def statement_reader(channel_id: bytes, at: int, signature: bytes, now: float, domain: Domain) -> str:
    """Who signed a statement read (InvalidSignature if it is malformed or not within
    STATEMENT_WINDOW of `now`); the gateway answers only the channel's payer."""
    if not 0 <= at < 2**64 or abs(now - at) > STATEMENT_WINDOW:
        raise InvalidSignature(f"the statement read's time {at} is not within {STATEMENT_WINDOW} s of now")
    return statement_read(channel_id, at).signer(domain, signature)


def canonical_json(body: dict[str, Any]) -> bytes:
    """The request as parsed, in one byte form (keys sorted, no spaces): the same request
    hashes the same however its client spaced or ordered it."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def request_hash(body: bytes) -> bytes:
    """What a session payment (and the `exact` requirements) bind: keccak256 of the
    request's canonical JSON."""
    return keccak(body)


def _hex(value: Any, size: int, name: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise InvalidInput(f"session payment: {name} must be 0x-hex")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise InvalidInput(f"session payment: {name} is not hex") from None
    if len(raw) != size:
        raise InvalidInput(f"session payment: {name} must be {size} bytes")
    return raw


@dataclass(frozen=True)
class SessionPayment:
    """The inner payload of an x402 `session` payment."""

    channel_id: bytes
    cumulative: int  # the voucher's cumulative amount, payment-token units
    voucher_signature: bytes
    nonce: bytes  # the request id the authorisation signs
    authorization: bytes  # the payer's signature over Request(nonce, channel, session_id, requestHash)
    session_id: bytes  # the window of the channel this payment belongs to (never zero)

    def voucher(self) -> Voucher:
        return Voucher(self.channel_id, SESSION_MODEL, self.cumulative)

    def request(self, body_hash: bytes) -> RequestAuthorization:
        return RequestAuthorization(self.nonce, self.channel_id, self.session_id, body_hash)

    def payer(self, domain: Domain, body_hash: bytes) -> str:
        """The one key that signed both the voucher and this request's authorisation
        (InvalidSignature when they differ or either is malformed)."""
        voucher_signer = recover_digest(self.voucher().digest(domain), self.voucher_signature)
        request_signer = self.request(body_hash).signer(domain, self.authorization)
        if voucher_signer != request_signer:
            raise InvalidSignature(f"the voucher is signed by {voucher_signer}, the request by {request_signer}")
        return voucher_signer

    def to_payload(self) -> dict[str, str]:
        return {
            "channelId": "0x" + self.channel_id.hex(),
            "cumulative": str(self.cumulative),
            "voucher": "0x" + self.voucher_signature.hex(),
            "nonce": "0x" + self.nonce.hex(),
            "authorization": "0x" + self.authorization.hex(),
            "sessionId": "0x" + self.session_id.hex(),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> SessionPayment:
        """Parse `to_payload` output; InvalidInput on any malformed field."""
        cumulative = payload.get("cumulative")
        if not isinstance(cumulative, str) or not cumulative.isdigit() or len(cumulative) > 39:
            raise InvalidInput("session payment: cumulative must be a decimal string")
        return cls(
            channel_id=_hex(payload.get("channelId"), 32, "channelId"),
            cumulative=int(cumulative),
            voucher_signature=_hex(payload.get("voucher"), 65, "voucher"),
            nonce=_hex(payload.get("nonce"), 32, "nonce"),
            authorization=_hex(payload.get("authorization"), 65, "authorization"),
            session_id=_session_id(payload.get("sessionId")),
        )


def _session_id(value: Any) -> bytes:
    raw = _hex(value, 32, "sessionId")
    if raw == SESSION_MODEL:
        raise InvalidInput("session payment: the session id must not be zero")
    return raw


def sign_session_payment(
    channel_id: bytes, session_id: bytes, cumulative: int, nonce: bytes, body_hash: bytes, domain: Domain, key: bytes
) -> SessionPayment:
    """The agent's payment for one request of session `session_id`: the voucher for what it
    has checked on the channel, and the request's authorisation."""
    voucher = Voucher(channel_id, SESSION_MODEL, cumulative)
    authorization = RequestAuthorization(nonce, channel_id, session_id, body_hash)
    return SessionPayment(
        channel_id,
        cumulative,
        sign_digest(voucher.digest(domain), key),
        nonce,
        authorization.sign(domain, key),
        session_id,
    )


class Overcharged(InvalidInput):
    """A session's statement asks for more than the agent's own checks allow (nothing is signed)."""

    code = "session_overcharged"


@dataclass(frozen=True)
class Charge:
    """One line of a gateway's session statement: the request (by the agent's nonce), what
    it was charged and the provider's signed receipt it was charged for."""

    nonce: bytes
    amount: int
    receipt: SignedReceipt

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Charge:
        amount = data.get("amount")
        if not isinstance(amount, str) or not amount.isdigit():
            raise InvalidInput("session charge: amount must be a decimal string")
        receipt = data.get("receipt")
        if not isinstance(receipt, dict):
            raise InvalidInput("session charge: receipt missing")
        return cls(_hex(data.get("nonce"), 32, "nonce"), int(amount), SignedReceipt.from_json(receipt))

    def to_json(self) -> dict[str, Any]:
        return {"nonce": "0x" + self.nonce.hex(), "amount": str(self.amount), "receipt": self.receipt.to_json()}


def check_charge(charge: Charge, most: int | None, domain: Domain, price_in: int, price_out: int) -> int:
    """The units `charge` may add to what the agent owes, or Overcharged. `most` is what the
    agent authorised for that nonce (None: not one of its requests, or already counted);
    `domain` the receipts' (Registry's); the prices are the provider's offer on chain."""
    if most is None:
        raise Overcharged(f"charge for request 0x{charge.nonce.hex()}: not an unpaid request of this agent")
    try:
        charge.receipt.verify(domain)
    except InvalidSignature as exc:
        raise Overcharged(f"charge for request 0x{charge.nonce.hex()}: {exc}") from None
    receipt = charge.receipt.receipt
    if charge.amount != receipt.amount:
        raise Overcharged(f"charged {charge.amount} units for a receipt of {receipt.amount}")
    priced = request_cost(receipt.tokens_in, receipt.tokens_out, price_in, price_out)
    if receipt.amount > priced:
        raise Overcharged(
            f"receipt of {receipt.amount} units for {receipt.tokens_in}+{receipt.tokens_out} tokens "
            f"at the provider's offer ({priced} units)"
        )
    if receipt.amount > most:
        raise Overcharged(f"charged {receipt.amount} units for a request authorised up to {most}")
    return receipt.amount
