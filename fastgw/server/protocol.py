"""The HTTP/1.1 server: an ``asyncio.Protocol`` driving an ``httptools`` parser.

One :class:`HttpProtocol` per connection, one :class:`Cycle` per request.
Parser callbacks only buffer and signal; the handler is called when a request
is complete. It answers at once, or arranges to answer from callbacks (and
returns None), or returns a coroutine the server runs as a task. Pipelined
requests queue behind the active one and are answered in order; reading
pauses when too many wait. Every way a request can be malformed or too big is
answered here, before any handler sees it:
431 (head too large), 413 (body too large, from Content-Length before reading),
408 (slow client), 400 (bad or ambiguous framing: never forwarded), 417 (an
expectation other than 100-continue), 505 (HTTP versions other than 1.0 and 1.1).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, cast

import httptools

from fastgw._native import answer, date_line, parse_request
from fastgw.errors import (
    BadFraming,
    ExpectationFailed,
    GatewayError,
    HeadersTooLarge,
    HttpVersionNotSupported,
    InternalError,
    PayloadTooLarge,
    RequestTimeout,
)
from fastgw.server import wire
from fastgw.server.flow import READ_PIPELINE, FlowControl
from fastgw.types import HeaderPairs

log = logging.getLogger("fastgw.server")

# A handler answers the cycle, or returns a coroutine that will (run as a task).
Handler = Callable[["Cycle"], Coroutine[Any, Any, None] | None]
# Told that the client left before the answer was complete; True: the handler's
# work goes on (its task is not cancelled; what it writes goes nowhere).
LostHook = Callable[["Cycle"], bool]

MAX_PIPELINE = 16  # queued complete requests before reading pauses
MAX_PIPELINE_BYTES = 1024 * 1024  # queued request bodies before reading pauses

# Connection phases, for the timer: what a deadline means.
_IDLE = 0  # between requests: keep-alive expiry closes quietly
_READING = 1  # a request has begun: expiry answers 408
_PROCESSING = 2  # requests are complete and being answered: no deadline


@dataclass(frozen=True, slots=True)
class ServerSettings:
    max_body_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 65536
    keepalive_timeout_s: float = 75.0
    header_timeout_s: float = 10.0
    # A FIN from the client while a request is in flight: False, the client left
    # (the request and its upstream are cancelled); True, answer it, then close.
    finish_on_half_close: bool = False
    # The x-request-id of answers the server gives on its own (400, 408, 413...):
    # the client's when it sent a usable one, else a new one.
    request_id: Callable[[HeaderPairs], bytes] = lambda _headers: b"-"
    # The body of an error answer for a request path when the client speaks
    # another dialect than OpenAI's (None: OpenAI's envelope).
    error_body: Callable[[bytes, GatewayError], bytes | None] = lambda _path, _exc: None


@dataclass(slots=True, eq=False)
class ServerState:
    """A server's shared state: its live connections (what a graceful shutdown
    needs) and the connections with output held to the end of the turn."""

    connections: set[HttpProtocol] = field(default_factory=set)
    draining: bool = False
    # Connections with output held to the end of this turn of the event loop, in
    # the order they first held some (see HttpProtocol.hold).
    held: list[HttpProtocol] = field(default_factory=list)

    def write_held(self) -> None:
        """The end of the turn: every connection's held output, one write each."""
        held = self.held
        self.held = []
        for proto in held:
            try:
                proto.write_held()
            except Exception:  # one connection's failure must not drop the others' output
                log.exception("a held write failed")
                if proto.transport is not None:
                    proto.transport.abort()


class _Reject(Exception):
    """Raised inside parser callbacks to abort parsing with a client error."""

    def __init__(self, error: GatewayError) -> None:
        self.error = error


