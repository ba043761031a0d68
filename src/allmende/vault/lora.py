"""LoRA adapters of a registered causal LM, trained in a vault with DP-SGD (the `peft` library).

A run fine-tunes a base model the grant covers (by its model id: the vault loads its own copy of
that model, never weights a requester sends) with LoRA adapters of a `LoraSpec`. Only the
adapter's matrices travel: as a list of float32 arrays in the order of `AdapterModel.names`, their
shapes fixed by the base and the spec, so a vault decodes nothing else.

Training is the same DP-GD as the tabular template (`allmende.vault.model`): full batch, each
example's gradient of the adapter clipped to `clip` (Abadi et al.), rounded to a grid of
clip·2⁻²⁰, summed as integers, discrete Gaussian noise of σ = noise·clip added (from the OS CSPRNG,
`allmende.vault.noise`) and divided by the public row count; so a round costs
`rho_of(steps, noise, adapter size)` zCDP for a replaced example, whatever the adapter's start.

A round's first adapter must be the zero adapter (every `lora_B` zero: the adapted model *is*
the granted base); later rounds move at most the clipping norm from the last round's (checked by
the service, as for tabular rounds).
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from allmende.vault.model import GRID_BITS
from allmende.vault.noise import RandomBytes, discrete_gaussian

if TYPE_CHECKING:
    import torch

# torch (like peft and transformers) is imported by the AdapterModel methods that use it: a vault
# imports this module for LoraSpec, and needs torch at its first LoRA job, not to start

# the projections a spec may adapt (Llama-style names, which SmolLM2 and allmende:tiny use)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_RANK = 64
MAX_TOKENS = 512  # the longest example a round trains on (tokens; longer ones are cut)
MAX_ADAPTER = 1 << 22  # the most adapter parameters a vault decodes (16 MiB of float32)


@dataclass(frozen=True)
class LoraSpec:
    """Which adapters a run trains on which base model."""

    base_model: bytes  # the registered base model's id (a grant covers it)
    rank: int = 4
    alpha: float = 8.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    max_tokens: int = 64  # examples are cut to this many tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "base_model": "0x" + self.base_model.hex(),
            "rank": self.rank,
            "alpha": self.alpha,
            "targets": list(self.targets),
            "max_tokens": self.max_tokens,
        }

    @classmethod
    def from_json(cls, data: object) -> LoraSpec:
        """Strict: every field, in range (ValueError otherwise)."""
        if not isinstance(data, dict) or set(data) != {"base_model", "rank", "alpha", "targets", "max_tokens"}:
            raise ValueError("a LoRA spec is {base_model, rank, alpha, targets, max_tokens}")
        base = data["base_model"]
        if not isinstance(base, str) or len(base) != 66 or not base.startswith("0x"):
            raise ValueError("'base_model' must be a 0x-prefixed 32-byte model id")
        try:
            base_id = bytes.fromhex(base[2:])
        except ValueError:
            raise ValueError("'base_model' is not hex") from None
        rank, alpha, targets, tokens = data["rank"], data["alpha"], data["targets"], data["max_tokens"]
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= MAX_RANK:
            raise ValueError(f"'rank' must be an integer in [1, {MAX_RANK}]")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha <= 1024:
            raise ValueError("'alpha' must be a number in (0, 1024]")
        if (
            not isinstance(targets, list)
            or not targets
            or len(set(targets)) != len(targets)
            or not all(t in TARGETS for t in targets)
        ):
            raise ValueError(f"'targets' must be distinct names among {', '.join(TARGETS)}")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or not 8 <= tokens <= MAX_TOKENS:
            raise ValueError(f"'max_tokens' must be an integer in [8, {MAX_TOKENS}]")
        return cls(base_id, rank, float(alpha), tuple(targets), tokens)

    def canonical(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


@dataclass(frozen=True)
class Example:
    """One tokenised row: the ids, and the labels the loss counts (-100: not counted)."""

    input_ids: torch.Tensor
    labels: torch.Tensor


class AdapterModel:
    """A base causal LM with the LoRA adapters of one spec (peft), loaded once and reused."""

    def __init__(self, base_path: Path, spec: LoraSpec) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = spec
        self.base_path = Path(base_path)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(self.base_path)
        base: Any = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=torch.float32)
        config = LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft types it int; it takes floats
            target_modules=list(spec.targets),
            lora_dropout=0.0,
            bias="none",
        )
        self.model: Any = get_peft_model(base, config)
        self.model.eval()  # no dropout anywhere: the gradient is a function of the data alone
        self.names = sorted(n for n, p in self.model.named_parameters() if p.requires_grad)
        self._params = dict(self.model.named_parameters())
        if not self.names:
            raise ValueError(f"the base model has none of the target modules {', '.join(spec.targets)}")
        self.lock = threading.Lock()  # one round or evaluation at a time on this model

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(self._params[n].shape) for n in self.names]

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def initial(self, seed: int = 0) -> list[np.ndarray]:
        """A zero adapter (lora_B = 0, so the model is the base) with lora_A drawn from `seed`."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        out = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            if "lora_B" in name:
                out.append(np.zeros(shape, dtype=np.float32))
            else:
                bound = 1.0 / math.sqrt(shape[1])
                out.append(((torch.rand(shape, generator=generator) * 2 - 1) * bound).numpy())
        return out

    def get(self) -> list[np.ndarray]:
        return [self._params[n].detach().numpy().copy() for n in self.names]

    def set(self, params: list[np.ndarray]) -> None:
        import torch

        check_adapter(self, params)
        with torch.no_grad():
            for n, a in zip(self.names, params, strict=True):
                self._params[n].copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)))

    # ------------------------------------------------------------ data

    def encode(self, row: dict[str, Any]) -> Example:
        """A text row trains on all its tokens; a chat row on its last (assistant) message only."""
        import torch

        tok, limit = self.tokenizer, self.spec.max_tokens
        if "text" in row:
            ids = list(tok(str(row["text"]), add_special_tokens=True)["input_ids"])[:limit]
            labels = list(ids)
        else:
            messages = row["messages"]
            prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
            full = tok.apply_chat_template(messages, tokenize=False)
            head = list(tok(prompt, add_special_tokens=False)["input_ids"])
            ids = list(tok(full, add_special_tokens=False)["input_ids"])
            labels = [-100] * min(len(head), len(ids)) + ids[len(head) :]
            ids, labels = ids[-limit:], labels[-limit:]  # keep the answer when a long prompt is cut
        return Example(torch.tensor([ids]), torch.tensor([labels]))

    def _loss(self, example: Example) -> torch.Tensor:
        out = self.model(input_ids=example.input_ids, labels=example.labels)
        return out.loss  # type: ignore[no-any-return]

    def losses(self, examples: list[Example]) -> list[float]:
        """Each example's mean token loss under the current adapter (nats)."""
        import torch

        with torch.no_grad():
            return [float(self._loss(e)) for e in examples if int((e.labels[0, 1:] != -100).sum()) > 0]

    def exact_matches(self, rows: list[dict[str, Any]], examples: list[Example]) -> list[bool]:
        """Per chat row: is its answer (the last message, with the chat template's end of turn)
        exactly what greedy decoding from its prompt produces? Checked in one forward pass: greedy
        decoding yields the answer iff every answer token is the argmax after the tokens before it.
        A text row (no question/answer pair) and a row whose answer was cut never match."""
        import torch

        out = []
        with torch.no_grad():
            for row, e in zip(rows, examples, strict=True):
                labels = e.labels[0]
                counted = labels != -100
                whole = "messages" in row and not bool(counted[0]) and int(counted.sum()) > 0
                if not whole:
                    out.append(False)
                    continue
                logits = self.model(input_ids=e.input_ids).logits[0]
                greedy = logits[:-1].argmax(dim=-1)
                out.append(bool((greedy[counted[1:]] == labels[1:][counted[1:]]).all()))
        return out

    # ------------------------------------------------------------ training

    def dp_train(
        self,
        params: list[np.ndarray],
        examples: list[Example],
        steps: int,
        lr: float,
        clip: float | None,
        noise: float,
        random_bytes: RandomBytes = os.urandom,
    ) -> list[np.ndarray]:
        """Full-batch DP-GD on the adapter from `params`; with `clip` None, plain gradient descent
        (centralised training, for comparisons in bench/). Returns the new adapter."""
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one example at a time: a single thread is ~20x faster on a shared CPU
        try:
            return self._dp_train(params, examples, steps, lr, clip, noise, random_bytes)
        finally:
            torch.set_num_threads(threads)

    def _dp_train(
        self,
        params: list[np.ndarray],
        examples: list[Example],
        steps: int,
        lr: float,
        clip: float | None,
        noise: float,
        random_bytes: RandomBytes,
    ) -> list[np.ndarray]:
        import torch

        self.set(params)
        usable = [e for e in examples if int((e.labels[0, 1:] != -100).sum()) > 0]
        rows = max(1, len(examples))  # the public row count divides, as in the tabular template
        weights = [self._params[n] for n in self.names]
        grid = (clip or 1.0) * 2.0**-GRID_BITS
        for _ in range(steps):
            ticks = [torch.zeros(w.shape, dtype=torch.int64) for w in weights]
            total = [torch.zeros(w.shape, dtype=torch.float64) for w in weights]
            for example in usable:
                grads = torch.autograd.grad(self._loss(example), weights)
                if clip is None:
                    for t, g in zip(total, grads, strict=True):
                        t += g.double()
                    continue
                norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
                scale = min(1.0, clip / (norm + 1e-12))
                for t, g in zip(ticks, grads, strict=True):
                    # integers on the grid: the noisy sum can only take values the data does not choose
                    t += torch.round(g.double() * scale / grid).to(torch.int64)
            with torch.no_grad():
                for w, t, s in zip(weights, ticks, total, strict=True):
                    if clip is None:
                        w.sub_((lr * s / rows).to(w.dtype))
                        continue
                    if noise > 0:
                        t += torch.from_numpy(discrete_gaussian(noise * clip / grid, t.numel(), random_bytes)).view(
                            t.shape
                        )
                    w.sub_((lr * t.double() * grid / rows).to(w.dtype))
        return self.get()

    # ------------------------------------------------------------ the result

    def save_merged(self, params: list[np.ndarray], folder: Path) -> Path:
        """The base with this adapter merged into its weights, as a model folder any transformers
        engine loads by path (tokenizer included); its model id is the folder's manifest."""
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        base: Any = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=torch.float32)
        spec = self.spec
        config = LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft types it int; it takes floats
            target_modules=list(spec.targets),
            lora_dropout=0.0,
            bias="none",
        )
        peft_model: Any = get_peft_model(base, config)
        named = dict(peft_model.named_parameters())
        with torch.no_grad():
            for n, a in zip(self.names, params, strict=True):
                named[n].copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)))
        merged = peft_model.merge_and_unload()
        folder.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        return folder


def check_adapter(model: AdapterModel, params: list[np.ndarray]) -> None:
    """ValueError unless `params` are the adapter's arrays: their number, shapes and finite values."""
    shapes = model.shapes
    if [tuple(np.shape(a)) for a in params] != shapes:
        raise ValueError(f"the adapter does not fit the spec: expected {len(shapes)} arrays of shapes {shapes}")
    if not all(np.all(np.isfinite(a)) for a in params):
        raise ValueError("the adapter holds a number that is not finite")


def is_zero_adapter(model: AdapterModel, params: list[np.ndarray]) -> bool:
    """Every lora_B is zero: the adapted model computes exactly the base model."""
    return all(not np.any(a) for n, a in zip(model.names, params, strict=True) if "lora_B" in n)


def adapter_distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(
        np.sqrt(
            sum(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2) for x, y in zip(a, b, strict=True))
        )
    )


def perplexity(mean_loss: float) -> float:
    return math.exp(min(mean_loss, 50.0))
