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

`ALLMENDE_GC_FREEZE=0` in a node's environment leaves the heap as it was: only for measuring
what freezing changes (`python bench/gateway.py --gc-freeze-ab`)."""

from __future__ import annotations

import gc
import logging
import os

log = logging.getLogger("allmende.node.heap")


def freeze_startup_heap() -> int:
    """Collect startup's garbage, then exempt every object alive now from later collections.
    Returns how many objects were frozen (0 where ALLMENDE_GC_FREEZE=0 turns it off)."""
    if os.environ.get("ALLMENDE_GC_FREEZE") == "0":
        return 0
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d startup objects out of the garbage collector's passes", frozen)
    return frozen
