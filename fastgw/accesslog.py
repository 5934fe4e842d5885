"""The access log: one JSON line per request, written off the event loop.

Lines are rendered natively straight into one buffer held until the next flush
(:class:`fastgw._native.LogBuffer`: no object per line, no copy per line); a
short timer hands the buffer over whole to a writer thread (native,
:class:`fastgw._native.LogWriter`: it never needs the interpreter's lock, so it
never contends with the loop for it), so a slow terminal, pipe or disk never
blocks the loop. When the thread falls behind by more than ``max_pending``
lines, new lines are dropped and counted (the count is logged) rather than
growing memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, Protocol

import orjson

from fastgw._native import LogBuffer, LogWriter

FLUSH_INTERVAL_S = 0.05
CLOSE_TIMEOUT_S = 5.0  # how long closing waits for the writer to finish

log = logging.getLogger("fastgw.accesslog")


class LineBuffer(Protocol):
    """Where the log phase renders a request's line: :class:`fastgw._native.LogBuffer`'s
    ``access`` (True: the first line since the last flush, which
    :meth:`AccessLog.arm` then schedules)."""

    def access(self, *args: Any, **kwargs: Any) -> bool: ...


class AccessLog:
    __slots__ = ("_handle", "_lines", "_loop", "_out", "_owned", "_writer", "buffer",
                 "enabled")

    def __init__(self, target: str, loop: asyncio.AbstractEventLoop,
                 max_pending: int = 100_000) -> None:
        self.enabled = target != "off"
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._writer: LogWriter | None = None
        # The lines held until the next flush (None: the log is off): the request's
        # log phase renders its line straight into it (LogBuffer.access).
        self.buffer: LineBuffer | None = None
        self._lines: LogBuffer | None = None  # the same buffer, as the log's own
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
        self.buffer = self._lines = LogBuffer(self._writer, max_pending)

    def write(self, record: dict[str, Any]) -> None:
        """Queue one record (a dict of JSON-able values)."""
        if self.enabled:
            self.write_line(orjson.dumps(record, None, orjson.OPT_APPEND_NEWLINE))

    def write_line(self, line: bytes) -> None:
        """Queue one rendered line (a JSON object and a newline)."""
        lines = self._lines
        if lines is not None and lines.line(line):
            self.arm()

    def arm(self) -> None:
        """A first line is held since the last flush: flush within FLUSH_INTERVAL_S
        (the caller of ``buffer.access`` calls it when that answers True)."""
        if self._handle is None:
            self._handle = self._loop.call_later(FLUSH_INTERVAL_S, self.flush)

    def flush(self) -> None:
        self._handle = None
        lines = self._lines
        if lines is None:
            return
        # Lines leave the pending count only once written (bounded memory): until
        # the writer has caught up, flush again.
        if lines.flush() and self._handle is None:
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
        self.buffer = self._lines = None  # lines after the close go nowhere
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
