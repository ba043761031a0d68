"""Models (provenance and royalties), Params (governed values) and the two tokens."""

from __future__ import annotations

import boa
import pytest
from eth_utils import keccak

from allmende.testing.inprocess import register_derived_model, register_model
from tests.contracts.conftest import ALM, System, actor

OWNER = actor("model-owner")
STRANGER = actor("stranger")
BASE = keccak(text="base-model")
CHILD = keccak(text="child-model")
DATA = keccak(text="dataset")


@pytest.fixture
def base(system: System) -> bytes:
    with boa.env.prank(OWNER.address):
        register_model(system.models, BASE, "Apache-2.0", 500, [], [DATA], "ipfs://base")
    return BASE


# -------------------------------------------------------------------- models


def test_register_records_lineage(system: System, base: bytes) -> None:
    with boa.env.prank(STRANGER.address):
        register_model(system.models, CHILD, "CC-BY-4.0", 300, [base], [DATA], "ipfs://child")

    child = system.models.get(CHILD)
    assert (child.owner, child.license, child.royalty_bps) == (STRANGER.address, "CC-BY-4.0", 300)
    assert list(child.parents) == [base] and list(child.datasets) == [DATA]
    assert system.models.model_count() == 2
    assert system.models.model_at(1) == CHILD
    assert system.models.royalty_info(CHILD) == (STRANGER.address, 300)


def test_transfer_moves_ownership_and_royalties(system: System, base: bytes) -> None:
    with boa.env.prank(OWNER.address):
        system.models.transfer(base, STRANGER.address)
    assert system.models.owner_of(base) == STRANGER.address
    assert system.models.royalty_info(base) == (STRANGER.address, 500)


def test_derived_model_pays_its_royalty_to_the_lineage_root(system: System, base: bytes) -> None:
    grandchild = keccak(text="grandchild-model")
    with boa.env.prank(STRANGER.address):
        register_derived_model(system.models, CHILD, base, "Apache-2.0", [DATA], "ipfs://child")
    child = system.models.get(CHILD)
    assert (child.owner, child.royalty_bps, list(child.parents)) == (STRANGER.address, 500, [base])
    assert system.models.royalty_root(CHILD) == base
    assert system.models.royalty_info(CHILD) == (OWNER.address, 500)
    # a model derived from a derived model still pays the root; transfers follow the owners
    with boa.env.prank(actor("trainer-2").address):
        register_derived_model(system.models, grandchild, CHILD, "Apache-2.0", [], "")
    assert system.models.royalty_root(grandchild) == base
    with boa.env.prank(OWNER.address):
        system.models.transfer(base, actor("heir").address)
    with boa.env.prank(STRANGER.address):
        system.models.transfer(CHILD, actor("buyer").address)
    assert system.models.royalty_info(CHILD) == (actor("heir").address, 500)
    assert system.models.royalty_info(grandchild) == (actor("heir").address, 500)
    assert system.models.owner_of(CHILD) == actor("buyer").address
    with boa.reverts("models: unknown parent"):
        register_derived_model(system.models, keccak(text="x"), keccak(text="nope"), "MIT", [], "")
    with boa.reverts("models: already registered"):
        register_derived_model(system.models, CHILD, base, "MIT", [], "")


def test_unknown_model_has_no_royalty(system: System) -> None:
    assert system.models.royalty_info(CHILD) == ("0x" + "00" * 20, 0)
    assert system.models.owner_of(CHILD) == "0x" + "00" * 20


def test_models_revert_paths(system: System, base: bytes) -> None:
    with boa.reverts("models: empty id"):
        register_model(system.models, b"\x00" * 32, "MIT", 0, [], [], "")
    with boa.reverts("models: already registered"):
        register_model(system.models, base, "MIT", 0, [], [], "")
    with boa.reverts("models: royalty above cap"):
        register_model(system.models, CHILD, "MIT", 3001, [], [], "")
    with boa.reverts("models: own parent"):
        register_model(system.models, CHILD, "MIT", 0, [CHILD], [], "")
    with boa.reverts("models: unknown parent"):
        register_model(system.models, CHILD, "MIT", 0, [keccak(text="nope")], [], "")
    with boa.reverts("models: unknown model"):
        system.models.transfer(CHILD, STRANGER.address)
    with boa.env.prank(STRANGER.address), boa.reverts("models: not owner"):
        system.models.transfer(base, STRANGER.address)
    with boa.env.prank(OWNER.address), boa.reverts("models: zero owner"):
        system.models.transfer(base, "0x" + "00" * 20)
    with boa.reverts("models: unknown model"):
        system.models.get(CHILD)


