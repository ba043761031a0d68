"""Cheating providers for tests and demos of verification: never imported by production code.

A cheat is an engine wrapper (`Engine -> Engine`). Production code only offers the hook
(`allmende.provider.node.ENGINE_WRAPPERS`, applied to every engine a provider loads);
this module fills it in a process started as

    python -m allmende.testing.cheats MODE provider …   # a provider that cheats
    python -m allmende.testing.cheats N:MODE up …       # `allmende up` whose provider N cheats

MODE is `int8` (weights quantised per row: what a cheap provider might run),
`skip-layer` (the last transformer layer dropped) or `inflate` (honest work, but receipts
that claim ten times the tokens it counted, validly signed: `InflatingService`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from allmende.engine.base import Engine
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.provider.service import InferRequest, ProviderService


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


CHEATS: dict[str, Callable[[CausalLMEngine], CausalLMEngine]] = {"int8": quantize_int8, "skip-layer": skip_last_layer}


class InflatingService(ProviderService):
    """A provider that serves honestly but signs receipts for `factor` × the tokens it counted
    (prompt and completion), priced correctly for the inflated counts: the 12,112-units-per-
    request attack against 32 for an honest receipt."""

    factor = 10

    def _finish(
        self, req: InferRequest, tokens_in: int, tokens_out: int, output: bytes, proof: bytes = b""
    ) -> dict[str, Any]:
        return super()._finish(req, tokens_in * self.factor, tokens_out * self.factor, output, proof)


# cheats that replace the provider's serving class instead of wrapping its engines
SERVICE_CHEATS: dict[str, type[ProviderService]] = {"inflate": InflatingService}
MODES = (*CHEATS, *SERVICE_CHEATS)


def wrapper(mode: str) -> Callable[[Engine], Engine]:
    """An engine wrapper that applies cheat `mode` to generative engines."""
    cheat = CHEATS[mode]

    def wrap(engine: Engine) -> Engine:
        return cheat(engine) if isinstance(engine, CausalLMEngine) else engine

    return wrap


def command(mode: str) -> list[str]:
    """The command line that starts an `allmende` process whose provider engines cheat."""
    return [sys.executable, "-m", "allmende.testing.cheats", mode]


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m allmende.testing.cheats MODE provider … | N:MODE up …")
    mode, rest = argv[0], argv[1:]
    if rest[0] == "up":
        number, _, provider_mode = mode.partition(":")
        if not number.isdigit() or provider_mode not in MODES:
            raise SystemExit(f"N:MODE with MODE one of {', '.join(MODES)}")
        from allmende.cli import up

        default, victim = up.provider_command, int(number)

        def provider_command(index: int) -> list[str]:
            return [*command(provider_mode), "provider"] if index == victim else default(index)

        up.provider_command = provider_command
    else:
        if mode not in MODES:
            raise SystemExit(f"MODE must be one of {', '.join(MODES)}")
        from allmende.provider import node

        if mode in SERVICE_CHEATS:
            node.SERVICE_CLASS = SERVICE_CHEATS[mode]
        else:
            node.ENGINE_WRAPPERS.append(wrapper(mode))
    from allmende.cli import main as cli

    sys.argv = ["allmende", *rest]
    cli()


if __name__ == "__main__":
    main(sys.argv[1:])
