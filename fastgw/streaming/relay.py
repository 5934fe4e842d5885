"""Relay of one upstream SSE stream to one client.

The upstream connection calls :meth:`StreamRelay.feed` with body bytes as they
arrive and :meth:`StreamRelay.flush` after each read, so what one read carried
goes to the client in one write. The native :class:`~fastgw._native.SseScanner`
looks at the bytes without decoding them: it finds events across chunk
boundaries, the usage, ``[DONE]``, error events and the first content.

Two modes:

* **holding** (before the commit point): bytes are kept back until the first
  content (a text or tool-call delta) or the end of the stream. Then
  ``on_commit()`` sends the response head and returns the sink, and what was
  held goes out. An in-band error event before that calls ``on_error``
  instead, so the caller can fail over with nothing sent.
* **passing**: bytes go to the client unmodified (the chunk object itself);
  only when the gateway asked for the usage chunk (the client did not) does
  the scanner cut that one event out.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from fastgw._native import SseScanner
from fastgw.errors import GatewayError
from fastgw.streaming.sse import error_event
from fastgw.types import StreamSink, usage_numbers

MAX_HELD = 256 * 1024  # past this much held back, commit anyway

_COMMIT_OR_DONE = SseScanner.COMMIT | SseScanner.DONE
_ERROR = SseScanner.ERROR


class StreamRelay:
    __slots__ = ("_held", "_held_size", "_on_commit", "_on_error", "_out", "_scanner",
                 "_sink", "error_payload", "failed")

    def __init__(self, *, drop_usage: bool, on_commit: Callable[[], StreamSink],
                 on_error: Callable[[], None]) -> None:
        self._scanner = SseScanner(drop_usage=drop_usage)
        self._on_commit = on_commit
        self._on_error = on_error
        self._sink: StreamSink | None = None  # None while holding
        self._out: list[bytes] = []  # bytes of the current read, written by flush()
        self._held: list[bytes] = []
        self._held_size = 0
        self.failed = False
        self.error_payload: bytes | None = None

    @property
    def committed(self) -> bool:
        return self._sink is not None

    @property
    def usage(self) -> tuple[int, int] | None:
        return usage_numbers(self._scanner.usage)

    @property
    def done(self) -> bool:
        return self._scanner.done

    def feed(self, chunk: bytes) -> None:
        if self.failed:
            return  # failed before the commit point: the rest is of no use
        out, flags = self._scanner.feed(chunk)
        if self._sink is not None:
            if out:
                self._out.append(out)
            return
        if flags & _ERROR:
            self.failed = True
            self.error_payload = b"".join(self._held) + out
            self._held = []
            self._on_error()
            return
        if out:
            self._held.append(out)
            self._held_size += len(out)
        if flags & _COMMIT_OR_DONE or self._held_size > MAX_HELD:
            self.commit()

    def flush(self) -> None:
        """Write what the last read carried, in one write."""
        out = self._out
        if out:
            self._out = []
            sink = self._sink
            if sink is not None:
                sink.write(out[0] if len(out) == 1 else b"".join(out))

    def commit(self) -> None:
        """Send the head; what was held back goes out with the next flush."""
        if self._sink is not None:
            return
        self._sink = self._on_commit()
        if self._held:
            self._out[:0] = self._held
            self._held = []

    def finish(self) -> None:
        """The upstream ended cleanly: commit if still holding, send any tail."""
        if self._sink is None:
            self.commit()
        tail = self._scanner.finish()
        if tail:
            self._out.append(tail)
        self.flush()

    def discard(self) -> None:
        """The client is gone: keep scanning (for usage) but write nothing."""
        self._sink = _DISCARD
        self._out = []

    def fail(self, exc: GatewayError) -> None:
        """End a committed stream with a typed SSE error event (no fake [DONE])."""
        if self._sink is not None:
            self._out.append(error_event(exc))
            self.flush()


class _Discard:
    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass


_DISCARD = _Discard()


def error_message(payload: bytes) -> str:
    """The message of the (last) error event in ``payload``, for logs and errors."""
    for event in reversed(payload.replace(b"\r\n", b"\n").split(b"\n\n")):
        lines = [ln[5:].lstrip() for ln in event.split(b"\n") if ln.startswith(b"data:")]
        if not lines:
            continue
        try:
            doc = orjson.loads(b"\n".join(lines))
        except orjson.JSONDecodeError:
            continue
        if not isinstance(doc, dict):
            continue
        err = doc.get("error", doc if doc.get("type") == "error" else None)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return "error event"
