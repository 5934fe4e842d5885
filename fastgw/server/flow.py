"""Flow control for one client connection: counted read pauses, write drain.

Reading is paused for reasons (a bit each); the transport is paused when the
first reason appears and resumed when the last one goes, so pausing or
resuming twice for the same reason is a harmless no-op. Writing is paused by
the transport (``pause_writing``) above its high watermark and resumed below
the low one; the current listener (a stream relay) is told, so it can stop
reading its upstream instead of buffering without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

READ_PIPELINE = 1  # too many pipelined requests queued behind the active one

HIGH_WATER = 64 * 1024
LOW_WATER = HIGH_WATER // 4


class FlowControl:
    __slots__ = ("_drain", "_reasons", "_transport", "listener", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._reasons = 0
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        # (on_pause, on_resume) of whoever produces the bytes written now.
        self.listener: tuple[Callable[[], None], Callable[[], None]] | None = None
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)

    def pause_reading(self, reason: int) -> None:
        if not self._reasons:
            self._transport.pause_reading()
        self._reasons |= reason

    def resume_reading(self, reason: int) -> None:
        if self._reasons & reason:
            self._reasons &= ~reason
            if not self._reasons:
                self._transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.listener is not None:
            self.listener[0]()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None:
            if not self._drain.done():
                self._drain.set_result(None)
            self._drain = None
        if self.listener is not None:
            self.listener[1]()

    async def drain(self) -> None:
        """Wait until the transport accepts writes again (only await when paused)."""
        if self.write_paused:
            if self._drain is None:
                self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    def connection_lost(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("client disconnected"))
            # Mark retrieved so an unawaited waiter does not warn.
            self._drain.exception()
        self._drain = None
