"""Governance calls in people's words, without a chain: what `gov propose --call` encodes
is what `gov show` decodes, Params.set reads as a name and a value, and anything the
deployment's ABIs cannot read is shown as undecoded, never guessed."""

from __future__ import annotations

from typing import Any

import pytest

from allmende.chain.calls import decode_call, encode_call
from allmende.chain.deployment import Deployment
from allmende.core.errors import InvalidInput

PARAMS = "0x" + "11" * 20
TOKEN = "0x" + "22" * 20
STRANGER = "0x" + "33" * 20


def _fn(name: str, *inputs: tuple[str, str]) -> dict[str, Any]:
    return {"type": "function", "name": name, "inputs": [{"name": n, "type": t} for n, t in inputs], "outputs": []}


DEPLOYMENT = Deployment(
    chain_id=31337,
    rpc_url="http://127.0.0.1:8545",
    deploy_block=0,
    deployer=STRANGER,
    treasury=STRANGER,
    devnet=True,
    contracts={
        "Params": {"address": PARAMS, "abi": [_fn("set", ("name", "string"), ("new_value", "uint256"))]},
        "AllmendeToken": {
            "address": TOKEN,
            "abi": [
                _fn("transfer", ("to", "address"), ("amount", "uint256")),
                _fn("set_minters", ("minters", "address[]"), ("on", "bool")),
                _fn("tag", ("id", "bytes32")),
            ],
        },
    },
)


def test_a_params_change_reads_as_its_name_and_value() -> None:
    target, value, payload = encode_call(DEPLOYMENT, "Params set protocol_fee_bps 150")
    call = decode_call(DEPLOYMENT, target, value, payload)
    assert (call.contract, call.function) == ("Params", "set")
    assert call.short() == "Params.set(protocol_fee_bps, 150)"
    assert call.long() == "Params.set(name=protocol_fee_bps, new_value=150)"
    assert call.decoded


@pytest.mark.parametrize(
    ("spec", "short"),
    [
        (f"AllmendeToken transfer {STRANGER} 1_000", f"AllmendeToken.transfer({STRANGER.lower()}, 1000)"),
        (f"AllmendeToken transfer(address,uint256) {STRANGER} 0x10", f"AllmendeToken.transfer({STRANGER.lower()}, 16)"),
        (f'AllmendeToken set_minters ["{STRANGER}"] true', f"AllmendeToken.set_minters([{STRANGER.lower()}], True)"),
        ("AllmendeToken tag 0x" + "ab" * 32, "AllmendeToken.tag(0x" + "ab" * 32 + ")"),
    ],
    ids=["by-name", "by-signature", "array-and-bool", "bytes32"],
)
def test_what_propose_encodes_is_what_show_decodes(spec: str, short: str) -> None:
    call = decode_call(DEPLOYMENT, *encode_call(DEPLOYMENT, spec))
    assert call.short().lower() == short.lower()


def test_a_call_to_an_address_outside_the_deployment_is_shown_undecoded() -> None:
    target, value, payload = encode_call(DEPLOYMENT, f"{STRANGER} 'rename(string)' 'a new name'")
    call = decode_call(DEPLOYMENT, target, value, payload)
    assert not call.decoded and "UNDECODED 0x" in call.short() and call.contract.lower() == STRANGER


def test_garbled_calldata_for_a_known_function_is_shown_undecoded() -> None:
    _, _, payload = encode_call(DEPLOYMENT, "Params set x 1")
    call = decode_call(DEPLOYMENT, PARAMS, 0, payload[:4] + b"\x01" * 7)
    assert not call.decoded and call.short().startswith("Params: UNDECODED")


def test_a_plain_value_transfer_says_so() -> None:
    call = decode_call(DEPLOYMENT, STRANGER, 5, b"")
    assert call.decoded and call.short() == f"send 5 wei to {call.contract}"


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("Params", "TARGET FUNCTION ARG"),
        ("Params set 'unclosed", "No closing quotation"),
        ("Oracle set x 1", "neither an address"),
        ("Params nothing 1", "no function 'nothing'"),
        ("Params set x", "takes 2 arguments"),
        ("Params set x lots", "not an integer"),
        ("Params set x -1", "cannot encode"),
        (f"{STRANGER} transfer 1", "give a signature"),
        (f"{STRANGER} transfer(address 1", "must look like"),
        ("AllmendeToken transfer 0x1234 1", "not an address"),
        ("AllmendeToken set_minters nope true", "JSON list"),
        ('AllmendeToken set_minters {"a":1} true', "JSON list"),
        (f'AllmendeToken set_minters ["{STRANGER}"] maybe', "true or false"),
        ("AllmendeToken tag zz", "not hex"),
        (f"{STRANGER} f(uint8[2][]) 1", "JSON list"),
        (f"{STRANGER} f(fixed128x18) 1", "not supported"),
    ],
)
def test_a_call_that_cannot_be_encoded_is_one_clear_error(spec: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words.replace("(", r"\(").replace("[", r"\[")):
        encode_call(DEPLOYMENT, spec)
