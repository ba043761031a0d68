"""Token events from a scheduler thread to the event loops that stream them, one wake per step.

A step of the batch scheduler produces an event for every sequence it advanced, and each
sequence's consumer waits on an `asyncio.Queue` in some event loop. Waking that loop once
per event (`call_soon_threadsafe` for every token of every stream) cost a wake-up write, a
thread switch and a fight for the GIL per token: profiled on allmende:tiny behind the
provider, that one call was half of the provider's busy time, and the cost grew with the
number of streams in a step. Here the events of one step are collected per event loop and
each loop is woken once, when the step is done (`one_wake_per_step`), just before the next
forward pass, which runs in C with the GIL released while the loop sends the tokens out.
Events emitted outside a step (a failure, a cancelled request) wake their loop at once.
Order is kept: a queue receives its events in the order they were emitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

_step = threading.local()  # .handoffs: the Handoffs that got events during this thread's current step
_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Handoff] = weakref.WeakKeyDictionary()
_by_loop_lock = threading.Lock()


class Handoff:
    """The events waiting for one event loop, and whether it has been woken for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # weakly: the loop is this object's key in `_by_loop`
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[Any], Any]] = []
        self._woken = False  # a delivery is scheduled on the loop and has not run yet
        self.deliveries = 0  # times the loop was woken to deliver (tests, metrics)

    def put(self, queue: asyncio.Queue[Any], item: Any) -> None:
        """Hand `item` to `queue` (from any thread); inside a step, the loop is woken when it ends."""
        with self._lock:
            self._pending.append((queue, item))
        handoffs: set[Handoff] | None = getattr(_step, "handoffs", None)
        if handoffs is not None:
            handoffs.add(self)
        else:
            self.wake()

    def wake(self) -> None:
        """Schedule delivery of what is pending on the loop, unless it is scheduled already."""
        with self._lock:
            if self._woken or not self._pending:
                return
            self._woken = True
        loop = self._loop()
        try:
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the consumer's event loop is closed: nobody listens
            with self._lock:
                self._pending.clear()
                self._woken = False

    def _deliver(self) -> None:
        with self._lock:
            items, self._pending, self._woken = self._pending, [], False
        self.deliveries += 1
        for queue, item in items:
            queue.put_nowait(item)


def handoff_for(loop: asyncio.AbstractEventLoop) -> Handoff:
    """The one Handoff of `loop` (all streams of a loop share it, so a step wakes it once)."""
    with _by_loop_lock:
        handoff = _by_loop.get(loop)
        if handoff is None:
            handoff = _by_loop[loop] = Handoff(loop)
        return handoff


@contextlib.contextmanager
def one_wake_per_step() -> Iterator[None]:
    """Within the block (one scheduler step, on its thread), events wait; at its end every loop
    that got some is woken once."""
    handoffs: set[Handoff] = set()
    _step.handoffs = handoffs
    try:
        yield
    finally:
        _step.handoffs = None
        for handoff in handoffs:
            handoff.wake()
