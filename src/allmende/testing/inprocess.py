"""The money contracts deployed in an in-process EVM (titanoboa).

Used by the contract tests (bench/gas.py measures on anvil instead). Everything here
runs on py-evm inside this Python process: no node, no sockets.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import boa
from eth_account import Account
from eth_utils import keccak

from allmende.chain.sources import ZERO_ADDRESS, source_path
from allmende.core import Domain

ALM = 10**18
USD = 10**6
MAX_UINT = 2**256 - 1


@dataclass(frozen=True)
class Actor:
    """An account whose private key is known (it signs vouchers and receipts)."""

    address: str
    key: bytes


def actor(label: str) -> Actor:
    """A deterministic test account named `label`."""
    account = Account.from_key(keccak(text=f"allmende-test:{label}"))
    return Actor(account.address, bytes(account.key))


@functools.cache
def deployer(name: str) -> Any:
    """The compiled contract, once per process: titanoboa's disk cache still re-parses the
    source and unpickles the compiler's output on every load (about 2 s a contract here),
    which every test module's fresh deployment would pay again."""
    return boa.load_partial(str(source_path(name)))


def load(name: str, *args: Any) -> Any:
    return deployer(name).deploy(*args)


@dataclass
class System:
    """Handles to every deployed contract plus the privileged addresses."""

    admin: str
    treasury: str
    verdicts: str
    token: Any
    stable: Any
    params: Any
    models: Any
    registry: Any
    channels: Any
    verdicts_contract: Any = None
    timelock: Any = None
    governor: Any = None
    data: Any = None
    votes: Any = None

    @property
    def voucher_domain(self) -> Domain:
        return Domain(boa.env.evm.patch.chain_id, self.channels.address)

    @property
    def receipt_domain(self) -> Domain:
        return Domain(boa.env.evm.patch.chain_id, self.registry.address)

    def fund(self, who: str, usd: int = 0, alm: int = 0) -> None:
        """Give `who` tokens and approve Channels / Registry to pull them."""
        if usd:
            self.stable.mint(who, usd)
            with boa.env.prank(who):
                self.stable.approve(self.channels.address, MAX_UINT)
        if alm:
            self.token.transfer(who, alm, sender=self.admin)
            with boa.env.prank(who):
                self.token.approve(self.registry.address, MAX_UINT)


def deploy_system(with_verdicts: bool = False, governed: bool = False) -> System:
    """Deploy ALM, dUSD, Params, Models, Registry and Channels (and, if asked, Verdicts as
    the Registry's slasher). With `governed`, also the Timelock and Governor, and hand
    every admin power to the Timelock; otherwise the deployer stays admin."""
    admin = boa.env.eoa
    treasury = boa.env.generate_address("treasury")
    verdicts = boa.env.generate_address("verdicts")
    token = load("AllmendeToken", 10**9 * ALM, admin)
    stable = load("MockStable")
    params = load("Params")
    timelock = None
    if governed:
        with_verdicts = True
        timelock = load("Timelock", params.get("timelock_delay"), [], [ZERO_ADDRESS], admin)
        treasury = timelock.address
    registry = load("Registry", token.address, params.address)
    models = load("Models", params.address, registry.address)
    channels = load("Channels", stable.address, params.address, models.address, treasury)
    channels.set_payment_token_approved(True)
    verdicts_contract = None
    if with_verdicts:
        verdicts_contract = load("Verdicts", token.address, registry.address, params.address, treasury)
        verdicts = verdicts_contract.address
    registry.set_verdicts(verdicts)
    governor = votes = None
    if timelock is not None:
        votes = load("Votes", token.address, params.address)
        governor = load("Governor", registry.address, votes.address, params.address, timelock.address)
        hand_over(timelock, governor, [params, registry, channels, token], admin)
    data = load("Data", registry.address)
    return System(
        admin,
        treasury,
        verdicts,
        token,
        stable,
        params,
        models,
        registry,
        channels,
        verdicts_contract,
        timelock,
        governor,
        data,
        votes,
    )


def hand_over(timelock: Any, governor: Any, owned: list[Any], admin: str) -> None:
    """Governor proposes and executes through the Timelock (nobody else executes, so an expired
    proposal stays dead); the Timelock owns everything; the deployer keeps nothing."""
    timelock.grantRole(timelock.PROPOSER_ROLE(), governor.address)
    timelock.grantRole(timelock.CANCELLER_ROLE(), governor.address)
    timelock.grantRole(timelock.EXECUTOR_ROLE(), governor.address)
    timelock.revokeRole(timelock.EXECUTOR_ROLE(), ZERO_ADDRESS)
    for contract in owned:
        contract.transfer_ownership(timelock.address)
    timelock.renounceRole(timelock.DEFAULT_ADMIN_ROLE(), admin)


def next_block() -> None:
    """Mine the next block (same timestamp): a commitment made before it can be revealed."""
    boa.env.evm.patch.block_number += 1


def register_model(
    models: Any,
    model_id: bytes,
    license: str = "MIT",
    royalty_bps: int = 0,
    parents: list[bytes] | None = None,
    datasets: list[bytes] | None = None,
    metadata_uri: str = "",
    *,
    owner: str | None = None,
) -> Any:
    """Commit, next block, reveal: `Models.register` as `owner` (the pranked account by
    default), the way a real author registers without being front-run."""
    who = owner or boa.env.eoa
    salt = os.urandom(32)
    models.commit(models.commitment_of(model_id, who, salt), sender=who)
    next_block()
    return models.register(
        model_id, license, royalty_bps, parents or [], datasets or [], metadata_uri, salt, sender=who
    )


def register_derived_model(
    models: Any,
    model_id: bytes,
    parent: bytes,
    license: str = "MIT",
    datasets: list[bytes] | None = None,
    metadata_uri: str = "",
    *,
    owner: str | None = None,
) -> Any:
    """Commit, next block, reveal: `Models.register_derived` as `owner` (default: pranked)."""
    who = owner or boa.env.eoa
    salt = os.urandom(32)
    models.commit(models.commitment_of(model_id, who, salt), sender=who)
    next_block()
    return models.register_derived(model_id, parent, license, datasets or [], metadata_uri, salt, sender=who)


def register_dataset(
    data: Any, dataset_id: bytes, vault: str, license: str = "MIT", policy_uri: str = "", *, owner: str | None = None
) -> Any:
    """Commit, next block, reveal: `Data.register_dataset` as `owner` (default: pranked)."""
    who = owner or boa.env.eoa
    salt = os.urandom(32)
    data.commit(data.commitment_of(dataset_id, who, salt), sender=who)
    next_block()
    return data.register_dataset(dataset_id, vault, license, policy_uri, salt, sender=who)
