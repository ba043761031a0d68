"""End-to-end encryption between payer and provider: what round-trips, and every envelope an
attacker or a broken peer can send that must be refused with an EnvelopeError (an InvalidInput,
so wire handlers answer 400 and the gateway fails over)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from allmende.core.envelope import (
    MAX_CIPHERTEXT,
    EnvelopeError,
    ResponseSealer,
    SealedBytes,
    open_bytes,
    open_request,
    public_key_bytes,
    seal_bytes,
    seal_request,
)
from allmende.core.errors import InvalidInput

PROVIDER = "0x1111111111111111111111111111111111111111"
OTHER_PROVIDER = "0x2222222222222222222222222222222222222222"
REQUEST_ID = bytes(range(32))

# one key pair for the whole module: X25519 keys are cheap, but hypothesis runs many examples
PROVIDER_KEY = X25519PrivateKey.generate()


def sealed(plaintext: bytes = b'{"prompt": "hi"}') -> tuple[dict[str, str], ResponseSealer]:
    return seal_request(public_key_bytes(PROVIDER_KEY), PROVIDER, REQUEST_ID, plaintext)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def flip_last_byte(field: str) -> bytes:
    raw = bytearray(base64.b64decode(field))
    raw[-1] ^= 0x01
    return bytes(raw)


# ------------------------------------------------------------------ round trips


@settings(max_examples=25, deadline=None)
@given(request_id=st.binary(min_size=32, max_size=32), plaintext=st.binary(max_size=2048))
def test_the_provider_opens_what_the_payer_sealed(request_id: bytes, plaintext: bytes) -> None:
    envelope, _ = seal_request(public_key_bytes(PROVIDER_KEY), PROVIDER, request_id, plaintext)

    opened_id, opened, _ = open_request(PROVIDER_KEY, PROVIDER, envelope)

    assert (opened_id, opened) == (request_id, plaintext)
    assert envelope["request_id"] == "0x" + request_id.hex()
    assert set(envelope) == {"request_id", "enc", "nonce", "ciphertext"}


def test_the_payer_opens_the_answer_chunks_in_order() -> None:
    envelope, payer_side = sealed()
    _, _, provider_side = open_request(PROVIDER_KEY, PROVIDER, envelope)
    chunks = [provider_side.seal(seq, text) for seq, text in enumerate([b"Hel", b"lo", b""])]

    opened = [payer_side.open(chunk, seq) for seq, chunk in enumerate(chunks)]

    assert opened == [b"Hel", b"lo", b""]
    assert [chunk["seq"] for chunk in chunks] == [0, 1, 2]


def test_the_provider_address_is_matched_case_insensitively() -> None:
    checksummed = "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01"
    envelope, _ = seal_request(public_key_bytes(PROVIDER_KEY), checksummed, REQUEST_ID, b"x")

    _, plaintext, _ = open_request(PROVIDER_KEY, checksummed.lower(), envelope)

    assert plaintext == b"x"


def test_the_ciphertext_hides_the_plaintext_and_is_fresh_each_time() -> None:
    plaintext = b"a secret prompt about my medical history"

    first, _ = sealed(plaintext)
    second, _ = sealed(plaintext)

    assert plaintext not in base64.b64decode(first["ciphertext"])
    assert first["ciphertext"] != second["ciphertext"]  # new ephemeral key and nonce per request
    assert first["enc"] != second["enc"]


def test_envelope_errors_are_invalid_input_with_a_stable_code() -> None:
    with pytest.raises(InvalidInput) as caught:
        open_request(PROVIDER_KEY, PROVIDER, [])

    assert isinstance(caught.value, EnvelopeError)
    assert caught.value.code == "bad_envelope"


# ------------------------------------------------------------------ sealing


@pytest.mark.parametrize("key", [b"", b"\x09" * 31, b"\x09" * 33], ids=["empty", "31-bytes", "33-bytes"])
def test_sealing_to_a_provider_key_of_the_wrong_size_is_refused(key: bytes) -> None:
    with pytest.raises(EnvelopeError, match="32 bytes"):
        seal_request(key, PROVIDER, REQUEST_ID, b"x")


# ------------------------------------------------------------------ malformed requests


@pytest.mark.parametrize(
    "envelope", [None, [], "envelope", 5, b"{}"], ids=["null", "list", "string", "number", "bytes"]
)
def test_an_envelope_that_is_not_an_object_is_refused(envelope: object) -> None:
    with pytest.raises(EnvelopeError, match="JSON object"):
        open_request(PROVIDER_KEY, PROVIDER, envelope)


@pytest.mark.parametrize(
    ("request_id", "message"),
    [
        (None, "0x \\+ 64 hex"),
        (7, "0x \\+ 64 hex"),
        ("00" * 33, "0x \\+ 64 hex"),
        ("0x" + "00" * 31, "0x \\+ 64 hex"),
        ("0x" + "00" * 33, "0x \\+ 64 hex"),
        ("0x" + "zz" * 32, "not hex"),
        ("0x" + "00" * 31 + "  ", "not hex"),
        ("0x" + "00 " * 21 + " ", "not hex"),
    ],
    ids=["missing", "number", "no-0x", "short", "long", "not-hex", "space-padded", "space-separated"],
)
def test_a_malformed_request_id_is_refused(request_id: object, message: str) -> None:
    envelope: dict[str, object] = {**sealed()[0], "request_id": request_id}

    with pytest.raises(EnvelopeError, match=message):
        open_request(PROVIDER_KEY, PROVIDER, envelope)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("enc", None, "enc must be a base64 string"),
        ("enc", 12, "enc must be a base64 string"),
        ("enc", "not base64!", "enc is not valid base64"),
        ("enc", "ü" * 4, "enc is not valid base64"),
        ("enc", b64(b"\x01" * 31), "enc must be 32 bytes"),
        ("nonce", b64(b"\x01" * 11), "nonce must be 12 bytes"),
        ("nonce", b64(b"\x01" * 13), "nonce must be 12 bytes"),
        ("ciphertext", ["AAAA"], "ciphertext must be a base64 string"),
        ("ciphertext", "AAA", "ciphertext is not valid base64"),
    ],
    ids=[
        "enc-missing",
        "enc-number",
        "enc-bad-chars",
        "enc-non-ascii",
        "enc-short",
        "nonce-short",
        "nonce-long",
        "ciphertext-list",
        "ciphertext-bad-padding",
    ],
)
def test_a_malformed_envelope_field_is_refused(field: str, value: object, message: str) -> None:
    envelope: dict[str, object] = {**sealed()[0], field: value}

    with pytest.raises(EnvelopeError, match=message):
        open_request(PROVIDER_KEY, PROVIDER, envelope)


def test_an_oversize_ciphertext_is_refused_before_decrypting() -> None:
    envelope = {**sealed()[0], "ciphertext": b64(bytes(MAX_CIPHERTEXT + 1))}

    with pytest.raises(EnvelopeError, match="too large"):
        open_request(PROVIDER_KEY, PROVIDER, envelope)


def test_a_low_order_ephemeral_key_is_refused() -> None:
    # the all-zero point gives an all-zero shared secret: a small-subgroup key, never an honest one
    envelope = {**sealed()[0], "enc": b64(bytes(32))}

    with pytest.raises(EnvelopeError, match="not a valid X25519 public key"):
        open_request(PROVIDER_KEY, PROVIDER, envelope)


# ------------------------------------------------------------------ requests that do not decrypt


def test_a_request_sealed_to_another_providers_key_is_refused() -> None:
    envelope, _ = seal_request(public_key_bytes(X25519PrivateKey.generate()), PROVIDER, REQUEST_ID, b"x")

    with pytest.raises(EnvelopeError, match="does not decrypt"):
        open_request(PROVIDER_KEY, PROVIDER, envelope)


def test_a_request_replayed_to_another_provider_address_is_refused() -> None:
    # same X25519 key (an operator running two provider addresses), but the address is bound in
    envelope, _ = sealed()

    with pytest.raises(EnvelopeError, match="does not decrypt"):
        open_request(PROVIDER_KEY, OTHER_PROVIDER, envelope)


def test_a_request_replayed_under_another_request_id_is_refused() -> None:
    envelope = {**sealed()[0], "request_id": "0x" + "ab" * 32}

    with pytest.raises(EnvelopeError, match="does not decrypt"):
        open_request(PROVIDER_KEY, PROVIDER, envelope)


TAMPERS: dict[str, Callable[[dict[str, str]], dict[str, str]]] = {
    "ciphertext-bit": lambda e: {**e, "ciphertext": b64(flip_last_byte(e["ciphertext"]))},
    "ciphertext-truncated": lambda e: {**e, "ciphertext": b64(base64.b64decode(e["ciphertext"])[:-1])},
    "ciphertext-empty": lambda e: {**e, "ciphertext": ""},
    "nonce": lambda e: {**e, "nonce": b64(flip_last_byte(e["nonce"]))},
    "enc-swapped": lambda e: {**e, "enc": sealed()[0]["enc"]},
}


@pytest.mark.parametrize("tamper", TAMPERS.values(), ids=TAMPERS.keys())
def test_a_tampered_request_is_refused(tamper: Callable[[dict[str, str]], dict[str, str]]) -> None:
    envelope = tamper(sealed()[0])

    with pytest.raises(EnvelopeError, match="does not decrypt"):
        open_request(PROVIDER_KEY, PROVIDER, envelope)


# ------------------------------------------------------------------ answers


def answer_sides() -> tuple[ResponseSealer, ResponseSealer]:
    """(provider's sealer, payer's opener) of one request."""
    envelope, payer_side = sealed()
    _, _, provider_side = open_request(PROVIDER_KEY, PROVIDER, envelope)
    return provider_side, payer_side


def test_an_answer_chunk_out_of_order_is_refused() -> None:
    provider_side, payer_side = answer_sides()
    second = provider_side.seal(1, b"lo")

    with pytest.raises(EnvelopeError, match="out of order: expected 0, got 1"):
        payer_side.open(second, 0)


def test_a_replayed_answer_chunk_is_refused() -> None:
    provider_side, payer_side = answer_sides()
    first = provider_side.seal(0, b"Hel")
    assert payer_side.open(first, 0) == b"Hel"

    with pytest.raises(EnvelopeError, match="out of order: expected 1, got 0"):
        payer_side.open(first, 1)


def test_an_answer_chunk_relabelled_with_another_seq_is_refused() -> None:
    # the sequence number is the nonce: rewriting "seq" does not move the chunk
    provider_side, payer_side = answer_sides()
    chunk = {**provider_side.seal(1, b"lo"), "seq": 0}

    with pytest.raises(EnvelopeError, match="does not decrypt"):
        payer_side.open(chunk, 0)


def test_a_tampered_answer_chunk_is_refused() -> None:
    provider_side, payer_side = answer_sides()
    chunk = provider_side.seal(0, b"the answer")
    tampered = {**chunk, "ciphertext": b64(flip_last_byte(str(chunk["ciphertext"])))}

    with pytest.raises(EnvelopeError, match="does not decrypt"):
        payer_side.open(tampered, 0)


def test_an_answer_sealed_for_another_request_is_refused() -> None:
    provider_side, _ = answer_sides()
    _, other_payer = answer_sides()

    with pytest.raises(EnvelopeError, match="does not decrypt"):
        other_payer.open(provider_side.seal(0, b"x"), 0)


def test_the_request_ciphertext_cannot_be_reflected_as_the_answer() -> None:
    # requests and answers use different keys from the same secret
    envelope, payer_side = sealed(b"prompt")
    reflected = {"seq": 0, "ciphertext": envelope["ciphertext"]}

    with pytest.raises(EnvelopeError, match="does not decrypt"):
        payer_side.open(reflected, 0)


@pytest.mark.parametrize(
    "message",
    [{"seq": 0}, {"seq": 0, "ciphertext": 5}, {"seq": 0, "ciphertext": "%%"}],
    ids=["missing", "number", "not-base64"],
)
def test_an_answer_chunk_without_base64_ciphertext_is_refused(message: dict[str, object]) -> None:
    _, payer_side = answer_sides()

    with pytest.raises(EnvelopeError, match="ciphertext"):
        payer_side.open(message, 0)


@pytest.mark.parametrize("message", [[], "chunk", None, 0], ids=["list", "string", "null", "number"])
def test_an_answer_chunk_that_is_not_an_object_is_refused(message: object) -> None:
    # a broken or hostile provider answering `[]` must give the payer an EnvelopeError (the
    # gateway then fails over), not an AttributeError that escapes as a 500
    _, payer_side = answer_sides()

    with pytest.raises(EnvelopeError, match="JSON object"):
        payer_side.open(message, 0)


# ------------------------------------------------------------------ the raw-bytes form (stage calls)

STAGE = b"allmende/stage-test"


def test_raw_bytes_round_trip_both_ways_and_bind_the_context() -> None:
    sealed_call, payer_side = seal_bytes(public_key_bytes(PROVIDER_KEY), PROVIDER, REQUEST_ID, b"rows", STAGE)

    plaintext, provider_side = open_bytes(PROVIDER_KEY, PROVIDER, REQUEST_ID, sealed_call, STAGE)

    assert plaintext == b"rows"
    assert payer_side.open_bytes(0, provider_side.seal_bytes(0, b"answer")) == b"answer"
    # the same bytes under the request context (a sealed prompt) do not open
    with pytest.raises(EnvelopeError, match="does not decrypt"):
        open_bytes(PROVIDER_KEY, PROVIDER, REQUEST_ID, sealed_call)


def test_raw_bytes_refuse_altered_answers_bad_sizes_and_bad_keys() -> None:
    sealed_call, payer_side = seal_bytes(public_key_bytes(PROVIDER_KEY), PROVIDER, REQUEST_ID, b"rows", STAGE)
    _, provider_side = open_bytes(PROVIDER_KEY, PROVIDER, REQUEST_ID, sealed_call, STAGE)
    answer = bytearray(provider_side.seal_bytes(0, b"answer"))
    answer[-1] ^= 0x01
    with pytest.raises(EnvelopeError, match="tampered"):
        payer_side.open_bytes(0, bytes(answer))
    with pytest.raises(EnvelopeError, match="tampered"):  # replayed as another message of the answer
        payer_side.open_bytes(1, provider_side.seal_bytes(0, b"answer"))
    with pytest.raises(EnvelopeError, match="32 bytes"):
        seal_bytes(b"short", PROVIDER, REQUEST_ID, b"rows", STAGE)
    with pytest.raises(EnvelopeError, match="enc must be 32 bytes"):
        open_bytes(PROVIDER_KEY, PROVIDER, REQUEST_ID, SealedBytes(b"x", sealed_call.nonce, b""), STAGE)
    with pytest.raises(EnvelopeError, match="not a valid X25519"):
        open_bytes(PROVIDER_KEY, PROVIDER, REQUEST_ID, SealedBytes(bytes(32), sealed_call.nonce, b"c"), STAGE)
