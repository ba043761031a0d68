"""Closes seen in time: the provider follows the chain instead of waiting for a request.

A payer may close a channel that sends no more requests; the provider must see it and
redeem before the close time. `CloseWatcher.tick` (every `interval` seconds, beside the
settlement loop) reads the latest block, applies every `CloseRequested` event since the
last tick to the channels this node knows, and records how far it got. Its scans are
contiguous from its first tick on, so a channel state read at or after that tick is
current as of the watcher's last sync; state read before it (a previous run's cache) is
re-read at the first tick for every channel with vouchers still to redeem.

`ChainClock` turns wall time into the chain's time: a devnet's clock can be moved
forward (anvil's evm_increaseTime) and close times are the chain's. The offset only
grows: a latest block minted a while ago must not make the chain look younger.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from allmende.chain.bindings import Channels
from allmende.provider.store import ProviderStore

log = logging.getLogger("allmende.provider.watch")


class ChainClock:
    """The chain's time, estimated as wall time plus the largest offset seen."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.offset = 0.0

    def observe(self, block_timestamp: int, at: float) -> None:
        self.offset = max(self.offset, block_timestamp - at)

    def now(self) -> float:
        return self.wall() + self.offset


class CloseWatcher:
    def __init__(
        self, store: ProviderStore, channels: Channels, clock: ChainClock, wall: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.channels = channels
        self.clock = clock
        self.wall = wall
        self.next_block: int | None = None
        # wall time of the first scan's start: state read from then on is covered by the scans
        self.covered_since: float | None = None
        # wall time at which the last completed scan read its latest block: closes requested
        # before then are applied
        self.synced_at: float | None = None
        self.synced_block = 0
        self._lock = threading.Lock()

    def synced_since(self, refreshed_at: float) -> float | None:
        """The time a channel state read at `refreshed_at` is known current as of, through the
        scans; None when the scans do not cover it."""
        if self.covered_since is None or self.synced_at is None or refreshed_at < self.covered_since:
            return None
        return self.synced_at

    def tick(self) -> list[bytes]:
        """One scan; returns the known channels whose close it saw. Chain errors propagate
        (the caller logs them and tries again next tick)."""
        with self._lock:
            started = self.wall()
            client = self.channels.client
            block: Any = client.rpc(lambda: client.w3.eth.get_block("latest"))
            read = self.wall()  # a state read from now on is at `number` or later
            number, timestamp = int(block["number"]), int(block["timestamp"])
            self.clock.observe(timestamp, started)
            first = self.next_block is None
            start = number if self.next_block is None else self.next_block
            closing: list[bytes] = []
            for event in client.events(self.channels.contract, "CloseRequested", start, number):
                channel_id = bytes(event["args"]["channel_id"])
                state = self.store.channel(channel_id)
                if state is not None:
                    closes_at = int(event["args"]["closes_at"])
                    self.store.put_channel(channel_id, state.payer, state.deposit, closes_at)
                    closing.append(channel_id)
                    log.info("channel 0x%s closes at %d: its vouchers are redeemed now", channel_id.hex(), closes_at)
            if first:  # state cached before the scans began: re-read what still has money in it
                for channel_id in {r.channel_id for r in self.store.all_ledger() if r.cumulative > r.redeemed}:
                    record = self.channels.channel(channel_id)
                    self.store.put_channel(channel_id, record.payer, record.deposit, record.closes_at)
                self.covered_since = read
            self.next_block = number + 1
            self.synced_at = started
            self.synced_block = number
            return closing
