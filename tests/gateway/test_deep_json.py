"""A body nested deeper than the stack holds is a 400, never a dead node. py_ecc (imported by
eth-account, so by every node) raises the interpreter's recursion limit to 100,000; a body of
100,000 `[` then overflowed the C stack inside json.loads and killed the process with a
segfault. `allmende` puts the limit back (allmende.MAX_RECURSION) and every JSON reader of
the gateway, the provider, the provider's wire client and the validator answers a
RecursionError as bad input."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from allmende.api.client import ProviderReplyError, _decoded
from allmende.validator.evidence import BadEvidence, Evidence
from tests.gateway.fakes import FakeProvider
from tests.gateway.test_openai_surface import CHAT, run

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_the_chain_libraries_leave_a_recursion_limit_the_stack_holds() -> None:
    """In a fresh interpreter, as every node starts: json.loads of the deep body raises
    RecursionError (before the fix the process died with SIGSEGV, return code -11)."""
    script = (
        "import json, allmende, allmende.chain, eth_account\n"
        "try:\n    json.loads(b'['*100000 + b']'*100000)\nexcept RecursionError:\n    print('refused')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "refused"), done.stderr[-500:]


def test_the_gateway_answers_a_deep_body_with_a_400_and_goes_on_serving(tmp_path: Path) -> None:
    async def call(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> Any:
        deep = await http.post("/chat/completions", content=DEEP, headers={"content-type": "application/json"})
        after = await client.chat.completions.create(model="fake", messages=CHAT, max_tokens=2)  # type: ignore[arg-type]
        return deep, after

    deep, after = run(tmp_path, call)

    assert deep.status_code == 400 and deep.json()["error"]["type"] == "invalid_request_error"
    assert after.choices[0].message.content


def test_the_provider_answers_a_deep_body_with_a_400(tmp_path: Path) -> None:
    provider = FakeProvider(tmp_path)

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=provider.app), base_url="http://p") as http:
            return await http.post("/v1/infer", content=DEEP, headers={"content-type": "application/json"})

    reply = asyncio.run(post())
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "bad_request"


def test_a_provider_reply_or_case_evidence_nested_too_deep_is_refused_not_fatal() -> None:
    with pytest.raises(ProviderReplyError) as refused:
        _decoded(DEEP)
    assert refused.value.code == "bad_reply"
    with pytest.raises(BadEvidence):
        Evidence.from_bytes(DEEP)
