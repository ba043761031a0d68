"""Cheating providers for tests and demos of verification: never imported by production code.

A cheat is an engine wrapper (`Engine -> Engine`). Production code only offers the hook
(`allmende.provider.node.ENGINE_WRAPPERS`, applied to every engine a provider loads);
this module fills it in a process started as

    python -m allmende.testing.cheats MODE provider …   # a provider that cheats
    python -m allmende.testing.cheats N:MODE up …       # `allmende up` whose provider N cheats

MODE is `int8` (weights quantised per row: what a cheap provider might run),
`skip-layer` (the last transformer layer dropped) or `recognise`: a provider that tries to
tell audits from users' requests by every trick that worked against the first validators
(the payer is a staked validator, the body has no `model`, the prompt comes from their
public pool) and serves what it takes for audits honestly and everyone else from a cheap
generator (the last layer skipped) with the proof recomputed by one prefill of the real
model. It logs each guess ("looks like an audit" / "looks like a user"), so a test can
show that it never recognises an audit, `structure`: the same two faces keyed on the
request's structure alone (the first validators' audit structure served honestly, every
other structure cheaply), or `inflate` (honest work, but receipts
that claim ten times the tokens it counted, validly signed: `InflatingService`), or
`overrun`: the right model and honest proofs, but every completion is drawn on past EOS and
past the request's stop strings up to `max_tokens` and billed for all of it, while the text
is cut at the first stop string as an honest provider cuts it (`overrun`).

A cheating provider runs on devnets only: `devnet_only` refuses, before anything is loaded,
staked or signed, a network whose deployment is not a devnet one or whose chain id is not a
devnet's (31337/1337). A validator operator tries their validator against one on their own
devnet (README, "Try your validator against a cheating provider").
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import AsyncIterator, Callable

from allmende.engine.base import Engine, SamplingParams, TokenEvent
from allmende.engine.sampling import StopWatch
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.testing.weights import quantize_int8, skip_last_layer


def overrun(engine: CausalLMEngine) -> CausalLMEngine:
    """The engine, drawing every completion on past EOS and past its stop strings up to
    `max_tokens` (every token the request's own draw, the proof computed as it draws), with
    the text cut at the first stop string as the honest engine cuts it: the user sees the
    honest text and pays for `max_tokens`."""
    draw = engine.generate

    async def cut_at_stop(events: AsyncIterator[TokenEvent], stop: tuple[str, ...]) -> AsyncIterator[TokenEvent]:
        watch, cut = StopWatch(stop), False
        async for event in events:
            at = None if cut else watch.cut(event.text)
            if cut or at is not None:
                event = dataclasses.replace(event, text=event.text[:at] if at is not None else "")
                cut = True
            yield event

    def generate(prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        return cut_at_stop(draw(prompt_ids, dataclasses.replace(params, ignore_eos=True, stop=())), params.stop)

    engine.generate = generate  # type: ignore[method-assign]
    return engine


CHEATS: dict[str, Callable[[CausalLMEngine], CausalLMEngine]] = {
    "int8": quantize_int8,
    "skip-layer": skip_last_layer,
    "overrun": overrun,
}

# cheats at the level of the provider's service (allmende.testing.provider_cheats): they
# import the provider, which the calibration harness must not need
SERVICE_MODES = ("recognise", "structure", "inflate")
MODES = (*CHEATS, *SERVICE_MODES)


def wrapper(mode: str) -> Callable[[Engine], Engine]:
    """An engine wrapper that applies cheat `mode` to generative engines."""
    cheat = CHEATS[mode]

    def wrap(engine: Engine) -> Engine:
        return cheat(engine) if isinstance(engine, CausalLMEngine) else engine

    return wrap


def command(mode: str) -> list[str]:
    """The command line that starts an `allmende` process whose provider engines cheat."""
    return [sys.executable, "-m", "allmende.testing.cheats", mode]


def devnet_only() -> None:
    """Make `allmende provider` in this process refuse a network that is not a devnet: the
    network it finds (by the CLI's one rule) is checked before the node loads, stakes or signs."""
    from allmende.chain import ChainClient
    from allmende.chain.anvil import is_devnet_chain
    from allmende.cli import provider as command
    from allmende.cli.common import Network
    from allmende.core.errors import InvalidInput

    def check(found: Network) -> None:
        chain_id = ChainClient(found.rpc_url).chain_id
        if not found.deployment.devnet or not is_devnet_chain(chain_id):
            why = "holds a deployment that is not a devnet one" if is_devnet_chain(chain_id) else "is not a devnet"
            raise InvalidInput(
                f"cheating providers run on devnets only: chain {chain_id} {why} (start one with `allmende up`)"
            )

    command.NETWORK_CHECKS.append(check)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m allmende.testing.cheats MODE provider … | N:MODE up …")
    mode, rest = argv[0], argv[1:]
    if rest[0] == "provider":
        devnet_only()
    if rest[0] == "up":
        number, _, provider_mode = mode.partition(":")
        if not number.isdigit() or provider_mode not in MODES:
            raise SystemExit(f"N:MODE with MODE one of {', '.join(MODES)}")
        from allmende.cli import up

        default, victim = up.provider_command, int(number)

        def provider_command(index: int) -> list[str]:
            return [*command(provider_mode), "provider"] if index == victim else default(index)

        up.provider_command = provider_command
    elif mode in SERVICE_MODES:
        from allmende.testing.provider_cheats import install

        install(mode)
    else:
        if mode not in MODES:
            raise SystemExit(f"MODE must be one of {', '.join(MODES)}")
        from allmende.provider import node

        node.ENGINE_WRAPPERS.append(wrapper(mode))
    from allmende.cli import main as cli

    sys.argv = ["allmende", *rest]
    cli()


if __name__ == "__main__":
    main(sys.argv[1:])
