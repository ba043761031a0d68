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

import asyncio
import contextlib
import ctypes
import os
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from allmende.engine.base import Engine, EngineError, Kind, PromptTooLong, SamplingParams, TokenEvent, choice_params
from allmende.engine.sequence import Sequence

MAX_CHOICES = 16
BATCH_TOKENS = 512  # tokens per llama_decode call (prompt chunks included)


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
        self.ctx = lib.llama_init_from_model(model, params)
        if not self.ctx:
            raise EngineError(f"llama.cpp could not create a context of {n_ctx} cells")
        self.memory = lib.llama_get_memory(self.ctx)
        self.n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model)))
        self.n_embd = int(lib.llama_model_n_embd(model))
        self.batch = lib.llama_batch_init(BATCH_TOKENS, 0, 1)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Run (token, sequence id, position, wants output) entries through the model,
        `BATCH_TOKENS` at a time; return (logits, final hidden state) per wanted output, in order."""
        outputs: list[tuple[np.ndarray, np.ndarray]] = []
        lib, batch = self.lib, self.batch
        for start in range(0, len(entries), BATCH_TOKENS):
            chunk = entries[start : start + BATCH_TOKENS]
            batch.n_tokens = len(chunk)
            rows = []
            for i, (token, seq, pos, out) in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = int(out)
                if out:
                    rows.append(i)
            code = lib.llama_decode(self.ctx, batch)
            if code != 0:
                raise EngineError(f"llama_decode failed with code {code}")
            for i in rows:
                logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                hidden = np.ctypeslib.as_array(lib.llama_get_embeddings_ith(self.ctx, i), shape=(self.n_embd,))
                outputs.append((logits.copy(), hidden.copy()))
        return outputs

    def drop(self, seq: int) -> None:
        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def copy(self, source: int, target: int) -> None:
        self.lib.llama_memory_seq_cp(self.memory, source, target, -1, -1)

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None


class _Slot:
    """A sequence in the llama.cpp batch: its sequence id, its next position, its reservation."""

    def __init__(self, sequence: Sequence, seq_id: int) -> None:
        self.sequence = sequence
        self.seq_id = seq_id
        self.position = 0
        self.cells = len(sequence.prompt_ids) + sequence.params.max_tokens


class LlamaScheduler:
    """Continuous batching over one llama.cpp context (one thread per model).

    Each step, at its boundary: cancelled sequences leave (their cache cells and sequence
    id are freed), waiting sequences join while a sequence id and enough cache cells are
    free, and one `llama_decode` runs the joiners' prompts (identical prompts once; the
    copies share its cells) together with the next token of every running sequence."""

    def __init__(self, context: LlamaContext, max_batch: int, name: str, prefill_tokens: int = 2048) -> None:
        self.context = context
        self.max_batch = max_batch
        self.prefill_tokens = prefill_tokens
        self.name = name
        self.cells = int(context.lib.llama_n_ctx(context.ctx))
        self._free_ids = list(range(max_batch))
        self._waiting: deque[Sequence] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._active: list[_Slot] = []
        self.steps = 0
        self.largest_batch = 0
        self.prefilled_prompts = 0

    def submit(self, sequences: list[Sequence]) -> None:
        with self._wake:
            self._waiting.extend(sequences)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=f"llamacpp-{self.name}", daemon=True)
                self._thread.start()
            self._wake.notify()

    def cancel(self, sequence: Sequence) -> None:
        sequence.cancelled.set()
        with self._wake:
            if sequence in self._waiting:
                self._waiting.remove(sequence)
            self._wake.notify()

    @property
    def active(self) -> int:
        return sum(not s.sequence.finished and not s.sequence.cancelled.is_set() for s in list(self._active))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._active:
                    self._wake.wait()
                self._leave([s for s in self._active if s.sequence.cancelled.is_set()])
                joining: list[_Slot] = []
                budget = self.prefill_tokens
                reserved = sum(s.cells for s in self._active)
                while self._waiting and self._free_ids:
                    head = self._waiting[0]
                    need = len(head.prompt_ids) + head.params.max_tokens
                    if reserved + need > self.cells or (joining and len(head.prompt_ids) > budget):
                        break
                    budget -= len(head.prompt_ids)
                    reserved += need
                    joining.append(_Slot(self._waiting.popleft(), self._free_ids.pop(0)))
            try:
                self._step(joining)
            except Exception as exc:  # a failed pass fails the sequences in it, not the scheduler
                for slot in [*self._active, *joining]:
                    slot.sequence.fail(exc)
                self._leave([*self._active, *joining])

    def _step(self, joining: list[_Slot]) -> None:
        entries: list[tuple[int, int, int, bool]] = []  # (token, sequence id, position, wants output)
        owners: list[list[_Slot]] = []  # the slots each output row feeds, in output order
        running = [s for s in self._active if not s.sequence.cancelled.is_set()]
        for slot in running:
            entries.append((slot.sequence.last_token, slot.seq_id, slot.position, True))
            slot.position += 1
            owners.append([slot])
        first: dict[tuple[int, ...], int] = {}  # prompt -> its output row
        copies: list[tuple[int, int]] = []  # (from sequence id, to sequence id) after the pass
        for slot in joining:
            prompt = slot.sequence.prompt_ids
            slot.position = len(prompt)
            key = tuple(prompt)
            if key in first:  # the same prompt: prefilled once, its cells copied
                owners[first[key]].append(slot)
                copies.append((owners[first[key]][0].seq_id, slot.seq_id))
                continue
            first[key] = len(owners)
            entries.extend((token, slot.seq_id, pos, pos == len(prompt) - 1) for pos, token in enumerate(prompt))
            owners.append([slot])
        self.prefilled_prompts += len(first)
        self._active.extend(joining)
        outputs = self.context.decode(entries)
        for source, target in copies:
            self.context.copy(source, target)
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len(running) + len(joining))
        done: list[_Slot] = []
        for (logits, hidden), slots in zip(outputs, owners, strict=True):
            row_logits, row_hidden = torch.from_numpy(logits), torch.from_numpy(hidden)
            for slot in slots:
                if slot.sequence.cancelled.is_set() or slot.sequence.advance(row_logits, row_hidden.clone()):
                    done.append(slot)
        self._leave(done)

    def _leave(self, leaving: list[_Slot]) -> None:
        for slot in leaving:
            if slot in self._active:
                self._active.remove(slot)
            self.context.drop(slot.seq_id)
            if slot.seq_id not in self._free_ids:
                self._free_ids.append(slot.seq_id)


class LlamaCppEngine(Engine):
    """A GGUF chat/completion model served by llama.cpp, verifiable like the transformers engine."""

    kind = "generate"

    def __init__(
        self,
        name: str,
        gguf: Path,
        tokenizer_path: Path,  # the converted folder of the same GGUF (its tokenizer and chat template)
        model_id: bytes,
        max_concurrency: int = 16,
        threads: int | None = None,
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
        self.lib = lib
        params = lib.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        self.model = lib.llama_model_load_from_file(str(self.gguf).encode(), params)
        if not self.model:
            raise EngineError(f"llama.cpp could not load {self.gguf}")
        self.threads = threads or min(os.cpu_count() or 1, 8)
        self.context_length = min(context_length or int(lib.llama_model_n_ctx_train(self.model)), kv_cells)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(tokenizer_path)
        self.eos_ids = {int(self.tokenizer.eos_token_id)} if self.tokenizer.eos_token_id is not None else set()
        self.context = LlamaContext(lib, self.model, kv_cells, max_concurrency, self.threads)
        self.scheduler = LlamaScheduler(self.context, max_concurrency, name)
        self._reference: LlamaContext | None = None  # a one-sequence context for `prefill`
        self._reference_lock = threading.Lock()

    # ----------------------------------------------------------- prompts

    def prompt_ids(self, kind: Kind, body: dict[str, object]) -> list[int]:
        from allmende.engine.transformers_lm import CausalLMEngine

        return CausalLMEngine.prompt_ids(self, kind, body)  # type: ignore[arg-type]  # same tokenizer, same rules

    def check_length(self, prompt_ids: list[int], max_tokens: int) -> None:
        if not prompt_ids:
            raise EngineError("the prompt is empty")
        vocab = self.context.n_vocab
        if not all(isinstance(i, int) and 0 <= i < vocab for i in prompt_ids):
            raise EngineError(f"prompt token ids must be integers in [0, {vocab})")
        if len(prompt_ids) + max_tokens > self.context_length:
            raise PromptTooLong(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceed the context length "
                f"of {self.name} ({self.context_length})"
            )

    # -------------------------------------------------------- generation

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        self.check_length(prompt_ids, params.max_tokens)
        return self._one_choice(prompt_ids, params)

    async def _one_choice(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        async with contextlib.aclosing(self._stream(prompt_ids, [params])) as stream:
            async for _, event in stream:
                yield event

    def generate_choices(
        self, prompt_ids: list[int], params: SamplingParams, n: int
    ) -> AsyncIterator[tuple[int, TokenEvent]]:
        """`n` completions of one prompt (prefilled once); choice i samples with `choice_params(params, i)`."""
        self.check_length(prompt_ids, params.max_tokens)
        if not 1 <= n <= MAX_CHOICES:
            raise EngineError(f"n must be between 1 and {MAX_CHOICES}")
        return self._stream(prompt_ids, [choice_params(params, i) for i in range(n)])

    async def _stream(
        self, prompt_ids: list[int], choices: list[SamplingParams]
    ) -> AsyncGenerator[tuple[int, TokenEvent], None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, TokenEvent | BaseException | None]] = asyncio.Queue()

        def emitter(index: int) -> Any:
            def emit(item: TokenEvent | BaseException | None) -> None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(queue.put_nowait, (index, item))

            return emit

        sequences = [
            Sequence(list(prompt_ids), p, emitter(i), self.decode, self.eos_ids, "cpu") for i, p in enumerate(choices)
        ]
        self.scheduler.submit(sequences)
        running = len(sequences)
        try:
            while running:
                index, item = await queue.get()
                if item is None:
                    running -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                yield index, item
        finally:
            for sequence in sequences:
                if not sequence.finished:
                    self.scheduler.cancel(sequence)

    async def embed(self, texts: list[str | list[int]]) -> tuple[list[list[float]], int]:
        raise EngineError(f"{self.name} is a generative model; it does not do embeddings")

    # ------------------------------------------------- verification side

    def prefill(self, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over `token_ids` in a context of its own: (final hidden states, logits), one row per position."""
        with self._reference_lock:
            if self._reference is None:
                self._reference = LlamaContext(self.lib, self.model, self.context_length, 1, self.threads)
            context = self._reference
            try:
                rows = context.decode([(t, 0, p, True) for p, t in enumerate(token_ids)])
            finally:
                context.drop(0)
        hidden = torch.from_numpy(np.stack([h for _, h in rows]))
        logits = torch.from_numpy(np.stack([lg for lg, _ in rows]))
        return hidden, logits

    def final_hidden_states(self, token_ids: list[int]) -> torch.Tensor:
        return self.prefill(token_ids)[0]

    def decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def encode_text(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]
