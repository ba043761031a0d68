"""The verifiable draw: Gumbel-max over the nucleus with noise that is a public function of
(seed, position), and the checker's rules for tokens and for where a completion ends."""

from __future__ import annotations

import collections
import dataclasses

import pytest
import torch

from allmende.api.protocol import draw_seed, sampling_params
from allmende.engine.base import EngineError, SamplingParams
from allmende.engine.proofs import commit
from allmende.engine.sampling import draw_scores, gumbel_noise, nucleus, sample_token, shaped, shaped_rows
from allmende.validator.checker import stop_completed, text_of, token_check, verify_completion

SAMPLED = SamplingParams(max_tokens=8, temperature=0.7, top_p=0.9, seed=11)
EOS = 0


def test_the_noise_is_a_function_of_seed_and_position_only() -> None:
    assert torch.equal(gumbel_noise(5, 3, 1000), gumbel_noise(5, 3, 1000))
    assert not torch.equal(gumbel_noise(5, 3, 1000), gumbel_noise(5, 4, 1000))
    assert not torch.equal(gumbel_noise(5, 3, 1000), gumbel_noise(6, 3, 1000))
    assert torch.isfinite(gumbel_noise(0, 0, 50_000)).all()


def test_the_draw_samples_the_tempered_nucleus_distribution() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=0)
    counts = collections.Counter(sample_token(logits, params, seed, 0) for seed in range(4000))
    probs = torch.softmax(logits / 0.8, dim=-1)
    kept = nucleus(probs, 0.9)
    expected = torch.where(kept, probs, torch.zeros_like(probs)) / probs[kept].sum()
    for token in range(5):
        assert abs(counts[token] / 4000 - float(expected[token])) < 0.03, (token, counts)
    assert counts[4] == 0  # outside the nucleus


def test_the_nucleus_always_holds_the_most_likely_token() -> None:
    probs = torch.tensor([[0.1, 0.6, 0.3]])
    assert nucleus(probs, 0.0).tolist() == [[False, True, False]]
    assert nucleus(probs, 0.65).tolist() == [[False, True, True]]
    assert nucleus(probs, 1.0).all()


def test_an_unseeded_request_draws_with_a_seed_bound_to_its_request_id() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 1.0}
    rid = bytes(range(32))
    assert sampling_params(body).seed is None
    assert sampling_params(body, rid).seed == draw_seed(rid) == sampling_params(body, rid).seed
    assert sampling_params({**body, "seed": 3}, rid).seed == 3
    assert draw_seed(rid) != draw_seed(bytes(32))


def rows(n: int, vocab: int = 50) -> torch.Tensor:
    return torch.randn(n, vocab, generator=torch.Generator().manual_seed(n)) * 4


def honest_output(logits: torch.Tensor, params: SamplingParams) -> list[int]:
    return [sample_token(logits[i], params, params.seed or 0, i) for i in range(logits.shape[0])]


def test_the_draw_is_checked_not_only_the_nucleus() -> None:
    logits = rows(64)
    honest = honest_output(logits, SAMPLED)
    assert token_check(logits, honest, SAMPLED) == 0
    other_seed = honest_output(logits, SamplingParams(temperature=0.7, top_p=0.9, seed=12))
    assert token_check(logits, other_seed, SAMPLED) > 10  # legitimate tokens, but not this request's draw
    assert token_check(logits + 1e-4 * torch.randn_like(logits), honest, SAMPLED) == 0  # honest noise


def verdict(logits: torch.Tensor, output: list[int], params: SamplingParams, stop: bool = False) -> bool:
    hidden = torch.zeros(logits.shape[0], 8)
    n = len(output)
    proof = commit(hidden[:n]) if n else b""
    return verify_completion((hidden, logits), 1, output, proof, params, {EOS}, stop_completed=stop).ok


def test_where_a_completion_may_end() -> None:
    params = SamplingParams(max_tokens=6, temperature=0.0)
    logits = rows(8)
    logits[:, EOS] = -100.0
    output = [int(t) for t in logits[:6].argmax(dim=-1)]
    assert verdict(logits[:7], output, params)  # max_tokens reached: length
    assert not verdict(logits[:4], output[:3], params)  # cut short where EOS is not drawn
    assert verdict(logits[:4], output[:3], params, stop=True)  # ... unless a stop string ended it
    assert not verdict(logits[:1], [], params)  # an empty completion needs EOS as the first draw
    logits[3, EOS] = 100.0
    assert verdict(logits[:4], output[:3], params)  # EOS drawn next: a legitimate stop
    assert not verdict(logits[:8], [*output, output[0]], params)  # more than max_tokens


