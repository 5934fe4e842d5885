"""Requests to upstreams written together, once per turn of the event loop.

A request is ready to go upstream while the loop is still reading the other
sockets that woke it. Written at once, each request would wake the upstream
(on another CPU, often asleep) separately: on a busy gateway most of a
write's system time is that wake-up. Kept until the end of the turn, the
turn's requests leave one after the other, and the first wakes the upstream
for all of them. The delay is the rest of the turn (the callbacks of the
sockets already read), nothing at a low rate.

After the writes, the loop polls for up to ``poll_s`` (``server.busy_poll_us``)
instead of sleeping: its turns keep running, with nothing to wait for, so the
CPU does not go idle while the answers are on their way. An idle CPU (a halted
virtual CPU above all) takes tens of microseconds to wake, and the answer's
work then runs on cold caches: at a low rate that is most of what the gateway
adds. A busy gateway never sleeps anyway; an idle one polls only after a
request, for ``poll_s`` at most.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from time import perf_counter
from typing import Any

log = logging.getLogger("fastgw.upstream")


class WriteBatch:
    """The writes of one event loop's turn, made at its end."""

    __slots__ = ("__weakref__", "_flush", "_loop", "_pending", "_poll", "_poll_until",
                 "_polling", "poll_s")

    def __init__(self, loop: asyncio.AbstractEventLoop, poll_s: float = 0.0) -> None:
        self._loop = loop
        self._pending: list[Any] = []  # transport, data, transport, data...
        self._flush = self.flush  # bound once
        self.poll_s = poll_s  # after the writes, poll this long instead of sleeping
        self._poll_until = 0.0
        self._polling = False  # a poll callback is scheduled
        self._poll = self._poll_once

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        """``data`` to ``transport`` at the end of this turn (after earlier writes
        of the turn, in order). A transport closed meanwhile gets nothing."""
        pending = self._pending
        if not pending:
            self._loop.call_soon(self._flush)
        pending.append(transport)
        pending.append(data)

    def flush(self) -> None:
        """Make the writes kept so far (the end of the turn, or a test's own)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        for i in range(0, len(pending), 2):
            transport: asyncio.Transport = pending[i]
            if transport.is_closing():
                continue  # its exchange fails by connection_lost, as before the write
            try:
                transport.write(pending[i + 1])
            except Exception:  # one transport's failure must not drop the others' writes
                log.exception("an upstream write failed")
                transport.abort()
        if self.poll_s > 0.0:
            self._poll_until = perf_counter() + self.poll_s
            if not self._polling:
                self._polling = True
                self._loop.call_soon(self._poll)

    def _poll_once(self) -> None:
        """One turn of polling: another until the window after the last writes ends
        (a callback ready keeps the loop from sleeping in its next wait)."""
        if perf_counter() < self._poll_until:
            self._loop.call_soon(self._poll)
        else:
            self._polling = False

    def __len__(self) -> int:
        return len(self._pending) // 2


_BATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WriteBatch] = (
    weakref.WeakKeyDictionary())


def batch_for(loop: asyncio.AbstractEventLoop) -> WriteBatch:
    """The loop's one batch (every pool of the loop shares it: one flush a turn)."""
    batch = _BATCHES.get(loop)
    if batch is None:
        batch = _BATCHES[loop] = WriteBatch(loop)
    return batch
