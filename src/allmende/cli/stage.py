"""`allmende stage layout|serve`: a model split into pipeline stages, and a provider serving one.

`layout` prints the stage descriptors of an even split (what the model's owner registers as
derived models, see `allmende.core.stages`); `serve` loads one stage's slice and answers
the stage wire API (`allmende.provider.stage_app`).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from allmende.cli.common import console, friendly_errors, node_logging

if TYPE_CHECKING:
    from allmende.core.stages import StageLayout
    from allmende.engine import ResolvedModel

app = typer.Typer(help="pipeline stages: a model's layout, and serving one stage", no_args_is_help=True)


def _layout(model: str, stages: int) -> tuple[ResolvedModel, StageLayout]:
    from allmende.engine import resolve_model
    from allmende.engine.stages import stage_layout

    resolved = resolve_model(model)
    return resolved, stage_layout(resolved.path, resolved.model_id, stages)


@app.command("layout")
def layout(
    model: str = typer.Argument("smollm2-135m-instruct", help="the model (name, folder or .gguf)"),
    stages: int = typer.Option(3, help="how many stages to split its blocks into"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object instead of a table"),
) -> None:
    """The stage ids and descriptors of an even split of a model's blocks."""
    with friendly_errors():
        _, split = _layout(model, stages)
        rows = [
            {"stage": s.stage_id_hex, "blocks": [s.range.start, s.range.end], "descriptor": s.descriptor}
            for s in split.stages
        ]
        if as_json:
            print(json.dumps({"base": "0x" + split.base.hex(), "stages": rows}))
            return
        for row in rows:
            console.print(f"blocks {row['blocks'][0]:>3}-{row['blocks'][1]:<3} {row['stage']}\n  {row['descriptor']}")


@app.command("serve")
def serve(
    model: str = typer.Argument("smollm2-135m-instruct", help="the model (name, folder or .gguf)"),
    stages: int = typer.Option(3, help="how many stages the model's layout has"),
    index: int = typer.Option(..., help="which stage to serve, 0 = the first"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(0, help="port to listen on (0: any free port)"),
    ready_file: Path = typer.Option(None, help="write {url, stage} here once serving (for supervisors and tests)"),
) -> None:
    """Serve one stage of a model: its slice of the weights, a KV cache per session."""
    import uvicorn

    from allmende.api.guard import JSON, GuardConfig
    from allmende.api.stages import MEDIA_TYPE
    from allmende.core.errors import InvalidInput
    from allmende.engine import resolve_model
    from allmende.engine.stages import StageEngine, stage_of
    from allmende.node.heap import freeze_startup_heap
    from allmende.node.net import bind_socket
    from allmende.provider.stage_app import create_stage_app

    with friendly_errors():
        node_logging()
        if not 0 <= index < stages:
            raise InvalidInput(f"--index must be 0-{stages - 1}")
        sock = bind_socket(host, port)
        resolved = resolve_model(model)
        spec, tensors = stage_of(resolved.path, resolved.model_id, stages, index)
        engine = StageEngine(resolved.path, spec, tensors=tensors)
        guard = GuardConfig.serving(host, content_types=frozenset({JSON, MEDIA_TYPE}))
        app_ = create_stage_app(engine, guard)
        url = f"http://{host}:{sock.getsockname()[1]}"
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"url": url, "stage": spec.stage_id_hex, "descriptor": spec.descriptor}))
            tmp.rename(ready_file)
        console.print(f"serving blocks {spec.range.start}-{spec.range.end} ({spec.stage_id_hex}) at {url}")
        server = uvicorn.Server(uvicorn.Config(app_, log_level="warning", timeout_keep_alive=30))
        freeze_startup_heap()  # the stage's weights loaded: the collector runs again (node/heap.py)
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
            server.run(sockets=[sock])


@app.command("register")
def register(
    model: str = typer.Argument("smollm2-135m-instruct", help="the model (name, folder or .gguf); registered already"),
    stages: int = typer.Option(3, help="how many stages to split its blocks into"),
    key: str = typer.Option(..., help="the base model owner's key (a router reads only the owner's stages)"),
    license: str = typer.Option(..., help="the stages' license: the base model's"),
    rpc: str = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC or http://127.0.0.1:8545)"),
    deployments: Path = typer.Option(None, help="deployments JSON (default: found in $ALLMENDE_STATE_DIR)"),
) -> None:
    """Register a model's stages on chain, each a model derived from the base (its royalty
    goes to the base's owner), its descriptor the metadata URI; providers then offer them."""
    from allmende.chain.stages import register_layout
    from allmende.cli.common import contracts_for

    with friendly_errors():
        _, split = _layout(model, stages)
        done = register_layout(contracts_for(rpc, key, deployments), split, license)
        for spec in split.stages:
            state = "registered" if spec.stage_id in done else "already registered"
            console.print(f"blocks {spec.range.start:>3}-{spec.range.end:<3} {spec.stage_id_hex} {state}")
