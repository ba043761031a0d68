"""Calibration rows for pipeline stages: honest stages must pass their audit, cheating stages
must fail it (`allmende.engine.stages.verify_stage`, one stage alone on its committed input).

The default chat model (SmolLM2-135M-Instruct, 30 blocks) split into 3 stages; every row
generates greedy answers to the harness's questions through a chain of stage engines and
audits each stage of the chain against the validator's fp32 copy of that stage's registered
slice: a row's runs are questions x stages.

Honest: fp32 and bf16 stages of the fp32 registration, at batch 1 and in a continuous batch of
8 sessions (the others with other prompts, seeds and lengths, joining and leaving at other
steps, each step's calls queued together so the stage batches them: `StageEngine`); an F16
registration (the same slices in float16, their own slice hashes) served in fp16, at batch 1
and in a continuous batch.
Cheats: a skipped block (the middle one of every stage), weights perturbed by 2 % and 5 %
(after loading the registered slice, so the hash check passes), per-row int8 of an F16
registration's weights (computed in fp16).
Known limits (reported, not counted): bf16 of an F16 registration (0.005-0.008 against a limit
of 0.005: too close to the honest fp16 rows to call either way), int8 of an fp32 registration
(within the bf16 tolerance every fp32 registration grants, as for whole models).

Used by bench/verify.py --stages and tests/stages/test_stage_harness.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from allmende.core.stages import StageLayout, StageSpec
from allmende.engine import DEFAULT_CHAT_MODEL, SamplingParams, resolve_model
from allmende.engine.sampling import sample_token
from allmende.engine.stages import StageEngine, read_slice, slice_hash_of, stage_layout, verify_stage
from allmende.testing.harness import QUESTIONS

GREEDY = SamplingParams(max_tokens=32, temperature=0.0)
BATCH = 8  # sessions in a batched row's batch (the target and 7 others)
_names = itertools.count()


# what a row is: a cheat the audit must catch, an honest chain it must pass, or a known limit
# (a cheat the audit cannot separate: reported, not counted)
HONEST, CHEAT, LIMIT = "honest", "cheat", "limit"


@dataclass
class StageRowResult:
    name: str
    kind: str  # HONEST, CHEAT or LIMIT
    runs: int = 0
    passed: int = 0
    worst_median_rel_error: float = 0.0
    best_median_rel_error: float = float("inf")
    batched_passes: int = 0  # forward passes over two or more sessions, in the chain's engines
    reasons: list[str] = field(default_factory=list)

    @property
    def wrong(self) -> int:
        """False alarms of an honest row, misses of a cheat (none for a known limit)."""
        if self.kind == HONEST:
            return self.runs - self.passed
        return self.passed if self.kind == CHEAT else 0


@dataclass
class Run:
    """One session's path through a chain: what each stage was sent and committed."""

    tokens: list[int] = field(default_factory=list)
    inputs: list[list[torch.Tensor]] = field(default_factory=list)
    proofs: list[list[tuple[int, int, bytes]]] = field(default_factory=list)


def generate(
    chain: list[StageEngine], prompts: list[list[int]], joins: list[int], lengths: list[int], seeds: list[int | None]
) -> list[Run]:
    """Generate every prompt through `chain`, session k running from step `joins[k]` for
    `lengths[k]` tokens (greedy where its seed is None, else seeded at T=0.8): each step's
    calls of all running sessions reach every stage together, so the stages batch them."""
    names = [f"harness{next(_names)}" for _ in prompts]
    runs = [Run([], [[] for _ in chain], [[] for _ in chain]) for _ in prompts]
    rows = [torch.tensor(p) for p in prompts]
    position = [0] * len(prompts)
    for step in range(max(j + n for j, n in zip(joins, lengths, strict=True))):
        running = [k for k in range(len(prompts)) if joins[k] <= step < joins[k] + lengths[k]]
        sent = {k: rows[k] for k in running}
        data = dict(sent)
        for index, stage in enumerate(chain):
            outputs = stage.forward_many([(names[k], position[k], data[k]) for k in running])
            for k, out in zip(running, outputs, strict=True):
                runs[k].inputs[index].append(data[k])
                runs[k].proofs[index].append((position[k], int(data[k].shape[0]), out.proof))
                data[k] = out.hidden
                if out.logits is not None:
                    seed = seeds[k]
                    params = GREEDY if seed is None else SamplingParams(temperature=0.8, seed=seed)
                    token = sample_token(out.logits, params, seed or 0, step - joins[k])
                    runs[k].tokens.append(token)
                    rows[k] = torch.tensor([token])
        for k in running:
            position[k] += int(sent[k].shape[0])
    for stage in chain:
        for name in names:
            stage.close(name)
    return runs


