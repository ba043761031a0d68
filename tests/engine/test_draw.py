"""The verifiable draw: Gumbel-max over the nucleus with noise that is a public function of
(seed, position), and the checker's rules for tokens and for where a completion ends."""

from __future__ import annotations

import collections

import pytest
import torch

from allmende.api.protocol import draw_seed, sampling_params
from allmende.engine.base import SamplingParams
from allmende.engine.proofs import commit
from allmende.engine.sampling import draw_scores, gumbel_noise, nucleus, sample_token
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
