"""A secure round charges no vault unless its aggregate is released: a grant revoked, or one that
expires, after the round's check (while the vaults train) stops the round before any vault logs
it; the pre-round check reads the time the chain will record; the CLI reports, read from the
chain, what a failed round charged where."""

from __future__ import annotations

import pytest

from allmende.cli.federated import ChainCharges
from allmende.core.vault_requests import ROUND_UNMASK
from allmende.vault.flower import FederatedConfig, Participant, RoundRefused, run_federated
from allmende.vault.service import ROUND_WINDOW
from tests.vault.conftest import SPEC, World, owner_contracts

CONFIG = FederatedConfig(rounds=1, steps=2, noise=2.0)


def grants_for(world: World, seconds: tuple[int, int] = (86_400, 86_400)) -> list[int]:
    coordinator = world.accounts["coordinator"].address
    return [world.net.grant(world.vaults[i], coordinator, "federated_round", [world.base_id], 40.0, seconds=s)
            for i, s in enumerate(seconds)]  # fmt: skip


def charged(world: World, grants: list[int]) -> list[int]:
    data = world.contracts["validator"].data
    logged = [[a for a in data.accesses(world.vaults[i].dataset_id) if a.grant_id == g] for i, g in enumerate(grants)]
    assert [data.get_grant(g).epsilon_spent for g in grants] == [sum(a.epsilon_spent for a in x) for x in logged]
    return [data.get_grant(g).epsilon_spent for g in grants]


def run(world: World, grants: list[int], on_stage: object = None) -> RoundRefused:
    participants = [Participant(world.vaults[i].url, world.vaults[i].dataset_id, g) for i, g in enumerate(grants)]
    with pytest.raises(RoundRefused) as refused:
        run_federated(participants, world.accounts["coordinator"].key, SPEC, world.base_params, world.base_id, CONFIG,
                      on_stage=on_stage)  # type: ignore[arg-type]  # fmt: skip
    return refused.value


def test_a_grant_revoked_after_every_vault_trained_charges_no_vault(world: World) -> None:
    # Prepare: both vaults agree and train; vault 1's owner revokes just before the unmask (the
    # stage at which a vault logs): before, vault 0 logged its round while vault 1 refused
    grants = grants_for(world)

    def revoke_before_logging(round_number: int, stage: str) -> None:
        if stage == ROUND_UNMASK:
            owner_contracts(world, 1).data.revoke(grants[1])

    # Execute
    refused = run(world, grants, revoke_before_logging)

    # Assert: the round stopped before any vault logged it; no vault was charged on chain
    assert "before any vault logged it" in str(refused) and "revoked" in str(refused)
    assert charged(world, grants) == [0, 0]


def test_a_grant_expiring_after_the_check_charges_no_vault(world: World) -> None:
    # Prepare: vault 1's grant outlives the round window by 100 s; the chain's clock passes its
    # expiry while the vaults train (before: the check said yes, vault 0 logged, vault 1 refused)
    grants = grants_for(world, (3 * 86_400, ROUND_WINDOW + 100))

    def time_passes(round_number: int, stage: str) -> None:
        if stage == ROUND_UNMASK:
            world.contracts["validator"].client.increase_time(ROUND_WINDOW + 200)

    # Execute
    refused = run(world, grants, time_passes)

    # Assert
    assert "before any vault logged it" in str(refused) and "expired" in str(refused)
    assert charged(world, grants) == [0, 0]


def test_a_grant_that_would_expire_before_its_round_is_logged_is_refused_at_the_check(world: World) -> None:
    # Prepare: vault 1's grant ends within the round window (an idle chain's latest block may be
    # long past: the check reads the next block's time)
    grants = grants_for(world, (86_400, ROUND_WINDOW // 2))

    # Execute
    refused = run(world, grants)

    # Assert: nobody trained, nobody was charged
    assert "round 1 did not start" in str(refused) and f"grant {grants[1]} expires in" in str(refused)
    assert charged(world, grants) == [0, 0]


def test_the_cli_reports_from_the_chain_what_a_failed_plain_round_charged_where(world: World) -> None:
    # Prepare: plain FedAvg (each update is released, and charged, as it leaves); vault 1's owner
    # revokes after the check, so vault 0's update left and was charged while vault 1 refused
    grants = grants_for(world)
    participants = [Participant(world.vaults[i].url, world.vaults[i].dataset_id, g) for i, g in enumerate(grants)]
    ledger = ChainCharges(participants, world.net.reader())

    def revoke_after_the_check(round_number: int, answers: list[dict[str, object]]) -> None:
        owner_contracts(world, 1).data.revoke(grants[1])

    # Execute
    plain = FederatedConfig(rounds=1, steps=2, noise=2.0, secagg=False)
    with pytest.raises(RoundRefused) as refused:
        run_federated(participants, world.accounts["coordinator"].key, SPEC, world.base_params, world.base_id, plain,
                      on_checked=revoke_after_the_check)  # fmt: skip
    said = ChainCharges.describe(ledger.since_last())

    # Assert: the vaults' word and the chain's agree, and name exactly the vault that was charged
    spent = charged(world, grants)
    assert spent[0] > 0 and spent[1] == 0
    job = world.contracts["validator"].data.accesses(world.vaults[0].dataset_id)[-1].job_id
    url = world.vaults[0].url
    assert said == f"vault {url} (grant {grants[0]}) was charged ε {spent[0] / 1e6:.6f} (job 0x{job.hex()})"
    assert f"vault {world.vaults[0].url} had logged the round on chain" in str(refused.value)
