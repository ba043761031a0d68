"""Cheaper, wrong versions of a model for the cheats and the calibration harness: what a
provider might run instead of the weights it claims."""

from __future__ import annotations

import torch

from allmende.engine.transformers_lm import CausalLMEngine


def quantize_int8(engine: CausalLMEngine) -> CausalLMEngine:
    """Per-row symmetric int8 quantisation of every matrix (what a cheap provider might run)."""
    with torch.no_grad():
        for param in engine.model.parameters():
            if param.dim() == 2:
                scale = param.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
                param.copy_((param / scale).round().clamp(-127, 127) * scale)
    return engine


def skip_last_layer(engine: CausalLMEngine) -> CausalLMEngine:
    """Drop the last decoder layer (a cheaper, wrong model under the same id)."""
    engine.model.model.layers = engine.model.model.layers[:-1]
    engine.model.config.num_hidden_layers -= 1
    return engine


def move_weights(engine: CausalLMEngine, spread: float, seed: int) -> CausalLMEngine:
    """Every weight moved by Gaussian noise of `spread` times its tensor's standard deviation:
    a near sibling of the model (a light fine-tune of the same base, say) under its id."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in engine.model.parameters():
            if param.numel() < 2:
                continue
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.add_((noise * spread * param.float().std()).to(param.dtype))
    return engine
