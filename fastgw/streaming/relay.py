"""Relay of one upstream SSE stream to one client.

The upstream connection calls :meth:`StreamRelay.feed` with each chunk until
the commit point, then (``on_commit``) once per read with all the body bytes
it carried, which go to the client in one write, unmodified and undecoded
(only when the gateway asked for the usage chunk, and the client did not, is
that one event cut out). The native :class:`~fastgw._native.SseScanner`
finds, across chunk boundaries, the usage, ``[DONE]``, error events and the
first content.

The first content (a text or tool-call delta, or the end of the stream) is the
**commit point**. Before it, an in-band error event is not passed on: the relay
calls ``on_error`` so the caller can fail over to another target. A relay that
``resumes`` such a failed-over stream (the client already has the head and the
first upstream's role event) drops the new upstream's events before its first
content, so the client sees one coherent stream.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from fastgw._native import SseScanner
from fastgw.errors import GatewayError
from fastgw.streaming.sse import error_event
from fastgw.types import StreamSink, usage_numbers

_COMMIT = SseScanner.COMMIT
_DONE = SseScanner.DONE
_ERROR = SseScanner.ERROR


class StreamRelay:
    __slots__ = ("_on_commit", "_on_error", "_resumed", "_scanner", "_sink", "committed",
                 "error_payload", "failed")

    def __init__(self, sink: StreamSink, *, drop_usage: bool, resumed: bool,
                 on_error: Callable[[], None],
                 on_commit: Callable[[], None] | None = None) -> None:
        self._scanner = SseScanner(drop_usage=drop_usage)
        self._sink = sink
        self._resumed = resumed
        self._on_error = on_error
        self._on_commit = on_commit
        self.committed = False
        self.failed = False
        self.error_payload: bytes | None = None

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
        if not self.committed:
            # Content first: an error in the same chunk comes after it, in-band. An
            # error without content (even one that ends the stream) fails over.
            if flags & _COMMIT or (flags & _DONE and not flags & _ERROR):
                self.committed = True
                if self._on_commit is not None:
                    self._on_commit()
            elif flags & _ERROR:
                self.failed = True
                self.error_payload = out
                self._on_error()
                return
            elif self._resumed:
                return  # the client has had a role event already
        if out:
            self._sink.write(out)

    def finish(self) -> None:
        """The upstream ended cleanly: send any tail."""
        self.committed = True
        tail = self._scanner.finish()
        if tail:
            self._sink.write(tail)

    def release(self) -> None:
        """The stream is over: drop the callbacks (they refer back to the relay)."""
        self._on_error = _nothing
        self._on_commit = None

    def discard(self) -> None:
        """The client is gone: keep scanning (for usage) but write nothing."""
        self._sink = _DISCARD

    def fail(self, exc: GatewayError) -> None:
        """End the stream with a typed SSE error event (no fake [DONE])."""
        self._sink.write(error_event(exc))


def _nothing() -> None:
    pass


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
