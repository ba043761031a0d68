"""Keeping the garbage collector's full passes off a serving node's request path.

A node process holds millions of long-lived objects once it has started: the modules of
torch, transformers, web3 and FastAPI, a model's layers and tokenizer, the app. CPython's
cyclic collector walks every tracked object in its oldest generation on each full pass,
and a full pass runs whenever enough new objects have survived, in whichever request's
allocation happens to trip it, with the GIL held. Measured in a provider serving
allmende:tiny at 32 concurrent requests, one such pass took 474 ms, during which no request
in the process moved (the engine's thread waits for the GIL too): that was the difference
between 25 ms direct and hundreds of ms through the gateway.

`freeze_startup_heap`, called once a node has loaded and built everything and before it
serves, collects what startup left as garbage and then moves every surviving object into
the collector's permanent generation (`gc.freeze`): later passes, full ones included, only
walk objects created while serving, which requests create and drop. Objects frozen are
never collected; a node's startup state lives as long as the process anyway.

Start-up itself pays for the collector too: importing torch, transformers, web3 and FastAPI
and loading a model create those objects and almost no garbage, yet each full pass walks the
whole growing heap; measured, the passes were 0.9 of the 4.6 CPU seconds a provider spends
importing (20 %). `python -m allmende` therefore starts a node command with the collector
paused (`pause_for_startup`), and `freeze_startup_heap` resumes it after its one collection:
every node calls it once it has started, before it serves (tests/architecture checks that
each server start does).

`ALLMENDE_GC_FREEZE=0` in a node's environment leaves the heap as it was: only for measuring
what freezing changes (`python bench/gateway.py --gc-freeze-ab`)."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Sequence

log = logging.getLogger("allmende.node.heap")


# `allmende COMMAND …` that start a long-running node (`stage` only as `stage serve`)
NODE_COMMANDS = frozenset({"provider", "gateway", "validator", "vault", "up"})


def starts_a_node(argv: Sequence[str]) -> bool:
    """Whether `allmende *argv` starts a node (help and option errors end before it serves)."""
    if "--help" in argv:
        return False
    return bool(argv) and (argv[0] in NODE_COMMANDS or list(argv[:2]) == ["stage", "serve"])


def pause_for_startup(argv: Sequence[str]) -> bool:
    """Pause the cyclic collector if `allmende *argv` starts a node: until its
    `freeze_startup_heap`. Returns whether it did."""
    if not starts_a_node(argv):
        return False
    gc.disable()
    return True


def freeze_startup_heap() -> int:
    """Collect startup's garbage, then exempt every object alive now from later collections,
    and let the collector run again (`pause_for_startup`). Returns how many objects were
    frozen (0 where ALLMENDE_GC_FREEZE=0 turns freezing off)."""
    if os.environ.get("ALLMENDE_GC_FREEZE") == "0":
        gc.enable()
        return 0
    gc.collect()
    gc.freeze()
    gc.enable()
    frozen = gc.get_freeze_count()
    log.info("froze %d startup objects out of the garbage collector's passes", frozen)
    return frozen
