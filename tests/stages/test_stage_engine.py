"""The stage engine on the real default model: a chain of stages computes what the whole
model computes, a stage's commitments check against a recomputation of that stage alone,
and cheating stages fail that check."""

from __future__ import annotations

import itertools

import pytest
import torch

from allmende.core.stages import InvalidStage, StageLayout, StageSpec
from allmende.engine import Engine, ResolvedModel, SamplingParams
from allmende.engine.base import EngineError
from allmende.engine.sampling import sample_token
from allmende.engine.stages import StageEngine, StageSessionLost, read_slice, stage_layout, verify_stage
from tests.stages.conftest import whole_tokens

MAX_TOKENS = 24
_sessions = itertools.count()


def through(stages: list[StageEngine], prompt: list[int], params: SamplingParams, eos: set[int]) -> dict[str, object]:
    """Generate through a chain of stage engines, keeping what each stage was sent and
    committed (what a validator audits it with)."""
    session = f"s{next(_sessions)}"
    inputs: list[list[torch.Tensor]] = [[] for _ in stages]
    proofs: list[list[tuple[int, int, bytes]]] = [[] for _ in stages]
    tokens: list[int] = []
    rows, position = torch.tensor(prompt), 0
    for index in range(params.max_tokens):
        data = rows
        for k, stage in enumerate(stages):
            inputs[k].append(data)
            out = stage.forward(session, position, data)
            proofs[k].append((position, data.shape[0], out.proof))
            data = out.hidden
        assert out.logits is not None
        position += rows.shape[0]
        token = sample_token(out.logits, params, params.seed or 0, index)
        if token in eos:
            break
        tokens.append(token)
        rows = torch.tensor([token])
    for stage in stages:
        stage.close(session)
    return {"tokens": tokens, "inputs": [torch.cat(i) for i in inputs], "proofs": proofs}


PARAMS = [
    SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
    SamplingParams(max_tokens=MAX_TOKENS, temperature=0.8, seed=7),
    SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, top_p=0.9, seed=12345),
]


@pytest.mark.parametrize("params", PARAMS, ids=["greedy", "seeded-t0.8", "seeded-top-p"])
def test_three_stages_draw_the_whole_models_tokens(
    whole: Engine, stages3: list[StageEngine], chat_ids: list[list[int]], params: SamplingParams
) -> None:
    eos = set(getattr(whole, "eos_ids", set()))
    expected = [whole_tokens(whole, prompt, params) for prompt in chat_ids]

    got = [through(stages3, prompt, params, eos)["tokens"] for prompt in chat_ids]

    assert got == expected and sum(map(len, expected)) >= MAX_TOKENS


def test_two_stages_draw_the_whole_models_tokens(
    whole: Engine, resolved: ResolvedModel, chat_ids: list[list[int]]
) -> None:
    layout = stage_layout(resolved.path, resolved.model_id, 2)
    stages = [StageEngine(resolved.path, spec) for spec in layout.stages]
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)

    got = through(stages, chat_ids[1], params, set(getattr(whole, "eos_ids", set())))["tokens"]

    assert [s.spec.range.end - s.spec.range.start for s in stages] == [15, 15]
    assert got == whole_tokens(whole, chat_ids[1], params)


def test_a_stage_loads_only_its_slice(stages3: list[StageEngine], layout3: StageLayout) -> None:
    middle = stages3[1]

    assert len(middle.layers) == 10
    assert middle.embed is None and middle.head is None and middle.norm is None
    assert stages3[0].embed is not None and stages3[0].head is None
    assert stages3[2].head is not None and stages3[2].embed is None
    assert len({s.stage_id for s in layout3.stages}) == 3


def test_weights_that_do_not_match_the_slice_hash_are_refused(resolved: ResolvedModel, layout3: StageLayout) -> None:
    """A provider given other weights (one value changed) cannot serve the registered stage."""
    spec = layout3.stages[1]
    tensors = read_slice(resolved.path, spec.range)
    tensors["model.layers.12.mlp.up_proj.weight"][0, 0] += 1e-3

    with pytest.raises(InvalidStage, match="slice hash"):
        StageEngine(resolved.path, spec, tensors=tensors)


def test_a_retried_call_recomputes_instead_of_appending(stages3: list[StageEngine], chat_ids: list[list[int]]) -> None:
    first = stages3[0]
    prompt = torch.tensor(chat_ids[0])

    once = first.forward("retry", 0, prompt)
    again = first.forward("retry", 0, prompt)  # the reply was lost: the caller sends it again
    step = first.forward("retry", len(prompt), torch.tensor([42]))
    fresh = first.forward("retry-fresh", 0, torch.tensor([*chat_ids[0], 42]))
    first.close("retry")
    first.close("retry-fresh")

    assert torch.equal(once.hidden, again.hidden)
    torch.testing.assert_close(step.hidden[0], fresh.hidden[-1], rtol=1e-4, atol=1e-4)