def skip_block(engine: StageEngine) -> StageEngine:
    """Drop the middle block of the stage (a cheaper, wrong stage under the same id)."""
    middle = len(engine.layers) // 2
    engine.layers = torch.nn.ModuleList([layer for i, layer in enumerate(engine.layers) if i != middle])
    return engine


def perturb(engine: StageEngine, scale: float, seed: int = 1) -> StageEngine:
    """Every weight of the blocks multiplied by (1 + scale x Gaussian noise): other weights,
    served after the registered slice was loaded (so its hash check passed)."""
    noise = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in engine.layers.parameters():
            weight.mul_((1 + scale * torch.randn(weight.shape, generator=noise)).to(weight.dtype))
    return engine


def int8(engine: StageEngine) -> StageEngine:
    """Per-row symmetric int8 of every matrix the stage holds (blocks, embedding, head),
    computed back in the engine's dtype: what a provider quantising below its registration runs."""
    with torch.no_grad():
        matrices = [p for p in engine.layers.parameters() if p.dim() == 2]
        matrices += [t for t in (engine.embed, engine.head) if t is not None]
        for m in matrices:
            scale = m.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
            m.copy_(((m.float() / scale).round().clamp(-127, 127) * scale).to(m.dtype))
    return engine


class StageHarness:
    def __init__(self, questions: int = 4, tokens: int = 32, n_stages: int = 3, batch: int = BATCH) -> None:
        self.batch = batch  # sessions in a batched row's batch
        self.resolved = resolve_model(DEFAULT_CHAT_MODEL, progress=False)
        self.path = Path(self.resolved.path)
        self.tokens = tokens
        self.layout: StageLayout = stage_layout(self.path, self.resolved.model_id, n_stages)
        tokenizer: Any = AutoTokenizer.from_pretrained(self.path)
        self.prompts: dict[str, list[int]] = {}
        for q in QUESTIONS:
            rendered: Any = tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True
            )
            ids = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
            self.prompts[q] = [int(i) for i in ids]
        self.questions = QUESTIONS[:questions]
        self.slices = {spec.range: read_slice(self.path, spec.range) for spec in self.layout.stages}
        # the F16 registration: the same slices in float16, each with its own slice hash
        self.f16 = [
            StageSpec(spec.base, spec.range, slice_hash_of(self._f16_tensors(spec))) for spec in self.layout.stages
        ]
        self.reference = [self.engine(spec) for spec in self.layout.stages]  # the validator's, fp32
        self.reference_f16 = [self.engine(spec, f16=True) for spec in self.f16]  # fp32 on the F16 weights

    def _f16_tensors(self, spec: StageSpec) -> dict[str, torch.Tensor]:
        return {n: t.to(torch.float16) for n, t in self.slices[spec.range].items()}

    def engine(self, spec: StageSpec, dtype: torch.dtype = torch.float32, f16: bool = False) -> StageEngine:
        """A stage engine on a fresh copy of the registered slice (a cheat may change it in place)."""
        source = self.slices[spec.range] if not f16 else self._f16_tensors(spec)
        return StageEngine(self.path, spec, dtype=dtype, tensors={n: t.clone() for n, t in source.items()})

    def rows(self) -> list[tuple[str, str, Callable[[], list[StageEngine]], bool, bool]]:
        """(name, kind, build the chain, F16 registration, in a continuous batch)."""
        fp32, f16 = list(self.layout.stages), self.f16

        def chain(
            specs: list[StageSpec],
            dtype: torch.dtype,
            is_f16: bool,
            cheat: Callable[[StageEngine], StageEngine] | None = None,
        ) -> Callable[[], list[StageEngine]]:
            def build() -> list[StageEngine]:
                engines = [self.engine(s, dtype, is_f16) for s in specs]
                return [cheat(e) for e in engines] if cheat else engines

            return build

        f32, bf16, half = torch.float32, torch.bfloat16, torch.float16
        return [
            ("fp32 stage, batch 1", HONEST, chain(fp32, f32, False), False, False),
            ("bf16 stage vs fp32 audit, batch 1", HONEST, chain(fp32, bf16, False), False, False),
            (f"fp32 stage in a continuous batch of {self.batch}", HONEST, chain(fp32, f32, False), False, True),
            (f"bf16 stage in a continuous batch of {self.batch}", HONEST, chain(fp32, bf16, False), False, True),
            ("F16 registration served in fp16, batch 1", HONEST, chain(f16, half, True), True, False),
            (
                f"F16 registration served in fp16, continuous batch of {self.batch}",
                HONEST,
                chain(f16, half, True),
                True,
                True,
            ),
            ("a skipped block", CHEAT, chain(fp32, f32, False, skip_block), False, False),
            ("weights perturbed by 2 %", CHEAT, chain(fp32, f32, False, lambda e: perturb(e, 0.02)), False, False),
            ("weights perturbed by 5 %", CHEAT, chain(fp32, f32, False, lambda e: perturb(e, 0.05)), False, False),
            ("int8 of an F16 registration", CHEAT, chain(f16, half, True, int8), True, False),
            ("bf16 of an F16 registration", LIMIT, chain(f16, bf16, True), True, False),
            ("int8 of an fp32 registration", LIMIT, chain(fp32, f32, False, int8), False, False),
        ]

    def runs_of(self, chain: list[StageEngine], question: str, batched: bool) -> Run:
        """The target session's run: alone, or in a batch with `batch - 1` other sessions that
        join at steps 0, 1, ... and run for other lengths (seeded sampling), so sessions join
        and leave."""
        target = self.prompts[question]
        if not batched:
            return generate(chain, [target], [0], [self.tokens], [None])[0]
        others = [self.prompts[q] for q in QUESTIONS if q != question][: self.batch - 1]
        prompts = [target, *others]
        joins = [0, *range(len(others))]
        lengths = [self.tokens, *(4 + (5 * k) % self.tokens for k in range(1, len(others) + 1))]
        seeds: list[int | None] = [None, *range(100, 100 + len(others))]
        return generate(chain, prompts, joins, lengths, seeds)[0]

    def run(self, select: Callable[[str], bool] | None = None) -> list[StageRowResult]:
        results = []
        for name, kind, build, is_f16, batched in self.rows():
            if select is not None and not select(name):
                continue
            chain = build()
            before = sum(e.batched_steps for e in chain)
            audit = self.reference_f16 if is_f16 else self.reference
            result = StageRowResult(name, kind)
            for question in self.questions:
                run = self.runs_of(chain, question, batched)
                for index, validator in enumerate(audit):
                    check = verify_stage(validator, torch.cat(run.inputs[index]), run.proofs[index])
                    result.runs += 1
                    result.passed += int(check.ok)
                    result.worst_median_rel_error = max(result.worst_median_rel_error, check.median_rel_error)
                    result.best_median_rel_error = min(result.best_median_rel_error, check.median_rel_error)
                    if check.ok != (kind == HONEST) and len(result.reasons) < 2:
                        result.reasons.append(f"stage {index}: {check.reason}")
            result.batched_passes = sum(e.batched_steps for e in chain) - before
            results.append(result)
        return results
