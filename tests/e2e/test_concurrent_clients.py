"""Many clients at once, mixed kinds, no retries: zero failed requests (the payment path
is exercised concurrently, so vouchers reach providers out of order), and streamed usage
equal to the non-streamed usage of the same request."""

from __future__ import annotations

import threading
import time

import httpx
from openai import OpenAI

from tests.e2e.conftest import Network

CLIENTS = 32
ROUNDS = 4  # requests per client, one of each kind


def one_request(client: OpenAI, kind: int, tag: str) -> str:
    """Send one request of the given kind; return what it produced (non-empty on success)."""
    if kind == 0:
        reply = client.chat.completions.create(
            model="allmende:tiny", messages=[{"role": "user", "content": f"Hallo {tag}"}], max_tokens=8
        )
        return reply.choices[0].finish_reason or ""
    if kind == 1:
        stream = client.chat.completions.create(
            model="allmende:tiny",
            messages=[{"role": "user", "content": f"Erzähl {tag}"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert [c.usage for c in chunks if c.usage], "a stream without usage"
        return finishes[-1] if finishes else ""
    if kind == 2:
        completion = client.completions.create(model="allmende:tiny", prompt=f"Es war einmal {tag}", max_tokens=8)
        return completion.choices[0].finish_reason or ""
    vectors = client.embeddings.create(model="minilm", input=[f"the commons {tag}", "allmende"])
    return "embedded" if len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384 else ""


def test_32_concurrent_clients_mixed_kinds_no_retries_zero_failures(network: Network) -> None:
    failures: list[str] = []
    done: list[str] = []
    lock = threading.Lock()
    peak = [0]
    running = threading.Event()
    running.set()

    def watch() -> None:  # the gateway's own count of requests in flight
        with httpx.Client(timeout=5) as http:
            while running.is_set():
                health = http.get(network.data["gateway_url"].removesuffix("/v1") + "/healthz").json()
                peak[0] = max(peak[0], int(health["in_flight"]))
                time.sleep(0.02)

    def client(n: int) -> None:
        # every client its own API key, as real users: the per-key rate limit applies to each
        openai = OpenAI(base_url=network.data["gateway_url"], api_key=f"client-{n}", max_retries=0, timeout=120)
        for r in range(ROUNDS):
            kind = (n + r) % 4
            try:
                produced = one_request(openai, kind, f"{n}-{r}")
                with lock:
                    (done if produced else failures).append(f"{kind}:{produced}")
            except Exception as exc:
                with lock:
                    failures.append(f"kind {kind}: {type(exc).__name__}: {exc}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    running.clear()
    watcher.join()

    assert failures == []
    assert len(done) == CLIENTS * ROUNDS
    assert peak[0] >= 8, f"requests did not overlap (peak in flight {peak[0]})"


def test_streamed_chat_usage_equals_the_non_streamed_usage(network: Network) -> None:
    messages = [{"role": "user", "content": "Zähl bis zwanzig, bitte."}]
    plain = network.client.chat.completions.create(
        model="allmende:tiny", messages=messages, max_tokens=40, temperature=0
    )
    stream = network.client.chat.completions.create(
        model="allmende:tiny",
        messages=messages,
        max_tokens=40,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    (usage,) = [c.usage for c in chunks if c.usage]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert text == plain.choices[0].message.content
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.prompt_tokens == plain.usage.prompt_tokens
    assert usage.total_tokens == plain.usage.total_tokens


def test_streamed_completion_usage_equals_the_non_streamed_usage(network: Network) -> None:
    plain = network.client.completions.create(
        model="allmende:tiny", prompt="Es war einmal", max_tokens=16, temperature=0
    )
    stream = network.client.completions.create(
        model="allmende:tiny",
        prompt="Es war einmal",
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    (usage,) = [c.usage for c in chunks if c.usage]
    text = "".join(c.choices[0].text for c in chunks if c.choices)

    assert text == plain.choices[0].text
    assert (usage.prompt_tokens, usage.completion_tokens) == (plain.usage.prompt_tokens, plain.usage.completion_tokens)
    assert usage.completion_tokens == 16 or plain.choices[0].finish_reason == "stop"
