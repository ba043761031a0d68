"""Log-probabilities on allmende:tiny come from the row of logits each token was drawn from:
a validator's one prefill over prompt + output gives the same numbers, and asking for them
never changes which tokens are drawn."""

from __future__ import annotations

import asyncio
import dataclasses

import torch

from allmende.api.canonical import prompt_of
from allmende.engine import SamplingParams, collect, load_engine
from allmende.engine.transformers_lm import CausalLMEngine

PARAMS = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, seed=4, ignore_eos=True)


def test_logprobs_are_the_drawn_rows_and_do_not_change_the_draw() -> None:
    engine = load_engine("allmende:tiny")
    assert isinstance(engine, CausalLMEngine)
    ids = engine.prompt_ids(prompt_of("chat", {"messages": [{"role": "user", "content": "Was ist eine Allmende?"}]}))

    plain = asyncio.run(collect(engine.generate(ids, PARAMS), len(ids)))
    scored = asyncio.run(collect(engine.generate(ids, dataclasses.replace(PARAMS, logprobs=3)), len(ids)))

    assert scored.token_ids == plain.token_ids and plain.logprobs is None
    assert scored.logprobs is not None and len(scored.logprobs) == len(scored.token_ids)
    _, logits = engine.prefill(ids + scored.token_ids)
    expected = torch.log_softmax(logits[len(ids) - 1 : -1], dim=-1)  # the rows that drew each output token
    for row, token, entry in zip(expected, scored.token_ids, scored.logprobs, strict=True):
        assert abs(float(row[token]) - float(entry["logprob"])) < 1e-3  # type: ignore[arg-type]
        assert entry["token"] == engine.decode([token])
        top = entry["top_logprobs"]
        assert isinstance(top, list) and len(top) == 3
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert abs(top[0]["logprob"] - float(row.max())) < 1e-3
