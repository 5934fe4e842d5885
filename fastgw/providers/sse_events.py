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

Line ends are normalised to ``\\n`` as the bytes arrive, so events are split
with one ``bytes.split(b"\\n\\n")``; the usual one-line ``data: ...`` event (and
the ``event: ...`` + ``data: ...`` pair Anthropic sends) is read without
splitting lines.

:class:`StreamTranslator` is the base of the stream translators: the same
interface as the native ``SseScanner``, the same buffering, and the commit
point; a subclass translates one event at a time. Its ``feed`` reads the usual
upstream read (exactly one whole event) with single-byte searches only.
"""

from __future__ import annotations

from fastgw._native import SseScanner

__all__ = [
    "CONTENT",
    "DEFAULT_MAX_EVENT",
    "DONE_EVENT",
    "SseBuffer",
    "SseEventParser",
    "StreamTranslator",
    "event_of",
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


class SseBuffer:
    """Whole SSE event blocks out of a byte stream fed in arbitrary pieces: the state
    :class:`SseEventParser` and the stream translators share."""

    __slots__ = ("_after_cr", "_max", "_parts", "_pending")

    def __init__(self, max_event_size: int = DEFAULT_MAX_EVENT) -> None:
        self._max = max_event_size
        # The bytes of the unfinished event, kept as pieces (joined only when a
        # boundary arrives: a large event fed in small reads is not copied quadratically).
        self._parts: list[bytes] = []
        self._pending = 0  # their total length
        self._after_cr = False  # the last chunk ended in "\r": a leading "\n" is its pair

    def blocks(self, chunk: bytes) -> list[bytes]:
        """The events completed by ``chunk`` as raw blocks (their lines, ``\n``-ended but
        for the last, without the blank line): :func:`event_of` reads one."""
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
            if chunk.find(b"\n\n") < 0 and not (chunk[:1] == b"\n" and parts[-1][-1] == 10):
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
        if rest:
            self._hold(rest)
        return blocks

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


class SseEventParser(SseBuffer):
    """Whole SSE events out of a byte stream fed in arbitrary pieces."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by ``chunk``, in order. ValueError past the bound."""
        events: list[Event] = []
        for block in self.blocks(chunk):
            ev = event_of(block)
            if ev is not None:
                events.append(ev)
        return events


def event_of(block: bytes) -> Event | None:
    """The event of one block (None when it has no data)."""
    # The usual shapes first: one data line, or an event line and one data line.
    if block[:6] == b"data: ":
        if 10 not in block:
            return b"", block[6:]
    elif block[:7] == b"event: ":
        head, sep, data = block.partition(b"\ndata: ")
        if sep and 10 not in data and 10 not in head:
            return head[7:], data
    return parse_block(block)


def parse_block(block: bytes) -> Event | None:
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


class StreamTranslator(SseBuffer):
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

    __slots__ = ("_committed", "_created", "_done", "_error", "_include_usage")

    def __init__(self, *, include_usage: bool, created: int,
                 max_event_size: int = DEFAULT_MAX_EVENT) -> None:
        super().__init__(max_event_size)
        self._include_usage = include_usage
        self._created = created
        self._committed = False
        self._done = False
        self._error = False

    def feed(self, chunk: bytes) -> tuple[bytes, int]:
        """``(bytes for the client, flags)`` for the next piece of the upstream body.
        ValueError when one event is larger than ``max_event_size``."""
        out: list[bytes] = []
        flags = 0
        if (not (self._parts or self._after_cr) and chunk[-2:] == b"\n\n" and 13 not in chunk
                and len(chunk) <= self._max):
            # Whole events, nothing held, no CR: the usual read. Most often it is exactly
            # one event of one data line, or of an event line and a data line, found
            # with single-byte searches (a two-byte search costs several of them).
            end = len(chunk) - 2
            nl = chunk.find(b"\n")
            if nl == end and chunk[:6] == b"data: ":
                if self._done or self._error:
                    return b"", 0
                flags = self._event(b"", chunk[6:end], out)
                return self._result(out, flags)
            if (chunk[:7] == b"event: " and chunk[nl + 1:nl + 7] == b"data: "
                    and chunk.find(b"\n", nl + 1) == end):
                if self._done or self._error:
                    return b"", 0
                flags = self._event(chunk[7:nl], chunk[nl + 7:end], out)
                return self._result(out, flags)
            blocks = chunk.split(b"\n\n")
            blocks.pop()  # b"": the read ends at a boundary
        else:
            blocks = self.blocks(chunk)
        if not blocks or self._done or self._error:
            return b"", 0
        for block in blocks:
            # event_of(), inlined: this loop runs once per upstream event.
            if block[:6] == b"data: " and 10 not in block:
                event, data = b"", block[6:]
            else:
                head, sep, data = block.partition(b"\ndata: ")
                if sep and head[:7] == b"event: " and 10 not in data and 10 not in head:
                    event = head[7:]
                else:
                    ev = parse_block(block)
                    if ev is None:
                        continue
                    event, data = ev
            flags |= self._event(event, data, out)
            if flags & _END:
                break  # the rest of the body is of no use
        return self._result(out, flags)

    def _result(self, out: list[bytes], flags: int) -> tuple[bytes, int]:
        """``feed``'s answer: the output joined, the first content made ``COMMIT``."""
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
        """At a clean end of the upstream body: what the client is still owed. An event
        the body ended without its blank line (some servers leave the last one out) is
        translated first; then, unless the upstream's end marker or an error came,
        :meth:`_owed` ends the client's stream. Nothing at all when nothing came."""
        out: list[bytes] = []
        if self._parts:
            block = b"".join(self._parts).rstrip(b"\n")
            self._parts.clear()
            self._pending = 0
            ev = event_of(block)
            if ev is not None and not (self._done or self._error):
                self._event(ev[0], ev[1], out)
        if not (self._done or self._error):
            self._owed(out)
        return b"".join(out)

    def _owed(self, out: list[bytes]) -> None:
        """The end of the client's stream when the upstream's never came (``finish``)."""
        raise NotImplementedError

    @property
    def usage(self) -> dict[str, int] | None:
        """The usage read so far in the gateway's terms (``translate_helpers.Usage``),
        None before any."""
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
