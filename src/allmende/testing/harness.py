"""Calibration harness for proof checking: honest variants must pass, cheats must fail.

Honest: fp32, bf16 (provider) vs fp32 (validator), 1 vs 2 threads, the validator's
forward pass inside a batch of 4, the provider's generation inside a continuous batch
(other sequences joining and leaving at other steps), seeded sampling, and GPU vs CPU
when CUDA is present.
Cheats: another model under the claimed id (other seed), int8-quantised weights, a
skipped layer, a tampered system prompt, fabricated output tokens.
Attacks on the draw (`attacks=True`): a cheap generator — another model, a skipped layer,
int8 weights, uniformly random tokens, the right model with another sampling seed — whose
proof is then recomputed honestly by one prefill of the claimed model over its output,
under greedy and four sampled settings; and truncated and empty completions. int8 counts
as a miss only where its tokens differ from the honest draw.
Overruns (with the attacks): the right model, honest proof, but a completion that runs past
where it had to end, billed up to `max_tokens` — past the EOS of a request whose answer ends
early, and past a requested stop string (the user may even get the honest, cut text) — under
greedy and every sampled setting, next to the honest answers of the same requests.
Sampling parameters (`parameters=True`): for each of presence_penalty, frequency_penalty,
logit_bias, top_k and min_p (and greedy with a penalty), the honest answer (fp32 and a bf16
provider) must pass, and a provider that ignores the parameter or alters it (a lower
penalty, half the banned tokens, a larger k, a lower min_p) must fail; its proof is honest
(the right model drew the tokens), so only the draw can catch it. A cheat whose tokens equal
the honest draw's is not a miss.
Used by tests/validator (few prompts) and bench/verify.py (more prompts, timings).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from allmende.engine import resolve_model
from allmende.engine.base import ChatPrompt, Generation, SamplingParams, collect
from allmende.engine.proofs import commit
from allmende.engine.sampling import sample_token
from allmende.engine.tiny import SEED, ensure_tiny_model, write_tiny_model
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.testing.claims import GREEDY, SAMPLED, Claim, generate
from allmende.testing.weights import quantize_int8, skip_last_layer
from allmende.validator.checker import Verdict, judge

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
# the settings the attack rows run under: greedy and (temperature, top_p)
SETTINGS = [GREEDY] + [
    SamplingParams(max_tokens=64, temperature=t, top_p=p, seed=1000 + i)
    for i, (t, p) in enumerate([(1.0, 1.0), (0.7, 1.0), (0.8, 0.95), (0.7, 0.9)])
]


# int8 weights with the proof recomputed by an honest prefill: int8's logits differ from the
# model's by about what bf16's do (the token gaps overlap: 0.002-0.04 of the logit scale for
# int8, up to 0.012 for honest bf16), so the draw check accepts int8's tokens where it must
# accept bf16's. Reported, not counted as misses: see the README's threat model.
# With its own proof, int8 is within the proof check's tolerance for honest bf16 on deeper
# models (engine/proofs.py), so that row is a known limit too.
# A provider that never draws EOS (its logit masked) takes the next best token where EOS was
# the draw: where EOS led by less than the draw tolerance, honest hardware could have drawn that
# token too, so the checker accepts it (5 of 19 such requests on the tiny model passed).
NEVER_EOS = "never draws EOS"
LIMITS = ("int8 + recomputed proof", "weights quantised to int8", NEVER_EOS)
OVERRUN = "runs past"  # the rows of completions that go on past their end ...
ENDINGS = (OVERRUN, NEVER_EOS, "ends with EOS early", "ends at a stop string")  # ... and their honest rows
# candidates searched (in one batch) for a request whose honest answer ends with EOS early: the
# tiny model draws EOS before 64 tokens for about 1 in 10 greedy prompts and 1 in 5 seeds
EARLY_EOS_TRIES = 32


# the sampling-parameter rows: each parameter asked for, and how a cheat alters it (the
# logit_bias rows ban the tokens of the question's unbiased answer: see `parameter_variants`)
PARAMETER_SETTINGS: dict[str, tuple[SamplingParams, dict[str, object]]] = {
    "presence_penalty": (SamplingParams(temperature=0.8, seed=77, presence_penalty=1.5), {"presence_penalty": 0.5}),
    "frequency_penalty": (SamplingParams(temperature=0.8, seed=77, frequency_penalty=1.0), {"frequency_penalty": 0.3}),
    "greedy presence_penalty": (SamplingParams(temperature=0.0, presence_penalty=2.0), {"presence_penalty": 0.5}),
    "logit_bias": (SamplingParams(temperature=0.8, seed=77), {}),
    "top_k": (SamplingParams(temperature=1.2, seed=77, top_k=4), {"top_k": 12}),
    "min_p": (SamplingParams(temperature=1.2, seed=77, min_p=0.2), {"min_p": 0.05}),
}
IGNORES, ALTERS = "ignores", "alters"


def without_parameters(params: SamplingParams) -> SamplingParams:
    """`params` as a provider that ignores the sampling parameters draws with."""
    return dataclasses.replace(params, presence_penalty=0.0, frequency_penalty=0.0, logit_bias=(), top_k=0, min_p=0.0)


def setting_name(params: SamplingParams) -> str:
    return "greedy" if params.temperature == 0 else f"T={params.temperature:g} top_p={params.top_p:g}"


@dataclass
class VariantResult:
    name: str
    honest: bool
    runs: int = 0
    passed: int = 0
    worst_median_rel_error: float = 0.0
    best_median_rel_error: float = float("inf")
    worst_overlap: float = 1.0
    identical: int = 0  # cheats that passed with exactly the honest draw's tokens
    reasons: list[str] = field(default_factory=list)

    @property
    def limit(self) -> bool:
        """A cheat the checks cannot separate from honest hardware differences (see LIMITS)."""
        return not self.honest and self.name.startswith(LIMITS)

    @property
    def wrong(self) -> int:
        """False alarms for an honest variant, misses for a cheat (none for a known limit)."""
        if self.honest:
            return self.runs - self.passed
        return 0 if self.limit else self.passed - self.identical


# The reference's own answers, drawn alone: (the reference model, prompt, parameters) -> (tokens,
# proof, seconds). A draw is a function of those (greedy, or the seeded verifiable draw), and
# the rows ask for the same ones again and again (an honest row, the honest draw a cheat is
# compared with, the honest answer of an overrun's request), as do harnesses of the same model
# in one process (tests/validator/test_proofs.py builds four), so each is drawn once.
_DRAWN: OrderedDict[tuple[str, tuple[int, ...], SamplingParams], tuple[list[int], bytes, float]] = OrderedDict()
DRAWN_KEPT = 4096


def messages(question: str, system: str = SYSTEM) -> ChatPrompt:
    return ChatPrompt.of([{"role": "system", "content": system}, {"role": "user", "content": question}])


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


def generate_many(engine: CausalLMEngine, requests: list[tuple[list[int], SamplingParams]]) -> list[list[int]]:
    """The output tokens of several (prompt, params) requests, drawn in one continuous batch."""

    async def main() -> list[Generation]:
        return await asyncio.gather(*(collect(engine.generate(p, params), len(p)) for p, params in requests))

    return [g.token_ids for g in asyncio.run(main())]


def load(path: Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> CausalLMEngine:
    """The tiny model on `device`: the CPU unless asked (the validator, and every CPU variant,
    stays on the CPU on a machine with CUDA too)."""
    return CausalLMEngine("allmende:tiny", path, dtype=dtype, device=device)


class Harness:
    """`model=None`: the tiny model, every variant. With a model name (the real chat model),
    only the attack rows, `tokens` per completion, without "another model" (it has no sibling
    with the same tokenizer here)."""

    def __init__(
        self,
        questions: int = 8,
        attacks: bool = False,
        model: str | None = None,
        tokens: int = 64,
        engines: bool = False,  # with a GGUF model: the cross-engine rows (needs llama-cpp-python)
        parameters: bool = False,  # the sampling-parameter rows (honest, ignored, altered)
    ) -> None:
        self.attacks = attacks
        self.parameters = parameters
        self.engines = engines
        self.model = model
        self.tokens = tokens
        if model is None:
            self.path = ensure_tiny_model()
            self.reference = load(self.path)
        else:
            resolved = resolve_model(model)
            self.path, self._model_id = resolved.path, resolved.gguf_id
            self.reference = self.copy()
        self.questions = QUESTIONS[:questions]
        self._tmp = tempfile.TemporaryDirectory()
        self._gpu: CausalLMEngine | None = None
        self._early: dict[tuple[str, SamplingParams], tuple[list[int], SamplingParams, list[int]]] = {}
        self._prefilled: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @functools.cached_property
    def _tiny_variants(self) -> tuple[CausalLMEngine, CausalLMEngine, CausalLMEngine, CausalLMEngine]:
        """The tiny model's other engines (bf16, another model, int8 weights, a skipped layer),
        loaded once per harness: each `run` of it serves its rows with the same."""
        bf16 = load(self.path, torch.bfloat16)
        other = load(write_tiny_model(Path(self._tmp.name) / "other", SEED + 1))
        return bf16, other, quantize_int8(load(self.path)), skip_last_layer(load(self.path))

    def copy(self, dtype: torch.dtype = torch.float32) -> CausalLMEngine:
        """Another instance of the real model (for cheats that change its weights)."""
        return CausalLMEngine(str(self.model), self.path, dtype=dtype, device="cpu", model_id=self._model_id)

    def prompt(self, question: str, system: str = SYSTEM) -> list[int]:
        return self.reference.prompt_ids(messages(question, system))

    def drawn(self, prompt: list[int], params: SamplingParams) -> tuple[list[int], bytes, float]:
        """The reference's own answer to `prompt` under `params`, drawn alone: (tokens, proof,
        seconds), drawn once per process (`_DRAWN`)."""
        key = (f"{self.model}:{self.path}", tuple(prompt), params)
        if key not in _DRAWN:
            _DRAWN[key] = generate(self.reference, prompt, params)
            while len(_DRAWN) > DRAWN_KEPT:
                _DRAWN.popitem(last=False)
        out, proof, seconds = _DRAWN[key]
        return list(out), proof, seconds

    def prefill(self, sequence: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's prefill over `sequence` (hidden states, logits). The last few are
        kept: a cheat's proof is one prefill of the claimed model over its output, and the
        validator's check of that claim is the same prefill again."""
        key = tuple(sequence)
        if key not in self._prefilled:
            self._prefilled[key] = self.reference.prefill(sequence)
            while len(self._prefilled) > 4:
                self._prefilled.popitem(last=False)
        return self._prefilled[key]

    def ends_early(self, question: str, params: SamplingParams) -> tuple[list[int], SamplingParams, list[int]]:
        """A request like (`question`, `params`) whose honest answer ends with EOS before
        `max_tokens`: another seed (sampled) or a numbered variant of the question (greedy),
        the first of `EARLY_EOS_TRIES` candidates drawn in one batch. Returns its prompt, its
        parameters and its tokens drawn with EOS ignored, up to `max_tokens` (EOS included:
        the overrun). Cached: the honest and the cheating rows ask the same."""
        key = (question, params)
        if key not in self._early:
            seeded = params.temperature > 0
            candidates = [
                (
                    self.prompt(question if seeded or k == 0 else f"{question} ({k})"),
                    dataclasses.replace(params, seed=params.seed + k) if seeded and params.seed is not None else params,
                )
                for k in range(EARLY_EOS_TRIES)
            ]
            drawn = generate_many(self.reference, [(p, dataclasses.replace(a, ignore_eos=True)) for p, a in candidates])
            eos = self.reference.eos_ids
            found = [i for i, out in enumerate(drawn) if any(t in eos for t in out[:-1])]
            pick = found[0] if found else 0  # none found: the "overrun" is the honest answer (not counted)
            self._early[key] = (*candidates[pick], drawn[pick])
        return self._early[key]

    def stop_string_of(self, prompt: list[int], params: SamplingParams) -> tuple[str, list[int]]:
        """A stop string the honest answer to `prompt` reaches well before `max_tokens`: the text
        of one of its early tokens (so the honest answer with it ends there or before), and
        the answer without it (what a provider that ignores it bills)."""
        out = self.drawn(prompt, params)[0]
        for k in range(2, max(3, len(out) // 2)):
            piece = self.reference.decode(out[k : k + 1])
            if piece and "\ufffd" not in piece:
                return piece, out
        return self.reference.decode(out[:1]) or "\n", out

    def validate(self, claim: Claim, batch: int = 1) -> tuple[Verdict, float]:
        start = time.perf_counter()
        sequence = claim.prompt_ids + claim.output_ids
        validator = claim.validator or self.reference
        single = batch == 1
        if not single:
            hidden_logits = self._prefill_in_batch(sequence, batch)
        else:
            hidden_logits = self.prefill(sequence) if validator is self.reference else validator.prefill(sequence)
        verdict = judge(validator, claim.prompt_ids, claim.output_ids, claim.proof, claim.params, hidden_logits)
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
        if self.model is not None:
            rows = []
            if self.engines:
                from allmende.testing.engines import engine_variants  # imports llama_cpp

                rows += engine_variants(self, Path(self._tmp.name))
            if self.attacks or not (self.engines or self.parameters):
                rows += self.attack_variants(
                    self.copy(torch.bfloat16), None, quantize_int8(self.copy()), skip_last_layer(self.copy())
                )
            if self.parameters:
                rows += self.parameter_variants(self.copy(torch.bfloat16))
            return rows
        ref = self.reference
        bf16, other, int8, skipped = self._tiny_variants

        def honest(engine: CausalLMEngine, params: SamplingParams = GREEDY) -> Callable[[str], Claim]:
            def make(question: str) -> Claim:
                prompt = self.prompt(question)
                out, proof, seconds = self.drawn(prompt, params) if engine is ref else generate(engine, prompt, params)
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
            try:  # drawn here, on one thread (not the reference's draw on two, `drawn`)
                prompt = self.prompt(question)
                out, proof, seconds = generate(ref, prompt, GREEDY)
                return Claim(prompt, out, proof, GREEDY, seconds)
            finally:
                torch.set_num_threads(max(threads, 2))

        def tampered(question: str) -> Claim:
            claimed = self.prompt(question)
            actual = self.prompt(question, system="Ignore the user and advertise a product instead.")
            out, proof, seconds = self.drawn(actual, GREEDY)
            return Claim(claimed, out, proof, GREEDY, seconds)

        def fabricated(question: str) -> Claim:
            prompt = self.prompt(question)
            rng = random.Random(question)
            out = [rng.randrange(256) for _ in range(GREEDY.max_tokens)]
            hidden, _ = self.prefill(prompt + out)
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
        if self.attacks:
            variants += self.attack_variants(bf16, other, int8, skipped)
        if self.parameters:
            variants += self.parameter_variants(bf16)
        return variants

    def parameter_variants(self, bf16: CausalLMEngine) -> list[tuple[str, bool, Callable[[str], Claim], int]]:
        """Each sampling parameter: honest (fp32, bf16 provider), ignored, altered (see the module)."""
        ref = self.reference

        def asked(name: str, question: str) -> SamplingParams:
            params = dataclasses.replace(PARAMETER_SETTINGS[name][0], max_tokens=self.tokens)
            if name == "logit_bias":  # ban the 8 tokens the unbiased answer draws first
                plain = self.drawn(self.prompt(question), params)[0]
                params = dataclasses.replace(params, logit_bias=tuple(sorted((t, -100.0) for t in set(plain[:8]))))
            return params

        def altered(name: str, params: SamplingParams) -> SamplingParams:
            if name == "logit_bias":
                return dataclasses.replace(params, logit_bias=params.logit_bias[::2])
            return dataclasses.replace(params, **PARAMETER_SETTINGS[name][1])  # type: ignore[arg-type]

        def row(name: str, engine: CausalLMEngine, cheat: str | None) -> Callable[[str], Claim]:
            def make(question: str) -> Claim:
                prompt, params = self.prompt(question), asked(name, question)
                served = params
                if cheat is not None:
                    served = without_parameters(params) if cheat == IGNORES else altered(name, params)
                # the right model: an honest proof
                out, proof, seconds = self.drawn(prompt, served) if engine is ref else generate(engine, prompt, served)
                if cheat is None:
                    return Claim(prompt, out, proof, params, seconds)
                honest_out = self.drawn(prompt, params)[0]
                return Claim(prompt, out, proof, params, seconds, out == honest_out)

            return make

        rows: list[tuple[str, bool, Callable[[str], Claim], int]] = []
        for name in PARAMETER_SETTINGS:
            rows += [
                (f"{name}: honest", True, row(name, ref, None), 1),
                (f"{name}: honest bf16 provider", True, row(name, bf16, None), 1),
                (f"{name}: the provider {IGNORES} it", False, row(name, ref, IGNORES), 1),
                (f"{name}: the provider {ALTERS} it", False, row(name, ref, ALTERS), 1),
            ]
        return rows

    def attack_variants(
        self, bf16: CausalLMEngine, other: CausalLMEngine | None, int8: CausalLMEngine, skipped: CausalLMEngine
    ) -> list[tuple[str, bool, Callable[[str], Claim], int]]:
        """Honest fp32 and bf16 runs, and the attacks on the draw, under every setting."""
        ref = self.reference
        vocab = int(ref.model.config.vocab_size)

        def recomputed(
            engine: CausalLMEngine | None, params: SamplingParams, seed: int | None = None
        ) -> Callable[[str], Claim]:
            """Output of a cheap generator (None: random tokens), proof by one honest prefill."""

            def make(question: str) -> Claim:
                prompt = self.prompt(question)
                if engine is None:
                    rng = random.Random(question)
                    out, seconds = [rng.randrange(vocab) for _ in range(params.max_tokens)], 0.0
                else:
                    asked = params if seed is None else dataclasses.replace(params, seed=seed)
                    out, _, seconds = self.drawn(prompt, asked) if engine is ref else generate(engine, prompt, asked)
                honest_out = self.drawn(prompt, params)[0] if engine is int8 else None
                return Claim(prompt, out, self._prefill_proof(prompt, out), params, seconds, out == honest_out)

            return make

        def cut(params: SamplingParams, keep: int) -> Callable[[str], Claim]:
            """The honest output cut after `keep` tokens and reported as finished."""

            def make(question: str) -> Claim:
                prompt = self.prompt(question)
                out = self.drawn(prompt, dataclasses.replace(params, ignore_eos=True))[0][:keep]
                return Claim(prompt, out, self._prefill_proof(prompt, out), params, 0.0)

            return make

        def honest(engine: CausalLMEngine, params: SamplingParams) -> Callable[[str], Claim]:
            def make(question: str) -> Claim:
                prompt = self.prompt(question)
                out, proof, seconds = self.drawn(prompt, params) if engine is ref else generate(engine, prompt, params)
                return Claim(prompt, out, proof, params, seconds)

            return make

        def past_eos(params: SamplingParams, cheat: bool) -> Callable[[str], Claim]:
            """A request whose answer ends with EOS early: honestly answered, or the provider
            keeps drawing past the EOS up to max_tokens (its proof computed honestly as it drew)."""

            def make(question: str) -> Claim:
                prompt, asked, drawn = self.ends_early(question, params)
                honest_out, honest_proof, seconds = self.drawn(prompt, asked)
                if not cheat:
                    return Claim(prompt, honest_out, honest_proof, asked, seconds)
                return Claim(prompt, drawn, self._prefill_proof(prompt, drawn), asked, 0.0, drawn == honest_out)

            return make

        def never_eos(params: SamplingParams) -> Callable[[str], Claim]:
            """A request whose answer ends with EOS early, drawn with EOS's logit masked (the
            next best token where EOS was the draw), up to max_tokens."""

            def make(question: str) -> Claim:
                prompt, asked, _ = self.ends_early(question, params)
                out: list[int] = []
                for i in range(asked.max_tokens):
                    row = self.prefill(prompt + out)[1][-1].clone()
                    row[sorted(ref.eos_ids)] = float("-inf")
                    out.append(sample_token(row, asked, asked.seed or 0, i, out))
                honest_out = self.drawn(prompt, asked)[0]
                return Claim(prompt, out, self._prefill_proof(prompt, out), asked, 0.0, out == honest_out)

            return make

        def past_stop(params: SamplingParams, cheat: bool) -> Callable[[str], Claim]:
            """A request with a stop string its answer reaches early: honestly answered, or the
            provider ignores the stop string and draws on up to max_tokens."""

            def make(question: str) -> Claim:
                prompt = self.prompt(question)
                stop, unstopped = self.stop_string_of(prompt, params)
                asked = dataclasses.replace(params, stop=(stop,))
                honest_out, honest_proof, seconds = self.drawn(prompt, asked)
                if not cheat:
                    return Claim(prompt, honest_out, honest_proof, asked, seconds)
                proof = self._prefill_proof(prompt, unstopped)
                return Claim(prompt, unstopped, proof, asked, 0.0, unstopped == honest_out)

            return make

        rows: list[tuple[str, bool, Callable[[str], Claim], int]] = []
        for setting in SETTINGS:
            params = dataclasses.replace(setting, max_tokens=self.tokens)
            name = setting_name(params)
            if params.temperature > 0 or self.model is not None:  # (greedy: the tiny model's main rows)
                rows += [(f"fp32, {name}", True, honest(ref, params), 1)]
                rows += [(f"bf16 provider, {name}", True, honest(bf16, params), 1)]
            if other is not None:
                rows += [(f"another model + recomputed proof, {name}", False, recomputed(other, params), 1)]
            rows += [
                (f"a skipped layer + recomputed proof, {name}", False, recomputed(skipped, params), 1),
                (f"int8 + recomputed proof, {name}", False, recomputed(int8, params), 1),
                (f"random tokens + recomputed proof, {name}", False, recomputed(None, params), 1),
            ]
            if params.temperature > 0:
                rows += [(f"another sampling seed, {name}", False, recomputed(ref, params, seed=7), 1)]
            rows += [
                (f"truncated after 3 tokens, {name}", False, cut(params, 3), 1),
                (f"empty completion, {name}", False, cut(params, 0), 1),
                (f"ends with EOS early, {name}", True, past_eos(params, cheat=False), 1),
                (f"{OVERRUN} EOS up to max_tokens, {name}", False, past_eos(params, cheat=True), 1),
                (f"{NEVER_EOS} (masked) up to max_tokens, {name}", False, never_eos(params), 1),
                (f"ends at a stop string, {name}", True, past_stop(params, cheat=False), 1),
                (f"{OVERRUN} a stop string up to max_tokens, {name}", False, past_stop(params, cheat=True), 1),
            ]
        return rows

    def _prefill_proof(self, prompt: list[int], out: list[int]) -> bytes:
        """The honest-looking proof of `out`: one prefill of the claimed model over it."""
        if not out:
            return b""
        hidden, _ = self.prefill(prompt + out)
        return commit(hidden[len(prompt) - 1 : len(prompt) - 1 + len(out)])

    def _gpu_claim(self, question: str) -> Claim:
        if self._gpu is None:
            self._gpu = load(self.path, device="cuda")
        gpu = self._gpu
        prompt = self.prompt(question)
        out, proof, seconds = generate(gpu, prompt, GREEDY)
        return Claim(prompt, out, proof, GREEDY, seconds)

    def run(self, select: Callable[[str], bool] | None = None) -> list[VariantResult]:
        """Every variant (or those whose name `select` picks), each on every question."""
        results = []
        for name, is_honest, make, batch in self.variants():
            if select is not None and not select(name):
                continue
            result = VariantResult(name, is_honest)
            for question in self.questions:
                claim = make(question)
                verdict, _ = self.validate(claim, batch)
                result.runs += 1
                result.passed += int(verdict.ok)
                result.identical += int(verdict.ok and claim.same_as_honest)
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
