"""The default chat model split into stages, and the whole model to compare with: loaded
once per test session (each stage reads only its own slice of the converted checkpoint)."""

from __future__ import annotations

import asyncio
from functools import cache

import pytest

from allmende.core.stages import StageLayout
from allmende.engine import (
    DEFAULT_CHAT_MODEL,
    Engine,
    ResolvedModel,
    SamplingParams,
    collect,
    load_engine,
    resolve_model,
)
from allmende.engine.stages import StageEngine, stage_layout

PROMPTS = (
    "What is the capital of France?",
    "Write two sentences about the sea.",
)


@pytest.fixture(scope="session")
def resolved() -> ResolvedModel:
    return resolve_model(DEFAULT_CHAT_MODEL, progress=False)


@pytest.fixture(scope="session")
def whole(resolved: ResolvedModel) -> Engine:
    return load_engine(DEFAULT_CHAT_MODEL, max_concurrency=2)


@pytest.fixture(scope="session")
def layout3(resolved: ResolvedModel) -> StageLayout:
    return stage_layout(resolved.path, resolved.model_id, 3)


@pytest.fixture(scope="session")
def stages3(resolved: ResolvedModel, layout3: StageLayout) -> list[StageEngine]:
    return [StageEngine(resolved.path, spec) for spec in layout3.stages]


@pytest.fixture(scope="session")
def chat_ids(whole: Engine) -> list[list[int]]:
    from allmende.engine.base import ChatPrompt

    return [whole.prompt_ids(ChatPrompt.of([{"role": "user", "content": p}])) for p in PROMPTS]


def whole_tokens(whole: Engine, prompt: list[int], params: SamplingParams) -> list[int]:
    """The whole model's tokens for `prompt`: what every chain of stages must draw. A function
    of the prompt and the parameters (greedy, or seeded), so computed once per test process:
    the stage tests compare many chains with the same few answers."""
    return list(_whole_tokens(whole, tuple(prompt), params))


@cache
def _whole_tokens(whole: Engine, prompt: tuple[int, ...], params: SamplingParams) -> tuple[int, ...]:
    return tuple(asyncio.run(collect(whole.generate(list(prompt), params), len(prompt))).token_ids)
