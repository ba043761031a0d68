"""Every command finds the network by one rule (`allmende.cli.common.find_deployments`): the
explicit file, $ALLMENDE_DEPLOYMENTS, a node's own state dir, then the state dir's
run/deployments.json (`allmende up`), deployments.json (`allmende chain deploy`) and
provider/deployments.json (`allmende provider --network` on a provider's host). Before it,
`stake show` on a provider's host did not look where the provider had saved its network."""

from __future__ import annotations

from pathlib import Path

import pytest

from allmende.chain import DeploymentNotFound
from allmende.cli.common import find_deployments

PLACES = ["node/deployments.json", "run/deployments.json", "deployments.json", "provider/deployments.json"]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ALLMENDE_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("ALLMENDE_DEPLOYMENTS", raising=False)
    return tmp_path


def _write(state: Path, relative: str) -> Path:
    path = state / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    return path


@pytest.mark.parametrize("present", range(len(PLACES)), ids=PLACES)
def test_the_first_place_that_holds_a_file_wins(state: Path, present: int) -> None:
    # Prepare: a file in this place and in every later one
    files = [_write(state, relative) for relative in PLACES[present:]]

    # Execute / Assert: a node's own dir first, then the state dir's places in order
    assert find_deployments(None, node_dir=state / "node") == files[0]


def test_a_provider_hosts_saved_network_is_found_by_commands_with_no_node_dir(state: Path) -> None:
    saved = _write(state, "provider/deployments.json")  # what `allmende provider --network` wrote
    assert find_deployments(None) == saved


def test_explicit_file_and_environment_come_before_the_state_dir(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(state, "run/deployments.json")
    assert find_deployments(state / "mine.json") == state / "mine.json"
    monkeypatch.setenv("ALLMENDE_DEPLOYMENTS", str(state / "env.json"))
    assert find_deployments(None) == state / "env.json"


def test_a_given_state_dir_replaces_the_environments(state: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other")
    _write(state, "run/deployments.json")
    saved = _write(other, "deployments.json")
    assert find_deployments(None, state_dir=other) == saved


def test_no_file_names_every_place_looked_and_how_to_join(state: Path) -> None:
    with pytest.raises(DeploymentNotFound) as raised:
        find_deployments(None)
    message = str(raised.value)
    for relative in PLACES[1:]:
        assert str(state / relative) in message
    assert "--network URL" in message and "chain deploy" not in message
