"""Relay of one upstream SSE stream to one client.

The upstream connection calls :meth:`StreamRelay.feed` with each chunk until
the commit point, then (``on_commit``) once per read with all the body bytes
it carried. A *scanner* reads them: the native
:class:`~fastgw._native.SseScanner` when the client and the upstream speak the
same dialect (the bytes go to the client in one write, unmodified and
undecoded; only when the gateway asked for the usage chunk, and the client did
not, is that one event cut out), or a translator of the upstream's dialect into
the client's (:mod:`fastgw.providers`), event by event. Either finds, across
chunk boundaries, the usage, the end of the stream, error events and the first
content.

The first content (a text or tool-call delta, or the end of the stream) is the
**commit point**. Before it, an in-band error event is not passed on: the relay
calls ``on_error`` so the caller can fail over to another target. A relay that
``resumes`` such a failed-over stream (the client already has the head and an
earlier upstream's opening events; a relay that wrote them says so in
``opened``) leaves out the new upstream's opening: all it sends before its
first content for an OpenAI client (its role event), its ``message_start`` for
an Anthropic client. An Anthropic client gets ``message_start`` at once and
the rest of what comes before the first content (a content block's start) with
it, so a failover never leaves it a block the next upstream does not continue.
When the failed upstream sent nothing before its error, the next one's opening
events are the client's first. The client sees one coherent stream.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from time import perf_counter

import orjson

from fastgw._native import SseScanner
from fastgw.errors import GatewayError
from fastgw.types import StreamScanner, StreamSink, cache_counts, usage_numbers

_COMMIT = SseScanner.COMMIT
_DONE = SseScanner.DONE
_ERROR = SseScanner.ERROR


class StreamRelay:
    __slots__ = ("_error_event", "_held", "_on_commit", "_on_error", "_opening", "_resumed",
                 "_scanner", "_secrets", "_sink", "committed", "committed_at", "error_payload",
                 "failed", "late_error", "opened")

    def __init__(self, sink: StreamSink, scanner: StreamScanner, *, resumed: bool,
                 on_error: Callable[[], None], error_event: Callable[[GatewayError], bytes],
                 on_commit: Callable[[], None] | None = None,
                 opening: re.Pattern[bytes] | None = None,
                 secrets: tuple[bytes, ...] = ()) -> None:
        self._scanner = scanner
        # The provider's keys: an upstream's error event may quote the key it was
        # sent, and that event reaches the client, the logs and the errors.
        self._secrets = secrets
        self._sink = sink
        # The client has had an earlier upstream's opening events: this one's are
        # left out.
        self._resumed = resumed
        # None: what comes before the commit point goes out at once (OpenAI: the
        # role event). A pattern (Anthropic: message_start): only that opening
        # event goes out at once; the rest (a content block's start) is held until
        # the commit point, so a failover never leaves the client with a block the
        # next upstream does not continue.
        self._opening = opening
        self._held: list[bytes] | None = [] if opening is not None else None
        self._on_error = on_error
        self._on_commit = on_commit
        self._error_event = error_event
        self.committed = False
        self.committed_at = 0.0  # when the first content went out (perf_counter)
        self.failed = False
        self.opened = False  # opening events went to the client
        self.error_payload: bytes | None = None
        # An error event after the commit point: passed on (the client's stream
        # ends with it), kept here so the request is counted as failed.
        self.late_error: bytes | None = None

    @property
    def usage(self) -> tuple[int, int] | None:
        return usage_numbers(self._scanner.usage)

    @property
    def cache_usage(self) -> tuple[int, int] | None:
        """(prompt-cache reads, writes), once usage was read."""
        return cache_counts(self._scanner.usage)

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
                self.committed_at = perf_counter()
                if self._on_commit is not None:
                    self._on_commit()
                if self._held is not None:
                    out = self._release_held(out)
            elif flags & _ERROR:
                self.failed = True
                self.error_payload = scrub(out, self._secrets)
                self._on_error()
                return
            elif self._held is not None:
                self._hold(out)
                return
            elif self._resumed:
                return  # the client has had the opening events already
            elif out:
                self.opened = True
        if flags & _ERROR and self.committed:
            out = self.late_error = scrub(out, self._secrets)
        if out:
            self._sink.write(out)

    def _hold(self, out: bytes) -> None:
        """Before the commit point, with an opening event: send it once whole (unless
        the client has one), hold the rest."""
        held = self._held
        assert held is not None and self._opening is not None
        held.append(out)
        if self.opened or self._resumed:
            return
        data = b"".join(held)
        m = self._opening.search(data)
        if m is not None:
            self._sink.write(data[:m.end()])
            self.opened = True
            held[:] = [data[m.end():]]

    def _release_held(self, out: bytes) -> bytes:
        """The commit point: what was held, then ``out`` (a resumed stream's own
        opening event left out)."""
        held = self._held
        assert held is not None and self._opening is not None
        self._held = None
        held.append(out)
        data = b"".join(held)
        if self._resumed:
            data = self._opening.sub(b"", data, count=1)
        else:
            self.opened = True
        return data

    def finish(self) -> None:
        """The upstream ended cleanly: send what was held and any tail."""
        self.committed = True
        if self._held is not None:
            held = self._release_held(b"")
            if held:
                self._sink.write(held)
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
        """End the stream with a typed SSE error event in the client's dialect (no
        fake end marker)."""
        self._sink.write(self._error_event(exc))


def _nothing() -> None:
    pass


class _Discard:
    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass


_DISCARD = _Discard()


def scrub(data: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """``data`` with every secret replaced by ``[redacted]``."""
    for secret in secrets:
        if data.find(secret) >= 0:  # (no copy of data without one)
            data = data.replace(secret, b"[redacted]")
    return data


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
