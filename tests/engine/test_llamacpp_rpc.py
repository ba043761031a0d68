"""One provider's model across several hosts through llama.cpp's RPC backend (`--llamacpp-rpc`):
real `ggml-rpc-server` processes (`make install` builds them), one of them in a network
namespace of its own (another host as far as the network goes: reached over a veth pair), the
default chat model's layers spread over this process's CPU and both servers. The answers are
the local engine's, the proofs pass the validators' check, the servers did the work, and a
server that dies fails the request with a clear error instead of aborting the process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from allmende.api.canonical import prompt_of
from allmende.engine import DEFAULT_CHAT_MODEL, SamplingParams, collect, load_engine, resolve_model
from allmende.engine.base import EngineError
from allmende.engine.llamacpp import LlamaCppEngine
from allmende.engine.llamacpp_rpc import RpcServerLost, parse_endpoints
from allmende.testing.harness import QUESTIONS
from allmende.testing.rpc_servers import RpcServer
from allmende.validator.checker import judge

HUB, PEER = "10.217.{}.1", "10.217.{}.2"  # this namespace's and the server namespace's addresses


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def other_host(offset: int = 0) -> Iterator[tuple[str, str] | None]:
    """A network namespace linked to this one by a veth pair: (its name, its address); None
    where namespaces cannot be made (not root, no `ip`)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield None
        return
    ns = f"r{(os.getpid() + offset) % 100000}"
    link = (os.getpid() + offset) % 250 + 1
    try:
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", f"{ns}a", "type", "veth", "peer", "name", f"{ns}b", "netns", ns)
        _sh("ip", "addr", "add", HUB.format(link) + "/30", "dev", f"{ns}a")
        _sh("ip", "link", "set", f"{ns}a", "up")
        _sh("ip", "-n", ns, "addr", "add", PEER.format(link) + "/30", "dev", f"{ns}b")
        _sh("ip", "-n", ns, "link", "set", f"{ns}b", "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, OSError):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        yield None
        return
    try:
        yield ns, PEER.format(link)
    finally:  # deleting the namespace deletes its veth end, and so the pair
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RpcServer]]:
    """One server on this host, one on another (a namespace; here too where none can be made)."""
    logs = tmp_path_factory.mktemp("rpc")
    with other_host() as there:
        far = RpcServer(logs / "there.log", host=there[1], netns=there[0]) if there else None
        started = [RpcServer(logs / "here.log"), far or RpcServer(logs / "there.log")]
        yield started
        for server in started:
            server.stop()


def _engine(rpc: tuple[str, ...] | None, weights: str = "f16") -> LlamaCppEngine:
    resolved = resolve_model(DEFAULT_CHAT_MODEL)
    assert resolved.gguf is not None and resolved.gguf_id is not None
    return LlamaCppEngine(
        DEFAULT_CHAT_MODEL,
        resolved.gguf,
        resolved.path,
        resolved.gguf_id,
        max_concurrency=4,
        threads=1,
        weights=weights,
        rpc=rpc,
    )


def _chat(engine: LlamaCppEngine, i: int) -> list[int]:
    return engine.prompt_ids(
        prompt_of("chat", {"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]})
    )


def test_a_model_over_two_rpc_hosts_answers_as_the_local_engine_and_passes_the_check(
    servers: list[RpcServer],
) -> None:
    local = _engine(rpc=())
    before = [s.cpu_seconds() for s in servers]
    spread = _engine(rpc=tuple(s.endpoint for s in servers))
    assert spread.model_id == local.model_id  # the same model on chain
    assert spread.local_layers == 10  # SmolLM2's 30 layers: 10 here, 10 (and the head) on each server
    assert spread.rpc_connections == 2  # llama.cpp's connection to each, found and given keepalive
    reference = load_engine(DEFAULT_CHAT_MODEL, max_concurrency=1)  # transformers, as validators run
    params = SamplingParams(max_tokens=24, temperature=0.0)
    loaded = [s.cpu_seconds() for s in servers]
    for i in range(3):
        prompt = _chat(local, i)
        here = asyncio.run(collect(local.generate(prompt, params), len(prompt)))
        there = asyncio.run(collect(spread.generate(prompt, params), len(prompt)))
        assert there.token_ids == here.token_ids and there.text == here.text and len(there.token_ids) > 3
        verdict = judge(reference, prompt, there.token_ids, there.proof, params)
        assert verdict.ok, verdict.reason
    # both servers took the weights and then computed their layers of every step
    assert all(b < m < s.cpu_seconds() for b, m, s in zip(before, loaded, servers, strict=True))
    assert all("Accepted client connection" in s.output() for s in servers)


def test_an_unreachable_or_wrong_rpc_server_is_a_clear_error_before_anything_loads(tmp_path: Path) -> None:
    closed = RpcServer(tmp_path / "gone.log")
    closed.stop()  # its port is free now: nothing listens
    with pytest.raises(EngineError, match=rf"RPC server {closed.endpoint} cannot be reached"):
        _engine(rpc=(closed.endpoint,))
    for bad in ("nohost", "host:0", "host:port", "a:1,a:1", ""):
        with pytest.raises(EngineError):
            parse_endpoints(bad)


def test_a_server_killed_mid_stream_fails_the_request_with_a_clear_error_not_the_process(tmp_path: Path) -> None:
    pair = [RpcServer(tmp_path / "a.log"), RpcServer(tmp_path / "b.log")]
    try:
        engine = _engine(rpc=tuple(s.endpoint for s in pair), weights="native")
        prompt = _chat(engine, 0)
        params = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)

        async def cut() -> tuple[int, BaseException | None]:
            seen = 0
            try:
                async for _ in engine.generate(prompt, params):
                    seen += 1
                    if seen == 3:
                        pair[1].kill()
            except RpcServerLost as exc:
                return seen, exc
            return seen, None

        seen, error = asyncio.run(asyncio.wait_for(cut(), 120))  # (a guard against a hang, not a timing)
        assert error is not None and 3 <= seen < 400
        assert error.status == 503 and "RPC server of this provider was lost" in str(error)
        # every later request fails at once, and so does the validators' side of the engine
        with pytest.raises(RpcServerLost):
            asyncio.run(asyncio.wait_for(collect(engine.generate(prompt, params), len(prompt)), 30))
        with pytest.raises(RpcServerLost):
            engine.prefill(prompt)
    finally:
        for server in pair:
            server.stop()


def test_a_server_host_that_goes_silent_fails_the_request_within_seconds_not_never(tmp_path: Path) -> None:
    # its link goes down: no FIN, no RST, the packets vanish (a host losing power or its cable)
    with other_host(offset=1) as there:
        if there is None:  # no namespace can be made here: only a server that dies (as above) is shown
            server = RpcServer(tmp_path / "silent.log")
            cut = server.kill
        else:
            server = RpcServer(tmp_path / "silent.log", host=there[1], netns=there[0])
            cut = functools.partial(_sh, "ip", "-n", there[0], "link", "set", f"{there[0]}b", "down")
        try:
            engine = _engine(rpc=(server.endpoint,), weights="native")
            assert engine.rpc_connections == 1
            prompt = _chat(engine, 1)
            params = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)

            async def silenced() -> BaseException | None:
                seen = 0
                try:
                    async for _ in engine.generate(prompt, params):
                        seen += 1
                        if seen == 3:
                            cut()
                except RpcServerLost as exc:
                    return exc
                return None

            error = asyncio.run(asyncio.wait_for(silenced(), 120))  # (a guard against a hang, not a timing)
            assert isinstance(error, RpcServerLost) and error.status == 503
        finally:
            server.stop()
