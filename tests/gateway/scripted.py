"""A gateway app over one in-process provider whose engine writes what a script says for the
prompt it is given (a tool call first, an answer once the tool's result is in the prompt),
for the tests of the translated endpoints (/v1/responses, /v1/messages) through the official
`openai` and `anthropic` clients. The provider is real (sealing, receipts, vouchers), so every
answer's receipt is checked and paid by the gateway as for chat."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import anthropic
import httpx
import openai

from allmende.engine.base import ChatPrompt, Prompt, SamplingParams, TokenEvent
from allmende.gateway.app import GatewayLimits, create_app
from tests.gateway.fakes import FakeEngine, FakeProvider, Network, network

T = TypeVar("T")


class PromptEngine(FakeEngine):
    """Writes `script(prompt text)`, one character per token, and ends as the real engines do:
    at a stop string (cut from the text, its token still reported), at `max_tokens`
    (`length`), or at the script's end (`stop`). With logprobs asked for, each token's text
    comes with its log-probability, as the provider reports them."""

    def __init__(self, script: Callable[[str], str], fail_after: int | None = None) -> None:
        super().__init__(fail_after)
        self.script = script
        self.context_length = 4096
        self.prompts: list[str] = []  # what each request showed the model

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The conversation as `<role>content` per message (calls as `<call id name args>`,
        results as `<tool id>content`), so that a script and a test see what the model saw."""
        if not isinstance(prompt, ChatPrompt):
            return super().prompt_ids(prompt)
        text = ""
        for m in prompt.messages:
            text += f"<{m.role}{' ' + m.tool_call_id if m.tool_call_id else ''}>{m.content}"
            text += "".join(f"<call {c.id} {c.name} {json.dumps(c.arguments)}>" for c in m.tool_calls)
        text += "".join(f"<tool {t.name}>" for t in prompt.tools)
        return self.encode_text(text + prompt.continuation)

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        params = self.fitted(prompt_ids, params)
        prompt = "".join(map(chr, prompt_ids))
        self.prompts.append(prompt)
        text = self.script(prompt)[: params.max_tokens]
        finish = "stop" if len(text) == len(self.script(prompt)) else "length"
        hits = [(text.find(s), s) for s in params.stop if s and s in text]
        shown = len(text)  # characters that go out as text; the stop string's are held back
        if hits:
            shown, stop = min(hits)
            text, finish = text[: shown + len(stop)], "stop"
        for i, c in enumerate(text):
            if i == self.fail_after:
                raise RuntimeError("the GPU fell off the bus")
            last = i == len(text) - 1
            logprob = {"token": c, "bytes": [ord(c)], "logprob": -0.5, "top_logprobs": []}
            yield TokenEvent(
                c if i < shown else "",
                ord(c),
                finish if last else None,
                b"\x01" * 8 if last else None,
                logprob if params.logprobs is not None else None,
            )


@dataclass
class Clients:
    openai: openai.AsyncOpenAI
    anthropic: anthropic.AsyncAnthropic
    http: httpx.AsyncClient  # raw requests to the gateway (base URL http://gw)


def gateway(tmp: Path, engine: FakeEngine, **limits: Any) -> tuple[Network, Any]:
    net = network(tmp, [FakeProvider(tmp, engine=engine)])
    contracts = net.service.directory.contracts  # the explorer's chain view reads these lazily
    for name in ("channels", "verdicts", "governor"):
        if not hasattr(contracts, name):
            setattr(contracts, name, SimpleNamespace())
        getattr(contracts, name).contract = None
    contracts.deployment = SimpleNamespace(deploy_block=0)
    return net, create_app(net.service, GatewayLimits(**limits))


def serve(tmp: Path, engine: FakeEngine, call: Callable[[Clients], Awaitable[T]], **limits: Any) -> tuple[T, Network]:
    """`call` with both official clients (and a raw one) of a gateway over one provider."""
    net, app = gateway(tmp, engine, **limits)

    async def go() -> T:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as http:
            clients = Clients(
                openai.AsyncOpenAI(base_url="http://gw/v1", api_key="k", http_client=http, max_retries=0),
                anthropic.AsyncAnthropic(base_url="http://gw", api_key="k", http_client=http, max_retries=0),
                http,
            )
            return await call(clients)

    return asyncio.run(go()), net
