"""`allmende up --stages` and `allmende provider --stage` refuse layouts they cannot serve
before anything starts: fewer providers than stages, more than one chat model, a stage
index outside the split, a `--provider-stages` list that does not give every provider one stage
of the split and every stage a provider."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from allmende.chain.anvil import free_port
from allmende.cli import app
from allmende.core.errors import InvalidInput
from allmende.node.devnet import DevnetPlan
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


@pytest.mark.parametrize(
    ("providers", "assigned", "refusal"),
    [
        ("4", "0,1,1", "names 3 stages for 4 providers"),
        ("4", "0,1,1,2,2", "names 5 stages for 4 providers"),
        ("4", "0,1,3,2", "stage 3 is not one of 0..2"),
        ("4", "0,1,-1,2", "stage -1 is not one of 0..2"),
        ("4", "0,1,1,0", "no provider serves stage 2"),
        ("4", "0,one,1,2", "give stage indexes separated by commas"),
    ],
)
def test_provider_stages_that_leave_a_stage_unserved_or_name_no_stage_are_refused(
    tmp_path: Path, providers: str, assigned: str, refusal: str
) -> None:
    code, output = _up(tmp_path, "--providers", providers, "--stages", "3", "--provider-stages", assigned)
    assert code == 2, output
    assert refusal in output
    assert not (tmp_path / "run").exists()


def test_provider_stages_need_stages(tmp_path: Path) -> None:
    code, output = _up(tmp_path, "--providers", "2", "--provider-stages", "0,0")
    assert code == 2, output
    assert "give --stages as well" in output


def test_each_provider_serves_the_stage_named_for_it_else_its_index_mod_stages(tmp_path: Path) -> None:
    named = DevnetPlan(tmp_path, providers=4, models=["allmende:tiny"], stages=3, provider_stages=[0, 1, 1, 2])
    named.check_counts()
    assert [named.stage_of(i) for i in range(4)] == [0, 1, 1, 2]
    plain = DevnetPlan(tmp_path, providers=5, stages=3)
    assert [plain.stage_of(i) for i in range(5)] == [0, 1, 2, 0, 1]


@pytest.mark.parametrize("text", ["3/3", "-1/3", "1", "a/b", "1/3/4", "2/0"])
def test_a_stage_outside_its_split_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="--stage"):
        StageServing.parse(text)


def test_stage_prices_are_not_negative() -> None:
    with pytest.raises(InvalidInput, match="not negative"):
        StageServing.parse("1/3", per_position=-1)
    assert StageServing.parse("1/3", 2, 5) == StageServing(1, 3, 2, 5)
