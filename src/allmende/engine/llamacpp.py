"""GGUF models through llama.cpp (the `llama-cpp-python` binding, its low-level C API).

The engine keeps everything that makes a completion verifiable on our side and uses
llama.cpp only for the forward passes:

- one llama.cpp context holds every running generation as its own sequence id; each step
  is one `llama_decode` over a batch that carries the next token of every active sequence
  and the prompt tokens of the sequences joining at this boundary (several sequence ids
  per decode; a sequence leaves by having its cells removed from the KV cache);
- the context is created with `embeddings = true` and pooling `none`, so each output row
  gives both its logits and its final hidden state (the state after the output norm, the
  same tensor transformers returns as the last hidden state);
- the token is drawn by `allmende.engine.sequence.Sequence` from those logits with the
  protocol's seeded rule, never by llama.cpp's sampler; stop strings, streaming and
  proofs (from the hidden states llama.cpp computed) are the same code as the
  transformers engine's;
- prompts are tokenized with the same tokenizer as the transformers engine (the one the
  GGUF carries, converted once), so both engines see identical token ids, and the model
  id is the GGUF file's content address for both.

Weights: a quantized GGUF is served as is ("native"), from its F16 copy ("f16"), or both
("mixed"). The F16 copy is made once and cached; it is the same weights, not a
requantisation: each Q4_1 weight is d·q + m with d and m stored in F16, written back in F16
(relative rounding 2⁻¹¹, far below the error of the 8-bit activations llama.cpp's own Q4_1
kernels use). It pays off when sequences share a step: ggml multiplies F16 matrices with
tiled GEMM kernels, while a Q4_1 batch goes row by row through the same dot product as a
single sequence; a lone sequence, bound by memory, is faster from the 4-bit file. "mixed"
keeps a context for each: a request joins the native one while fewer than
`MIXED_BATCH` requests are running or waiting, the F16 one otherwise, and stays where it
joined; a step decodes both when both hold sequences. The F16 copy is the default where it
stays small (`F16_LIMIT_BYTES`). "mixed" is cheaper for a lone request (SmolLM2-135M Q4_1,
one thread, CPU per decoded token: 7.1-7.6 ms from the 4-bit file against 10.8-11.0 ms from
the copy; a 64-token answer to a 37-token prompt 650 against 785 ms, the copy's prefill being
faster, 88 against 178 ms), but it is not the default: which weights answer then depends on
the load, and the two part at near-ties (a greedy e2e question answered "L'Étoile, ..." on the
4-bit file and "The capital of France is Paris." on the copy), so the same greedy request
would get different answers alone and in a crowd. The model id stays the content address
of the original file, which the validator loads. ALLMENDE_LLAMACPP_WEIGHTS picks.

The KV cache is one unified buffer of `kv_cells` cells shared by all sequences. A
sequence joins only when its prompt plus `max_tokens` fit in the cells not reserved by
the sequences already running, so a decode never runs out of cache. (A request without
`max_tokens` may fill the context: it reserves all of it, and runs alone in its context.)

Layers on other hosts: with `rpc` (`--llamacpp-rpc`), the model's blocks are spread over this
host's CPU and llama.cpp RPC servers on the operator's other hosts (`allmende.engine.llamacpp_rpc`);
everything above stays as it is, the rows come back here.

Prompt caching across requests: a finished sequence keeps its cells (prompt and output) as a
*parked* sequence, up to `PARKED_SEQUENCES` per context, least recently used evicted first
and whenever a joiner needs its sequence id or cells. A joining prompt that starts with at
least `SHARED_PREFIX_MIN` tokens of a parked sequence's (an agent's system prompt and tools,
the conversation so far) takes those cells and prefills only the rest; the count is the
request's `cached_tokens`. The draw and the proof come from the same rows as without the
cache (the cells hold the same keys and values, computed by the same weights), and the
checker prefills the whole prompt anyway.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from allmende.engine.base import EngineError
from allmende.engine.batching import StepScheduler
from allmende.engine.generative import GenerativeEngine
from allmende.engine.gguf_header import read_header
from allmende.engine.llamacpp_rpc import RpcDevices, RpcServerLost, bound_silence, configured_endpoints
from allmende.engine.sequence import Sequence

BATCH_TOKENS = 512  # tokens per llama_decode call (prompt chunks included)
# Sequences one llama_decode advances at most; more concurrent requests wait for a free one.
# Measured on SmolLM2 Q4_1, 1 thread, CPU time per token: flat from 8 to 48 sequences per
# step (7.6-8.4 ms), 1.7 times that at 64 (the unified cache's attention grows with the
# square of the batch), so a wider step lowers throughput.
STEP_WIDTH = 48
# A joining prompt that starts with at least this many tokens of another sequence's prompt (a
# chat template's system prompt, a shared few-shot prefix) takes that prefix's cache cells
# from it and prefills only the rest: from a running sequence, or from one joining in the same
# step (which then prefills the prefix in a first pass).
SHARED_PREFIX_MIN = 16
PARKED_SEQUENCES = 8  # finished sequences per context whose cells stay for a later prompt (prompt caching)


WEIGHTS = ("native", "f16", "mixed")
MIXED_BATCH = 4  # from this many requests running or waiting, new ones join the F16 context
F16_LIMIT_BYTES = 2 << 30  # expand to F16 by default only while the copy stays under 2 GiB
# GGUF general.file_type values that are not quantized: F32, F16, BF16
UNQUANTIZED_FILE_TYPES = {0, 1, 32}


def load_binding() -> Any:
    """The `llama_cpp` module, or a clear error saying how to install it. (Its ggml threads wait
    at barriers as the OpenMP runtime torch loads does: libgomp's spin, unless the node's
    environment sets OMP_WAIT_POLICY or GOMP_SPINCOUNT; GOMP_SPINCOUNT=1000 helps on cores
    that other work keeps busy, and costs latency on idle ones.)"""
    try:
        import llama_cpp
    except ImportError as exc:
        raise EngineError(
            "the llama.cpp engine needs llama-cpp-python: pip install 'allmende[llamacpp]' "
            f"(it compiles llama.cpp, about 4.5 minutes on 2 cores; `make install` does) ({exc})"
        ) from None
    return llama_cpp


def _quiet_logs(lib: Any) -> None:
    """Send llama.cpp's log lines nowhere (it prints every tensor while loading)."""
    callback = lib.llama_log_callback(lambda level, text, data: None)
    _quiet_logs.keep = callback  # type: ignore[attr-defined]  # the C side holds a raw pointer
    lib.llama_log_set(callback, ctypes.c_void_p(0))


