"""The whole network against llama.cpp's own server, on the same GGUF, in one run.

llama.cpp's `llama-server` (built from the very llama.cpp source that the pinned
llama-cpp-python vendors, `-np 16 -t 2`, continuous batching) against `allmende up
--providers 1` through its gateway (routing, a voucher per request, end-to-end sealing,
the provider's checks, receipts, proofs, two HTTP hops), on SmolLM2-135M-Instruct as `make
demo` serves it (the Q4_1 file users have) and on its F16 copy (the file the llama.cpp
engine makes once and multiplies with, `engine.llamacpp.expanded_f16`). The official
`openai` client streams every request (time to first token is the first content chunk),
greedy, 64 new tokens, no retries; 1, 4, 16 and 64 clients, each sending its requests one
after another (the same prompts, in the same order, to both servers). Both servers are up
at once and their rows alternate, so a change in the machine's load hits both; the load
average is printed next to every row, and the ratios are the figures to compare.

    python bench/vs_llama_server.py [--weights q4_1,f16] [--clients 1,4,16,64] [--rounds 2] [--json]
    python bench/vs_llama_server.py --build-only      # just find or build llama-server

llama-server: `--llama-server PATH` or $ALLMENDE_LLAMA_SERVER, else the one built in
.tools/llama-server/build-<version>/bin/, else built there (`make llama-server`): the
llama-cpp-python source distribution of the version pyproject.toml pins is downloaded with
pip (`--no-binary :all: --no-deps`), and cmake builds only its vendored llama.cpp's
`llama-server` target (CPU, `-DGGML_NATIVE=ON` as `make install` builds the binding,
`-DLLAMA_CURL=OFF`, no OpenSSL, no web UI download), under `nice -n 19` with 2 jobs: five
minutes and more on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI
from rich.console import Console
from rich.table import Table

from allmende.chain.anvil import free_port
from allmende.engine.llamacpp_build import build_target
from allmende.testing.network import start_network, stop_network

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools" / "llama-server"
MAX_TOKENS = 64
SLOTS = 16  # llama-server -np
QUESTIONS = (
    "Write a short poem about the sea.",
    "Explain in a few sentences how a bicycle stays upright.",
    "What should I pack for a weekend in the mountains?",
    "Tell me about the history of bread.",
)


# ------------------------------------------------------------ llama-server


def pinned_version() -> str:
    """The llama-cpp-python version pyproject.toml pins (its vendored llama.cpp is what we build)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in project["project"]["optional-dependencies"]["llamacpp"]:
        found = re.fullmatch(r"llama-cpp-python==([\w.]+)", requirement.strip())
        if found:
            return found.group(1)
    raise SystemExit("pyproject.toml pins no llama-cpp-python==X in the llamacpp extra")


def built_binary(version: str) -> Path:
    return TOOLS / f"build-{version}" / "bin" / "llama-server"


def build_llama_server(version: str) -> Path:
    """Download the pinned sdist (once), build its llama.cpp's llama-server target (once)."""
    flags = ("-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF")  # no web UI download
    print("building llama-server: five minutes and more on 2 cores", file=sys.stderr, flush=True)
    return build_target("llama-server", TOOLS, flags, version)


def find_llama_server(given: str | None) -> tuple[Path, str]:
    """(the llama-server binary, where it came from)."""
    given = given or os.environ.get("ALLMENDE_LLAMA_SERVER")
    if given:
        return Path(given), "given"
    version = pinned_version()
    binary = built_binary(version)
    if binary.exists():
        return binary, f"llama-cpp-python {version}'s llama.cpp, built in {binary.parent.parent}"
    return build_llama_server(version), f"llama-cpp-python {version}'s llama.cpp, built now"


def omp_wait_policy() -> str:
    """How ggml's OpenMP threads wait at barriers in both servers: what the caller's environment
    sets ($OMP_WAIT_POLICY, $GOMP_SPINCOUNT), else libgomp's default (300,000 turns of spin, then
    sleep)."""
    set_here = [f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ]
    return " ".join(set_here) or "libgomp default"


class LlamaServer:
    """`llama-server -np 16 -t THREADS` on a free port, continuous batching (its default)."""

    def __init__(self, binary: Path, gguf: Path, threads: int, log: Path) -> None:
        self.port = free_port()
        command = [
            str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port),
            "-np", str(SLOTS), "-t", str(threads), "-tb", str(threads), "-c", str(SLOTS * 512),
            "--cont-batching", "--no-webui",
        ]  # fmt: skip
        self.log = log
        # llama-server as its users run it, under the caller's environment (as the nodes are)
        self.process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"llama-server did not start:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------- clients


