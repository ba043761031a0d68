"""Continuous batching: one scheduler thread per loaded model runs every active sequence
of that model in one forward pass per step.

Each step, at its boundary: sequences that were cancelled leave (their slot is free at
once), waiting sequences join up to `max_batch` (their prompts are prefilled together in
one forward pass, identical prompts once, and give their first token), and then one
decode pass advances every active sequence by one token. Finished sequences leave.

The batch lives in transformers' own machinery: a `DynamicCache` whose rows are left-padded
to a common length, the matching 2-D attention mask (0 = padding), and explicit position
ids (each row counts its own real tokens), so the model's own mask builder and attention
do the work. Rows are gathered or padded only when the batch changes; no kernels of our own.
Each sequence samples from its own row of logits and keeps its own final hidden states,
which its proof is built from.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from allmende.engine.batching import StepScheduler
from allmende.engine.sequence import Sequence


class BatchScheduler(StepScheduler):
    def __init__(
        self,
        model: Any,
        device: str,
        max_batch: int,
        pad_id: int,
        name: str = "model",
        prefill_tokens: int = 2048,  # prompt tokens prefilled per step (at least one prompt), so streams keep moving
    ) -> None:
        super().__init__(max_batch, name, prefill_tokens)
        self.model = model
        self.device = device
        self.pad_id = pad_id
        # the batch: one row per active sequence, in the order of `_active`
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # (rows, cached length), 1 = real token

    @torch.inference_mode()
    def _step(self, joining: list[Sequence]) -> None:
        if joining:
            self._join(joining)
        if self._active:
            self._decode()

    def _reset(self) -> None:
        self._active, self._cache, self._mask = [], None, None

    def _join(self, joining: list[Sequence]) -> None:
        """Prefill the joining prompts in one pass, take each one's first token, and add
        those still running to the batch."""
        prompts: list[tuple[int, ...]] = []
        row_of: list[int] = []
        for sequence in joining:
            key = tuple(sequence.prompt_ids)
            if key not in prompts:
                prompts.append(key)
            row_of.append(prompts.index(key))
        self.prefilled_prompts += len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + list(p) for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(1) - 1).clamp(min=0),
            cache=DynamicCache(),
            use_cache=True,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1].float()
        hidden = out.hidden_states[-1][:, -1]
        staying: list[tuple[Sequence, int]] = []
        for sequence, row in zip(joining, row_of, strict=True):
            if not sequence.cancelled.is_set() and not sequence.advance(logits[row], hidden[row].clone()):
                staying.append((sequence, row))
        if staying:
            index = torch.tensor([row for _, row in staying], device=self.device)
            layers = [(k[index], v[index]) for k, v, *_ in out.cache]
            self._merge([s for s, _ in staying], layers, mask[index])

    def _decode(self) -> None:
        """One token for every active sequence, in one forward pass."""
        assert self._mask is not None and self._cache is not None
        rows = len(self._active)
        self.largest_batch = max(self.largest_batch, rows)
        position = self._mask.sum(1, keepdim=True)  # each row's own count of real tokens
        mask = torch.cat([self._mask, torch.ones((rows, 1), dtype=self._mask.dtype, device=self.device)], dim=1)
        ids = torch.tensor([[s.last_token] for s in self._active], device=self.device)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position,
            cache=self._cache,
            use_cache=True,
            output_hidden_states=True,
        )
        self._cache, self._mask = out.cache, mask
        self.steps += 1
        logits = out.logits[:, -1].float()
        hidden = out.hidden_states[-1][:, -1]
        done = [
            s
            for row, s in enumerate(self._active)
            if s.cancelled.is_set() or s.advance(logits[row], hidden[row].clone())
        ]
        self._leave(done)

    # ------------------------------------------------------------ the batch

    def _merge(
        self, joining: list[Sequence], layers: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor
    ) -> None:
        """Append rows to the batch, left-padding the shorter side to a common length."""
        if self._cache is None or self._mask is None:
            self._active, self._cache, self._mask = list(joining), DynamicCache(ddp_cache_data=layers), mask
            return
        length = max(self._mask.shape[1], mask.shape[1])

        def pad(t: torch.Tensor, dim_from_end: int) -> torch.Tensor:
            missing = length - t.shape[-dim_from_end]
            if missing == 0:
                return t
            widths = [0, 0] * (dim_from_end - 1) + [missing, 0]
            return F.pad(t, widths)

        merged = [
            (torch.cat([pad(k0, 2), pad(k1, 2)]), torch.cat([pad(v0, 2), pad(v1, 2)]))
            for (k0, v0, *_), (k1, v1) in zip(self._cache, layers, strict=True)
        ]
        self._cache = DynamicCache(ddp_cache_data=merged)
        self._mask = torch.cat([pad(self._mask, 1), pad(mask, 1)])
        self._active.extend(joining)

    @torch.inference_mode()
    def _leave(self, leaving: list[Sequence]) -> None:
        """Drop rows, and the leading columns that are padding in every row left."""
        if not leaving:
            return
        gone = set(map(id, leaving))
        keep = [row for row, s in enumerate(self._active) if id(s) not in gone]
        self._active = [self._active[row] for row in keep]
        if not keep or self._cache is None or self._mask is None:
            self._active, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask[index]
        start = int(mask.any(0).int().argmax())  # first column some remaining row uses
        self._cache = DynamicCache(
            ddp_cache_data=[(k[index, :, start:], v[index, :, start:]) for k, v, *_ in self._cache]
        )
        self._mask = mask[:, start:]