class Cycle:
    """One request and its response.

    Request side: ``method``, ``path``, ``query``, ``headers`` (lowercase
    names), ``body``. Response side: either :meth:`send` (a whole response in
    one write) or :meth:`start` / :meth:`write` / :meth:`end` (streamed,
    chunked). A task that ends without answering gets a 500. ``owner`` and
    ``on_lost`` belong to the handler: ``on_lost(cycle)`` is called when the
    client goes away before the answer is complete (a task is cancelled too,
    unless it answers True).
    """

    __slots__ = (
        "_chunked",
        "_proto",
        "body",
        "client_addr",
        "content_length",
        "expect_continue",
        "finished",
        "forwarded",
        "headers",
        "http10",
        "keep_alive",
        "method",
        "on_lost",
        "owner",
        "path",
        "preset_error",
        "query",
        "received_at",
        "started",
        "status",
        "task",
    )

    def __init__(self, proto: HttpProtocol, path: bytes, headers: HeaderPairs,
                 query: bytes = b"", method: bytes = b"", keep_alive: bool = True,
                 content_length: int = -1, body: bytes = b"",
                 forwarded: tuple[bytes, bytes | None, bool, bytes | None] | None = None
                 ) -> None:
        self._proto = proto
        self.path = path
        self.query = query
        self.method = method
        self.headers = headers
        self.body = body
        self.client_addr = proto.peer
        self.content_length = content_length
        self.expect_continue = False
        self.keep_alive = keep_alive
        self.http10 = False
        self.started = False
        self.finished = False
        self.status = 0
        self.received_at = 0.0
        self.preset_error: GatewayError | None = None
        self.task: asyncio.Task[None] | None = None
        self.owner: Any = None
        self.on_lost: LostHook | None = None
        self._chunked = False
        # The request header pass (fastgw._native.forwarded: what goes upstream, the
        # client's request id, controls present, the credential): given by the parser
        # of a whole request, else set by the first who needs it.
        self.forwarded = forwarded

    # -- request helpers ------------------------------------------------------

    def header(self, name: bytes) -> bytes | None:
        """First value of a header (``name`` lowercase)."""
        for n, v in self.headers:
            if n == name:
                return v
        return None

    @property
    def flow(self) -> FlowControl:
        assert self._proto.flow is not None
        return self._proto.flow

    # -- response side ----------------------------------------------------------

    def _head(self, status: int, header_block: bytes) -> bytes:
        proto = self._proto
        if proto.state.draining:
            self.keep_alive = False
        lines = wire.STATUS_LINE_10 if self.http10 else wire.STATUS_LINE
        conn = b"" if self.keep_alive else wire.CONNECTION_CLOSE
        if self.http10 and self.keep_alive:
            conn = wire.CONNECTION_KEEP_ALIVE
        return lines[status] + date_line() + header_block + conn

    def send(self, status: int, header_block: bytes, body: bytes) -> None:
        """Write a complete response (head and body) in one write."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        proto = self._proto
        transport = proto.transport
        if transport is not None:
            data = (self._head(status, header_block)
                    + b"content-length: %d\r\n\r\n" % len(body)
                    + (b"" if self.method == b"HEAD" else body))
            if proto._out is None and not proto._sync:
                transport.write(data)
            else:  # answered while the request was read, or behind held output
                proto.hold(data)
        self.finished = True
        proto.response_done(self)

    def send_answer(self, status: int, ctype: bytes, request_id: bytes, target_headers: bytes,
                    attempts: int, overhead_s: float, extra: bytes,
                    up_headers: HeaderPairs, secrets: tuple[bytes, ...],
                    body: bytes) -> None:
        """:meth:`send` of a proxied answer, its header block
        :func:`~fastgw._native.response_block`'s of the arguments: the status line,
        the block, the length and the body in one piece, made in one native call."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        proto = self._proto
        transport = proto.transport
        if transport is not None:
            if proto.state.draining:
                self.keep_alive = False
            if self.http10:
                line = wire.STATUS_LINE_10[status]
                conn = wire.CONNECTION_KEEP_ALIVE if self.keep_alive else wire.CONNECTION_CLOSE
            else:
                line = wire.STATUS_LINE[status]
                conn = b"" if self.keep_alive else wire.CONNECTION_CLOSE
            data = answer(line, conn, ctype, request_id, target_headers, attempts, overhead_s,
                          extra, up_headers, secrets, body, self.method == b"HEAD")
            if proto._out is None and not proto._sync:
                transport.write(data)
            else:  # answered while the request was read, or behind held output
                proto.hold(data)
        self.finished = True
        proto.response_done(self)

    def send_error(self, exc: GatewayError, header_block: bytes | None = None,
                   body: bytes | None = None) -> None:
        """Answer ``exc``: its status and headers, with ``body``, else the body the
        path's dialect gives (``ServerSettings.error_body``), else OpenAI's envelope."""
        settings = self._proto.settings
        if header_block is None:
            header_block = b"x-request-id: " + settings.request_id(self.headers) + b"\r\n"
        if body is None:
            body = settings.error_body(self.path, exc)
        status, extra, envelope = wire.error_parts(exc)
        self.send(status, header_block + extra, envelope if body is None else body)

    def start(self, status: int, header_block: bytes) -> None:
        """Begin a streamed response (chunked; close-delimited on 1.0).

        What a streamed response writes within one turn of the event loop (the
        head and the events already in, or everything one upstream read
        carried) leaves in one write, at the end of that turn or at :meth:`end`:
        one system call where there would be one per piece."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        if self.http10:
            self.keep_alive = False
            head = self._head(status, header_block) + wire.CRLF
        else:
            self._chunked = True
            head = self._head(status, header_block) + wire.CHUNKED + wire.CRLF
        self._proto.hold(head)

    def write(self, data: bytes) -> None:
        """Write body bytes of a streamed response (empty data is ignored)."""
        proto = self._proto
        if not data or proto.transport is None:
            return
        if self._chunked:
            # Framed as three pieces: the data is copied once, by the held write's join.
            proto.hold(b"%x\r\n" % len(data), data, wire.CRLF)
        else:
            proto.hold(data)

    def flush(self) -> None:
        """Write what the stream (and the connection before it) holds now."""
        self._proto.write_held()

    def end(self, trailer: bytes = b"") -> None:
        """Finish a streamed response, optionally with last body bytes."""
        if self.finished:
            return
        if self._proto.transport is not None:
            if trailer:
                self.write(trailer)
            if self._chunked:
                self._proto.hold(wire.LAST_CHUNK)
        self.flush()
        self._finish()

    def abort(self) -> None:
        """End a streamed response abnormally: close without the last chunk."""
        self.flush()
        self.keep_alive = False
        self.finished = True
        self._proto.response_done(self)

    def _finish(self) -> None:
        self.finished = True
        self._proto.response_done(self)

    # -- tasks ----------------------------------------------------------------------

    def run_task(self, coro: Coroutine[Any, Any, None]) -> None:
        """Answer from ``coro``, run as a task (cancelled when the client leaves).
        Whatever way it ends, the cycle is answered: an error it raises becomes
        an error answer, and a task that answered nothing gets a 500."""
        task = self._proto.loop.create_task(coro)
        self.task = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            if not self.finished:
                self.keep_alive = False
                if self.started:
                    self.abort()
                elif self._proto.transport is not None:
                    # Cancelled for a reason other than the client going away.
                    self.send_error(InternalError("the request was cancelled"))
            return
        exc = task.exception()
        if exc is not None:
            if not isinstance(exc, GatewayError):
                log.error("unhandled error in request handler", exc_info=exc)
                exc = InternalError("internal error; the request id identifies it in the "
                                    "gateway's logs")
            self.fail(exc)
        if not self.finished:
            if self.started:
                self.end()
            else:
                log.error("handler returned without a response")
                self.send_error(InternalError("the gateway produced no response"))

    def fail(self, exc: GatewayError) -> None:
        """Answer ``exc``; a response already started is cut off instead."""
        if self.finished:
            return
        if self.started:
            self.abort()
        else:
            self.send_error(exc)


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "_active",
        "_body_parts",
        "_body_size",
        "_close_after",
        "_current",
        "_deadline",
        "_head_raw",
        "_header_bytes",
        "_headers",
        "_in_message",
        "_out",
        "_parser",
        "_phase",
        "_queue",
        "_queued_bytes",
        "_reject_after",
        "_sync",
        "_timer",
        "_timer_when",
        "_url",
        "flow",
        "handler",
        "loop",
        "peer",
        "settings",
        "state",
        "transport",
    )

    def __init__(self, handler: Handler, settings: ServerSettings, state: ServerState,
                 loop: asyncio.AbstractEventLoop) -> None:
        # Per-connection
        self.handler = handler
        self.settings = settings
        self.state = state
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.peer: tuple[str, int] = ("", 0)
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Cycle] = deque()
        self._queued_bytes = 0
        self._active: Cycle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._deadline = 0.0
        self._phase = _IDLE
        self._reject_after = False
        # Output held to the end of the turn (hold), the close that waits for it,
        # and whether the handler is answering in the turn its request was read.
        self._out: list[bytes] | None = None
        self._close_after = False
        self._sync = False
        # Per-request (being parsed)
        self._in_message = False  # llhttp holds part of a request
        self._current: Cycle | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._head_raw = 0
        self._body_parts: list[bytes] = []
        self._body_size = 0

    # -- connection lifetime --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.flow = FlowControl(self.transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = (str(peer[0]), int(peer[1]))
        self.state.connections.add(self)
        # A connection that sends nothing is closed after header_timeout_s.
        self._phase = _IDLE
        self._set_deadline(self.loop.time() + self.settings.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._out = None
        # The parser holds this protocol's callbacks: without this, every closed
        # connection would be a reference cycle left to the GC.
        self._parser = _CLOSED_PARSER
        self.state.connections.discard(self)
        self._disarm()
        if self.flow is not None:
            self.flow.connection_lost()
        active = self._active
        if active is not None and not active.finished:
            # The client is gone: abort the handler (and with it the upstream request),
            # unless the handler says its work must go on for others (on_lost: True).
            keep = active.on_lost is not None and active.on_lost(active)
            if active.task is not None and not keep:
                active.task.cancel()
        self._queue.clear()

    def pause_writing(self) -> None:
        assert self.flow is not None
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        assert self.flow is not None
        self.flow.resume_writing()

    def eof_received(self) -> bool | None:
        # The client shut its side (FIN). Every HTTP client library does that when
        # it gives up on a request, so by default (as nginx) a FIN while a request
        # is in flight means the client left: returning None closes the transport,
        # and connection_lost cancels the request and its upstream at once. With
        # ``finish_on_half_close`` the requests read are answered, then it closes.
        if self._active is None and not self._queue:
            return None
        if not self.settings.finish_on_half_close:
            return None
        self._reject_after = True
        return True

    # -- output ---------------------------------------------------------------
    #
    # An answer made in the turn its request was read (a cache hit, a refusal)
    # and a stream's pieces are held to the end of the turn, where every
    # connection's held output leaves in one write each (ServerState.write_held):
    # the turn's answers go out one after the other, so the first wakes the
    # client's side for all of them, instead of each waking it on its own (on a
    # busy gateway most of such a write's system time). Once a connection holds
    # output, everything it writes or a close follow that output, in order.

    def hold(self, *pieces: bytes) -> None:
        """``pieces`` written at the end of this turn, after what is held already."""
        if self._close_after:
            return  # after the close: written nowhere, as on a closed transport
        out = self._out
        if out is None:
            self._out = list(pieces)
            held = self.state.held
            if not held:
                self.loop.call_soon(self.state.write_held)
            held.append(self)
        else:
            out += pieces

    def write_held(self) -> None:
        """Write the held output now (then the close that waited for it)."""
        out = self._out
        if out is None:
            return
        self._out = None
        transport = self.transport
        if transport is None:
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self._close_after:
            transport.close()

    def _write(self, data: bytes) -> None:
        """Write ``data`` now, or after the held output when there is some."""
        if self._out is None:
            if self.transport is not None:
                self.transport.write(data)
        else:
            self.hold(data)

    def _close(self) -> None:
        """Close the connection, after the held output when there is some."""
        if self._out is None:
            if self.transport is not None:
                self.transport.close()
        else:
            self._close_after = True

    # -- timers ---------------------------------------------------------------
    #
    # One timer per connection, armed at some time no later than ``_deadline``.
    # Moving the deadline later costs no timer operation: when the timer fires
    # early it re-arms for what is left. Under steady keep-alive traffic that
    # means zero timer operations per request.

    def _set_deadline(self, deadline: float) -> None:
        self._deadline = deadline
        if self._timer is None or self._timer_when > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_when = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None:
            return
        phase = self._phase
        if phase == _PROCESSING:
            return  # response_done() sets the next deadline
        now = self.loop.time()
        if now < self._deadline:
            self._set_deadline(self._deadline)
            return
        if phase == _IDLE:
            self._close()
        else:
            self._timeout()

    def _timeout(self) -> None:
        self._reject(RequestTimeout(
            f"the request was not received within {self.settings.header_timeout_s:g} s "
            "(server.header_timeout_s); send the whole request promptly"))

    # -- parsing ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._in_message and not self._reject_after:
            # A whole request in this read (the usual case): parsed in one native
            # call. Anything else (part of a request, several, odd framing, an
            # error to answer) goes to llhttp below.
            settings = self.settings
            whole = parse_request(data, settings.max_header_bytes, settings.max_body_bytes)
            if whole is not None:
                # What llhttp's callbacks would have done, at once (and _complete's
                # usual case inline: no request in flight on this connection).
                (method, path, query, headers, body, keep_alive, length, fwd, rid, controls,
                 cred) = whole
                cycle = Cycle(self, path, headers, query, method, keep_alive, length, body,
                              (fwd, rid, controls, cred))
                if self._active is None:
                    cycle.received_at = perf_counter()
                    self._phase = _PROCESSING
                    self._run(cycle)
                else:
                    self._complete(cycle)
                return
        try:
            self._parser.feed_data(data)
        except _Reject as exc:
            self._reject(exc.error)
        except httptools.HttpParserUpgrade:
            self._reject(BadFraming("protocol upgrades (h2c, websocket) are not supported; "
                                    "send plain HTTP/1.1 requests"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.error)
            else:  # a bug in a callback: never leak details
                log.error("parser callback failed", exc_info=cause)
                self._reject(InternalError("internal error while reading the request"))
        except httptools.HttpParserError as exc:
            detail = str(exc) or "malformed HTTP request"
            self._reject(BadFraming(f"bad HTTP request: {detail}; the request was not forwarded"))
        else:
            if self._current is None and self._phase == _READING and not self._reject_after:
                # A head is still incomplete. httptools keeps a header line to itself
                # until it ends, so on_header alone would let one endless line grow
                # without bound: count the raw bytes of every further read too.
                if self._head_raw < 0:
                    self._head_raw = 0  # begun in this read (maybe behind other requests)
                else:
                    self._head_raw += len(data)
                    if self._head_raw > self.settings.max_header_bytes:
                        self._reject(self._too_large())

    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._head_raw = -1  # data_received counts from the next read on
        self._body_parts = []
        self._body_size = 0
        self._current = None
        self._phase = _READING
        self._set_deadline(self.loop.time() + self.settings.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.settings.max_header_bytes:
            raise _Reject(self._too_large())

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.settings.max_header_bytes:
            raise _Reject(self._too_large())
        self._headers.append((name.lower(), value))

    def _too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"request line and headers exceed {self.settings.max_header_bytes} bytes "
            "(server.max_header_bytes); send fewer or smaller headers")

    def on_headers_complete(self) -> None:
        parser = self._parser
        path, query = _split_url(self._url)
        cycle = Cycle(self, path, self._headers, query, parser.get_method())
        cycle.keep_alive = parser.should_keep_alive()
        self._current = cycle  # a refusal below answers in this request's version
        version = parser.get_http_version()
        if version != "1.1":
            if version != "1.0":  # llhttp reads "GET /" as 0.9 and takes 2.0
                raise _Reject(HttpVersionNotSupported(
                    f"HTTP/{version} is not supported; send HTTP/1.1 requests"))
            cycle.http10 = True
        if parser.should_upgrade():
            # Upgrade and CONNECT: llhttp would end the message at the head and
            # hand the rest over as tunnel bytes. Refused before any handler runs,
            # so the request gets one answer and its body is never read as a request.
            raise _Reject(BadFraming("protocol upgrades (h2c, websocket) and CONNECT are "
                                     "not supported; send plain HTTP/1.1 requests"))
        length = -1
        for name, value in self._headers:
            if name == b"content-length":
                # llhttp has already refused duplicates and non-digits.
                length = int(value)
            elif name == b"transfer-encoding":
                # llhttp reads a body as chunked when "chunked" is the last coding
                # ("gzip, chunked", ",chunked") and also on HTTP/1.0, and has refused
                # Content-Length beside it. Only a plain "chunked" on 1.1 is
                # unambiguous (as nginx): every other coding list is refused.
                if cycle.http10 or value.strip(b" \t").lower() != b"chunked":
                    raise _Reject(BadFraming(
                        "Transfer-Encoding other than a single 'chunked' on HTTP/1.1 is "
                        "not accepted; send a Content-Length body or plain chunked"))
            elif name == b"expect" and not cycle.http10:  # 1.0 knows no 1xx (RFC 9110)
                if value.strip(b" \t").lower() != b"100-continue":
                    raise _Reject(ExpectationFailed(
                        "the only expectation supported is 'Expect: 100-continue'"))
                cycle.expect_continue = True
        cycle.content_length = length
        if length > self.settings.max_body_bytes:
            raise _Reject(PayloadTooLarge(
                f"request body of {length} bytes exceeds {self.settings.max_body_bytes} bytes "
                "(server.max_body_bytes); send a smaller request"))
        if cycle.expect_continue and self._active is None and not self._queue and self.transport:
            self._write(wire.CONTINUE_100)
            cycle.expect_continue = False

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.settings.max_body_bytes:
            raise _Reject(PayloadTooLarge(
                f"request body exceeds {self.settings.max_body_bytes} bytes "
                "(server.max_body_bytes); send a smaller request"))
        self._body_parts.append(body)
        # Body progress extends the deadline: slow but steady uploads are fine.
        self._deadline = self.loop.time() + self.settings.header_timeout_s

    def on_message_complete(self) -> None:
        cycle = self._current
        assert cycle is not None
        self._current = None
        self._in_message = False
        transport = self.transport
        if self._close_after or transport is None or transport.is_closing():
            return  # read behind the request that closed the connection: dropped
        parts = self._body_parts
        if parts:
            cycle.body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._complete(cycle)

    def _complete(self, cycle: Cycle) -> None:
        """A request is in: answer it now, or queue it behind the one in flight."""
        cycle.received_at = perf_counter()  # loop.time() has ms resolution on uvloop
        self._phase = _PROCESSING
        if self._active is None:
            self._run(cycle)
        else:
            self._queue.append(cycle)
            self._queued_bytes += len(cycle.body)
            if ((len(self._queue) >= MAX_PIPELINE or self._queued_bytes >= MAX_PIPELINE_BYTES)
                    and self.flow is not None):
                self.flow.pause_reading(READ_PIPELINE)

    # -- running requests ---------------------------------------------------------

    def _run(self, cycle: Cycle) -> None:
        self._active = cycle
        if cycle.preset_error is not None:
            cycle.keep_alive = False
            cycle.send_error(cycle.preset_error)
            return
        self._sync = True  # what the handler answers now is held to the turn's end
        try:
            pending = self.handler(cycle)
        except GatewayError as exc:
            cycle.fail(exc)
            return
        except Exception:
            log.exception("unhandled error in request handler")
            cycle.fail(InternalError("internal error; the request id identifies it in the "
                                     "gateway's logs"))
            return
        finally:
            self._sync = False
        if pending is not None:
            cycle.run_task(pending)

    def response_done(self, cycle: Cycle) -> None:
        """Called once when a cycle's response is complete: next request or idle."""
        if cycle is not self._active:
            return
        self._active = None
        transport = self.transport
        if transport is None:
            return
        if not cycle.keep_alive or self.state.draining:
            self._close()
            return
        if self._queue:
            nxt = self._queue.popleft()
            self._queued_bytes -= len(nxt.body)
            if self.flow is not None:
                self.flow.resume_reading(READ_PIPELINE)
            self._run(nxt)
            return
        if self._reject_after:
            self._close()
            return
        current = self._current
        if current is not None:
            if current.expect_continue:
                self._write(wire.CONTINUE_100)
                current.expect_continue = False
            return
        self._phase = _IDLE
        deadline = self._deadline = self.loop.time() + self.settings.keepalive_timeout_s
        if self._timer is None or self._timer_when > deadline:  # (else no timer operation)
            self._set_deadline(deadline)

    def _reject(self, error: GatewayError) -> None:
        """Answer a protocol-level error after anything in flight, then close."""
        transport = self.transport
        if transport is None:
            return
        self._disarm()
        transport.pause_reading()
        self._parser = httptools.HttpRequestParser(self)  # drop whatever state it had
        self._in_message = False
        self._reject_after = True
        cycle = self._current
        if cycle is None:
            path, query = _split_url(self._url)
            cycle = Cycle(self, path, self._headers, query)
        self._current = None
        cycle.preset_error = error
        cycle.keep_alive = False
        if self._active is None:
            self._run(cycle)
        else:
            self._queue.append(cycle)

    # -- shutdown -------------------------------------------------------------------

    def close_if_idle(self) -> bool:
        """Close now when no request is in flight; True when closed."""
        if self._active is None and not self._queue and self.transport is not None:
            self._close()
            return True
        return False


def _split_url(url: bytes) -> tuple[bytes, bytes]:
    """A request target's path and query (without the ``?``)."""
    path, _, query = url.partition(b"?")
    return path, query


class _NoCallbacks:
    __slots__ = ()


_CLOSED_PARSER = httptools.HttpRequestParser(_NoCallbacks())  # never fed


def make_factory(handler: Handler, settings: ServerSettings, state: ServerState,
                 loop: asyncio.AbstractEventLoop) -> Callable[[], Any]:
    def factory() -> HttpProtocol:
        return HttpProtocol(handler, settings, state, loop)
    return factory
