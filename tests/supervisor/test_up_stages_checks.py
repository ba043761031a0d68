"""`allmende up --stages` and `allmende provider --stage` refuse layouts they cannot serve
before anything starts: fewer providers than stages, more than one chat model, a stage
index outside the split."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from allmende.chain.anvil import free_port
from allmende.cli import app
from allmende.core.errors import InvalidInput
from allmende.provider.node import StageServing


def _up(tmp_path: Path, *args: str) -> tuple[int, str]:
    ports = ["--port", str(free_port()), "--rpc-port", str(free_port()), "--provider-port", "0"]
    result = CliRunner().invoke(app, ["up", "--state-dir", str(tmp_path), *ports, *args])
    return result.exit_code, result.output


def test_fewer_providers_than_stages_are_refused_before_anything_starts(tmp_path: Path) -> None:
    code, output = _up(tmp_path, "--providers", "2", "--stages", "3")
    assert code == 2, output
    assert "--stages 3 needs at least as many providers" in output
    assert not (tmp_path / "run").exists()


def test_stages_of_two_chat_models_are_refused(tmp_path: Path) -> None:
    code, output = _up(
        tmp_path, "--providers", "3", "--stages", "3", "--model", "allmende:tiny", "--model", "smollm2-135m-instruct"
    )
    assert code == 2, output
    assert "--stages splits one chat model" in output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["3/3", "-1/3", "1", "a/b", "1/3/4", "2/0"])
def test_a_stage_outside_its_split_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="--stage"):
        StageServing.parse(text)


def test_stage_prices_are_not_negative() -> None:
    with pytest.raises(InvalidInput, match="not negative"):
        StageServing.parse("1/3", per_position=-1)
    assert StageServing.parse("1/3", 2, 5) == StageServing(1, 3, 2, 5)
