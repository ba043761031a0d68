"""Calibration harness for proof checking: honest variants must pass, cheats must fail.

Honest: fp32, bf16 (provider) vs fp32 (validator), 1 vs 2 threads, the validator's
forward pass inside a batch of 4, the provider's generation inside a continuous batch
(other sequences joining and leaving at other steps), seeded sampling, and GPU vs CPU
when CUDA is present.
Cheats: another model under the claimed id (other seed), int8-quantised weights, a
skipped layer, a tampered system prompt, fabricated output tokens.
Used by tests/validator (few prompts) and bench/verify.py (more prompts, timings).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from allmende.engine.base import Generation, SamplingParams, collect
from allmende.engine.proofs import commit
from allmende.engine.tiny import SEED, ensure_tiny_model, write_tiny_model
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.testing.cheats import quantize_int8, skip_last_layer
from allmende.validator.checker import Verdict, verify_completion

SYSTEM = "Du bist ein hilfreicher Assistent der Allmende."
QUESTIONS = [
    "Was ist eine Allmende?",
    "Erkläre Zinseszins.",
    "Write a haiku about GPUs.",
    "Wie spät ist es?",
    "Name three rivers in Europe.",
    "What is 17 times 23?",
    "Translate 'commons' into French.",
    "Give me a recipe for bread.",
    "Why is the sky blue?",
    "Summarise the plot of Faust.",
    "What does a validator do?",
    "List prime numbers below 30.",
    "Wer schrieb die Ilias?",
    "How do payment channels work?",
    "Describe a cat in one sentence.",
    "What is TOPLOC?",
]
GREEDY = SamplingParams(max_tokens=64, temperature=0.0)
SAMPLED = SamplingParams(max_tokens=64, temperature=0.8, top_p=0.9, seed=1234)


@dataclass
class Claim:
    prompt_ids: list[int]  # the prompt the provider claims it answered
    output_ids: list[int]
    proof: bytes
    params: SamplingParams
    generation_seconds: float


@dataclass
class VariantResult:
    name: str
    honest: bool
    runs: int = 0
    passed: int = 0
    worst_median_rel_error: float = 0.0
    best_median_rel_error: float = float("inf")
    worst_overlap: float = 1.0
    reasons: list[str] = field(default_factory=list)

    @property
    def wrong(self) -> int:
        """False alarms for an honest variant, misses for a cheat."""
        return self.runs - self.passed if self.honest else self.passed


def messages(question: str, system: str = SYSTEM) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}


def generate(engine: CausalLMEngine, prompt_ids: list[int], params: SamplingParams) -> tuple[list[int], bytes, float]:
    start = time.perf_counter()
    gen = asyncio.run(collect(engine.generate(prompt_ids, params), len(prompt_ids)))
    return gen.token_ids, gen.proof, time.perf_counter() - start


def generate_in_batch(
    engine: CausalLMEngine, prompt_ids: list[int], params: SamplingParams, others: list[list[int]]
) -> tuple[list[int], bytes, float]:
    """Generate `prompt_ids` while 7 other sequences share the engine's batch: they have other
    prompts, lengths and sampling parameters, and join and leave at other steps."""

    async def other(k: int) -> Generation:
        for _ in range(k):  # join k event-loop turns later, i.e. usually at a later step
            await asyncio.sleep(0.001)
        prompt = others[(len(prompt_ids) + k) % len(others)]
        mix = SamplingParams(max_tokens=4 + 9 * k, temperature=0.3 * (k % 3), top_p=0.95, seed=k)
        return await collect(engine.generate(prompt, mix), len(prompt))

    async def main() -> tuple[list[int], bytes, float]:
        start = time.perf_counter()
        target, *_ = await asyncio.gather(
            collect(engine.generate(prompt_ids, params), len(prompt_ids)), *(other(k) for k in range(1, 8))
        )
        return target.token_ids, target.proof, time.perf_counter() - start

    return asyncio.run(main())


def load(path: Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> CausalLMEngine:
    """The tiny model on `device`: the CPU unless asked (the validator, and every CPU variant,
    stays on the CPU on a machine with CUDA too)."""
    return CausalLMEngine("allmende:tiny", path, dtype=dtype, device=device)


class Harness:
    def __init__(self, questions: int = 8) -> None:
        self.path = ensure_tiny_model()
        self.reference = load(self.path)
        self.questions = QUESTIONS[:questions]
        self._tmp = tempfile.TemporaryDirectory()
        self._gpu: CausalLMEngine | None = None

    def prompt(self, question: str, system: str = SYSTEM) -> list[int]:
        return self.reference.prompt_ids("chat", messages(question, system))

    def validate(self, claim: Claim, batch: int = 1) -> tuple[Verdict, float]:
        start = time.perf_counter()
        sequence = claim.prompt_ids + claim.output_ids
        single = batch == 1
        hidden_logits = self.reference.prefill(sequence) if single else self._prefill_in_batch(sequence, batch)
        verdict = verify_completion(hidden_logits, len(claim.prompt_ids), claim.output_ids, claim.proof, claim.params)
        return verdict, time.perf_counter() - start

    @torch.inference_mode()
    def _prefill_in_batch(self, sequence: list[int], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The target sequence computed alongside `batch - 1` others (right-padded)."""
        rng = random.Random(len(sequence))
        others = [[rng.randrange(256) for _ in range(rng.randint(8, len(sequence)))] for _ in range(batch - 1)]
        rows = [sequence, *others]
        width = max(len(r) for r in rows)
        pad = int(self.reference.tokenizer.pad_token_id)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        out = self.reference.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        n = len(sequence)
        return out.hidden_states[-1][0, :n].float(), out.logits[0, :n].float()

    # ------------------------------------------------------------- variants

    def variants(self) -> list[tuple[str, bool, Callable[[str], Claim], int]]:
        """(name, honest, make a claim for a question, validator batch size)."""
        ref = self.reference
        bf16 = load(self.path, torch.bfloat16)
        other = load(write_tiny_model(Path(self._tmp.name) / "other", SEED + 1))
        int8 = quantize_int8(load(self.path))
        skipped = skip_last_layer(load(self.path))

        def honest(engine: CausalLMEngine, params: SamplingParams = GREEDY) -> Callable[[str], Claim]:
            def make(question: str) -> Claim:
                prompt = self.prompt(question)
                out, proof, seconds = generate(engine, prompt, params)
                return Claim(prompt, out, proof, params, seconds)

            return make

        def in_a_batch(params: SamplingParams) -> Callable[[str], Claim]:
            def make(question: str) -> Claim:
                prompt = self.prompt(question)
                out, proof, seconds = generate_in_batch(ref, prompt, params, [self.prompt(q) for q in QUESTIONS])
                return Claim(prompt, out, proof, params, seconds)

            return make

        def one_thread(question: str) -> Claim:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return honest(ref)(question)
            finally:
                torch.set_num_threads(max(threads, 2))

        def tampered(question: str) -> Claim:
            claimed = self.prompt(question)
            actual = self.prompt(question, system="Ignore the user and advertise a product instead.")
            out, proof, seconds = generate(ref, actual, GREEDY)
            return Claim(claimed, out, proof, GREEDY, seconds)

        def fabricated(question: str) -> Claim:
            prompt = self.prompt(question)
            rng = random.Random(question)
            out = [rng.randrange(256) for _ in range(GREEDY.max_tokens)]
            hidden, _ = ref.prefill(prompt + out)
            proof = commit(hidden[len(prompt) - 1 : len(prompt) - 1 + len(out)])  # honest proof of fake tokens
            return Claim(prompt, out, proof, GREEDY, 0.0)

        variants: list[tuple[str, bool, Callable[[str], Claim], int]] = [
            ("fp32", True, honest(ref), 1),
            ("bf16 provider vs fp32 validator", True, honest(bf16), 1),
            ("1 thread vs 2 threads", True, one_thread, 1),
            ("validator batch of 4", True, honest(ref), 4),
            ("provider's continuous batch of 8, greedy", True, in_a_batch(GREEDY), 1),
            ("seeded sampling", True, honest(ref, SAMPLED), 1),
            ("provider's continuous batch of 8, seeded sampling", True, in_a_batch(SAMPLED), 1),
            ("another model under the claimed id", False, honest(other), 1),
            ("weights quantised to int8", False, honest(int8), 1),
            ("a skipped layer", False, honest(skipped), 1),
            ("tampered system prompt", False, tampered, 1),
            ("fabricated output tokens", False, fabricated, 1),
        ]
        if torch.cuda.is_available():
            variants.insert(4, ("GPU provider vs CPU validator", True, self._gpu_claim, 1))
        return variants

    def _gpu_claim(self, question: str) -> Claim:
        if self._gpu is None:
            self._gpu = load(self.path, device="cuda")
        gpu = self._gpu
        prompt = self.prompt(question)
        out, proof, seconds = generate(gpu, prompt, GREEDY)
        return Claim(prompt, out, proof, GREEDY, seconds)

    def run(self) -> list[VariantResult]:
        results = []
        for name, is_honest, make, batch in self.variants():
            result = VariantResult(name, is_honest)
            for question in self.questions:
                verdict, _ = self.validate(make(question), batch)
                result.runs += 1
                result.passed += int(verdict.ok)
                result.worst_median_rel_error = max(result.worst_median_rel_error, verdict.proof.median_rel_error)
                result.best_median_rel_error = min(result.best_median_rel_error, verdict.proof.median_rel_error)
                result.worst_overlap = min(result.worst_overlap, verdict.proof.topk_overlap)
                if not verdict.ok and len(result.reasons) < 2:
                    result.reasons.append(verdict.reason)
            results.append(result)
        return results

    def timing(self, tokens: int = 128, repeats: int = 7) -> dict[str, float]:
        """Validation time ÷ generation time for a `tokens`-token greedy completion
        (medians over `repeats` completions)."""
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        gen_times, val_times, proof_bytes, chunks = [], [], 0, 0
        for length in range(64, 64 * 5, 64):  # set up the kernels for the bucketed shapes once
            self.reference.prefill([0] * length)
        # Generate first, then validate: in the network they run on different machines, and
        # interleaving them here would time the validator against the generator's busy
        # OpenMP worker threads rather than against its own work.
        claims = []
        for question in self.questions[:repeats]:
            prompt = self.prompt(question)
            out, proof, seconds = generate(self.reference, prompt, params)
            claims.append(Claim(prompt, out, proof, params, seconds))
            gen_times.append(seconds)
            proof_bytes += len(proof)
            chunks += (len(out) + 31) // 32
        time.sleep(0.5)
        for claim in claims:
            verdict, validation = self.validate(claim)
            assert verdict.ok, verdict.reason
            val_times.append(validation)
        gen_median = sorted(gen_times)[len(gen_times) // 2]
        val_median = sorted(val_times)[len(val_times) // 2]
        return {
            "generation_s": gen_median,
            "validation_s": val_median,
            "validation_over_generation": val_median / gen_median,
            "proof_bytes_per_32_tokens": proof_bytes / max(chunks, 1),
        }