@dataclass
class Row:
    server: str
    clients: int
    requests: int
    tokens: int
    wall_s: float
    ttft_ms: list[float]
    load: tuple[float, float]  # 1-minute load average before and after

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.ttft_ms)
        return {
            "server": self.server,
            "clients": self.clients,
            "requests": self.requests,
            "tokens": self.tokens,
            "tokens_per_s": round(self.tokens / self.wall_s, 1),
            "ttft_p50_ms": round(statistics.median(ordered), 1),
            "ttft_p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
            "load_before": self.load[0],
            "load_after": self.load[1],
        }


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"}]


async def run_row(name: str, url: str, model: str, clients: int, requests: int) -> Row:
    """`clients` concurrent clients send `requests` streamed chat requests in all."""
    # a new connection per request, for both servers: llama-server's HTTP library closes a kept-alive
    # connection after a few requests, and with retries off the request that raced the close failed
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=0)
    http = httpx.AsyncClient(limits=limits, timeout=600)
    client = AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, http_client=http)
    ttft: list[float] = []
    tokens = 0
    queue = list(range(requests))

    async def one(i: int) -> None:
        nonlocal tokens
        start = time.perf_counter()
        first: float | None = None
        counted = chunks = 0
        stream = await client.chat.completions.create(
            model=model,
            messages=messages(i),  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
                if first is None:
                    first = time.perf_counter()
            if chunk.usage is not None:
                counted = chunk.usage.completion_tokens
        ttft.append(((first or time.perf_counter()) - start) * 1000)
        tokens += counted or chunks

    async def worker() -> None:
        while queue:
            await one(queue.pop(0))

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - start
    await http.aclose()
    return Row(name, clients, requests, tokens, wall, ttft, (round(load_before, 2), round(os.getloadavg()[0], 2)))


def served_model(url: str) -> str:
    """The gateway's one chat model (GET /v1/models)."""
    listed = httpx.get(f"{url}/models", timeout=30).json()["data"]
    names = [m["id"] for m in listed if "minilm" not in m["id"].lower()]
    if not names:
        raise SystemExit(f"the gateway lists no chat model: {listed}")
    return str(names[0])


# ------------------------------------------------------------------- runs


def ggufs() -> dict[str, Path]:
    """The Q4_1 file `make demo` serves and its F16 copy (made once, as the engine makes it)."""
    from allmende.engine.gguf import gguf_manifest, smollm2_gguf
    from allmende.engine.llamacpp import expanded_f16, load_binding

    q4 = smollm2_gguf()
    return {"q4_1": q4, "f16": expanded_f16(load_binding(), q4, gguf_manifest(q4).model_id)}


def measure_file(
    weights: str,
    gguf: Path,
    binary: Path,
    clients: list[int],
    rounds: int,
    threads: int,
    root: Path,
    provider_options: list[str],
) -> list[dict[str, Any]]:
    llama = LlamaServer(binary, gguf, threads, root / f"llama-server-{weights}.log")
    # the Q4_1 file is the default model, served as `make demo` serves it; the F16 copy as a model of its own
    models = [] if weights == "q4_1" else ["--model", str(gguf)]
    options = [f"--provider-option={o}" for o in [f"--llamacpp-threads={threads}", *provider_options]]
    proc, network = start_network(root / f"allmende-{weights}", "--providers", "1", *models, *options)
    rows: list[dict[str, Any]] = []
    try:
        ours = network["gateway_url"]
        model = served_model(ours)
        targets = {"llama-server": (llama.url, "model"), "allmende": (ours, model)}
        for name, (url, asked) in targets.items():  # warm-up: loads, payment channel, first prompts
            asyncio.run(run_row(name, url, asked, 2, 4))
        for n, count in enumerate(clients):
            order = list(targets) if n % 2 == 0 else list(reversed(targets))
            for name in order:
                url, asked = targets[name]
                row = asyncio.run(run_row(name, url, asked, count, max(8, rounds * count)))
                rows.append({"weights": weights, "gguf": gguf.name, **row.summary()})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        stop_network(proc)
        llama.stop()
    return rows


def measure(
    clients: list[int], rounds: int, threads: int, weights: list[str], binary: Path, provider_options: list[str]
) -> dict[str, Any]:
    files = ggufs()
    rows: list[dict[str, Any]] = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for w in weights:
            rows += measure_file(w, files[w], binary, clients, rounds, threads, Path(tmp), provider_options)
    ratios = []
    for w in weights:
        by = {(r["server"], r["clients"]): r for r in rows if r["weights"] == w}
        for c in clients:
            ll, al = by[("llama-server", c)], by[("allmende", c)]
            ratios.append(
                {
                    "weights": w,
                    "clients": c,
                    "allmende_over_llama_server": round(al["tokens_per_s"] / ll["tokens_per_s"], 2),
                    "ttft_p50_ratio": round(al["ttft_p50_ms"] / ll["ttft_p50_ms"], 2),
                }
            )
    return {
        "max_tokens": MAX_TOKENS,
        "threads": threads,
        "llama_server_slots": SLOTS,
        "rounds": rounds,
        "provider_options": provider_options,
        "omp_wait_policy": omp_wait_policy(),
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
        "ratios": ratios,
    }


def print_table(result: dict[str, Any]) -> None:
    table = Table(
        title=f"SmolLM2-135M-Instruct, llama-server -np {SLOTS} -t {result['threads']} vs allmende up --providers 1, "
        f"{MAX_TOKENS} new tokens, greedy, streamed"
    )
    for column in (
        "GGUF", "clients", "llama-server tok/s", "allmende tok/s", "allmende ÷ llama-server",
        "TTFT p50/p99 ms llama-server", "TTFT p50/p99 ms allmende", "load avg",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    by = {(r["weights"], r["server"], r["clients"]): r for r in result["rows"]}
    for ratio in result["ratios"]:
        w, c = ratio["weights"], ratio["clients"]
        ll, al = by[(w, "llama-server", c)], by[(w, "allmende", c)]
        loads = [ll["load_before"], ll["load_after"], al["load_before"], al["load_after"]]
        table.add_row(
            w.upper(),
            str(c),
            f"{ll['tokens_per_s']:.1f}",
            f"{al['tokens_per_s']:.1f}",
            f"{ratio['allmende_over_llama_server']:.2f}",
            f"{ll['ttft_p50_ms']:.0f} / {ll['ttft_p99_ms']:.0f}",
            f"{al['ttft_p50_ms']:.0f} / {al['ttft_p99_ms']:.0f}",
            f"{min(loads):.1f}–{max(loads):.1f}",
        )
    Console().print(table)
    print(f"load average at the start {result['load_average_start']}, at the end {result['load_average_end']}")
    print(f"OpenMP waits of both servers' llama.cpp threads: {result['omp_wait_policy']}")


def main() -> None:
    parser = argparse.ArgumentParser(description="allmende up vs llama.cpp's llama-server, same GGUF, same run")
    parser.add_argument("--weights", default="q4_1,f16", help="q4_1 (the file users have), f16 (its F16 copy)")
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--rounds", type=int, default=2, help="requests per row = max(8, rounds × clients)")
    parser.add_argument("--threads", type=int, default=2, help="llama-server -t and the provider's llama.cpp threads")
    parser.add_argument(
        "--provider-option",
        action="append",
        default=[],
        help="extra option for the provider, e.g. --provider-option=--llamacpp-weights=mixed (repeatable; a later "
        "--llamacpp-threads wins over --threads)",
    )
    parser.add_argument("--llama-server", help="a llama-server binary (default: $ALLMENDE_LLAMA_SERVER, or build one)")
    parser.add_argument("--build-only", action="store_true", help="find or build llama-server, print where, stop")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    binary, origin = find_llama_server(args.llama_server)
    if args.build_only:
        print(f"{binary} ({origin})")
        return
    weights = [w.strip().lower() for w in args.weights.split(",") if w.strip()]
    if not set(weights) <= {"q4_1", "f16"}:
        raise SystemExit("--weights takes q4_1 and/or f16")
    clients = [int(c) for c in args.clients.split(",")]
    result = measure(clients, args.rounds, args.threads, weights, binary, args.provider_option)
    result["llama_server"] = {"binary": str(binary), "from": origin}
    if args.json:
        print(json.dumps(result))
        return
    print_table(result)


if __name__ == "__main__":
    main()
