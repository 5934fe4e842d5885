"""One keep-alive connection to an upstream: the client ``Protocol``.

It carries one exchange at a time. The response is parsed by httptools
(content-length, chunked and close-delimited bodies). Body bytes either
collect in a list (for whole answers: awaited with :meth:`waiter`, or reported
to a callback set with :meth:`on_done`, with no future at all) or go to a
sink callback as they arrive (streams): one call per read, with no await.
Timeouts (first byte, idle between reads, total) share one timer re-armed
lazily. :meth:`reusable` is the single reuse decision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter
from typing import Any, cast

import httptools

from fastgw._native import ChunkedDecoder, parse_response
from fastgw.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout
from fastgw.types import HeaderPairs
from fastgw.upstream.writes import WriteBatch

# Exchange states
_IDLE = 0
_WAIT_HEAD = 1  # request written, no response byte yet
_HEAD = 2  # response bytes arrived, head not complete
_BODY = 3  # head complete, reading body
_DONE = 4  # message complete
_FAILED = 5

BodySink = Callable[[bytes], None]


class _SinkFailed(Exception):
    """A sink raised (its error is the cause) while the decoder fed it."""


class _NoCallbacks:
    __slots__ = ()


_CLOSED_PARSER = httptools.HttpResponseParser(_NoCallbacks())  # never fed


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_batch",
        "_body",
        "_chunks",
        "_close_delimited",
        "_deadline_first",
        "_deadline_total",
        "_done_waiter",
        "_head_waiter",
        "_idle_s",
        "_last_rx",
        "_no_content",
        "_on_done",
        "_on_done_arg",
        "_on_head",
        "_parser",
        "_sink",
        "_sink_each",
        "_state",
        "_timer",
        "_timer_when",
        "closed",
        "error",
        "exchanges",
        "head_at",
        "headers",
        "idle_since",
        "keep_alive",
        "loop",
        "peer_name",
        "pool_generation",
        "received_any",
        "status",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, peer_name: str,
                 generation: int = 0, batch: WriteBatch | None = None) -> None:
        self.loop = loop
        # Requests leave at the end of the loop's turn (None: at once).
        self._batch = batch
        self.peer_name = peer_name
        self.pool_generation = generation
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.exchanges = 0
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._state = _IDLE
        self.status = 0
        self.headers: HeaderPairs = []
        self.keep_alive = True
        self.received_any = False
        self.head_at = 0.0
        self.error: UpstreamError | None = None
        self._body: list[bytes] = []
        self._chunks: ChunkedDecoder | None = None  # a chunked body read natively
        self._sink: BodySink | None = None
        self._sink_each = False
        self._close_delimited = False
        self._head_waiter: asyncio.Future[None] | None = None
        self._done_waiter: asyncio.Future[None] | None = None
        self._on_done: Callable[[Any], None] | None = None
        self._on_done_arg: Any = None
        self._on_head = False  # _on_done is called at the head too (streams)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._deadline_first = 0.0
        self._deadline_total = 0.0
        self._idle_s = 0.0
        self._last_rx = 0.0
        self._no_content: Callable[[], None] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _WAIT_HEAD:
            # The usual answers, whole or chunked, with the head in the first read:
            # the head (and a whole body) in one native call, a chunked body read
            # natively too. Anything else goes to llhttp.
            head = parse_response(data)
            if head is not None:
                self._native_head(head, data)
                return
        elif state == _BODY and self._chunks is not None:
            self._native_body(self._chunks, data, 0)
            return
        elif state == _IDLE or state >= _DONE:
            # Bytes nobody asked for: the connection cannot be trusted any more.
            self._close()
            return
        self._last_rx = self.loop.time()
        # Set before parsing: a malformed answer is still an answer (never retried).
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._deliver()
            self._fail(self._callback_error(exc.__context__))
            return
        except httptools.HttpParserError as exc:
            self._deliver()
            self._fail(UpstreamProtocolError(
                f"upstream {self.peer_name} sent a malformed HTTP response: {exc}", sent=True))
            return
        if self._sink is not None and self._body:
            self._deliver()
        if state == _WAIT_HEAD and self._state == _WAIT_HEAD:
            self._state = _HEAD
        elif self._on_done is not None and self._state >= _DONE:
            self._notify()

    def _callback_error(self, cause: BaseException | None) -> UpstreamError:
        """What failed the exchange when reading a body raised ``cause``."""
        if isinstance(cause, UpstreamError):
            return cause
        return UpstreamProtocolError(
            f"upstream {self.peer_name} sent a response the gateway could not read", sent=True)

    def _native_head(self, head: tuple[int, HeaderPairs, bool, int, bytes | None],
                     data: bytes) -> None:
        """A head :func:`~fastgw._native.parse_response` read (with the whole body
        of a content-length answer): what llhttp's callbacks would have done."""
        self.received_any = True
        self.status, self.headers, self.keep_alive, head_len, body = head
        self.head_at = perf_counter()
        self._close_delimited = False
        if body is not None:
            if body:
                self._body.append(body)
            if self._head_waiter is None and self._done_waiter is None:
                self._state = _DONE  # what _message_complete does, with no one waiting
            else:
                self._message_complete()
            if self._sink is not None:
                self._deliver()
            callback = self._on_done
            if callback is not None:  # (_notify, inline: once per whole answer)
                arg = self._on_done_arg
                self._on_done = None
                self._on_done_arg = None
                self._on_head = False
                callback(arg)
            return
        chunks = self._chunks = ChunkedDecoder()
        self._state = _BODY
        self._last_rx = self.loop.time()
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._on_head:
            self._on_head = False
            self._notify()  # may set a sink for what follows, or abort
        if len(data) > head_len and self._state == _BODY:
            self._native_body(chunks, data, head_len)

    def _native_body(self, chunks: ChunkedDecoder, data: bytes, start: int) -> None:
        """Chunked body bytes, read natively: to the sink chunk by chunk or read by
        read, as with llhttp."""
        self._last_rx = self.loop.time()
        sink = self._sink
        each = self._sink_each and sink is not None
        if each:
            try:
                # Chunk by chunk while the sink wants them so; the rest in one piece.
                rest = chunks.feed_each(data, start, self._each)
            except _SinkFailed as exc:  # as a failing llhttp callback
                self._fail(self._callback_error(exc.__cause__))
                return
            except ValueError as exc:
                self._malformed_chunks(exc)
                return
            if rest is not None:
                self._body.append(rest)
        else:
            try:
                # Joined for a sink that takes a read at once; kept apart for one
                # that takes them chunk by chunk when it is set (set_sink).
                self._body += chunks.feed(data, start, join=sink is not None)
            except ValueError as exc:
                self._malformed_chunks(exc)
                return
        if self._sink is not None and self._body:
            self._deliver()
        if chunks.done and self._state == _BODY:
            self._message_complete()
            if self._on_done is not None:
                self._notify()

    def _each(self, piece: bytes) -> bool:
        """One chunk to a sink that takes them one by one; True while it still does
        (it may switch to one call per read, or abort)."""
        sink = self._sink
        if sink is None:
            return False
        try:
            sink(piece)
        except Exception as exc:
            raise _SinkFailed from exc  # not the decoder's ValueError
        return self._sink_each and self._sink is not None

    def _malformed_chunks(self, exc: ValueError) -> None:
        self._deliver()
        self._fail(UpstreamProtocolError(
            f"upstream {self.peer_name} sent a malformed chunked body: {exc}", sent=True))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        state = self._state
        if state == _BODY and self._close_delimited:
            self._message_complete()
            self._notify()
        elif _WAIT_HEAD <= state < _DONE:
            where = "before answering" if state == _WAIT_HEAD else "in the middle of the response"
            self._fail(UpstreamProtocolError(
                f"upstream {self.peer_name} closed the connection {where}", sent=True))
        self._cancel_timer()
        # The parser holds this protocol's callbacks: drop it, or every closed
        # connection would be a reference cycle left to the GC.
        self._parser = _CLOSED_PARSER

    def pause_writing(self) -> None:  # request bodies are small; nothing to pause
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._state >= _DONE:
            # A second response in the same read as the first: bytes nobody asked
            # for. Stop parsing (they must not join this body) and never reuse.
            self.keep_alive = False
            raise UpstreamProtocolError(
                f"upstream {self.peer_name} sent more than one response", sent=True)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers  # (llhttp's: a list, from send or the interim head)
        assert isinstance(headers, list)
        headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            # An interim response (100 Continue): the real head follows.
            self.headers = []
            return
        self.status = status
        self.head_at = perf_counter()  # for latency figures; timers use loop.time()
        self.keep_alive = parser.should_keep_alive()
        framed = False
        for name, value in self.headers:
            if name == b"content-length" or (name == b"transfer-encoding"
                                             and value.lower().find(b"chunked") >= 0):
                framed = True
                break
        self._close_delimited = not framed and status not in (204, 304)
        if self._close_delimited:
            self.keep_alive = False
        self._state = _BODY
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._on_head:
            self._on_head = False
            self._notify()

    def on_body(self, body: bytes) -> None:
        sink = self._sink
        if self._sink_each and sink is not None:
            sink(body)
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._state == _BODY:
            self._message_complete()

    def _message_complete(self) -> None:
        # The timer stays armed: it finds the connection idle or busy with a later
        # exchange when it fires, so the next exchange needs no timer operation.
        self._state = _DONE
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        waiter = self._done_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- exchange API -------------------------------------------------------------------

    def send(self, data: bytes, first_byte_s: float, idle_s: float, total_s: float,
             on_done: Callable[[Any], None] | None = None, arg: Any = None,
             at_head: bool = False) -> None:
        """Write a request and start the response clock. The connection must be idle
        (new, or recycled); one the upstream closed meanwhile fails the exchange
        at once. ``on_done``: as :meth:`on_done`, set before anything can end;
        with ``at_head``, called (once) as soon as the head is in instead: the
        callback form of ``waiter(False)``, for a stream relayed without a task,
        which sets its sink and, with :meth:`on_done`, what ends it."""
        assert self._state == _IDLE
        self.exchanges += 1
        self._state = _WAIT_HEAD
        self.status = 0
        self.headers = []
        self.received_any = False
        self.error = None
        if on_done is not None:
            self._on_done = on_done
            self._on_done_arg = arg
            self._on_head = at_head
        now = self.loop.time()
        self._deadline_first = now + first_byte_s
        self._deadline_total = now + total_s
        self._idle_s = idle_s
        transport = self.transport
        if transport is None or transport.is_closing():
            self._fail(UpstreamProtocolError(
                f"upstream {self.peer_name} closed the connection before the request was "
                "sent"))
            return
        # One timer serves every deadline (first byte, idle, total): armed no later
        # than the earliest of them, re-armed lazily when it fires early. A timer
        # left from a previous exchange is usually earlier already: no timer call.
        when = now + min(first_byte_s, idle_s, total_s)
        if self._timer is None or self._timer_when > when:
            self._arm(when)
        batch = self._batch
        if batch is None:
            transport.write(data)
        else:
            batch.write(transport, data)

    def waiter(self, whole: bool) -> asyncio.Future[None] | None:
        """A future done when the head (or, with ``whole``, the whole response) is
        in; None when it already is. Raises the exchange's error if it failed. A
        plain future, not a coroutine: awaiting it costs no extra frame."""
        state = self._state
        if state >= (_DONE if whole else _BODY):
            if state == _FAILED:
                assert self.error is not None
                raise self.error
            return None
        fut: asyncio.Future[None] = self.loop.create_future()
        if whole:
            self._done_waiter = fut
        else:
            self._head_waiter = fut
        return fut

    def on_done(self, callback: Callable[[Any], None] | None, arg: Any = None) -> None:
        """Call ``callback(arg)`` once, when the whole response is in or the exchange
        failed (``error`` is set): the callback form of ``waiter(True)``, for an
        exchange answered without a task (called at once when it already ended).
        None removes the callback."""
        self._on_done = callback
        self._on_done_arg = arg
        self._on_head = False
        if callback is not None and self._state >= _DONE:
            self._notify()

    def _notify(self) -> None:
        callback = self._on_done
        if callback is not None:
            arg = self._on_done_arg
            self._on_done = None
            self._on_done_arg = None
            self._on_head = False
            callback(arg)

    async def wait_head(self) -> None:
        """Wait until the response head (status, headers) is complete."""
        fut = self.waiter(False)
        if fut is not None:
            await fut

    async def wait_done(self) -> None:
        """Wait until the whole response has been read (or handed to the sink)."""
        fut = self.waiter(True)
        if fut is not None:
            await fut

    def body(self) -> bytes:
        parts = self._body
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def set_sink(self, sink: BodySink, *, each_chunk: bool = False) -> None:
        """Send body bytes to ``sink`` as they arrive: what was received already at
        once, then everything one read carries in one call (however many chunks
        of the chunked encoding it held), or with ``each_chunk`` every chunk of
        the encoding on its own, until :meth:`sink_per_read`."""
        self._sink = sink
        self._sink_each = each_chunk
        parts = self._body
        if parts:
            self._body = []
            i = 0
            while i < len(parts) and self._sink_each and self._sink is not None:
                sink(parts[i])
                i += 1
            if i < len(parts) and self._sink is not None:
                sink(parts[i] if i == len(parts) - 1 else b"".join(parts[i:]))

    def sink_per_read(self) -> None:
        """From now on, one sink call per read (chunks of this read still to come
        are gathered too). A stream calls it at its first content: the end of
        :meth:`watch_content` too."""
        self._sink_each = False
        self._no_content = None

    def watch_content(self, on_late: Callable[[], None] | None) -> None:
        """Call ``on_late()`` if first_byte_s (counted from the request) passes before
        :meth:`sink_per_read`: a stream's first-byte deadline extended to its
        first content, on the connection's one timer. None: stop watching."""
        self._no_content = on_late
        if on_late is not None and _WAIT_HEAD <= self._state < _DONE:
            self._arm(self._deadline_first)  # usually armed no later already

    def _deliver(self) -> None:
        sink = self._sink
        parts = self._body
        if sink is not None and parts:
            self._body = []
            sink(parts[0] if len(parts) == 1 else b"".join(parts))

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()
            # Time spent paused by our own client is not upstream idleness.
            self._last_rx = self.loop.time()

    def reusable(self) -> bool:
        """The one reuse decision: finished cleanly, keep-alive, still open."""
        return (self._state == _DONE and self.keep_alive and not self.closed
                and self.transport is not None and not self.transport.is_closing())

    def recycle(self) -> bool:
        """When :meth:`reusable`: back to idle (before returning to the pool), True."""
        transport = self.transport  # (reusable(), inline: once per exchange)
        if (self._state != _DONE or not self.keep_alive or self.closed or transport is None
                or transport.is_closing()):
            return False
        self._state = _IDLE
        self._chunks = None
        self._sink = None
        self._sink_each = False
        self._body = []
        self._head_waiter = None
        self._done_waiter = None
        self._on_done = None
        self._on_done_arg = None
        self._on_head = False
        self._no_content = None
        return True

    def abort(self) -> None:
        """Close now (cancel, timeout, error): never reused. Anyone waiting on the
        exchange gets an error at once."""
        if _WAIT_HEAD <= self._state < _DONE:
            self._fail(UpstreamProtocolError(f"exchange with {self.peer_name} aborted",
                                             sent=True))
        self._cancel_timer()
        self._close()

    def _close(self) -> None:
        self.closed = True
        transport = self.transport
        if transport is not None:
            transport.abort()

    # -- failure and timers -----------------------------------------------------------

    def _fail(self, error: UpstreamError) -> None:
        if self._state >= _DONE:
            return
        self._state = _FAILED
        self.error = error
        self._cancel_timer()
        for waiter in (self._head_waiter, self._done_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        self._sink = None
        self._sink_each = False
        self._no_content = None
        self._close()
        self._notify()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        state = self._state
        if state >= _DONE or state == _IDLE:
            return  # between exchanges: the next one arms it again
        now = self.loop.time()
        if now >= self._deadline_total:
            self._fail(UpstreamTimeout(
                f"upstream {self.peer_name} did not finish within total_s", sent=True))
            return
        if state == _WAIT_HEAD:
            if now >= self._deadline_first:
                self._fail(UpstreamTimeout(
                    f"upstream {self.peer_name} sent no response within first_byte_s", sent=True))
                return
            self._arm(min(self._deadline_first, self._deadline_total))
            return
        if self._no_content is not None and now >= self._deadline_first:
            late, self._no_content = self._no_content, None
            late()
            if self._state >= _DONE:
                return
        # Response bytes came: the idle clock runs from the last of them.
        idle_deadline = self._last_rx + self._idle_s
        if self.transport is not None and not self.transport.is_reading():
            # Paused by a slow client: not the upstream's fault.
            idle_deadline = now + self._idle_s
        if now >= idle_deadline:
            self._fail(UpstreamTimeout(
                f"upstream {self.peer_name} sent nothing for idle_s ({self._idle_s:g} s)",
                sent=True))
            return
        when = min(idle_deadline, self._deadline_total)
        if self._no_content is not None:
            when = min(when, self._deadline_first)
        self._arm(when)