def test_a_sampled_completion_without_a_seed_fails() -> None:
    logits = rows(4)
    params = SamplingParams(max_tokens=3, temperature=1.0)
    assert not verdict(logits, honest_output(logits[:3], params), params)


@pytest.mark.parametrize(
    ("full", "before", "stop", "completed", "text"),
    [
        ("Paris. Next", "Paris", (".",), True, "Paris"),
        ("Paris. Next", "Paris. Ne", (".",), False, "Paris"),
        ("no stop here", "no stop her", ("\n",), False, "no stop here"),
        ("a\n\nb", "a\n", ("\n\n", "b"), True, "a"),
    ],
)
def test_stop_strings(full: str, before: str, stop: tuple[str, ...], completed: bool, text: str) -> None:
    assert stop_completed(full, before, stop) is completed
    assert text_of(full, stop) == text


def test_scores_are_minus_infinity_outside_the_nucleus() -> None:
    logits = torch.tensor([5.0, 0.0, -5.0])
    scores = draw_scores(logits, SamplingParams(temperature=1.0, top_p=0.5, seed=1), 1, 0)
    assert torch.isinf(scores[1:]).all() and torch.isfinite(scores[0])


# --- the sampling parameters inside the draw: penalties, logit_bias, top_k, min_p ----------

PARAMETERS = {  # each changes the draw of `rows(64)`; greedy ones too where it can
    "presence_penalty": SamplingParams(max_tokens=64, temperature=0.7, seed=5, presence_penalty=1.5),
    "frequency_penalty": SamplingParams(max_tokens=64, temperature=0.7, seed=5, frequency_penalty=1.0),
    "negative frequency_penalty": SamplingParams(max_tokens=64, temperature=0.9, seed=5, frequency_penalty=-1.0),
    "logit_bias": SamplingParams(
        max_tokens=64, temperature=0.7, seed=5, logit_bias=tuple((t, -100.0) for t in range(0, 50, 2))
    ),
    "top_k": SamplingParams(max_tokens=64, temperature=1.5, seed=5, top_k=2),
    "min_p": SamplingParams(max_tokens=64, temperature=1.5, seed=5, min_p=0.3),
    "greedy presence_penalty": SamplingParams(max_tokens=64, temperature=0.0, presence_penalty=2.0),
    "greedy logit_bias": SamplingParams(max_tokens=64, temperature=0.0, logit_bias=((7, 6.0), (11, -100.0))),
}
DEFAULTS = SamplingParams()


def drawn_sequence(logits: torch.Tensor, params: SamplingParams) -> list[int]:
    """What the engine's Sequence draws, row by row, each with the tokens drawn before it."""
    out: list[int] = []
    for i in range(logits.shape[0]):
        out.append(sample_token(logits[i], params, params.seed or 0, i, out))
    return out


def without(params: SamplingParams, name: str) -> SamplingParams:
    field = name.removeprefix("greedy ").removeprefix("negative ")
    return dataclasses.replace(params, **{field: getattr(DEFAULTS, field)})


def test_penalties_and_bias_shape_the_logits_by_openais_formula() -> None:
    row = torch.zeros(6)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, logit_bias=((1, 3.0), (5, -100.0)))
    # token 2 drawn 3 times, token 1 once: z = logit + bias − 0.25·count − 0.5·[count > 0]
    assert shaped(row, params, [2, 1, 2, 2]).tolist() == [0.0, 3.0 - 0.75, -1.25, 0.0, 0.0, -100.0]
    assert torch.equal(shaped(row, SamplingParams(), [2, 2]), row)  # nothing asked: the raw row


