"""A pipeline stage of a causal LM on transformers: only its slice of the weights, a KV
cache per session, hidden states in and hidden states out.

A stage holds blocks `[start, end)` of a Llama-family checkpoint (`model.layers.N.*`,
`model.embed_tokens`, `model.norm`, `lm_head`; Llama, Mistral, Qwen2 and SmolLM name them
so): the first stage also embeds token ids, the last also applies the final norm and the
head and returns the logits of the last position, which the caller draws from with the
verifiable draw (`allmende.engine.sampling.sample_token`). It reads only its own tensors
from the checkpoint (safetensors reads lazily), checks them against the slice hash its
registration names, and builds transformers' own decoder layers around them, so the
arithmetic is the reference's.

Positions are explicit: every call says at which position its rows start, and a session's
cache is cut back to that position first. A retried call (the reply was lost) therefore
recomputes instead of appending twice, and a replacement stage rebuilds a dead one's cache
from the session's history (`start=0` and every input so far).

Every output carries a TOPLOC-style commitment (`allmende.engine.proofs.commit`) of what
the stage's blocks added to the residual stream (output - input; for the last stage, the
final normed hidden states, as whole-model proofs commit): a validator re-runs the stage on
the committed input and checks it with `verify_stage`, one stage alone.

`StageBackend` is the interface a faster engine (CUDA graphs, paged KV) implements;
`StageEngine` is the reference. It batches calls of different sessions that arrive
together into one forward pass per step (continuous batching across sessions, see its
docstring), each session keeping its own KV cache between steps.
"""

from __future__ import annotations

import hashlib
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache
from transformers.masking_utils import create_causal_mask

from allmende.core.stages import (
    InvalidStage,
    StageLayout,
    StageRange,
    StageSpec,
    TensorDigest,
    slice_hash,
    split_blocks,
)
from allmende.engine.base import EngineError
from allmende.engine.proofs import MAX_MEDIAN_REL_ERROR, ProofCheck, check, commit

EMBED = "model.embed_tokens.weight"
NORM = "model.norm.weight"
HEAD = "lm_head.weight"
MAX_SESSIONS = 256  # sessions a stage keeps caches for; the least recently used goes first
SESSION_IDLE_S = 600.0  # a session unused this long is dropped at the next call
IDLE_EXIT_S = 5.0  # a stage's scheduler thread ends after this long without calls
F16_MEDIAN_REL_ERROR = 0.003  # the audit's limit for a stage registered in F16 (see `audit_limit`)


class StageSessionLost(EngineError):
    """The stage has no cache for this session up to the position asked (it restarted, or
    the session expired): the caller replays the session's history from position 0."""

    code = "stage_session_lost"
    status = 409


