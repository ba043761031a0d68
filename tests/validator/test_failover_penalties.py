"""Presence and frequency penalties across a mid-stream failover. When a provider dies in the
middle of a stream the gateway asks another to continue from the prompt plus the text already
streamed (`allmende_continue`); that text is part of the completion, so the penalties of the
next provider count its tokens as drawn (SamplingParams.carried, Engine.continued), as they
would have been without the failover. Before, they counted only the new provider's tokens: a
continued greedy answer with `frequency_penalty` repeated what the first provider had written.

A real provider service (in process, the transformers SmolLM2-135M-Instruct engine) serves the
whole answer and the continuation; a juror re-checks the continuation from its evidence; a
provider that counts only its own tokens is convicted."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest

from allmende.api.client import Answer, PayerKey, ainfer, build_envelope
from allmende.engine import DEFAULT_CHAT_MODEL, load_engine
from allmende.engine.base import SamplingParams
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.provider.service import InferRequest, ProviderService
from allmende.validator.answers import recheck
from allmende.validator.evidence import Evidence
from tests.gateway.fakes import GATEWAY_KEY, RECEIPTS, VOUCHERS, FakeProvider

CHANNEL = b"\x01" * 32
# a question whose greedy answer repeats itself unless the penalty counts the earlier tokens
BODY = {
    "messages": [{"role": "user", "content": "List the days of the week, then list them again."}],
    "max_tokens": 32,
    "temperature": 0,
    "frequency_penalty": 2.0,
}


@pytest.fixture(scope="module")
def smollm2() -> CausalLMEngine:
    engine = load_engine(DEFAULT_CHAT_MODEL, engine="transformers")
    assert isinstance(engine, CausalLMEngine)
    return engine


class CountsOnlyItsOwnTokens(ProviderService):
    """A provider that serves a continuation as if its tokens were the whole completion (what
    every provider did before `carried`)."""

    def _prepare(self, req: InferRequest) -> tuple[list[int], SamplingParams]:
        ids, params = super()._prepare(req)
        return ids, dataclasses.replace(params, carried=())


def ask(provider: FakeProvider, body: dict[str, Any]) -> Answer:
    rid, env, sealer = build_envelope(
        provider.entry().info, provider.engine.model_id, "chat", body, PayerKey(GATEWAY_KEY, VOUCHERS), CHANNEL, None
    )

    async def run() -> Answer:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=provider.app), base_url=provider.url) as http:
            return await ainfer(http, provider.url, provider.entry().info, RECEIPTS, env, sealer, rid)

    return asyncio.run(run())


def evidence_of(engine: CausalLMEngine, body: dict[str, Any], answer: Answer) -> Evidence:
    return Evidence(
        kind="chat",
        body=body,
        model_id="0x" + engine.model_id.hex(),
        prompt_ids=[],
        token_ids=answer.output["token_ids"],
        text=answer.output["text"],
        proof=answer.output["proof"],
        receipt=answer.receipt.to_json(),
        reason="",
    )


def continuation_of(engine: CausalLMEngine, whole: list[int]) -> tuple[dict[str, Any], int]:
    """The request a gateway sends after the first provider streamed the first k tokens of
    `whole` and died (k: the longest cut up to 19 whose text tokenizes back to those tokens)."""
    k = max(k for k in range(4, 20) if engine.encode_text(engine.decode(whole[:k])) == whole[:k])
    return {**BODY, "max_tokens": BODY["max_tokens"] - k, "allmende_continue": engine.decode(whole[:k])}, k


def test_a_continued_answer_counts_the_failed_providers_tokens_and_passes_the_check(
    tmp_path: Path, smollm2: CausalLMEngine
) -> None:
    provider = FakeProvider(tmp_path, engine=smollm2)  # type: ignore[arg-type]
    whole = ask(provider, BODY).output["token_ids"]
    continued, k = continuation_of(smollm2, whole)

    rest = ask(provider, continued)

    assert rest.output["token_ids"] == whole[k:]  # the answer the client would have got without the failover
    verdict = recheck(smollm2, evidence_of(smollm2, continued, rest))
    assert verdict is not None and verdict.ok, verdict and verdict.reason


def test_a_provider_that_counts_only_its_own_tokens_is_convicted(tmp_path: Path, smollm2: CausalLMEngine) -> None:
    whole = ask(FakeProvider(tmp_path, engine=smollm2), BODY).output["token_ids"]  # type: ignore[arg-type]
    continued, k = continuation_of(smollm2, whole)
    forgetful = FakeProvider(tmp_path, engine=smollm2, service_class=CountsOnlyItsOwnTokens)  # type: ignore[arg-type]

    rest = ask(forgetful, continued)

    assert rest.output["token_ids"] != whole[k:]  # it repeats what the first provider wrote
    verdict = recheck(smollm2, evidence_of(smollm2, continued, rest))
    assert verdict is not None and not verdict.ok and "token" in verdict.reason, verdict and verdict.reason
