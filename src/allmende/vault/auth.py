"""Who sent a vault request, and that it is meant for this vault, now, once.

Every request carries one signed `VaultRequest` (`allmende.core.vault_requests`) in the
`x-allmende-request` header: the chain and the Data contract (the EIP-712 domain), this vault's
address, the operation (each federated stage is its own), the dataset, the grant, the run and
round, a nonce, an expiry and the hash of the body. `RequestGate.admit` recovers the signer and
refuses a request for another vault or operation, an expired one (or one expiring too far
ahead), and one whose nonce it has seen from that signer (nonces are kept in the vault's
SQLite until they expire, so a restart does not reopen them). Only then does the vault look at
the grant, and only after the grant does it decode anything heavy.

Clients (`allmende data …`, `allmende federated …`, the test helpers) address a vault with
`VaultAddress.of` (its `/v1/info`) and sign with `signed_headers`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import httpx

from allmende.core.eip712 import Domain
from allmende.core.errors import InvalidInput
from allmende.core.vault_requests import HEADER, VaultRequest, from_header
from allmende.vault.errors import AccessDenied, RequestReplayed, VaultRequestRefused
from allmende.vault.store import VaultStore

LIFETIME = 120  # seconds a client's request stays valid (the vault accepts up to MAX_LIFETIME)
__all__ = ["HEADER", "Admitted", "RequestGate", "VaultAddress", "post_job", "signed_headers"]


@dataclass(frozen=True)
class VaultAddress:
    """What a client signs a request to a vault for."""

    url: str
    vault: str  # the vault's address
    domain: Domain  # chain id and the Data contract

    @classmethod
    def of(cls, url: str, timeout: float = 30.0) -> VaultAddress:
        """Read it from the vault's `/v1/info`. A vault that lies about its address only gets
        requests that no other vault runs."""
        info = httpx.get(url.rstrip("/") + "/v1/info", timeout=timeout).json()
        return cls(url.rstrip("/"), str(info["vault"]), Domain(int(info["chain_id"]), str(info["data_contract"])))


def signed_headers(
    key: bytes,
    to: VaultAddress,
    operation: str,
    body: bytes,
    dataset_id: bytes,
    grant_id: int,
    run_id: int = 0,
    round_number: int = 0,
    lifetime: int = LIFETIME,
    now: float | None = None,
) -> dict[str, str]:
    """The headers of one signed request (a fresh nonce each call), signed with eth-account's
    typed-data signer, as a wallet would (core's digest is the same, `tests/core`)."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data
    from eth_utils import keccak

    expiry = int(time.time() if now is None else now) + lifetime
    request = VaultRequest(to.vault, operation, dataset_id, grant_id, run_id, round_number, os.urandom(32), expiry,
                           keccak(body))  # fmt: skip
    signed = Account.sign_message(encode_typed_data(full_message=request.typed_data(to.domain)), key)
    return {HEADER: request.to_header(bytes(signed.signature))}


@dataclass(frozen=True)
class Admitted:
    """A request whose signature, addressee, operation, lifetime and nonce checked out."""

    signer: str
    request: VaultRequest


class RequestGate:
    """Admits signed requests for one vault (see the module docstring)."""

    def __init__(
        self,
        vault: str,
        domain: Domain,
        store: VaultStore,
        grantee_of: Callable[[int], str | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.vault = vault
        self.domain = domain
        self.store = store
        self.grantee_of = grantee_of  # a grant's grantee on chain (None: no such grant)
        self.clock = clock

    def signer_of(self, header: str | None, body: bytes) -> tuple[VaultRequest, str]:
        """The request and who signed it, or AccessDenied (no header, malformed, bad signature)."""
        if not header:
            raise AccessDenied(f"requests must be signed by the grantee ({HEADER} header)")
        try:
            request, signature = from_header(header, body)
            return request, request.signer(self.domain, signature)
        except InvalidInput as exc:
            raise AccessDenied(f"the request signature is malformed: {exc}") from None

    def admit(self, request: VaultRequest, signer: str, operations: Collection[str]) -> Admitted:
        """Admit it once, or raise VaultRequestRefused / RequestReplayed / AccessDenied. Only the
        grantee of the grant it names uses up a nonce: a third party's requests leave no state."""
        if request.vault != self.vault:
            raise VaultRequestRefused(
                f"the request is addressed to vault {request.vault}, not to this one ({self.vault})"
            )
        if request.operation not in operations:
            raise VaultRequestRefused(
                f"the request was signed for {request.operation!r}, not for this path ({', '.join(operations)})"
            )
        now = self.clock()
        try:
            request.check_lifetime(now)
        except InvalidInput as exc:
            raise VaultRequestRefused(str(exc)) from None
        if self.grantee_of is not None:
            grantee = self.grantee_of(request.grant_id)
            if grantee is None:
                raise AccessDenied(f"grant {request.grant_id} does not exist")
            if grantee.lower() != signer.lower():
                raise AccessDenied(f"grant {request.grant_id} is for {grantee}, not the signer {signer}")
        if not self.store.use_nonce(signer, request.nonce, request.expiry, now):
            raise RequestReplayed("this request was sent before (its nonce is used): sign a fresh one")
        return Admitted(signer, request)


def post_job(
    url: str, key: bytes, payload: object, timeout: float = 300.0, to: VaultAddress | None = None
) -> httpx.Response:
    """Sign and send one job (`/v1/jobs`) for the dataset and grant it names (zeros where it names
    none: the vault then refuses it for that). Raises httpx.HTTPError if the vault is unreachable."""
    from allmende.core.vault_requests import JOB

    body = json.dumps(payload).encode()
    fields = payload if isinstance(payload, dict) else {}
    try:
        dataset = bytes.fromhex(str(fields.get("dataset_id", "")).removeprefix("0x"))
    except ValueError:
        dataset = b""
    grant = fields.get("grant_id")
    headers = {
        "content-type": "application/json",
        **signed_headers(
            key,
            to or VaultAddress.of(url),
            JOB,
            body,
            dataset if len(dataset) == 32 else b"\x00" * 32,
            grant if isinstance(grant, int) and not isinstance(grant, bool) and grant >= 0 else 0,
        ),
    }
    return httpx.post(url.rstrip("/") + "/v1/jobs", content=body, headers=headers, timeout=timeout)
