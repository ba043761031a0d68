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

The KV cache is one unified buffer of `kv_cells` cells shared by all sequences. A
sequence joins only when its prompt plus `max_tokens` fit in the cells not reserved by
the sequences already running, so a decode never runs out of cache.
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
from allmende.engine.sequence import Sequence

BATCH_TOKENS = 512  # tokens per llama_decode call (prompt chunks included)
# Sequences one llama_decode advances at most; more concurrent requests wait for a free one.
# Measured on SmolLM2 Q4_1, 1 thread, CPU time per token: flat from 8 to 48 sequences per
# step (7.6-8.4 ms), 1.7 times that at 64 (the unified cache's attention grows with the
# square of the batch), so a wider step lowers throughput.
STEP_WIDTH = 48


def load_binding() -> Any:
    """The `llama_cpp` module, or a clear error saying how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise EngineError(
            "the llama.cpp engine needs llama-cpp-python: pip install 'allmende[llamacpp]' "
            f"(it compiles llama.cpp, 15-40 minutes on 2 cores) ({exc})"
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


class LlamaContext:
    """One llama.cpp model and context: the raw C calls this engine needs, nothing else."""

    def __init__(self, lib: Any, model: Any, n_ctx: int, n_seq: int, threads: int) -> None:
        self.lib = lib
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = BATCH_TOKENS
        params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = n_seq
        params.n_threads = threads
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
        self.lib.llama_set_n_threads(self.ctx, threads, threads)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> tuple[np.ndarray, np.ndarray]:
        """Run (token, sequence id, position, wants output) entries through the model,
        `BATCH_TOKENS` at a time; return the logits and final hidden states of the wanted
        outputs, one row each, in order (two arrays)."""
        wanted = sum(out for *_, out in entries)
        logits = np.empty((wanted, self.n_vocab), np.float32)
        hidden = np.empty((wanted, self.n_embd), np.float32)
        lib, batch, row = self.lib, self.batch, 0
        for start in range(0, len(entries), BATCH_TOKENS):
            chunk = entries[start : start + BATCH_TOKENS]
            batch.n_tokens = len(chunk)
            for i, (token, seq, pos, out) in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = int(out)
            code = lib.llama_decode(self.ctx, batch)
            if code != 0:
                raise EngineError(f"llama_decode failed with code {code}")
            # row by row through the `_ith` getters: llama.cpp may compute a batch's outputs in
            # another order than the batch's (it splits batches by sequence), and these map back
            for i in (i for i, entry in enumerate(chunk) if entry[3]):
                logits[row] = np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                hidden[row] = np.ctypeslib.as_array(lib.llama_get_embeddings_ith(self.ctx, i), shape=(self.n_embd,))
                row += 1
        return logits, hidden

    def drop(self, seq: int) -> None:
        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def copy(self, source: int, target: int) -> None:
        self.lib.llama_memory_seq_cp(self.memory, source, target, -1, -1)

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None


def _cells(sequence: Sequence) -> int:
    """Cache cells a sequence may fill: its prompt and its whole token budget."""
    return len(sequence.prompt_ids) + sequence.params.max_tokens


class _Slot:
    """Where a sequence lives in the llama.cpp context: its sequence id, next position, reserved cells."""

    def __init__(self, sequence: Sequence, seq_id: int) -> None:
        self.seq_id = seq_id
        self.position = len(sequence.prompt_ids)
        self.cells = _cells(sequence)


class LlamaScheduler(StepScheduler):
    """Continuous batching over one llama.cpp context (one thread per model).

    A step is one `llama_decode` that runs the joiners' prompts (identical prompts once; the
    copies share its cells) together with the next token of every running sequence, each
    with its own sequence id. A sequence joins while a sequence id and enough cache cells
    for its prompt and `max_tokens` are free, so a decode never runs out of cache."""

    def __init__(self, context: LlamaContext, max_batch: int, name: str, prefill_tokens: int = 2048) -> None:
        super().__init__(max_batch, name, prefill_tokens)
        self.context = context
        self.cells = int(context.lib.llama_n_ctx(context.ctx))
        self._free_ids = list(range(max_batch))
        self._slots: dict[Sequence, _Slot] = {}

    def _has_room(self, sequence: Sequence, joining: list[Sequence]) -> bool:
        reserved = sum(s.cells for s in self._slots.values()) + sum(_cells(s) for s in joining)
        return reserved + _cells(sequence) <= self.cells

    def _step(self, joining: list[Sequence]) -> None:
        entries: list[tuple[int, int, int, bool]] = []  # (token, sequence id, position, wants output)
        owners: list[list[Sequence]] = []  # the sequences each output row feeds, in output order
        for sequence in self._active:
            slot = self._slots[sequence]
            entries.append((sequence.last_token, slot.seq_id, slot.position, True))
            slot.position += 1
            owners.append([sequence])
        first: dict[tuple[int, ...], int] = {}  # prompt -> its output row
        copies: list[tuple[int, int]] = []  # (from sequence id, to sequence id) after the pass
        for sequence in joining:
            slot = self._slots[sequence] = _Slot(sequence, self._free_ids.pop(0))
            prompt = sequence.prompt_ids
            key = tuple(prompt)
            if key in first:  # the same prompt: prefilled once, its cells copied
                owners[first[key]].append(sequence)
                copies.append((self._slots[owners[first[key]][0]].seq_id, slot.seq_id))
                continue
            first[key] = len(owners)
            entries.extend((token, slot.seq_id, pos, pos == len(prompt) - 1) for pos, token in enumerate(prompt))
            owners.append([sequence])
        self.prefilled_prompts += len(first)
        self.largest_batch = max(self.largest_batch, len(self._active) + len(joining))
        self._active.extend(joining)
        logits, hidden = self.context.decode(entries)
        for source, target in copies:
            self.context.copy(source, target)
        self.steps += 1
        row_logits, row_hidden = torch.from_numpy(logits), torch.from_numpy(hidden)
        done: list[Sequence] = []
        for row, sequences in enumerate(owners):
            for sequence in sequences:  # (the hidden row is kept for the proof: each keeps its own copy)
                if sequence.cancelled.is_set() or sequence.advance(row_logits[row], row_hidden[row].clone()):
                    done.append(sequence)
        self._leave(done)

    def _leave(self, leaving: list[Sequence]) -> None:
        for sequence in leaving:
            if sequence in self._active:
                self._active.remove(sequence)
            slot = self._slots.pop(sequence, None)
            if slot is not None:
                self.context.drop(slot.seq_id)
                self._free_ids.append(slot.seq_id)


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
        params = lib.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        self.model = lib.llama_model_load_from_file(str(self.gguf).encode(), params)
        if not self.model:
            raise EngineError(f"llama.cpp could not load {self.gguf}")
        self.threads = threads or default_threads()
        self.context_length = min(context_length or int(lib.llama_model_n_ctx_train(self.model)), kv_cells)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(tokenizer_path)
        self.eos_ids = {int(self.tokenizer.eos_token_id)} if self.tokenizer.eos_token_id is not None else set()
        width = min(max_concurrency, STEP_WIDTH)
        self.context = LlamaContext(lib, self.model, kv_cells, width, self.threads)
        self.scheduler: LlamaScheduler = LlamaScheduler(self.context, width, name)
        self._reference: LlamaContext | None = None  # a one-sequence context for `prefill`
        self._reference_lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        return self.context.n_vocab

    def set_threads(self, threads: int) -> None:
        """Change llama.cpp's thread count of the serving context (takes effect at the next step)."""
        self.threads = threads
        self.context.set_threads(threads)

    # ------------------------------------------------- verification side

    def prefill(self, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over `token_ids` in a context of its own: (final hidden states, logits), one row per position."""
        with self._reference_lock:
            if self._reference is None:
                self._reference = LlamaContext(self.lib, self.model, self.context_length, 1, self.threads)
            context = self._reference
            try:
                logits, hidden = context.decode([(t, 0, p, True) for p, t in enumerate(token_ids)])
            finally:
                context.drop(0)
        return torch.from_numpy(hidden), torch.from_numpy(logits)