# -------------------------------------------------------------------- params


def test_params_defaults(system: System) -> None:
    assert system.params.get("protocol_fee_bps") == 100
    assert system.params.get("royalty_cap_bps") == 3000
    assert system.params.get("min_provider_stake") == 1_000 * ALM
    assert system.params.count() == 19
    assert system.params.value(keccak(text="slash_bps")) == system.params.get("slash_bps")


def test_params_set_emits_event(system: System) -> None:
    system.params.set("protocol_fee_bps", 150)

    logs = system.params.get_logs()
    assert system.params.get("protocol_fee_bps") == 150
    assert [(type(e).__name__, e.old_value, e.new_value) for e in logs] == [("ParamSet", 100, 150)]


LOWER_BOUNDS = {
    "slash_bps": 1,
    "fraud_quorum_bps": 1_000,
    "min_provider_stake": ALM,
    "min_validator_stake": ALM,
    "fraud_bond": ALM,
    "unbonding_period": 86_400,
    "channel_close_delay": 3_600,
    "fraud_voting_period": 60,
    "voting_delay": 1,
    "voting_period": 3_600,
    "quorum_bps": 100,
    "proposal_threshold": ALM,
    "timelock_delay": 3_600,
    "proposal_grace_period": 86_400,
}


@pytest.mark.parametrize(("name", "lowest"), LOWER_BOUNDS.items(), ids=list(LOWER_BOUNDS))
def test_a_parameter_that_would_switch_a_protection_off_has_a_lower_bound(system: System, name, lowest) -> None:
    assert system.params.lower_bound(keccak(text=name)) == lowest
    with boa.reverts("params: below bound"):
        system.params.set(name, lowest - 1)
    with boa.reverts("params: below bound"):
        system.params.check(name, lowest - 1)
    system.params.set(name, lowest)  # the bound itself is allowed
    assert system.params.get(name) == lowest


def test_fees_and_new_names_have_no_lower_bound(system: System) -> None:
    system.params.set("protocol_fee_bps", 0)
    system.params.set("max_context", 0)
    assert system.params.get("protocol_fee_bps") == 0 == system.params.lower_bound(keccak(text="max_context"))


def test_params_new_name_is_enumerable(system: System) -> None:
    system.params.set("max_context", 4096)
    assert system.params.get("max_context") == 4096
    assert system.params.names(system.params.count() - 1) == "max_context"


def test_params_revert_paths(system: System) -> None:
    with boa.env.prank(STRANGER.address), boa.reverts("ownable: caller is not the owner"):
        system.params.set("protocol_fee_bps", 1)
    with boa.reverts("params: above bound"):
        system.params.set("protocol_fee_bps", 10_001)
    with boa.reverts("params: empty name"):
        system.params.set("", 1)
    with boa.reverts("params: below bound"):
        system.params.set("fraud_voting_period", 0)
    with boa.reverts("params: unknown name"):
        system.params.get("nope")


# -------------------------------------------------------------------- tokens


def test_alm_metadata_and_mint_is_restricted(system: System) -> None:
    assert (system.token.symbol(), system.token.decimals()) == ("ALM", 18)
    assert system.token.totalSupply() == 10**9 * ALM
    with boa.env.prank(STRANGER.address), boa.reverts("erc20: access is denied"):
        system.token.mint(STRANGER.address, 1)


def test_stable_is_six_decimals_with_open_mint(system: System) -> None:
    with boa.env.prank(STRANGER.address):
        system.stable.mint(STRANGER.address, 7)
    assert (system.stable.symbol(), system.stable.decimals()) == ("dUSD", 6)
    assert system.stable.balanceOf(STRANGER.address) == 7