def test_a_session_the_stage_does_not_hold_is_reported_lost(stages3: list[StageEngine]) -> None:
    with pytest.raises(StageSessionLost):
        stages3[1].forward("never-seen", 5, torch.zeros(1, 576))
    stages3[1].forward("short", 0, torch.zeros(2, 576))
    with pytest.raises(StageSessionLost):
        stages3[1].forward("short", 3, torch.zeros(1, 576))  # a gap: position 2 was never sent
    stages3[1].close("short")


@pytest.mark.parametrize(
    ("index", "inputs"),
    [
        (0, torch.zeros(2, 576)),
        (0, torch.tensor([49152])),
        (0, torch.tensor([-1])),
        (1, torch.tensor([1, 2])),
        (1, torch.zeros(2, 575)),
        (1, torch.full((1, 576), float("nan"))),
        (1, torch.zeros(0, 576)),
    ],
    ids=["hidden-to-first", "token-past-vocab", "negative-token", "ids-to-middle", "wrong-width", "nan", "empty"],
)
def test_bad_inputs_are_refused_with_a_typed_error(
    stages3: list[StageEngine], index: int, inputs: torch.Tensor
) -> None:
    with pytest.raises(EngineError):
        stages3[index].forward("bad-input", 0, inputs)
    assert not stages3[index].holds("bad-input")  # a refused first call leaves no session behind


# --- audits of one stage alone ------------------------------------------------------------


def cheat_skip_block(resolved: ResolvedModel, spec: StageSpec) -> StageEngine:
    cheat = StageEngine(resolved.path, spec)
    cheat.layers = torch.nn.ModuleList([layer for i, layer in enumerate(cheat.layers) if i != 5])
    return cheat


def cheat_perturb(resolved: ResolvedModel, spec: StageSpec, scale: float) -> StageEngine:
    """Loads the registered slice (the hash check passes), then serves other weights."""
    cheat = StageEngine(resolved.path, spec)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in cheat.layers.parameters():
            weight.mul_(1 + scale * torch.randn(weight.shape, generator=noise))
    return cheat


@pytest.fixture(scope="module")
def honest_run(stages3: list[StageEngine], chat_ids: list[list[int]]) -> dict[str, object]:
    """One run of the honest chain (40 greedy tokens of the second prompt), whose every stage is
    audited below: the same run for each, so it is generated once."""
    return through(stages3, chat_ids[1], SamplingParams(max_tokens=40, temperature=0.0), set())


@pytest.mark.parametrize("index", [0, 1, 2], ids=["first", "middle", "last"])
def test_honest_stages_pass_their_audit(stages3: list[StageEngine], honest_run: dict[str, object], index: int) -> None:
    run = honest_run

    result = verify_stage(stages3[index], run["inputs"][index], run["proofs"][index])  # type: ignore[index]

    assert result.ok, result.reason


@pytest.mark.parametrize("index", [0, 1, 2], ids=["first", "middle", "last"])
def test_an_honest_bf16_stage_passes_an_fp32_audit(
    resolved: ResolvedModel, layout3: StageLayout, stages3: list[StageEngine], chat_ids: list[list[int]], index: int
) -> None:
    chain = list(stages3)
    chain[index] = StageEngine(resolved.path, layout3.stages[index], dtype=torch.bfloat16)
    run = through(chain, chat_ids[1], SamplingParams(max_tokens=40, temperature=0.0), set())

    result = verify_stage(stages3[index], run["inputs"][index], run["proofs"][index])  # type: ignore[index]

    assert result.ok, result.reason


@pytest.mark.parametrize("index", [0, 1, 2], ids=["first", "middle", "last"])
@pytest.mark.parametrize("cheat", ["skip-block", "perturb-2%", "perturb-5%"])
def test_a_cheating_stage_fails_its_audit(
    resolved: ResolvedModel,
    layout3: StageLayout,
    stages3: list[StageEngine],
    chat_ids: list[list[int]],
    index: int,
    cheat: str,
) -> None:
    spec = layout3.stages[index]
    cheater = (
        cheat_skip_block(resolved, spec)
        if cheat == "skip-block"
        else cheat_perturb(resolved, spec, 0.02 if cheat == "perturb-2%" else 0.05)
    )
    chain = list(stages3)
    chain[index] = cheater
    run = through(chain, chat_ids[1], SamplingParams(max_tokens=40, temperature=0.0), set())

    result = verify_stage(stages3[index], run["inputs"][index], run["proofs"][index])  # type: ignore[index]

    assert not result.ok


def test_an_audit_on_another_input_fails(stages3: list[StageEngine], chat_ids: list[list[int]]) -> None:
    """Commitments bind the input: proofs of one session do not pass on another's input."""
    run_a = through(stages3, chat_ids[0], SamplingParams(max_tokens=8, temperature=0.0), set())
    run_b = through(stages3, chat_ids[1], SamplingParams(max_tokens=8, temperature=0.0), set())
    proofs_a = run_a["proofs"][1]  # type: ignore[index]
    inputs_b = run_b["inputs"][1]  # type: ignore[index]

    result = verify_stage(stages3[1], inputs_b, [p for p in proofs_a if p[0] + p[1] <= inputs_b.shape[0]])

    assert not result.ok
