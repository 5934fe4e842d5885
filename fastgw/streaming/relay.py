"""Relay of one upstream SSE stream to one client, chunk by chunk.

The upstream connection calls :meth:`StreamRelay.feed` with body bytes as they
arrive; complete events go to the client at once, unmodified, in the same
write. Only when the gateway itself asked for the usage chunk (the client did
not) is that one event cut out. Usage is recorded either way.
"""

from __future__ import annotations

import re

import orjson

from fastgw.errors import GatewayError
from fastgw.streaming.sse import error_event
from fastgw.types import StreamSink, usage_numbers

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class StreamRelay:
    __slots__ = ("_drop_usage", "_pending", "_sink", "done", "usage")

    def __init__(self, sink: StreamSink, *, drop_usage: bool) -> None:
        self._sink = sink
        self._drop_usage = drop_usage
        self._pending = b""
        self.usage: tuple[int, int] | None = None
        self.done = False

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk if self._pending else chunk
        end = _last_boundary(data)
        if end < 0:
            self._pending = data
            return
        if end < len(data):
            complete, self._pending = data[:end], data[end:]
        else:
            complete, self._pending = data, b""
        if _USAGE_OBJECT.search(complete) is not None:
            complete = self._take_usage(complete)
        if not self.done and b"[DONE]" in complete:
            self.done = True
        if complete:
            self._sink.write(complete)

    def _take_usage(self, complete: bytes) -> bytes:
        kept: list[bytes] = []
        pos = 0
        for m in _BOUNDARY.finditer(complete):
            event = complete[pos:m.end()]
            pos = m.end()
            if _USAGE_OBJECT.search(event) is None:
                kept.append(event)
                continue
            usage_only = self._read_usage(event)
            if not (self._drop_usage and usage_only):
                kept.append(event)
        return b"".join(kept)

    def _read_usage(self, event: bytes) -> bool:
        """Record the usage in ``event``; True when it is a usage-only chunk."""
        lines = [ln[5:].lstrip() for ln in event.splitlines() if ln.startswith(b"data:")]
        try:
            doc = orjson.loads(b"\n".join(lines))
        except orjson.JSONDecodeError:
            return False
        if not isinstance(doc, dict):
            return False
        numbers = usage_numbers(doc.get("usage"))
        if numbers is not None:
            self.usage = numbers
        choices = doc.get("choices")
        return numbers is not None and isinstance(choices, list) and not choices

    def flush(self) -> None:
        """Forward whatever incomplete event is left (the upstream ended)."""
        if self._pending:
            self._sink.write(self._pending)
            self._pending = b""

    def fail(self, exc: GatewayError) -> None:
        """End the stream with a typed SSE error event (no fake [DONE])."""
        self._pending = b""
        self._sink.write(error_event(exc))


def _last_boundary(data: bytes) -> int:
    """Index just past the last complete event in ``data``, or -1."""
    i = data.rfind(b"\n\n")
    best = i + 2 if i >= 0 else -1
    j = data.rfind(b"\r\n\r\n")
    if j >= 0 and j + 4 > best:
        best = j + 4
    k = data.rfind(b"\r\r")
    if k >= 0 and k + 2 > best:
        best = k + 2
    return best
