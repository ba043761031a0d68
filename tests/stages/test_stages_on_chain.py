"""Stages registered on chain as derived models of their base, offered in the Registry,
and read back by a router (allmende.chain.stages), on the session's anvil."""

from __future__ import annotations

import json
import os

import pytest
from eth_account import Account

from allmende.chain import ChainClient, Contracts, Deployment
from allmende.chain.anvil import Anvil, DevnetAccount
from allmende.chain.bindings import ROLE_PROVIDER
from allmende.chain.stages import covering_layouts, register_layout, registered_stages, stage_providers
from allmende.core.errors import UnknownModel
from allmende.core.stages import StageLayout, StageSpec, split_blocks
from tests.conftest import contracts_for


def fresh(anvil: Anvil, deployment: Deployment, admin: Contracts, alm: int = 0) -> Contracts:
    """A new account with gas (and `alm` ALM), so no other test's registrations collide."""
    key = Account.create()
    admin.client.w3.provider.make_request("anvil_setBalance", [key.address, hex(10**20)])  # type: ignore[arg-type]
    if alm:
        admin.token.transfer(key.address, alm)
    return Contracts(ChainClient(anvil.url, bytes(key.key)), deployment)


def layout_of(base: bytes, n_stages: int) -> StageLayout:
    return StageLayout(tuple(StageSpec(base, r, os.urandom(32)) for r in split_blocks(30, n_stages)))


@pytest.fixture
def admin(anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]) -> Contracts:
    return contracts_for(anvil, deployment, accounts[0])


def test_a_registered_layout_reads_back_and_pays_the_base_royalty(
    anvil: Anvil, deployment: Deployment, admin: Contracts
) -> None:
    owner = fresh(anvil, deployment, admin)
    base = os.urandom(32)
    owner.models.register(base, "Apache-2.0", 250)
    three, two = layout_of(base, 3), layout_of(base, 2)

    registered = register_layout(owner, three, "Apache-2.0") + register_layout(owner, two, "Apache-2.0")
    again = register_layout(owner, three, "Apache-2.0")

    assert len(registered) == 5 and again == []
    assert set(registered_stages(owner, base)) == set(three.stages + two.stages)
    layouts = covering_layouts(registered_stages(owner, base))
    assert two in layouts and three in layouts and layouts[0] == two
    assert all(owner.models.royalty_info(s.stage_id) == (owner.client.address, 250) for s in three.stages)


def test_stages_someone_else_registered_are_not_the_models_layout(
    anvil: Anvil, deployment: Deployment, admin: Contracts
) -> None:
    """Anyone may register a derived model, so a squatter can register a descriptor naming
    a slice hash no honest provider serves; a router reads only the base owner's stages."""
    owner, squatter = fresh(anvil, deployment, admin), fresh(anvil, deployment, admin)
    base = os.urandom(32)
    owner.models.register(base, "Apache-2.0", 0)
    honest, bogus = layout_of(base, 3), layout_of(base, 3)
    register_layout(owner, honest, "Apache-2.0")
    register_layout(squatter, bogus, "Apache-2.0")

    assert set(registered_stages(owner, base)) == set(honest.stages)
    assert set(registered_stages(owner, base, only_owner=False)) == set(honest.stages + bogus.stages)


def test_a_registration_whose_uri_is_not_its_descriptor_is_ignored(
    anvil: Anvil, deployment: Deployment, admin: Contracts
) -> None:
    owner = fresh(anvil, deployment, admin)
    base = os.urandom(32)
    owner.models.register(base, "Apache-2.0", 0)
    real, claimed = layout_of(base, 3).stages[0], layout_of(base, 3).stages[0]
    owner.models.register_derived(real.stage_id, base, "Apache-2.0", [], claimed.descriptor)  # id ≠ keccak(uri)

    assert registered_stages(owner, base) == []


def test_a_layout_of_an_unregistered_base_is_refused(anvil: Anvil, deployment: Deployment, admin: Contracts) -> None:
    with pytest.raises(UnknownModel):
        register_layout(fresh(anvil, deployment, admin), layout_of(os.urandom(32), 2), "MIT")


def test_providers_offer_stages_in_the_registry(anvil: Anvil, deployment: Deployment, admin: Contracts) -> None:
    owner = fresh(anvil, deployment, admin)
    base = os.urandom(32)
    owner.models.register(base, "Apache-2.0", 0)
    layout = layout_of(base, 2)
    register_layout(owner, layout, "Apache-2.0")
    stake = admin.params.get("min_provider_stake")
    provider = fresh(anvil, deployment, admin, alm=stake)
    provider.token.approve(provider.registry.address)
    provider.registry.register(ROLE_PROVIDER, "http://stage-host:8600", b"\x07" * 32, stake)
    provider.registry.set_offer(layout.stages[1].stage_id, 3, 5)

    offers = stage_providers(provider, layout)

    assert [(o.stage, o.provider, o.endpoint, o.price_in, o.price_out) for o in offers] == [
        (layout.stages[1], provider.client.address, "http://stage-host:8600", 3, 5)
    ]


def test_the_cli_prints_the_layout_the_owner_registers(layout3: StageLayout) -> None:
    from typer.testing import CliRunner

    from allmende.cli import app

    result = CliRunner().invoke(app, ["stage", "layout", "--stages", "3", "--json"])

    printed = json.loads(result.output)
    assert result.exit_code == 0
    assert [s["descriptor"] for s in printed["stages"]] == [s.descriptor for s in layout3.stages]
    assert [s["stage"] for s in printed["stages"]] == [s.stage_id_hex for s in layout3.stages]
