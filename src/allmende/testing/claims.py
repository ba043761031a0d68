"""What a provider claims for one completion, and how the harness has an engine make one.

Shared by the calibration harness (`allmende.testing.harness`) and its cross-engine rows
(`allmende.testing.engines`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from allmende.engine.base import SamplingParams, collect
from allmende.engine.generative import GenerativeEngine

GREEDY = SamplingParams(max_tokens=64, temperature=0.0)
SAMPLED = SamplingParams(max_tokens=64, temperature=0.8, top_p=0.9, seed=1234)


@dataclass
class Claim:
    prompt_ids: list[int]  # the prompt the provider claims it answered
    output_ids: list[int]
    proof: bytes
    params: SamplingParams
    generation_seconds: float
    same_as_honest: bool = False  # a cheat whose tokens equal the honest draw's (not a miss if it passes)
    validator: Any = None  # the engine that checks it (None: the harness's transformers reference)


def generate(engine: GenerativeEngine, prompt_ids: list[int], params: SamplingParams) -> tuple[list[int], bytes, float]:
    start = time.perf_counter()
    gen = asyncio.run(collect(engine.generate(prompt_ids, params), len(prompt_ids)))
    return gen.token_ids, gen.proof, time.perf_counter() - start