def _checkpoint(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InvalidStage(f"{folder} holds no safetensors checkpoint to slice")
    return files


def slice_names(config: Any, available: set[str], blocks: StageRange) -> dict[str, str]:
    """The tensors a stage loads: {name in the slice: name in the checkpoint}. A tied head
    is the embedding matrix, listed under the head's name for the last stage."""
    wanted: dict[str, str] = {}
    for name in available:
        if name.startswith("model.layers."):
            index = int(name.split(".")[2])
            if blocks.start <= index < blocks.end:
                wanted[name] = name
    if blocks.embeds:
        wanted[EMBED] = EMBED
    if blocks.heads:
        wanted[NORM] = NORM
        wanted[HEAD] = HEAD if HEAD in available else EMBED
    missing = sorted(source for source in wanted.values() if source not in available)
    if missing or not any(n.startswith("model.layers.") for n in wanted):
        raise InvalidStage(f"the checkpoint lacks tensors of blocks {blocks.start}-{blocks.end}: {missing[:3]}")
    if blocks.n_blocks != int(config.num_hidden_layers):
        raise InvalidStage(f"the model has {config.num_hidden_layers} blocks, the layout says {blocks.n_blocks}")
    return wanted


def read_slice(folder: Path, blocks: StageRange) -> dict[str, torch.Tensor]:
    """Only the stage's tensors, read from the checkpoint in `folder`."""
    config = AutoConfig.from_pretrained(folder)
    files = _checkpoint(folder)
    where: dict[str, Path] = {}
    for path in files:
        with safe_open(str(path), "pt") as handle:
            where.update(dict.fromkeys(handle.keys(), path))
    tensors: dict[str, torch.Tensor] = {}
    for name, source in slice_names(config, set(where), blocks).items():
        with safe_open(str(where[source]), "pt") as handle:
            tensors[name] = handle.get_tensor(source)
    return tensors


def digest(name: str, tensor: torch.Tensor) -> TensorDigest:
    data = tensor.detach().cpu().contiguous()
    raw = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
    dtype = str(data.dtype).removeprefix("torch.")
    return TensorDigest(name, dtype, tuple(data.shape), hashlib.sha256(raw).hexdigest())


def slice_hash_of(tensors: dict[str, torch.Tensor]) -> bytes:
    return slice_hash(digest(name, t) for name, t in tensors.items())


def stage_layout(folder: Path, base: bytes, n_stages: int) -> StageLayout:
    """The even split of the model in `folder` into `n_stages` stages, each with the hash
    of its slice: what the model's owner registers (`allmende stage register`)."""
    config = AutoConfig.from_pretrained(folder)
    specs = []
    for blocks in split_blocks(int(config.num_hidden_layers), n_stages):
        specs.append(StageSpec(base, blocks, slice_hash_of(read_slice(folder, blocks))))
    return StageLayout(tuple(specs))


def stage_of(folder: Path, base: bytes, n_stages: int, index: int) -> tuple[StageSpec, dict[str, torch.Tensor]]:
    """Stage `index` of the even split into `n_stages`, and its tensors: what a provider
    serving that one stage reads and hashes (never the other stages' slices)."""
    config = AutoConfig.from_pretrained(folder)
    ranges = split_blocks(int(config.num_hidden_layers), n_stages)
    if not 0 <= index < n_stages:
        raise InvalidStage(f"stage index {index} is not in 0-{n_stages - 1}")
    tensors = read_slice(folder, ranges[index])
    return StageSpec(base, ranges[index], slice_hash_of(tensors)), tensors


@dataclass(frozen=True)
class StageOutput:
    hidden: torch.Tensor  # (rows, hidden) float32: the next stage's input (final normed states for the last)
    logits: torch.Tensor | None  # the last stage: logits of the last row (vocab,), float32
    proof: bytes  # commitment (allmende.engine.proofs) of what the blocks added (last stage: of `hidden`)


class StageBackend(ABC):
    """What serving a stage needs from an engine."""

    spec: StageSpec
    hidden_size: int
    vocab_size: int
    context_length: int  # positions a session may hold (the model's)

    @abstractmethod
    def submit(self, session: str, start: int, inputs: torch.Tensor) -> Future[StageOutput]:
        """Queue `inputs` (token ids (rows,) for the first stage, hidden states (rows, hidden)
        otherwise) at positions `start ..` of `session`, to extend its cache; the future
        holds the output. Inputs of the wrong kind raise here, at once."""

    def forward(self, session: str, start: int, inputs: torch.Tensor) -> StageOutput:
        """`submit`, and wait for the output."""
        return self.submit(session, start, inputs).result()

    @abstractmethod
    def recompute(self, inputs: torch.Tensor) -> torch.Tensor:
        """The rows a stage's commitments cover (see `StageEngine._run`) for a whole input from
        position 0, with no cache: what a validator compares its commitments with."""

    @abstractmethod
    def close(self, session: str) -> None:
        """Forget a session's cache."""


@dataclass
class _Session:
    keys: list[torch.Tensor | None]  # per cache layer: (1, kv heads, length, head dim); [] before the first call
    values: list[torch.Tensor | None]
    length: int  # positions in the cache
    used: float


@dataclass
class _Call:
    """A queued call: its input rows already embedded (the first stage) and checked."""

    session: str
    start: int
    hidden: torch.Tensor  # (rows, hidden) in the layers' dtype, on the device
    future: Future[StageOutput]

    @property
    def rows(self) -> int:
        return int(self.hidden.shape[0])


class StageEngine(StageBackend):
    """The reference stage engine on transformers (CPU here, CUDA when present), with
    continuous batching across sessions.

    Calls queue; one scheduler thread runs them in steps. Each step takes the oldest call
    and every other queued call of its kind (one row: a decode step; several: a prompt or a
    replay), at most one per session and `max_batch` calls, prompts up to `prefill_rows`
    padded positions, and runs them in one forward pass through transformers' own layers:
    each session's KV cache is left-padded to the step's longest and stacked, its new rows
    left-padded to the step's most, with the matching 2-D attention mask and each row's own
    position ids (the whole-model engine's batch, `allmende.engine.scheduler`, does the
    same). Each session then keeps its own rows of the step's cache. A call alone is a
    batch of one with no padding: the arithmetic of an unbatched stage. Padding adds exact
    zeros to the attention and other batch shapes change the kernels' summation order, so a
    batched call's rows differ from its unbatched rows only by rounding (fp32: about 1e-6;
    what `verify_stage` accepts is 0.02)."""

    def __init__(
        self,
        folder: Path,
        spec: StageSpec,
        dtype: torch.dtype = torch.float32,
        device: str | None = None,
        tensors: dict[str, torch.Tensor] | None = None,  # the slice, already read (a validator's copy)
        max_batch: int = 32,  # calls one step runs at most
        prefill_rows: int = 2048,  # padded positions of one step of several-row calls (at least one call)
    ) -> None:
        self.spec = spec
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_batch = max_batch
        self.prefill_rows = prefill_rows
        blocks = spec.range
        weights = tensors if tensors is not None else read_slice(Path(folder), blocks)
        if slice_hash_of(weights) != spec.slice:
            raise InvalidStage(f"the weights of blocks {blocks.start}-{blocks.end} do not match the stage's slice hash")
        # the precision the registration promises (its blocks' tensors), whatever this engine computes in
        self.registered_dtype = next(t.dtype for n, t in weights.items() if n.startswith("model.layers."))
        config = AutoConfig.from_pretrained(folder)
        self.config = config
        self.hidden_size = int(config.hidden_size)
        self.vocab_size = int(config.vocab_size)
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 2048)
        # transformers' own layers, numbered locally (the cache indexes them from 0), built on
        # the meta device and given the slice's tensors: no full model is ever materialised
        local = AutoConfig.from_pretrained(folder)
        local.num_hidden_layers = blocks.end - blocks.start
        local.tie_word_embeddings = False
        self.local_config = local
        auto: Any = AutoModelForCausalLM
        with torch.device("meta"):
            skeleton: Any = auto.from_config(local, dtype=dtype)
        state = {}
        for name, tensor in weights.items():
            if name.startswith("model.layers."):
                parts = name.split(".")
                parts[2] = str(int(parts[2]) - blocks.start)
                name = ".".join(parts)
            state[name] = tensor.to(dtype)
        self.layers: Any = skeleton.model.layers
        self.layers.load_state_dict(
            {k.removeprefix("model.layers."): v for k, v in state.items() if k.startswith("model.layers.")},
            assign=True,
        )
        self.layers.to(self.device).eval()
        self.rotary: Any = type(skeleton.model.rotary_emb)(config=local).to(self.device)
        self.embed: Any = None
        self.norm: Any = None
        self.head: Any = None
        if blocks.embeds:
            self.embed = state[EMBED].to(self.device)
        if blocks.heads:
            self.norm = skeleton.model.norm
            self.norm.load_state_dict({"weight": state[NORM]}, assign=True)
            self.norm.to(self.device).eval()
            self.head = state[HEAD].to(self.device)
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._lock = threading.Lock()  # the sessions
        self._compute = threading.Lock()  # one forward pass at a time (a step, or a validator's recompute)
        self._queue: deque[_Call] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.steps = 0  # forward passes the scheduler ran
        self.batched_steps = 0  # ... of them over calls of two or more sessions
        self.largest_batch = 0  # most calls one pass ran
        self.calls = 0  # calls answered (or failed) by a pass

    # --- the computation -----------------------------------------------------------------

    def _prepare(self, inputs: torch.Tensor) -> torch.Tensor:
        """A call's input as rows of the first layer's input: (rows, hidden), on the device.
        Raises EngineError for inputs this stage does not take."""
        if self.embed is not None:
            if inputs.dim() != 1 or inputs.dtype not in (torch.int64, torch.int32):
                raise EngineError("the first stage takes token ids: one integer per position")
            if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= self.vocab_size):
                raise EngineError(f"token ids must be in 0-{self.vocab_size - 1}")
            hidden: torch.Tensor = torch.nn.functional.embedding(inputs.to(self.device).long(), self.embed)
        else:
            if inputs.dim() != 2 or inputs.shape[1] != self.hidden_size or not inputs.is_floating_point():
                raise EngineError(f"this stage takes hidden states of shape (positions, {self.hidden_size})")
            if not bool(torch.isfinite(inputs).all()):
                raise EngineError("hidden states must be finite numbers")
            hidden = inputs.to(self.device, self.layers[0].input_layernorm.weight.dtype)
        if hidden.shape[0] == 0:
            raise EngineError("a stage call carries at least one position")
        return hidden

    def _layers(
        self, hidden: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None, cache: DynamicCache | None
    ) -> torch.Tensor:
        """transformers' decoder layers over a (batch, rows, hidden) input."""
        causal = create_causal_mask(
            config=self.local_config, inputs_embeds=hidden, attention_mask=mask, cache=cache, position_ids=position_ids
        )
        position_embeddings = self.rotary(hidden, position_ids=position_ids)
        for layer in self.layers:
            hidden = layer(
                hidden,
                attention_mask=causal,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=cache is not None,
            )
        return hidden

    def _committed(self, out: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output rows, the rows its commitment covers): for the last stage both are the final
        normed hidden states (as whole-model proofs commit); for the others the commitment
        covers what the stage's blocks added to the residual stream (output - input), so the
        few huge dimensions the stream carries through every block do not drown what this
        stage computed: a skipped block moves the committed values 5-10 times as much."""
        if self.norm is not None:
            normed: torch.Tensor = self.norm(out).float()
            return normed, normed
        rows = out.float()
        return rows, rows - residual.float()

    def _run(self, inputs: torch.Tensor, start: int, cache: DynamicCache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One input alone (no batch): what a validator recomputes."""
        hidden = self._prepare(inputs)
        rows = hidden.shape[0]
        position_ids = torch.arange(start, start + rows, device=self.device).unsqueeze(0)
        out = self._layers(hidden.unsqueeze(0), position_ids, None, cache)[0]
        return self._committed(out, hidden)

    @torch.inference_mode()
    def _pass(self, calls: list[_Call], caches: list[_Session]) -> list[torch.Tensor]:
        """One forward pass over `calls` (one per session, each at its session's cache
        length), returning each call's output rows and leaving each session its new cache."""
        n = len(calls)
        most = max(c.rows for c in calls)  # new rows, left-padded to this
        longest = max(s.length for s in caches)  # cached positions, left-padded to this
        padded = n > 1 and any(c.rows != most or s.length != longest for c, s in zip(calls, caches, strict=True))
        hidden = torch.zeros((n, most, self.hidden_size), dtype=calls[0].hidden.dtype, device=self.device)
        position_ids = torch.zeros((n, most), dtype=torch.long, device=self.device)
        mask = torch.zeros((n, longest + most), dtype=torch.long, device=self.device)
        for i, (call, state) in enumerate(zip(calls, caches, strict=True)):
            hidden[i, most - call.rows :] = call.hidden
            position_ids[i, most - call.rows :] = torch.arange(call.start, call.start + call.rows)
            position_ids[i, : most - call.rows] = call.start  # padding rows: any position, masked out
            mask[i, longest - state.length : longest] = 1
            mask[i, longest + most - call.rows :] = 1
        cache = DynamicCache(config=self.local_config)
        if longest:
            layers: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
            some = next(s for s in caches if s.length)  # a session with a cache: the shape of an empty one
            for layer, template in enumerate(some.keys):
                if template is None:  # a layer the cache never filled (a cheat's skipped block)
                    layers.append((None, None))
                    continue
                keys, values = [], []
                for state in caches:
                    k = state.keys[layer] if state.length else template[:, :, :0]
                    v = state.values[layer] if state.length else template[:, :, :0]
                    assert k is not None and v is not None
                    pad = longest - state.length
                    keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)) if pad else k)
                    values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)) if pad else v)
                layers.append((torch.cat(keys), torch.cat(values)))
            cache = DynamicCache(ddp_cache_data=layers, config=self.local_config)
        out = self._layers(hidden, position_ids, mask if padded else None, cache)
        for i, (call, state) in enumerate(zip(calls, caches, strict=True)):
            keep = torch.cat(
                [
                    torch.arange(longest - state.length, longest, device=self.device),
                    torch.arange(longest + most - call.rows, longest + most, device=self.device),
                ]
            )
            state.keys = [None if k is None else k[i : i + 1].index_select(2, keep) for k, _, *_ in cache]
            state.values = [None if v is None else v[i : i + 1].index_select(2, keep) for _, v, *_ in cache]
            state.length = call.start + call.rows
        return [out[i, most - c.rows :] for i, c in enumerate(calls)]

    # --- the scheduler -------------------------------------------------------------------

    def submit(self, session: str, start: int, inputs: torch.Tensor) -> Future[StageOutput]:
        return self._enqueue([(session, start, inputs)])[0].future

    def submit_many(self, calls: list[tuple[str, int, torch.Tensor]]) -> list[Future[StageOutput]]:
        """Queue several (session, start, inputs) calls at once: they reach the scheduler
        together, so calls of different sessions share a pass."""
        return [c.future for c in self._enqueue(calls)]

    def forward_many(self, calls: list[tuple[str, int, torch.Tensor]]) -> list[StageOutput]:
        """`submit_many`, and wait for every output."""
        return [future.result() for future in self.submit_many(calls)]

    def _enqueue(self, calls: list[tuple[str, int, torch.Tensor]]) -> list[_Call]:
        """Check and embed the calls' inputs (EngineError here, in the caller's thread), then
        queue them together."""
        if any(start < 0 for _, start, _ in calls):
            raise EngineError("start must be a position, 0 or more")
        with torch.inference_mode():
            queued = [_Call(session, start, self._prepare(x), Future()) for session, start, x in calls]
        with self._wake:
            self._queue.extend(queued)
            if self._thread is None or not self._thread.is_alive():
                name = f"stage-{self.spec.stage_id_hex[2:10]}"
                self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
                self._thread.start()
            self._wake.notify()
        return queued

    def _take(self) -> list[_Call]:
        """The next step's calls (the queue's lock held): the oldest, and every queued call of
        its kind from other sessions, oldest first, within the step's limits."""
        head = self._queue[0]
        several = head.rows > 1
        chosen: list[_Call] = []
        sessions: set[str] = set()
        for call in list(self._queue):
            if len(chosen) == self.max_batch:
                break
            if call.session in sessions or (call.rows > 1) != several:
                sessions.add(call.session)  # a session's later calls wait for its earlier ones
                continue
            if several and chosen and (len(chosen) + 1) * max(call.rows, *(c.rows for c in chosen)) > self.prefill_rows:
                sessions.add(call.session)
                continue
            chosen.append(call)
            sessions.add(call.session)
        for call in chosen:
            self._queue.remove(call)
        return chosen

    def _loop(self) -> None:
        """Run steps while calls queue; after `IDLE_EXIT_S` without any the thread ends (the
        next call starts another), so an engine no longer used can be freed."""
        while True:
            with self._wake:
                while not self._queue:
                    if not self._wake.wait(IDLE_EXIT_S) and not self._queue:
                        self._thread = None
                        return
                calls = self._take()
            self._step(calls)

    def _step(self, calls: list[_Call]) -> None:
        """Run one step; a call whose session cannot take it fails alone, a failed pass fails
        the calls in it (and forgets the sessions they opened), never the scheduler."""
        ready: list[_Call] = []
        states: list[_Session] = []
        opened: list[str] = []
        with self._lock:
            for call in calls:
                try:
                    new = call.session not in self._sessions
                    states.append(self._session(call.session, call.start))
                except Exception as exc:
                    call.future.set_exception(exc)
                    continue
                ready.append(call)
                if new:
                    opened.append(call.session)
        self.calls += len(calls)
        if not ready:
            return
        try:
            with self._compute:
                outputs = self._pass(ready, states)
                self.steps += 1
                self.batched_steps += int(len(ready) > 1)
                self.largest_batch = max(self.largest_batch, len(ready))
                results = []
                for call, out in zip(ready, outputs, strict=True):
                    results.append(self._output(out, call.hidden))
        except Exception as exc:
            with self._lock:
                for name in opened:  # a refused first call leaves nothing behind
                    self._sessions.pop(name, None)
            for call in ready:
                call.future.set_exception(exc)
            return
        for call, result in zip(ready, results, strict=True):
            call.future.set_result(result)

    @torch.inference_mode()
    def _output(self, out: torch.Tensor, residual: torch.Tensor) -> StageOutput:
        hidden, committed = self._committed(out, residual)
        logits = None
        if self.head is not None:
            logits = (hidden[-1].to(self.head.dtype) @ self.head.T).float().cpu()
        return StageOutput(hidden.cpu().contiguous(), logits, commit(committed))

    @torch.inference_mode()
    def recompute(self, inputs: torch.Tensor) -> torch.Tensor:
        with self._compute:
            return self._run(inputs, 0, None)[1].cpu()

    def close(self, session: str) -> None:
        with self._lock:
            self._sessions.pop(session, None)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def holds(self, session: str) -> bool:
        """Whether the stage keeps a cache for `session`."""
        return session in self._sessions

    def _session(self, session: str, start: int) -> _Session:
        """The session's cache, cut back to `start` (the lock held)."""
        now = time.monotonic()
        for name in [n for n, s in self._sessions.items() if now - s.used > SESSION_IDLE_S]:
            del self._sessions[name]
        state = self._sessions.get(session)
        if state is None:
            if start != 0:
                raise StageSessionLost(f"no cache for session {session!r}: replay its history from position 0")
            state = _Session([], [], 0, now)
            self._sessions[session] = state
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        if start > state.length:
            raise StageSessionLost(f"session {session!r} holds {state.length} positions, the call starts at {start}")
        if start < state.length:  # a retried or replayed call: recompute from `start`
            state.keys = [None if k is None else k[:, :, :start] for k in state.keys] if start else []
            state.values = [None if v is None else v[:, :, :start] for v in state.values] if start else []
            state.length = start
        state.used = now
        self._sessions.move_to_end(session)
        return state


