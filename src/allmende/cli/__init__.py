"""`allmende` — the command line (typer): one module per command group. Errors leave
through one handler (`allmende.cli.errors`): one line on stderr, `--debug` for the traceback."""

from __future__ import annotations

import signal

import typer

from allmende.cli import (
    chain,
    demo,
    faucet,
    federated,
    federated_lora,  # noqa: F401 (registers `federated lora` and `lora-evaluate` on federated.app)
    gateway,
    gov,
    keys,
    models,
    provider,
    stage,
    stake,
    status,
    transfer,
    up,
    validator,
    vault,
)
from allmende.cli.errors import HandledGroup, debug_option

app = typer.Typer(
    cls=HandledGroup, no_args_is_help=True, add_completion=False, help="Allmende: the commons of idle compute."
)
app.callback()(debug_option)
app.add_typer(chain.app, name="chain")
app.add_typer(keys.app, name="keys")
app.add_typer(gov.app, name="gov")
app.command("params")(gov.params)
app.add_typer(stake.app, name="stake")
app.command("demo")(demo.demo)
app.command("faucet")(faucet.faucet)
app.command("transfer")(transfer.transfer)
app.command("provider")(provider.provider)
app.command("provider-redeem")(provider.provider_redeem)
app.command("provider-withdraw")(provider.provider_withdraw)
app.command("gateway")(gateway.gateway)
app.command("gateway-close")(gateway.gateway_close)
app.command("up")(up.up)
app.command("down")(up.down)
app.command("status")(status.status)
app.command("validator")(validator.validator)
app.command("vault")(vault.vault)
app.add_typer(vault.data_app, name="data")
app.add_typer(federated.app, name="federated")
app.add_typer(models.app, name="models")
app.add_typer(stage.app, name="stage")


def accept_interrupts() -> None:
    """Let Ctrl-C and SIGTERM in, whatever the parent left us: a shell starts background jobs
    (`allmende up &`) with SIGINT ignored, and a supervisor may start us with it blocked; both
    survive exec, and Python keeps them. A node that cannot be interrupted is killed in the end
    and loses its orderly stop (offers withdrawn, database committed); `up` would orphan its
    nodes."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> None:
    accept_interrupts()
    app()
