"""Model names on chain: only a model's owner names it, a name belongs to one model at a
time (the first to claim it keeps it), and look-alikes cannot squat each other."""

from __future__ import annotations

import boa
import pytest
from eth_utils import keccak

from allmende.core.errors import InvalidModelName
from allmende.core.model_names import canonical_name, name_key
from allmende.testing.inprocess import register_model
from tests.contracts.conftest import System, actor

OWNER = actor("names-owner")
SQUATTER = actor("names-squatter")
REAL = keccak(text="smollm2 weights")
OTHER = keccak(text="other weights")
NAME = "smollm2-135m-instruct"


@pytest.fixture
def named(system: System) -> System:
    """REAL registered and named by OWNER; OTHER registered (unnamed) by SQUATTER."""
    with boa.env.prank(OWNER.address):
        register_model(system.models, REAL, "Apache-2.0", 0, [], [], "")
        system.models.set_name(REAL, NAME)
    with boa.env.prank(SQUATTER.address):
        register_model(system.models, OTHER, "MIT", 0, [], [], "")
    return system


def test_the_owner_names_a_model_and_the_name_resolves_to_it(named: System) -> None:
    with boa.env.prank(OWNER.address):
        named.models.set_name(REAL, "smollm2")
    logs = named.models.get_logs()

    assert [(type(e).__name__, e.model_id, e.owner, e.name) for e in logs] == [
        ("ModelNamed", REAL, OWNER.address, "smollm2")
    ]
    assert named.models.name_of(REAL) == "smollm2"
    assert named.models.model_by_name("smollm2") == REAL
    assert named.models.model_by_name("no-such-model") == b"\x00" * 32


def test_a_stranger_renames_someone_elses_model(named: System) -> None:
    with boa.env.prank(SQUATTER.address), boa.reverts("models: not owner"):
        named.models.set_name(REAL, "squatted")
    with boa.env.prank(SQUATTER.address), boa.reverts("models: not owner"):
        named.models.set_name(REAL, "")  # nor release it
    with boa.env.prank(SQUATTER.address), boa.reverts("models: unknown model"):
        named.models.set_name(keccak(text="unregistered"), "mine")
    assert named.models.name_of(REAL) == NAME


@pytest.mark.parametrize(
    "squat",
    [
        NAME,  # the same name
        "smo11m2-135m-instruct",  # digit one for l
        "smollm2-l35m-instruct",  # l for digit one
        "smollm2-135m-lnstruct",  # l for i
        "sm0llm2-135m-instruct",  # zero for o
        "smollm2_135m.instruct",  # other separators
        "smollm2:135m/instruct",
        "smollm2-135rn-instruct",  # rn for m (Unicode confusables: m -> rn)
        "srnollrn2-135rn-instruct",
    ],
)
def test_a_second_model_squats_a_taken_name(named: System, squat: str) -> None:
    with boa.env.prank(SQUATTER.address), boa.reverts("models: name taken"):
        named.models.set_name(OTHER, squat)
    assert named.models.name_of(OTHER) == ""
    assert named.models.model_by_name(NAME) == REAL
    assert named.models.model_by_name(squat) == (REAL if squat == NAME else b"\x00" * 32)


@pytest.mark.parametrize(
    ("taken", "squat"),
    [
        ("smollm2-135m-instruct", "smollm2-135rn-instruct"),
        ("wizardlm-2-7b", "vvizardlm-2-7b"),
        ("dolly-v2", "clolly-v2"),
    ],
    ids=["rn-for-m", "vv-for-w", "cl-for-d"],
)
def test_squatter_names_a_look_alike_with_letters_that_read_as_one(system: System, taken: str, squat: str) -> None:
    """Before: `smollm2-135rn-instruct` and `vvizardlm-2-7b` were accepted next to the real names."""
    with boa.env.prank(OWNER.address):
        register_model(system.models, REAL, "Apache-2.0", 0, [], [], "")
        system.models.set_name(REAL, taken)
    with boa.env.prank(SQUATTER.address):
        register_model(system.models, OTHER, "MIT", 0, [], [], "")
        with boa.reverts("models: name taken"):
            system.models.set_name(OTHER, squat)
    assert system.models.name_key(squat) == name_key(squat) == name_key(taken)


@pytest.mark.parametrize(
    "trick",
    [
        "SmolLM2-135M-Instruct",  # upper case: the canonical name is lower case
        "ѕmollm2-135m-instruct",  # Cyrillic dze for s
        "smollm2-135m-instruct\u200b",  # zero-width space
        "ｓmollm2",  # full-width s
        "smollm2 135m",  # space
        "-smollm2",  # leading separator
        "smollm2-",  # trailing separator
        "smollm2--135m",  # doubled separator
        "x" * 65,  # overlong
    ],
)
def test_a_look_alike_or_malformed_name_is_refused(named: System, trick: str) -> None:
    if len(trick.encode()) > 64:
        with boa.env.prank(SQUATTER.address), pytest.raises(Exception, match="64"):
            named.models.set_name(OTHER, trick)  # does not even fit the String[64] argument
    else:
        with boa.env.prank(SQUATTER.address), boa.reverts("models: bad name"):
            named.models.set_name(OTHER, trick)
    with pytest.raises(InvalidModelName):
        name_key(trick)  # the Python side refuses the same names
    assert named.models.name_of(OTHER) == ""


def test_a_name_of_64_bytes_is_accepted(named: System) -> None:
    longest = "a" * 63 + "2"
    with boa.env.prank(SQUATTER.address):
        named.models.set_name(OTHER, longest)
    assert named.models.model_by_name(longest) == OTHER


def test_only_a_rename_or_release_by_the_owner_frees_a_name(named: System) -> None:
    with boa.env.prank(OWNER.address):
        named.models.set_name(REAL, "smollm2")  # rename: the old name becomes free
    assert named.models.model_by_name(NAME) == b"\x00" * 32
    with boa.env.prank(SQUATTER.address):
        named.models.set_name(OTHER, NAME)
    assert named.models.model_by_name(NAME) == OTHER
    with boa.env.prank(SQUATTER.address), boa.reverts("models: name taken"):
        named.models.set_name(OTHER, "smo1lm2")  # look-alike of REAL's new name
    with boa.env.prank(OWNER.address):
        named.models.set_name(REAL, "")  # release
    assert named.models.name_of(REAL) == ""
    with boa.env.prank(SQUATTER.address):
        named.models.set_name(OTHER, "smollm2")
    assert named.models.model_by_name("smollm2") == OTHER
    assert named.models.model_by_name(NAME) == b"\x00" * 32  # its own old name is free again


def test_the_name_stays_with_the_model_when_ownership_moves(named: System) -> None:
    heir = actor("names-heir")
    with boa.env.prank(OWNER.address):
        named.models.transfer(REAL, heir.address)
    with boa.env.prank(OWNER.address), boa.reverts("models: not owner"):
        named.models.set_name(REAL, "taken-back")
    assert named.models.name_of(REAL) == NAME
    with boa.env.prank(heir.address):
        named.models.set_name(REAL, "smollm2-heir")
    assert named.models.model_by_name("smollm2-heir") == REAL


@pytest.mark.parametrize(
    "name",
    ["allmende:tiny", "minilm", NAME, "a", "7", "org/model-v1.2_q4", "l1ama-3.1-8b", "z" * 64],
)
def test_python_and_the_contract_agree_on_the_uniqueness_key(named: System, name: str) -> None:
    assert canonical_name(name) == name
    assert named.models.name_key(name) == name_key(name)
