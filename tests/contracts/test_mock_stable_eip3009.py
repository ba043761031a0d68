"""dUSD takes EIP-3009 `transferWithAuthorization` as USDC does, so an unmodified x402
client's `exact` payment settles on the devnet: the authorization moves the money once,
inside its validity window, only with the payer's own signature over exactly those terms."""

from __future__ import annotations

import os
from typing import Any

import boa
import pytest
from eth_account import Account

from tests.contracts.conftest import System, actor

PAYER = actor("eip3009-payer")
PAYEE = actor("eip3009-payee")
RELAYER = actor("eip3009-relayer")
STRANGER = actor("eip3009-stranger")


def authorization(
    system: System,
    signer: Any = PAYER,
    value: int = 1_000,
    valid_after: int = 0,
    valid_before: int | None = None,
    nonce: bytes | None = None,
    payer: str | None = None,
) -> tuple[dict[str, Any], tuple[int, bytes, bytes]]:
    """The message of a TransferWithAuthorization and its (v, r, s) signed by `signer`."""
    message = {
        "from": payer or PAYER.address,
        "to": PAYEE.address,
        "value": value,
        "validAfter": valid_after,
        "validBefore": valid_before if valid_before is not None else boa.env.evm.patch.timestamp + 300,
        "nonce": nonce or os.urandom(32),
    }
    typed = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "TransferWithAuthorization": [
                {"name": "from", "type": "address"},
                {"name": "to", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "validAfter", "type": "uint256"},
                {"name": "validBefore", "type": "uint256"},
                {"name": "nonce", "type": "bytes32"},
            ],
        },
        "primaryType": "TransferWithAuthorization",
        "domain": {
            "name": system.stable.name(),  # read on chain, as the x402 server does
            "version": system.stable.version(),
            "chainId": boa.env.evm.patch.chain_id,
            "verifyingContract": system.stable.address,
        },
        "message": message,
    }
    signed = Account.sign_typed_data(signer.key, full_message=typed)
    return message, (signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big"))


def submit(system: System, message: dict[str, Any], vrs: tuple[int, bytes, bytes]) -> None:
    with boa.env.prank(RELAYER.address):  # anyone may submit; the gateway's key does
        system.stable.transferWithAuthorization(
            message["from"],
            message["to"],
            message["value"],
            message["validAfter"],
            message["validBefore"],
            message["nonce"],
            *vrs,
        )


@pytest.fixture
def funded(system: System) -> System:
    system.stable.mint(PAYER.address, 10_000)
    return system


def test_the_eip712_domain_is_readable_on_chain(system: System) -> None:
    assert (system.stable.name(), system.stable.version()) == ("Devnet USD", "1")


def test_an_authorization_moves_the_money_once_and_marks_its_nonce(funded: System) -> None:
    # Prepare
    message, vrs = authorization(funded)
    assert not funded.stable.authorizationState(PAYER.address, message["nonce"])
    # Execute
    submit(funded, message, vrs)
    # Assert
    assert funded.stable.balanceOf(PAYER.address) == 9_000
    assert funded.stable.balanceOf(PAYEE.address) == 1_000
    assert funded.stable.balanceOf(RELAYER.address) == 0
    assert funded.stable.authorizationState(PAYER.address, message["nonce"])


def test_a_payee_cannot_replay_an_authorization(funded: System) -> None:
    message, vrs = authorization(funded)
    submit(funded, message, vrs)
    with boa.reverts("mock_stable: authorization is used"):
        submit(funded, message, vrs)
    assert funded.stable.balanceOf(PAYEE.address) == 1_000


def test_an_expired_authorization_is_refused(funded: System) -> None:
    now = boa.env.evm.patch.timestamp
    message, vrs = authorization(funded, valid_before=now)  # validBefore is exclusive
    with boa.reverts("mock_stable: authorization is expired"):
        submit(funded, message, vrs)
    message, vrs = authorization(funded, valid_before=now + 60)
    boa.env.time_travel(seconds=61)
    with boa.reverts("mock_stable: authorization is expired"):
        submit(funded, message, vrs)
    assert funded.stable.balanceOf(PAYEE.address) == 0


def test_an_authorization_before_its_window_is_refused(funded: System) -> None:
    now = boa.env.evm.patch.timestamp
    message, vrs = authorization(funded, valid_after=now)  # validAfter is exclusive
    with boa.reverts("mock_stable: authorization is not yet valid"):
        submit(funded, message, vrs)
    boa.env.time_travel(seconds=1)
    submit(funded, message, vrs)
    assert funded.stable.balanceOf(PAYEE.address) == 1_000


def test_a_stranger_cannot_sign_for_the_payer(funded: System) -> None:
    message, vrs = authorization(funded, STRANGER)
    with boa.reverts("mock_stable: invalid signature"):
        submit(funded, message, vrs)
    assert funded.stable.balanceOf(PAYER.address) == 10_000


def test_a_payee_cannot_raise_the_amount_it_was_authorized(funded: System) -> None:
    message, vrs = authorization(funded, PAYER, value=1_000)
    with boa.reverts("mock_stable: invalid signature"):
        submit(funded, {**message, "value": 2_000}, vrs)
    with boa.reverts("mock_stable: invalid signature"):
        submit(funded, {**message, "to": STRANGER.address}, vrs)
    assert funded.stable.balanceOf(PAYER.address) == 10_000


def test_an_authorization_over_the_balance_moves_nothing(funded: System) -> None:
    message, vrs = authorization(funded, PAYER, value=10_001)
    with boa.reverts():
        submit(funded, message, vrs)
    assert not funded.stable.authorizationState(PAYER.address, message["nonce"])