def test_the_checker_shapes_its_rows_exactly_as_the_engine_shaped_each() -> None:
    logits = rows(40)
    params = SamplingParams(presence_penalty=0.7, frequency_penalty=-0.3, logit_bias=((3, 2.0), (9, -50.0)))
    output = drawn_sequence(logits, dataclasses.replace(params, temperature=0.9, seed=3))
    one_by_one = torch.stack([shaped(logits[i], params, output[:i]) for i in range(40)])
    assert torch.equal(shaped_rows(logits, params, output), one_by_one)  # bit for bit
    assert torch.equal(shaped_rows(logits[5:], params, output, 5), one_by_one[5:])


def test_a_bias_on_a_token_outside_the_vocabulary_is_refused_by_name() -> None:
    with pytest.raises(EngineError) as info:
        shaped(torch.zeros(6), SamplingParams(logit_bias=((6, 1.0),)), [])
    assert info.value.param == "logit_bias"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("presence_penalty", 2.5),
        ("frequency_penalty", -2.1),
        ("top_k", -1),
        ("min_p", 1.5),
        ("logit_bias", ((1, 101.0),)),
        ("logit_bias", ((1, 1.0), (1, 2.0))),
    ],
)
def test_sampling_params_refuse_values_out_of_range_by_name(field: str, value: object) -> None:
    with pytest.raises(EngineError) as info:
        SamplingParams(**{field: value})  # type: ignore[arg-type]
    assert info.value.param == field


def test_top_k_and_min_p_keep_exactly_their_tokens() -> None:
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    probs = torch.softmax(logits, dim=-1)
    top2 = collections.Counter(sample_token(logits, SamplingParams(top_k=2, seed=0), s, 0) for s in range(2000))
    assert set(top2) == {0, 1}
    assert abs(top2[0] / 2000 - float(probs[0] / probs[:2].sum())) < 0.04  # renormalised over the two
    # min_p 0.3: p >= 0.3 · p_max keeps tokens 0 and 1 (e^-1 = 0.37), not 2 (e^-2 = 0.14)
    kept = {sample_token(logits, SamplingParams(min_p=0.3, seed=0), s, 0) for s in range(2000)}
    assert kept == {0, 1}


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_an_honest_draw_with_each_parameter_passes_and_ignoring_it_is_caught(name: str) -> None:
    params = PARAMETERS[name]
    logits = rows(64)
    honest = drawn_sequence(logits, params)
    ignored = drawn_sequence(logits, without(params, name))
    assert honest != ignored  # the parameter changes this draw

    assert token_check(logits, honest, params) == 0
    assert token_check(logits + 1e-4 * torch.randn_like(logits), honest, params) == 0  # honest hardware noise
    assert token_check(logits, ignored, params) >= 3  # a provider that dropped the parameter


@pytest.mark.parametrize(
    ("name", "altered"),
    [
        ("presence_penalty", {"presence_penalty": 0.5}),
        ("frequency_penalty", {"frequency_penalty": -1.0}),
        ("logit_bias", {"logit_bias": tuple((t, -100.0) for t in range(0, 50, 4))}),
        ("top_k", {"top_k": 6}),
        ("min_p", {"min_p": 0.05}),
    ],
    ids=["penalty lowered", "frequency turned into a reward", "half the bans", "k raised", "min_p lowered"],
)
def test_a_parameter_altered_by_the_provider_is_caught(name: str, altered: dict[str, object]) -> None:
    params = PARAMETERS[name]
    logits = rows(64)
    served = drawn_sequence(logits, dataclasses.replace(params, **altered))  # type: ignore[arg-type]
    assert token_check(logits, served, params) >= 2


def test_where_a_penalised_completion_may_end() -> None:
    """The end is judged on the shaped row too: EOS that only the penalties made the draw
    (every other token already drawn) is a legitimate end, and a bias that bans EOS makes an
    end there illegitimate."""
    logits = torch.full((4, 3), 0.0)
    logits[:, 1] = 2.0
    logits[:, 2] = 1.5  # EOS (0) is the least likely token of every row
    params = SamplingParams(max_tokens=8, temperature=0.0, presence_penalty=2.0)
    output = drawn_sequence(logits[:3], params)
    assert output[:2] == [1, 2] and output[2] == EOS  # after 1 and 2 are penalised, EOS leads
    assert verdict(logits[:3], output[:2], params)  # ends where EOS is drawn
    assert not verdict(logits[:3], output[:2], dataclasses.replace(params, logit_bias=((EOS, -100.0),)))