def default_threads() -> int:
    """llama.cpp threads: one per core this process may use (at most 8). On a machine whose
    cores other work keeps busy, fewer are faster: ggml's threads meet at a barrier after
    every operation of the graph (hundreds per token), and a thread the kernel has parked
    stalls all the others there (see the README's measurements); ALLMENDE_LLAMACPP_THREADS
    sets it."""
    configured = os.environ.get("ALLMENDE_LLAMACPP_THREADS")
    if configured:
        if not configured.isdigit() or int(configured) < 1:
            raise EngineError(f"ALLMENDE_LLAMACPP_THREADS must be a positive integer, not {configured!r}")
        return int(configured)
    return min(len(os.sched_getaffinity(0)), 8)


def lone_threads(threads: int) -> int:
    """llama.cpp threads for a decode of one token (a lone sequence's step; llama.cpp takes
    `n_threads` for a batch of one token, `n_threads_batch` for more): half of `threads`. One
    token's pass reads every weight once for little arithmetic, so it is bound by memory, and
    splitting it costs a barrier per operation; the core it leaves free runs the HTTP path of
    the token just drawn (provider, gateway) beside the next pass instead of preempting it.
    Measured on 2 cores at load 7.5 (bare llama_decode loop, one sequence, 1 and 2 threads
    interleaved 12 times, OpenMP passive; ms per token, wall min/median and CPU median): F16 copy
    26.8/30.3 and 9.9 on one thread against 32.8/40.1 and 13.1 on two; Q4_1 file 11.9/17.8 and
    6.7 against 21.4/25.7 and 10.2. Through `allmende up` at one client the two settings were
    not told apart by the load's noise (0.58-1.07 of llama-server for either)."""
    return max(1, threads // 2)


def gguf_shape(gguf: Path) -> tuple[int, int]:
    """(general.file_type, number of weights) of a GGUF file, read from its header."""
    header = read_header(gguf)
    return int(header.fields.get("general.file_type") or 0), header.weights


def gguf_layers(gguf: Path) -> int:
    """The number of repeating layers (transformer blocks) of a GGUF model, from its header."""
    fields = read_header(gguf).fields
    blocks = fields.get(f"{fields.get('general.architecture')}.block_count")
    if not isinstance(blocks, int) or isinstance(blocks, bool):
        raise EngineError(f"{gguf} names no block count: its layers cannot be split across RPC servers")
    return blocks


def chosen_weights(gguf: Path, asked: str | None = None) -> str:
    """ "native", "f16" or "mixed" for serving `gguf`: `asked`, else ALLMENDE_LLAMACPP_WEIGHTS,
    else F16 for a quantized file whose F16 copy stays under `F16_LIMIT_BYTES` (a 7B model
    stays quantized: its copy would need 14 GB)."""
    asked = asked or os.environ.get("ALLMENDE_LLAMACPP_WEIGHTS") or None
    if asked is not None:
        if asked not in WEIGHTS:
            raise EngineError(f"llama.cpp weights must be one of {', '.join(WEIGHTS)}, not {asked!r}")
        return asked
    file_type, weights = gguf_shape(gguf)
    return "f16" if file_type not in UNQUANTIZED_FILE_TYPES and 2 * weights <= F16_LIMIT_BYTES else "native"


def expanded_f16(lib: Any, gguf: Path, model_id: bytes) -> Path:
    """The F16 copy of `gguf` (made once by llama.cpp's own converter, cached by model id;
    written under a temporary name and renamed, so concurrent loads never see half a file)."""
    from allmende.config import from_environment

    target = from_environment().cache_dir / "gguf" / f"0x{model_id.hex()}-f16.gguf"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    params = lib.llama_model_quantize_default_params()
    params.ftype = lib.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True  # the input is quantized; F16 holds its values
    params.nthread = default_threads()
    try:
        if lib.llama_model_quantize(str(gguf).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
            raise EngineError(f"llama.cpp could not expand {gguf} to F16")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


class LlamaContext:
    """One llama.cpp model and context: the raw C calls this engine needs, nothing else."""

    def __init__(self, lib: Any, model: Any, n_ctx: int, n_seq: int, threads: int) -> None:
        self.lib = lib
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = BATCH_TOKENS
        params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = n_seq
        params.n_threads = lone_threads(threads)
        params.n_threads_batch = threads
        params.embeddings = True
        params.pooling_type = lib.LLAMA_POOLING_TYPE_NONE
        params.kv_unified = True
        # ggml's CPU flash attention skips the cells its mask hides: with one unified cache
        # for all sequences, each token then reads its own sequence's cells, not everyone's
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = lib.llama_init_from_model(model, params)
        if not self.ctx:
            raise EngineError(f"llama.cpp could not create a context of {n_ctx} cells")
        self.memory = lib.llama_get_memory(self.ctx)
        self.n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model)))
        self.n_embd = int(lib.llama_model_n_embd(model))
        self.batch = lib.llama_batch_init(BATCH_TOKENS, 0, 1)

    def set_threads(self, threads: int) -> None:
        self.lib.llama_set_n_threads(self.ctx, lone_threads(threads), threads)

    def decode(self, entries: list[tuple[int, int, int, bool]], borrow: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Run (token, sequence id, position, wants output) entries through the model,
        `BATCH_TOKENS` at a time; return the logits and final hidden states of the wanted
        outputs, one row each, in order (two arrays).

        `borrow`: where one llama_decode takes every entry and each wants its output (a step of
        running sequences), the arrays are views of llama.cpp's own output buffers, valid only
        until this context's next decode, instead of copies: a step then copies no row of
        49,152 logits (196 KB per sequence) that it reads once."""
        wanted = sum(out for *_, out in entries)
        if borrow and wanted == len(entries) <= BATCH_TOKENS:
            self._run(entries)
            # llama.cpp's buffers hold every output in the batch's order once read through
            # these getters (they put back the rows it computed in another order)
            all_logits, all_hidden = self.lib.llama_get_logits(self.ctx), self.lib.llama_get_embeddings(self.ctx)
            if not all_logits or not all_hidden:
                raise EngineError("llama.cpp returned no output rows")
            return (
                np.ctypeslib.as_array(all_logits, shape=(wanted, self.n_vocab)),
                np.ctypeslib.as_array(all_hidden, shape=(wanted, self.n_embd)),
            )
        logits = np.empty((wanted, self.n_vocab), np.float32)
        hidden = np.empty((wanted, self.n_embd), np.float32)
        lib, row = self.lib, 0
        move, logits_at, hidden_at = ctypes.memmove, logits.ctypes.data, hidden.ctypes.data
        logits_row, hidden_row = logits.strides[0], hidden.strides[0]
        for start in range(0, len(entries), BATCH_TOKENS):
            chunk = entries[start : start + BATCH_TOKENS]
            self._run(chunk)
            # row by row through the `_ith` getters: llama.cpp may compute a batch's outputs in
            # another order than the batch's (it splits batches by sequence), and these map back;
            # one memmove each (a numpy view of the C row would build a ctypes array type per row)
            for i in (i for i, entry in enumerate(chunk) if entry[3]):
                row_logits = lib.llama_get_logits_ith(self.ctx, i)
                row_hidden = lib.llama_get_embeddings_ith(self.ctx, i)
                if not row_logits or not row_hidden:  # (NULL: llama.cpp has no such output row)
                    raise EngineError(f"llama.cpp returned no output row for batch entry {i}")
                move(logits_at + row * logits_row, row_logits, logits_row)
                move(hidden_at + row * hidden_row, row_hidden, hidden_row)
                row += 1
        return logits, hidden

    def _run(self, chunk: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of at most `BATCH_TOKENS` entries."""
        batch = self.batch
        batch.n_tokens = len(chunk)
        for i, (token, seq, pos, out) in enumerate(chunk):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = int(out)
        code = self.lib.llama_decode(self.ctx, batch)
        if code != 0:
            raise EngineError(f"llama_decode failed with code {code}")

    def fill(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Run tokens whose outputs nobody reads (prompt bodies) into the cache, with embeddings
        off for the pass: with them on, llama.cpp makes every token of a batch an output, so it
        computed the head's logits (49,152 per token for SmolLM2) and the last layer for every
        prompt token. The cells are the same keys and values. Measured on the Q4_1 file, 2
        threads, load ~7, CPU median of 6 interleaved: one 37-token prompt 235.1 -> 216.9 ms,
        16 prompts at once 3,300 -> 2,917 ms."""
        if any(out for *_, out in entries):
            raise EngineError("fill takes tokens without outputs")
        self.lib.llama_set_embeddings(self.ctx, False)
        try:
            self.decode(entries)
        finally:
            self.lib.llama_set_embeddings(self.ctx, True)

    def drop(self, seq: int) -> None:
        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def copy(self, source: int, target: int, upto: int = -1) -> None:
        """Give `target` the cache cells of `source` (those before position `upto`, or all):
        the cells are shared, not duplicated."""
        self.lib.llama_memory_seq_cp(self.memory, source, target, 0 if upto >= 0 else -1, upto)

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None


def _cells(sequence: Sequence) -> int:
    """Cache cells a sequence may fill: its prompt and its whole token budget."""
    return len(sequence.prompt_ids) + sequence.params.max_tokens


class _Slot:
    """Where a sequence lives: its context, sequence id, next position and reserved cells."""

    def __init__(self, sequence: Sequence, context: str, seq_id: int) -> None:
        self.context = context
        self.seq_id = seq_id
        self.position = len(sequence.prompt_ids)
        self.cells = _cells(sequence)


class LlamaScheduler(StepScheduler):
    """Continuous batching over llama.cpp contexts of one model (one thread per model).

    A step is one `llama_decode` per context in use that runs the joiners' prompts (identical
    prompts once; the copies share its cells) together with the next token of every running
    sequence, each with its own sequence id. A sequence joins while a sequence id and enough
    cache cells for its prompt and `max_tokens` are free, so a decode never runs out of cache.
    With two contexts ("native" and "f16", see the module), a joiner goes to the native one
    while fewer than `MIXED_BATCH` requests are running or waiting."""

    def __init__(
        self, contexts: dict[str, LlamaContext], max_batch: int, name: str, prefill_tokens: int = 2048
    ) -> None:
        super().__init__(max_batch, name, prefill_tokens)
        self.contexts = contexts
        self.cells = {k: int(c.lib.llama_n_ctx(c.ctx)) for k, c in contexts.items()}
        self._free_ids = {k: list(range(max_batch)) for k in contexts}
        self._slots: dict[Sequence, _Slot] = {}
        self._routes: dict[Sequence, str] = {}  # where each admitted joiner goes
        self.joined = {k: 0 for k in contexts}  # sequences that joined each context (tests, metrics)
        self.shared_prefix_tokens = 0  # prompt tokens taken from a running sequence's cells, not prefilled
        self.cached_prompt_tokens = 0  # of those, taken from a finished (parked) sequence's cells
        # per context, finished sequences whose cells are kept: (sequence id, tokens in its cells), oldest first
        self._parked: dict[str, list[tuple[int, list[int]]]] = {k: [] for k in contexts}
        self._parking = True  # off while a failed step's batch is dropped
        self._forget = False  # drop_parked was called: forget them before the next joiner
        self.lost: RpcServerLost | None = None  # an RPC server the model runs on was lost: nothing runs

    def submit(self, sequences: list[Sequence]) -> None:
        with self._wake:  # (the lock `lose` takes: a sequence is either failed there or here)
            if self.lost is None:
                super().submit(sequences)
                return
        for sequence in sequences:
            sequence.fail(self.lost)

    def lose(self, error: RpcServerLost) -> None:
        """An RPC server was lost (`llamacpp_rpc`, from llama.cpp's connection thread, while
        this scheduler's thread waits inside `llama_decode` for an answer that never comes):
        fail every sequence, running or waiting, and every later one."""
        with self._wake:
            self.lost = error
            victims = [*self._active, *self._waiting]
            self._waiting.clear()
        for sequence in victims:
            sequence.fail(error)

    def _route(self, demand: int) -> str:
        if len(self.contexts) == 1:
            return next(iter(self.contexts))
        return "f16" if demand >= MIXED_BATCH else "native"

    def _has_room(self, sequence: Sequence, joining: list[Sequence]) -> bool:
        if self._forget:
            self._forget = False
            self._forget_parked()
        target = self._route(len(self._active) + len(joining) + len(self._waiting))
        reserved = sum(s.cells for s in self._slots.values() if s.context == target)
        reserved += sum(_cells(s) for s in joining if self._routes.get(s) == target)
        ids = 1 + sum(1 for s in joining if self._routes.get(s) == target)  # sequence ids this step takes
        parked = self._parked[target]
        keep = self._best_parked(sequence, target)[0]  # evicted last: the joiner would take its cells
        while parked and (
            reserved + sum(len(t) for _, t in parked) + _cells(sequence) > self.cells[target]
            or len(self._free_ids[target]) < ids
        ):
            victim = next((p for p in parked if p[0] != keep), parked[0])
            self._evict(target, victim)
        if reserved + _cells(sequence) > self.cells[target] or len(self._free_ids[target]) < ids:
            return False
        self._routes[sequence] = target
        return True

    def _best_parked(self, sequence: Sequence, context: str) -> tuple[int | None, int]:
        """The parked sequence id in `context` whose cells share the longest prefix with
        `sequence`'s prompt (never its last token), and that length."""
        best, source = 0, None
        prompt = sequence.prompt_ids[:-1]
        for seq_id, tokens in self._parked[context]:
            shared = 0
            for mine, theirs in zip(prompt, tokens, strict=False):
                if mine != theirs:
                    break
                shared += 1
            if shared > best:
                best, source = shared, seq_id
        return source, best

    def _evict(self, context: str, entry: tuple[int, list[int]]) -> None:
        self._parked[context].remove(entry)
        self.contexts[context].drop(entry[0])
        self._free_ids[context].append(entry[0])

    def drop_parked(self) -> None:
        """Forget every finished sequence's cells before the next request joins (tests and
        benchmarks: its prompt is prefilled whole). Done by the scheduler's thread, after the
        sequences that finished before this call have parked."""
        self._forget = True

    def _forget_parked(self) -> None:
        for context, parked in self._parked.items():
            for entry in list(parked):
                self._evict(context, entry)

    def _reset(self) -> None:
        self._parking = False  # the failed step's cells are not trusted
        try:
            super()._reset()
        finally:
            self._parking = True
        self._forget_parked()

    def _step(self, joining: list[Sequence]) -> None:
        # per context: (token, sequence id, position, wants output) entries, and the sequences
        # each output row feeds, in output order
        entries: dict[str, list[tuple[int, int, int, bool]]] = {k: [] for k in self.contexts}
        owners: dict[str, list[list[Sequence]]] = {k: [] for k in self.contexts}
        for sequence in self._active:
            slot = self._slots[sequence]
            entries[slot.context].append((sequence.last_token, slot.seq_id, slot.position, True))
            slot.position += 1
            owners[slot.context].append([sequence])
        first: dict[tuple[str, tuple[int, ...]], int] = {}  # (context, prompt) -> its output row
        copies: list[tuple[str, int, int]] = []  # (context, from sequence id, to sequence id) after the pass
        prefilling: list[Sequence] = []  # joiners prefilling (part of) their own prompt, in order
        sources: list[Sequence] = []  # those of them whose cells a later joiner may copy: not followers
        follows: dict[Sequence, tuple[Sequence, int]] = {}  # joiner -> (earlier joiner, shared tokens)
        skips: dict[Sequence, int] = {}  # joiner -> prompt tokens taken from a running sequence
        for sequence in joining:
            target = self._routes.pop(sequence, None) or self._route(len(self._active) + len(joining))
            slot = self._slots[sequence] = _Slot(sequence, target, self._free_ids[target].pop(0))
            self.joined[target] += 1
            key = (target, tuple(sequence.prompt_ids))
            if key in first:  # the same prompt: prefilled once, its cells copied
                rows = owners[target][first[key]]
                rows.append(sequence)
                copies.append((target, self._slots[rows[0]].seq_id, slot.seq_id))
                continue
            first[key] = len(owners[target])
            owners[target].append([sequence])
            running, taken = self._longest_prefix(
                sequence, [s for s in self._active if self._slots[s].context == target]
            )
            earlier, shared = self._longest_prefix(sequence, [s for s in sources if self._slots[s].context == target])
            parked, cached = self._best_parked(sequence, target)
            if parked is not None and cached >= max(taken, shared, SHARED_PREFIX_MIN):
                self.contexts[target].copy(parked, slot.seq_id, cached)
                skips[sequence] = sequence.cached_tokens = cached
                self.cached_prompt_tokens += cached
                entry = next(p for p in self._parked[target] if p[0] == parked)
                self._parked[target].remove(entry)
                self._parked[target].append(entry)  # most recently used
            elif running is not None and taken >= max(shared, SHARED_PREFIX_MIN):
                self.contexts[target].copy(self._slots[running].seq_id, slot.seq_id, taken)
                skips[sequence] = sequence.cached_tokens = taken
            elif earlier is not None and shared >= SHARED_PREFIX_MIN:
                # its cells arrive after the first pass, which holds all of the earlier prompt but
                # its last token (that one's row is drawn from in the step's pass)
                follows[sequence] = (earlier, min(shared, len(earlier.prompt_ids) - 1))
            prefilling.append(sequence)
            if sequence not in follows:
                sources.append(sequence)
        # joiners prefill their prompts but the last token in a first pass, so that a follower
        # can copy its leader's cells before the step's pass prefills its rest
        before: dict[str, list[tuple[int, int, int, bool]]] = {k: [] for k in self.contexts}
        for sequence in prefilling:
            slot, prompt = self._slots[sequence], sequence.prompt_ids
            start = skips.get(sequence, 0) or (follows[sequence][1] if sequence in follows else 0)
            # the prompt's body goes in the first pass, which computes no outputs (`fill`); only its
            # last token, whose row gives the first draw, in the step's pass. A follower's body stays
            # in the step's pass: it attends to the cells its leader's first pass makes.
            split = start if sequence in follows else len(prompt) - 1
            before[slot.context].extend((prompt[p], slot.seq_id, p, False) for p in range(start, split))
            entries[slot.context].extend(
                (prompt[p], slot.seq_id, p, p == len(prompt) - 1) for p in range(split, len(prompt))
            )
            self.shared_prefix_tokens += start
        self.prefilled_prompts += len(first)
        self.largest_batch = max(self.largest_batch, len(self._active) + len(joining))
        self._active.extend(joining)
        done: list[Sequence] = []
        for name, context in self.contexts.items():
            if before[name]:
                context.fill(before[name])
            for sequence, (leader, shared) in follows.items():
                if self._slots[sequence].context == name:
                    context.copy(self._slots[leader].seq_id, self._slots[sequence].seq_id, shared)
            if not entries[name]:
                continue
            # views of llama.cpp's rows where it can (each sequence reads its row before the
            # context's next decode, and keeps its own copy of the hidden row for the proof)
            logits, hidden = context.decode(entries[name], borrow=True)
            for where, source, target_id in copies:
                if where == name:
                    context.copy(source, target_id)
            row_logits, row_hidden = torch.from_numpy(logits), torch.from_numpy(hidden)
            for row, sequences in enumerate(owners[name]):
                for sequence in sequences:  # (the hidden row is kept for the proof: each keeps its own copy)
                    if sequence.cancelled.is_set() or sequence.advance(row_logits[row], row_hidden[row].clone()):
                        done.append(sequence)
        self.steps += 1
        self._leave(done)

    @staticmethod
    def _longest_prefix(sequence: Sequence, others: list[Sequence]) -> tuple[Sequence | None, int]:
        """The sequence among `others` whose prompt shares the longest prefix with `sequence`'s
        (never its last prompt token, whose row gives the first draw), and that length."""
        prompt, best, source = sequence.prompt_ids, 0, None
        for other in others:
            shared = 0
            for mine, theirs in zip(prompt[:-1], other.prompt_ids, strict=False):
                if mine != theirs:
                    break
                shared += 1
            if shared > best:
                best, source = shared, other
        return source, best

    def _leave(self, leaving: list[Sequence]) -> None:
        for sequence in leaving:
            if sequence in self._active:
                self._active.remove(sequence)
            self._routes.pop(sequence, None)
            slot = self._slots.pop(sequence, None)
            if slot is None:
                continue
            if self._parking:  # finished, or cancelled (often by its client right after its last token)
                # its cells hold the prompt and the output tokens fed back (all but the last drawn)
                tokens = (sequence.prompt_ids + sequence.token_ids)[: slot.position]
                parked = self._parked[slot.context]
                parked.append((slot.seq_id, tokens))
                if len(parked) > PARKED_SEQUENCES:
                    self._evict(slot.context, parked[0])
                continue
            self.contexts[slot.context].drop(slot.seq_id)
            self._free_ids[slot.context].append(slot.seq_id)


class LlamaCppEngine(GenerativeEngine):
    """A GGUF chat/completion model served by llama.cpp, verifiable like the transformers engine."""

    def __init__(
        self,
        name: str,
        gguf: Path,
        tokenizer_path: Path,  # the converted folder of the same GGUF (its tokenizer and chat template)
        model_id: bytes,
        max_concurrency: int = 16,
        threads: int | None = None,  # llama.cpp threads; default: `default_threads()`
        kv_cells: int = 8192,  # KV cache cells shared by all running sequences (about 190 MB for SmolLM2)
        context_length: int | None = None,
        gpu_layers: int = 0,
        weights: str | None = None,  # "native", "f16" or "mixed"; default: `chosen_weights`
        rpc: tuple[str, ...] | None = None,  # HOST:PORT of ggml-rpc-servers; default: $ALLMENDE_LLAMACPP_RPC
    ) -> None:
        from transformers import AutoTokenizer

        lib = load_binding()
        _quiet_logs(lib)
        lib.llama_backend_init()
        self.name = name
        self.gguf = Path(gguf)
        self.model_id = model_id
        self.device = "cpu"  # where the rows of logits and hidden states arrive
        self.lib = lib
        self.weights = chosen_weights(self.gguf, weights)
        files = {}
        if self.weights in ("native", "mixed"):
            files["native"] = self.gguf
        if self.weights in ("f16", "mixed"):
            files["f16"] = expanded_f16(lib, self.gguf, model_id)
        params = lib.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        self.lost: RpcServerLost | None = None
        endpoints = configured_endpoints(",".join(rpc)) if rpc is not None else configured_endpoints()
        self.rpc = RpcDevices(lib, endpoints, self) if endpoints else None
        self.local_layers: int | None = None  # with RPC: layers on this host's CPU (the rest on the servers)
        if self.rpc is not None:
            self.local_layers = self.rpc.apply(params, gguf_layers(self.gguf))
        self.models: dict[str, Any] = {}
        for kind, path in files.items():
            self.models[kind] = lib.llama_model_load_from_file(str(path).encode(), params)
            if not self.models[kind]:
                raise EngineError(f"llama.cpp could not load {path}")
        # what `prefill` (the validator's side) runs: the F16 copy where there is one, the
        # closer of the two to the reference's full-precision dequantisation
        self.model = self.models.get("f16") or self.models["native"]
        self.threads = threads or default_threads()
        self.context_length = min(context_length or int(lib.llama_model_n_ctx_train(self.model)), kv_cells)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(tokenizer_path)
        self.eos_ids = {int(self.tokenizer.eos_token_id)} if self.tokenizer.eos_token_id is not None else set()
        width = min(max_concurrency, STEP_WIDTH)
        self.contexts = {kind: LlamaContext(lib, m, kv_cells, width, self.threads) for kind, m in self.models.items()}
        self.scheduler: LlamaScheduler = LlamaScheduler(self.contexts, width, name)
        # llama.cpp's connections to the servers (one each), given a bound on silence (a vanished host)
        self.rpc_connections = bound_silence(self.rpc.endpoints) if self.rpc is not None else 0
        self._reference: LlamaContext | None = None  # a one-sequence context for `prefill`
        self._reference_lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        return next(iter(self.contexts.values())).n_vocab

    def rpc_lost(self, error: RpcServerLost) -> bool:
        """Called by `llamacpp_rpc` when one of this engine's RPC servers is lost: fail every
        request from now on (False while the model is still loading: there is none yet)."""
        self.lost = error
        scheduler: LlamaScheduler | None = getattr(self, "scheduler", None)
        if scheduler is None:
            return False
        scheduler.lose(error)
        return True

    def set_threads(self, threads: int) -> None:
        """Change llama.cpp's thread count of the serving context (takes effect at the next step)."""
        self.threads = threads
        for context in self.contexts.values():
            context.set_threads(threads)

    # ------------------------------------------------- verification side

    def prefill(self, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over `token_ids` in a context of its own: (final hidden states, logits), one row per position."""
        if self.lost is not None:
            raise self.lost
        with self._reference_lock:
            if self._reference is None:
                self._reference = LlamaContext(self.lib, self.model, self.context_length, 1, self.threads)
            context = self._reference
            try:
                logits, hidden = context.decode([(t, 0, p, True) for p, t in enumerate(token_ids)])
            finally:
                context.drop(0)
        return torch.from_numpy(hidden), torch.from_numpy(logits)