def audit_limit(stage: StageBackend) -> float:
    """The median relative error a stage's audit accepts, by its registration's precision.

    A stage registered in fp32 (or bf16) is held to the whole-model limit, which lets an
    honest bf16 provider pass (0.005-0.013 on SmolLM2's stages against an fp32 audit). A
    stage registered in F16 promises F16 arithmetic: honest fp16 serving shows 0.0008-0.0013
    against an fp32 audit of the F16 weights, per-row int8 of those weights 0.005-0.022 and
    bf16 0.005 (`allmende.testing.stage_harness`, `bench/verify.py --stages`), so its limit
    sits between: serving an F16 registration in int8 or bf16 is serving below it."""
    if getattr(stage, "registered_dtype", None) == torch.float16:
        return F16_MEDIAN_REL_ERROR
    return MAX_MEDIAN_REL_ERROR


def verify_stage(stage: StageBackend, inputs: torch.Tensor, proofs: list[tuple[int, int, bytes]]) -> ProofCheck:
    """Check a stage's commitments against a recomputation on the committed input.

    `inputs` are the stage's inputs of a session from position 0 (token ids or hidden
    states), `proofs` the (start, rows, proof) of each call the stage answered. One pass
    over the whole input recomputes every output row; each call's proof must match its
    rows within the whole-model calibration (`allmende.engine.proofs.check`), tightened for
    a stage registered in F16 (`audit_limit`)."""
    limit = audit_limit(stage)
    recomputed = stage.recompute(inputs)
    worst: ProofCheck | None = None
    for start, rows, proof in proofs:
        if start < 0 or rows < 1 or start + rows > recomputed.shape[0]:
            return ProofCheck(
                False, f"a proof covers positions {start}-{start + rows} outside the input", 1.0, 1.0, 0.0
            )
        result = check(proof, recomputed[start : start + rows], limit)
        if not result.ok:
            return result
        if worst is None or result.median_rel_error > worst.median_rel_error:
            worst = result
    if worst is None:
        return ProofCheck(False, "no proofs to check", 1.0, 1.0, 0.0)
    return worst
