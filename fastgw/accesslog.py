"""The access log: one JSON line per request, written off the event loop.

Lines are rendered with orjson straight into one growing buffer (each
rendering is freed at once, so the allocator hands the same block back every
time; keeping each line as its own object until the flush would cost fresh
memory, and page faults, per line); a short timer hands the buffer to a
writer thread (native, :class:`fastgw._native.LogWriter`: it never needs the
interpreter's lock, so it never contends with the loop for it), so a slow
terminal, pipe or disk never blocks the loop. When the thread falls behind by
more than ``max_pending`` lines, new lines are dropped and counted (the count
is logged) rather than growing memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import orjson

from fastgw._native import LogWriter

FLUSH_INTERVAL_S = 0.05
CLOSE_TIMEOUT_S = 5.0  # how long closing waits for the writer to finish

log = logging.getLogger("fastgw.accesslog")


class AccessLog:
    __slots__ = ("_buf", "_dropped", "_handle", "_lines", "_loop", "_max_pending", "_out",
                 "_owned", "_pending", "_writer", "enabled")

    def __init__(self, target: str, loop: asyncio.AbstractEventLoop,
                 max_pending: int = 100_000) -> None:
        self.enabled = target != "off"
        self._loop = loop
        self._buf = bytearray()
        self._lines = 0  # in _buf
        self._handle: asyncio.TimerHandle | None = None
        self._max_pending = max_pending
        self._pending = 0
        self._dropped = 0
        self._writer: LogWriter | None = None
        self._out: int | None = None
        self._owned = False  # the file descriptor is ours to close
        if not self.enabled:
            return
        if target == "stdout":
            self._out = sys.stdout.fileno()
        elif target == "stderr":
            self._out = sys.stderr.fileno()
        else:
            # O_APPEND and one write() per batch: with --workers N every process
            # appends to the one file and lines never interleave.
            self._out = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                0o644)
            self._owned = True
        self._writer = LogWriter(self._out)

    def write(self, record: dict[str, Any]) -> None:
        """Queue one record (a dict of JSON-able values)."""
        if self.enabled:
            self.write_line(orjson.dumps(record, None, orjson.OPT_APPEND_NEWLINE))

    def write_line(self, line: bytes) -> None:
        """Queue one rendered line (a JSON object and a newline)."""
        if not self.enabled:
            return
        if self._pending >= self._max_pending:
            self._dropped += 1
            return
        self._buf += line
        self._lines += 1
        self._pending += 1
        if self._handle is None:
            self._handle = self._loop.call_later(FLUSH_INTERVAL_S, self.flush)

    def flush(self) -> None:
        self._handle = None
        writer = self._writer
        if writer is None:
            return
        if self._lines:
            batch, self._buf = self._buf, bytearray()
            lines, self._lines = self._lines, 0
            if self._dropped:
                batch += orjson.dumps({"event": "access_log_dropped", "lines": self._dropped},
                                      None, orjson.OPT_APPEND_NEWLINE)
                self._dropped = 0
            writer.submit(batch, lines)
        # Lines leave the pending count only once written (bounded memory).
        self._pending = writer.pending
        if self._pending and self._handle is None:  # until the writer has caught up
            self._handle = self._loop.call_later(FLUSH_INTERVAL_S, self.flush)

    def close(self) -> None:
        """Flush what is queued and stop the writer thread, waiting for it up to
        ``CLOSE_TIMEOUT_S`` (a writer still blocked then keeps its descriptor open)."""
        if self._handle is not None:
            self._handle.cancel()
        self.flush()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._writer is not None:
            stopped = self._writer.close(CLOSE_TIMEOUT_S)
            self._writer = None
            if not stopped:  # blocked in a write: its descriptor must stay open
                log.warning("the access log's writer is still blocked writing after %.0f s;"
                            " lines not yet written may be lost", CLOSE_TIMEOUT_S)
                return
        if self._out is not None and self._owned:
            os.close(self._out)
            self._out = None
