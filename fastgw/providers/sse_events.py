"""Incremental SSE parsing and framing for the stream translators.

:class:`SseEventParser` turns upstream body bytes, cut anywhere, into whole
events ``(event type, data)``, following the WHATWG event-stream rules the
translators need:

- a line ends with ``\\n``, ``\\r\\n`` or ``\\r``, and the pair may be cut
  between two chunks (a chunk ending in ``\\r`` swallows a ``\\n`` opening the
  next one);
- a blank line ends an event; an event without a ``data`` field is not
  dispatched;
- several ``data:`` lines are joined with ``\\n``; one space after the colon is
  dropped; ``event:`` sets the type (``b""`` when absent); comment lines
  (``:``) and other fields (``id``, ``retry``) are ignored;
- one event larger than ``max_event_size`` bytes raises ``ValueError`` (the
  relay ends the stream), whole or still arriving.

Line ends are normalised to ``\\n`` as the bytes arrive, so finding an event is
one ``bytes.find(b"\\n\\n")``; the usual one-line ``data: ...`` event (and the
``event: ...`` + ``data: ...`` pair Anthropic sends) is read without splitting
lines.
"""

from __future__ import annotations

from fastgw._native import SseScanner

__all__ = [
    "CONTENT",
    "DEFAULT_MAX_EVENT",
    "DONE_EVENT",
    "SseEventParser",
    "StreamTranslator",
    "frame",
    "frame_typed",
]

DEFAULT_MAX_EVENT = 16 << 20

Event = tuple[bytes, bytes]
"""``(event type or b"", data)``: one dispatched event."""

DONE_EVENT = b"data: [DONE]\n\n"
"""OpenAI's end-of-stream marker, framed."""


def frame(data: bytes) -> bytes:
    """``data: <data>\\n\\n`` (``data`` must be one line, as compact JSON is)."""
    return b"data: " + data + b"\n\n"


def frame_typed(event: bytes, data: bytes) -> bytes:
    """``event: <event>\\ndata: <data>\\n\\n``, as Anthropic frames its events."""
    return b"event: " + event + b"\ndata: " + data + b"\n\n"


class SseEventParser:
    """Whole SSE events out of a byte stream fed in arbitrary pieces."""

    __slots__ = ("_after_cr", "_max", "_parts", "_pending")

    def __init__(self, max_event_size: int = DEFAULT_MAX_EVENT) -> None:
        self._max = max_event_size
        # The bytes of the unfinished event, kept as pieces (joined only when a
        # boundary arrives: a large event fed in small reads is not copied quadratically).
        self._parts: list[bytes] = []
        self._pending = 0  # their total length
        self._after_cr = False  # the last chunk ended in "\r": a leading "\n" is its pair

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by ``chunk``, in order. ValueError past the bound."""
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if 13 in chunk:  # b"\r" (an int test is a plain memchr)
            self._after_cr = chunk[-1] == 13
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        parts = self._parts
        if parts:
            # A boundary may straddle the pieces: "...\n" then "\n...".
            if b"\n\n" not in chunk and not (chunk[:1] == b"\n" and parts[-1][-1] == 10):
                if chunk:
                    self._hold(chunk)
                return []
            parts.append(chunk)
            chunk = b"".join(parts)
            parts.clear()
            self._pending = 0
        blocks = chunk.split(b"\n\n")
        rest = blocks.pop()  # after the last boundary: an unfinished event, or b""
        limit = self._max
        if len(chunk) > limit and any(len(b) > limit for b in blocks):
            raise ValueError(f"an SSE event is larger than {limit} bytes")
        events: list[Event] = []
        for block in blocks:
            # The usual shapes first: one data line, or an event line and one data line.
            if block[:6] == b"data: ":
                if 10 not in block:
                    events.append((b"", block[6:]))
                    continue
            elif block[:7] == b"event: ":
                head, sep, data = block.partition(b"\ndata: ")
                if sep and 10 not in data and 10 not in head:
                    events.append((head[7:], data))
                    continue
            ev = _parse_block(block)
            if ev is not None:
                events.append(ev)
        if rest:
            self._hold(rest)
        return events

    def _hold(self, piece: bytes) -> None:
        self._parts.append(piece)
        self._pending += len(piece)
        # Held bytes may carry the blank line's first "\n" and one before the event.
        if self._pending > self._max + 2:
            raise ValueError(f"an SSE event is larger than {self._max} bytes")

    @property
    def pending(self) -> int:
        """Bytes of an event still unfinished."""
        return self._pending


def _parse_block(block: bytes) -> Event | None:
    """The general case: any mix of fields, comments and (leading) blank lines."""
    event = b""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[:1] == b":":
            continue  # a blank line here only leads the block: nothing was pending
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
    if not data:
        return None
    return event, data[0] if len(data) == 1 else b"\n".join(data)


# ---------------------------------------------------------------- translators

_DONE = SseScanner.DONE
_ERROR = SseScanner.ERROR
_COMMIT = SseScanner.COMMIT
_END = _DONE | _ERROR
CONTENT = 1 << 16
"""Returned by :meth:`StreamTranslator._event` when its output carries content
(never seen by callers: the first one becomes ``COMMIT``)."""


class StreamTranslator:
    """The part of a stream translator every dialect pair shares: the same interface
    as the native :class:`~fastgw._native.SseScanner` (``feed``, ``finish``,
    ``committed``, ``done``, ``error``, ``usage``), the event parsing and the commit
    point. A subclass turns one upstream event into client bytes in ``_event``.

    Flags: ``COMMIT`` once, in the call whose output carries the first content
    (or the end of the stream, when it ends without any); ``ERROR`` for an upstream
    error event (the output then carries its translation); ``DONE`` at the
    upstream's end marker; ``USAGE`` when usage was read. After an error or the end
    marker the rest of the upstream body is ignored.
    """

    __slots__ = ("_committed", "_created", "_done", "_error", "_include_usage", "_parser")

    def __init__(self, *, include_usage: bool, created: int,
                 max_event_size: int = DEFAULT_MAX_EVENT) -> None:
        self._parser = SseEventParser(max_event_size)
        self._include_usage = include_usage
        self._created = created
        self._committed = False
        self._done = False
        self._error = False

    def feed(self, chunk: bytes) -> tuple[bytes, int]:
        """``(bytes for the client, flags)`` for the next piece of the upstream body.
        ValueError when one event is larger than ``max_event_size``."""
        events = self._parser.feed(chunk)
        if not events or self._done or self._error:
            return b"", 0
        out: list[bytes] = []
        flags = 0
        for event, data in events:
            flags |= self._event(event, data, out)
            if flags & _END:
                break  # the rest of the body is of no use
        if flags & CONTENT:
            flags &= ~CONTENT
            if not self._committed:
                self._committed = True
                flags |= _COMMIT
        elif flags & _DONE and not self._committed:
            self._committed = True  # the end of a stream without content commits it
            flags |= _COMMIT
        if len(out) == 1:
            return out[0], flags
        return b"".join(out), flags

    def _event(self, event: bytes, data: bytes, out: list[bytes]) -> int:
        """Translate one upstream event into ``out``; the flags it raises."""
        raise NotImplementedError

    def finish(self) -> bytes:
        """At a clean end of the upstream body: what the client is still owed."""
        raise NotImplementedError

    @property
    def committed(self) -> bool:
        """True once the commit point has passed."""
        return self._committed

    @property
    def done(self) -> bool:
        """True once the upstream's end marker was seen (or ``finish`` ended the stream)."""
        return self._done

    @property
    def error(self) -> bool:
        """True once an upstream error event was seen."""
        return self._error
