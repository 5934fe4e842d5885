"""The mock upstream: a fast fake OpenAI- and Anthropic-compatible HTTP/1.1 server.

Built for demos, tests and benchmarks, so it must never be the bottleneck:

* its own ``asyncio.Protocol`` + ``httptools`` server (keep-alive, pipelining
  answered in order), standalone from ``fastgw.server``;
* answers are pre-rendered once per *shape* (route, model, chunk count, usage
  flag, prompt tokens, and the tool calls, stop sequence and cache counts
  asked for) into the complete response bytes, head included, split
  on an id sentinel; a request on the fast path then costs one ``orjson.loads``,
  one dict lookup, one ``bytes.join`` that splices its fixed-width id, and one
  ``transport.write``;
* anything slower (latency, pacing, faults, echo) becomes a list of
  :data:`Step` played by one task per response, which honours
  ``pause_writing``/``resume_writing`` so a slow reader never makes it buffer
  without bound.

Per-request control headers (values are case-sensitive, names are not):

``x-mock-fault: NAME[:ARG][,NAME[:ARG]...]``
    ``stall[:ms]`` wait before the first byte (default 30000);
    ``stall-token[:ms]`` streams: send the head and the events before the first
    content event, then wait (default 30000);
    ``cut[:n]`` streams: send n events (default 2), then close the TCP connection
    without the terminating chunk; non-streams: the head and half the body, then close;
    ``malformed`` streams: one event whose data is cut-off JSON, after the first
    content event; non-streams: a 200 whose body is cut-off JSON;
    ``error-event`` streams: an in-band error event after the first content
    event, then the end of the stream (no ``[DONE]``); non-streams: a 500;
    ``error-first`` streams: the in-band error event before any content;
    ``429[:seconds]`` 429 with ``Retry-After`` (default 1) and ``retry-after-ms``;
    any other status ``NNN[:code]`` (400, 500, 502, 503, ...) answers with that
    status and the error envelope, ``400:context_length_exceeded`` included;
    ``slow[:ms]`` streams: this interval between events (default 100);
    non-streams: the body in 4 parts this far apart;
    ``close`` close the connection at once, no bytes;
    ``close-delimited`` no Content-Length nor chunking, ``Connection: close``,
    the body ends when the connection closes;
    ``chunked`` non-streams: the body in 3 chunks of chunked encoding.
    ``529`` is Anthropic's "overloaded" status.
``x-mock-latency-ms``, ``x-mock-chunks``, ``x-mock-chunk-interval-ms``
    override the server's options for this request.
``x-mock-echo: 1``
    a non-streaming answer carries a top-level ``"echo"`` object (method, path,
    lowercased headers, parsed body); a stream carries it in its first event
    (chat: the role chunk; Messages: ``message_start``).
``x-mock-tool: NAME[,NAME...]``
    chat and Messages: answer with calls of these tools (parallel calls,
    indexes 0, 1, ...) instead of text; ``1`` is the request's first tool.
    Without the header, a request calls a tool when its ``tool_choice`` asks
    for one: OpenAI ``"required"`` (the first tool) or
    ``{"type": "function", "function": {"name": N}}``; Anthropic
    ``{"type": "any"}`` or ``{"type": "tool", "name": N}``. A call has a
    deterministic id (``call_mock_0_NAME``, ``toolu_mock_0_NAME``) and arguments
    built from the tool's schema (``parameters`` / ``input_schema``): per
    property, an enum's first value, else by type string ``"mock"``, integer
    ``1``, number ``1.5``, boolean ``true``, array ``[]``, object ``{}``
    (``null`` otherwise); an undeclared tool gets ``{}``. It ends with
    ``finish_reason: "tool_calls"`` / ``stop_reason: "tool_use"``; usage is that
    of the text answer. Streams send each call's arguments in pieces of at most
    8 characters (OpenAI ``function.arguments`` deltas, Anthropic
    ``input_json_delta`` events) that concatenate to the exact JSON.
``x-mock-stop: SEQ``
    Messages: the text answer ends with ``stop_reason: "stop_sequence"`` and
    ``stop_sequence: SEQ`` (chat keeps ``finish_reason: "stop"``).
``x-mock-max-tokens: N``
    the answer is cut at N tokens and ends by length (``finish_reason:
    "length"``, ``stop_reason: "max_tokens"``), a text answer even when tools
    were asked for.
``x-mock-cache-read: N``, ``x-mock-cache-creation: M``
    prompt caching usage: Anthropic usage gets ``cache_read_input_tokens: N``
    and ``cache_creation_input_tokens: M`` (both in ``message_start``), outside
    ``input_tokens``; OpenAI usage counts N + M inside ``prompt_tokens`` and
    says ``prompt_tokens_details: {"cached_tokens": N}`` (Responses:
    ``input_tokens_details``).

Errors on ``/v1/messages`` use Anthropic's envelope (``{"type": "error",
"error": {"type", "message"}}``, the type by status: 400 invalid_request_error,
401 authentication_error, 402 billing_error, 403 permission_error, 404
not_found_error, 413 request_too_large, 429 rate_limit_error, 503 and 529
overloaded_error, 504 timeout_error, any other api_error) and its in-band
``event: error`` (overloaded_error); everywhere else OpenAI's. ``--api-key K``
accepts ``x-api-key: K`` as well as the Bearer header;
``--require-anthropic-version`` refuses (400) a ``/v1/messages`` request
without an ``anthropic-version`` header.

``GET /mock/stats`` and ``POST /mock/reset`` serve the counters of
:class:`Stats`; they, ``/healthz`` and ``/health`` ignore ``--status``,
``--fail-rate``, ``--latency-ms`` and ``--api-key``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import http
import math
import random
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import httptools
import orjson

from fastgw.mock import bodies, tools
from fastgw.mock.bodies import Shape

__all__ = [
    "MockOptions",
    "Stats",
    "add_arguments",
    "options_from_args",
    "run_mock",
    "start_mock",
]


@dataclass(frozen=True, slots=True)
class MockOptions:
    """Server-wide behaviour; each field but ``api_key`` has a per-request override."""

    latency_ms: float = 0.0  # delay before the response head
    chunks: int = 8  # content chunks per stream (= completion tokens)
    chunk_interval_ms: float = 0.0  # delay between stream events; 0 = unpaced
    fail_rate: float = 0.0  # fraction of API requests answered 500 at random
    status: int | None = None  # answer every API request with this status
    api_key: str | None = None  # when set, require Bearer/x-api-key equal to it
    require_anthropic_version: bool = False  # /v1/messages without anthropic-version: 400


class Stats:
    """Counters of one mock server, served at ``GET /mock/stats``."""

    __slots__ = ("aborted_streams", "closed_by_peer", "open_connections", "requests")

    def __init__(self) -> None:
        self.requests = 0  # API requests, /mock/* excluded
        self.open_connections = 0
        self.closed_by_peer = 0  # connections the client closed (not the mock)
        self.aborted_streams = 0  # streams whose client went away before their end

    def reset(self) -> None:
        # open_connections is a gauge, not a counter: it keeps its value.
        self.requests = self.closed_by_peer = self.aborted_streams = 0

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "requests": self.requests,
                "open_connections": self.open_connections,
                "closed_by_peer": self.closed_by_peer,
                "aborted_streams": self.aborted_streams,
            }
        )


# -- wire constants --------------------------------------------------------------------

# A response is a list of steps: bytes are written, a float is a pause in
# seconds, None closes the connection. Reaching the end completes the response.
Step = bytes | float | None

# The Shape fields beyond the plain text answer: (calls, stop, cache_read, cache_creation).
Variant = tuple[tuple[tools.ToolCall, ...], str | None, int, int]

_SENTINEL: Final = bodies.ID_SENTINEL.encode()
_JSON: Final = b"application/json"
_SSE: Final = b"text/event-stream; charset=utf-8"
_TERMINATOR: Final = b"0\r\n\r\n"
_WRITE_BATCH: Final = 65536  # unpaced streams are written in pieces this big
_FAST_STREAM_MAX: Final = 262144  # bigger unpaced streams go the flow-controlled way
_MAX_QUEUED: Final = 64  # pipelined requests buffered before reading pauses
_CACHE_MAX: Final = 4096
_DEFAULT_STALL_MS: Final = 30000.0
_DEFAULT_CUT_EVENTS: Final = 2
_DEFAULT_SLOW_MS: Final = 100.0


_REASONS: Final = {529: "Overloaded"}  # Anthropic's status, not in http.HTTPStatus


def _status_line(status: int) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = _REASONS.get(status, "Unknown")
    return b"HTTP/1.1 %d %s\r\n" % (status, reason.encode())


_STATUS_LINES: Final = {code: _status_line(code) for code in range(100, 600)}


def _head(
    status: int,
    ctype: bytes,
    length: int | None,
    *,
    chunked: bool = False,
    close: bool = False,
    extra: bytes = b"",
) -> bytes:
    parts = [_STATUS_LINES.get(status) or _status_line(status), b"content-type: ", ctype, b"\r\n"]
    if length is not None:
        parts.append(b"content-length: %d\r\n" % length)
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    if ctype is _SSE:
        parts.append(b"cache-control: no-cache\r\n")
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(extra)
    parts.append(b"\r\n")
    return b"".join(parts)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# -- routing ---------------------------------------------------------------------------

_API_ROUTES: Final[dict[bytes, str]] = {
    b"/chat/completions": bodies.CHAT,
    b"/completions": bodies.COMPLETIONS,
    b"/messages": bodies.MESSAGES,
    b"/responses": bodies.RESPONSES,
    b"/embeddings": "embeddings",
    b"/models": "models",
}
_MAX_TOKENS_FIELDS: Final = {
    bodies.CHAT: ("max_completion_tokens", "max_tokens"),
    bodies.COMPLETIONS: ("max_tokens",),
    bodies.MESSAGES: ("max_tokens",),
    bodies.RESPONSES: ("max_output_tokens",),
}
_TOOL_ROUTES: Final = (bodies.CHAT, bodies.MESSAGES)
_MODELS_BODY: Final = bodies.models_body()
_HEALTH_BODY: Final = b'{"status":"ok"}'


class Prepared:
    """One shape's complete response (head + body, or head + every framed
    event + terminator), split on the id sentinel: ``rid.join(parts)``."""

    __slots__ = ("close", "keep_alive", "size")

    def __init__(self, raw_keep_alive: bytes, raw_close: bytes) -> None:
        self.keep_alive = tuple(raw_keep_alive.split(_SENTINEL))
        self.close = tuple(raw_close.split(_SENTINEL))
        self.size = len(raw_keep_alive)


def _prepare(shape: Shape, stream: bool) -> Prepared:
    if stream:
        framed = b"".join(_chunk(e) for e in bodies.EVENTS[shape.route](shape, bodies.ID_SENTINEL))
        framed += _TERMINATOR
        return Prepared(
            _head(200, _SSE, None, chunked=True) + framed,
            _head(200, _SSE, None, chunked=True, close=True) + framed,
        )
    body = bodies.BODY[shape.route](shape, bodies.ID_SENTINEL)
    return Prepared(
        _head(200, _JSON, len(body)) + body,
        _head(200, _JSON, len(body), close=True) + body,
    )


def _shape(
    route: str,
    model: str,
    n: int,
    truncated: bool,
    include_usage: bool,
    prompt_tokens: int,
    variant: Variant | None,
) -> Shape:
    if variant is None:
        return Shape(route, model, n, truncated, include_usage, prompt_tokens)
    return Shape(route, model, n, truncated, include_usage, prompt_tokens, *variant)


class _Server:
    """State shared by the connections of one mock server."""

    __slots__ = ("api_key", "bearer", "by_body", "cache", "next_id", "opts", "plain", "stats")

    def __init__(self, opts: MockOptions) -> None:
        self.opts = opts
        self.stats = Stats()
        self.cache: dict[tuple[object, ...], Prepared] = {}
        # (method, path, body, chunks) -> answer, for requests that ask for nothing
        # but a chunk count, when no server option varies answers of one request.
        self.by_body: dict[tuple[bytes, bytes, bytes, int], Prepared] = {}
        self.plain = (
            opts.status in (None, 200)
            and not opts.fail_rate
            and not opts.latency_ms
            and not opts.chunk_interval_ms
        )
        self.next_id = random.getrandbits(48) << 8
        key = opts.api_key
        self.api_key = key.encode() if key is not None else None
        self.bearer = b"Bearer " + self.api_key if self.api_key is not None else None

    def new_id(self) -> bytes:
        self.next_id += 1
        return b"%016x" % self.next_id


class _Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "url")

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class _Plan:
    """What a request asked for beyond the plain answer (slow path only)."""

    __slots__ = (
        "cache_creation",
        "cache_read",
        "chunks",
        "echo",
        "fault",
        "fault_arg",
        "interval",
        "latency",
        "max_tokens",
        "shaped",
        "stall",
        "stall_token",
        "stop",
        "tools",
    )

    def __init__(self, opts: MockOptions) -> None:
        self.latency = opts.latency_ms / 1000.0
        self.interval = opts.chunk_interval_ms / 1000.0
        self.chunks = opts.chunks
        self.stall = 0.0
        self.stall_token = 0.0
        self.fault: str | None = None  # the framing/content fault, at most one
        self.fault_arg: str | None = None
        self.echo = False
        # What the answer says (rendered into its Shape, so still pre-rendered):
        self.shaped = False  # any of the five below was asked for
        self.tools: tuple[str, ...] | None = None  # x-mock-tool names
        self.stop: str | None = None  # x-mock-stop
        self.max_tokens: int | None = None  # x-mock-max-tokens
        self.cache_read = 0  # x-mock-cache-read
        self.cache_creation = 0  # x-mock-cache-creation

    def only_chunks(self) -> bool:
        """True when the plan changes nothing but the chunk count."""
        return (
            self.fault is None
            and not self.shaped
            and not self.echo
            and not self.latency
            and not self.stall
            and not self.stall_token
            and not self.interval
        )


def _variant(
    route: str,
    payload: dict[str, Any],
    tool_defs: object,
    plan: _Plan | None,
    n: int,
    truncated: bool,
) -> tuple[Variant | None, int, bool]:
    """(variant, n, truncated) of a request that declares tools or shapes its answer."""
    requested = None if plan is None else plan.tools
    calls: tuple[tools.ToolCall, ...] = ()
    if route in _TOOL_ROUTES and (tool_defs is not None or requested is not None):
        calls = tools.pick(route, tool_defs, payload.get("tool_choice"), requested)
    if plan is None or not plan.shaped:
        return ((calls, None, 0, 0) if calls else None), n, truncated and not calls
    if plan.max_tokens is not None:  # ends by length: a text answer, even if tools were asked
        n, truncated, calls = min(n, plan.max_tokens), True, ()
    elif calls:
        truncated = False  # a tool-call answer is whole (n only counts its tokens)
    return (calls, plan.stop, plan.cache_read, plan.cache_creation), n, truncated


class MockProtocol(asyncio.Protocol):
    """One client connection: parse with httptools, answer in order."""

    __slots__ = (
        "_body",
        "_closed",
        "_closed_by_us",
        "_drain_waiter",
        "_expect",
        "_headers",
        "_in_stream",
        "_loop",
        "_parser",
        "_queue",
        "_reading_paused",
        "_server",
        "_task",
        "_transport",
        "_url",
        "_write_paused",
    )

    def __init__(self, server: _Server) -> None:
        # Per-connection
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[_Request] = collections.deque()
        self._task: asyncio.Task[None] | None = None  # the slow response being played
        self._write_paused = False
        self._reading_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._closed_by_us = False
        self._in_stream = False  # a streaming response has started and not ended
        # Per-request (being parsed)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._expect = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance.
        self._transport = cast(asyncio.Transport, transport)
        self._server.stats.open_connections += 1

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400)
        except httptools.HttpParserError:
            self._fail(400)

    def eof_received(self) -> bool | None:
        # The peer is gone (an HTTP client does not half-close): close too.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        stats = self._server.stats
        stats.open_connections -= 1
        if not self._closed_by_us:
            stats.closed_by_peer += 1
            if self._in_stream:
                stats.aborted_streams += 1
        self._closed = True
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._task is None and self._queue:
            self._run_queue()

    # -- httptools callbacks: only buffer ------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        # curl sends "Expect: 100-continue" before a large body and waits for it.
        if len(name) == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self._expect = True

    def on_headers_complete(self) -> None:
        if self._expect:
            self._expect = False
            if self._task is None and not self._queue and self._transport is not None:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        req = _Request(
            parser.get_method(),
            self._url,
            self._headers,
            b"".join(self._body),
            parser.should_keep_alive(),
        )
        self._url = b""
        if self._closed:
            return
        if self._task is None and not self._write_paused and not self._queue:
            self._dispatch(req)
            return
        self._queue.append(req)
        if len(self._queue) >= _MAX_QUEUED and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    # -- response plumbing ---------------------------------------------------------------

    def _run_queue(self) -> None:
        queue = self._queue
        while queue and self._task is None and not self._write_paused and not self._closed:
            self._dispatch(queue.popleft())
        if self._reading_paused and len(queue) < _MAX_QUEUED // 2 and not self._closed:
            self._reading_paused = False
            assert self._transport is not None
            self._transport.resume_reading()

    def _close(self) -> None:
        self._closed = True
        self._closed_by_us = True
        if self._transport is not None:
            self._transport.close()

    def _fail(self, status: int) -> None:
        if self._closed or self._transport is None:
            return
        body = bodies.error_body(None, status)
        self._transport.write(_head(status, _JSON, len(body), close=True) + body)
        self._close()

    def _write_now(self, data: bytes, keep_alive: bool) -> None:
        assert self._transport is not None
        self._transport.write(data)
        if not keep_alive:
            self._close()

    def _play(self, steps: list[Step], stream: bool) -> None:
        self._task = self._loop.create_task(self._play_steps(steps, stream))

    async def _play_steps(self, steps: list[Step], stream: bool) -> None:
        transport = self._transport
        assert transport is not None
        self._in_stream = stream
        try:
            for step in steps:
                if step is None:
                    self._close()
                    return
                if isinstance(step, bytes):
                    transport.write(step)
                    if self._write_paused:
                        await self._drain()
                else:
                    await asyncio.sleep(step)
                if self._closed:
                    return
        finally:
            self._in_stream = False
            self._task = None
        self._run_queue()

    async def _drain(self) -> None:
        # The future exists only while writing is paused (cheap fast path).
        if self._closed:
            return
        self._drain_waiter = self._loop.create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None

    # -- request handling ----------------------------------------------------------------

    def _dispatch(self, req: _Request) -> None:
        url = req.url
        q = url.find(b"?")
        path = url if q < 0 else url[:q]
        if path[:4] == b"/v1/":
            path = path[3:]
        route = _API_ROUTES.get(path)
        if route is None:
            if path[:8] == b"/models/":
                route = "model"
            else:
                self._dispatch_other(req, path)
                return
        server = self._server
        opts = server.opts
        server.stats.requests += 1

        # One pass over the headers: credentials, anthropic-version, x-mock-* controls.
        authed = server.api_key is None
        unversioned = opts.require_anthropic_version and route == bodies.MESSAGES
        plan: _Plan | None = None
        for name, value in req.headers:
            lname = name.lower()
            if lname[:7] == b"x-mock-":
                if plan is None:
                    plan = _Plan(opts)
                self._apply_control(plan, lname, value)
            elif not authed and (
                (lname == b"authorization" and value == server.bearer)
                or (lname == b"x-api-key" and value == server.api_key)
            ):
                authed = True
            elif unversioned and lname == b"anthropic-version" and value:
                unversioned = False
        # Fastest path: this exact request (and chunk count) was answered before
        # and nothing asks for more than the plain answer.
        by_body_key: tuple[bytes, bytes, bytes, int] | None = None
        if server.plain and authed and not unversioned and (plan is None or plan.only_chunks()):
            by_body_key = (req.method, path, req.body, opts.chunks if plan is None else plan.chunks)
            prepared = server.by_body.get(by_body_key)
            if prepared is not None:
                rid = server.new_id()
                keep_alive = req.keep_alive
                parts = prepared.keep_alive if keep_alive else prepared.close
                self._write_now(rid.join(parts), keep_alive)
                return
        if plan is None and (opts.latency_ms or opts.chunk_interval_ms):
            plan = _Plan(opts)

        api = bodies.MESSAGES if route == bodies.MESSAGES else None
        if not authed:
            self._error(req, plan, api, 401)
            return
        if plan is not None and plan.fault == "close":
            self._close()
            return
        if unversioned:
            self._error(req, plan, api, 400, "anthropic_version_required")
            return
        status = opts.status
        if status is not None and status != 200:
            self._error(req, plan, api, status)
            return
        if opts.fail_rate and random.random() < opts.fail_rate:
            self._error(req, plan, api, 500)
            return
        if plan is not None and plan.fault is not None and plan.fault.isdigit():
            self._fault_status(req, plan, api)
            return

        if route == "models" or route == "model":
            if req.method != b"GET":
                self._error(req, plan, api, 405)
                return
            if route == "models":
                body = _MODELS_BODY
            else:
                model_id = path[8:].decode("utf-8", "replace")
                body = orjson.dumps(bodies.model_obj(model_id))
            self._respond(req, plan, 200, body)
            return
        if req.method != b"POST":
            self._error(req, plan, api, 405)
            return
        try:
            payload = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            self._error(req, plan, api, 400, "invalid_json")
            return
        if not isinstance(payload, dict):
            self._error(req, plan, api, 400, "invalid_json")
            return
        if route == "embeddings":
            self._embeddings(req, plan, payload)
            return
        self._generate(req, plan, route, payload, by_body_key)

    def _apply_control(self, plan: _Plan, lname: bytes, value: bytes) -> None:
        try:
            if lname == b"x-mock-fault":
                for item in value.decode("latin-1").split(","):
                    name, _, arg = item.strip().partition(":")
                    if name == "stall":
                        plan.stall = float(arg or _DEFAULT_STALL_MS) / 1000.0
                    elif name == "stall-token":
                        plan.stall_token = float(arg or _DEFAULT_STALL_MS) / 1000.0
                    elif name == "slow":
                        plan.interval = float(arg or _DEFAULT_SLOW_MS) / 1000.0
                        plan.fault = name
                    elif name:
                        plan.fault = name
                        plan.fault_arg = arg or None
            elif lname == b"x-mock-latency-ms":
                plan.latency = float(value) / 1000.0
            elif lname == b"x-mock-chunks":
                plan.chunks = max(0, int(value))
            elif lname == b"x-mock-chunk-interval-ms":
                plan.interval = float(value) / 1000.0
            elif lname == b"x-mock-echo":
                plan.echo = value.strip() not in (b"", b"0", b"false")
            elif lname == b"x-mock-tool":
                names = [n.strip() for n in value.decode("utf-8", "replace").split(",")]
                plan.tools = tuple(n for n in names if n)
                plan.shaped = True
            elif lname == b"x-mock-stop":
                plan.stop = value.decode("utf-8", "replace")
                plan.shaped = True
            elif lname == b"x-mock-max-tokens":
                plan.max_tokens = max(0, int(value))
                plan.shaped = True
            elif lname == b"x-mock-cache-read":
                plan.cache_read = max(0, int(value))
                plan.shaped = True
            elif lname == b"x-mock-cache-creation":
                plan.cache_creation = max(0, int(value))
                plan.shaped = True
        except ValueError:
            pass  # a malformed control header is ignored, as unknown ones are

    def _dispatch_other(self, req: _Request, path: bytes) -> None:
        method = req.method
        server = self._server
        if path in (b"/healthz", b"/health"):
            body = _HEALTH_BODY
        elif path == b"/mock/stats" and method == b"GET":
            body = server.stats.as_json()
        elif path == b"/mock/reset" and method == b"POST":
            server.stats.reset()
            body = server.stats.as_json()
        else:
            server.stats.requests += 1
            body = bodies.error_body(None, 404)
            self._write_now(
                _head(404, _JSON, len(body), close=not req.keep_alive) + body, req.keep_alive
            )
            return
        self._write_now(
            _head(200, _JSON, len(body), close=not req.keep_alive) + body, req.keep_alive
        )

    # -- answers ---------------------------------------------------------------------------

    def _generate(
        self,
        req: _Request,
        plan: _Plan | None,
        route: str,
        payload: dict[str, Any],
        by_body_key: tuple[bytes, bytes, bytes, int] | None,
    ) -> None:
        server = self._server
        model = payload.get("model")
        if not isinstance(model, str):
            model = "mock-model" if model is None else str(model)
        stream = payload.get("stream") is True
        include_usage = False
        if stream and route in (bodies.CHAT, bodies.COMPLETIONS):
            so = payload.get("stream_options")
            include_usage = isinstance(so, dict) and so.get("include_usage") is True
        n = server.opts.chunks if plan is None else plan.chunks
        truncated = False
        for field in _MAX_TOKENS_FIELDS[route]:
            limit = payload.get(field)
            if isinstance(limit, int) and not isinstance(limit, bool):
                if 0 <= limit < n:
                    n, truncated = limit, True
                break
        if route == bodies.MESSAGES:
            prompt_tokens = bodies.estimate_tokens([payload.get("system"), payload.get("messages")])
        elif route == bodies.CHAT:
            prompt_tokens = bodies.estimate_tokens(payload.get("messages"))
        elif route == bodies.COMPLETIONS:
            prompt_tokens = bodies.estimate_tokens(payload.get("prompt"))
        else:
            prompt_tokens = bodies.estimate_tokens(
                [payload.get("instructions"), payload.get("input")]
            )

        # What the answer says beyond text (tool calls, stop sequence, cache usage):
        # None on the plain path, else the Shape fields it sets (part of the cache key).
        variant: Variant | None = None
        tool_defs = payload.get("tools")
        if tool_defs is not None or (plan is not None and plan.shaped):
            variant, n, truncated = _variant(route, payload, tool_defs, plan, n, truncated)

        if plan is None or (
            plan.fault is None
            and not plan.echo
            and not plan.latency
            and not plan.stall
            and not (stream and (plan.interval or plan.stall_token))
        ):
            # Fast path: the cached complete response with this request's id.
            key = (route, stream, model, n, truncated, include_usage, prompt_tokens, variant)
            prepared = server.cache.get(key)
            if prepared is None:
                if len(server.cache) >= _CACHE_MAX:
                    server.cache.clear()
                shape = _shape(route, model, n, truncated, include_usage, prompt_tokens, variant)
                prepared = server.cache[key] = _prepare(shape, stream)
            small = not stream or prepared.size <= _FAST_STREAM_MAX
            if by_body_key is not None and small:
                if len(server.by_body) >= _CACHE_MAX:
                    server.by_body.clear()
                server.by_body[by_body_key] = prepared
            if small:
                rid = server.new_id()
                parts = prepared.keep_alive if req.keep_alive else prepared.close
                self._write_now(rid.join(parts), req.keep_alive)
                return
            if plan is None:
                plan = _Plan(server.opts)

        shape = _shape(route, model, n, truncated, include_usage, prompt_tokens, variant)
        rid_text = server.new_id().decode()
        echo = {"echo": self._echo(req, payload)} if plan.echo else None
        if stream:
            events = bodies.EVENTS[route](shape, rid_text, echo)
            self._play(self._stream_steps(req, plan, route, events), True)
        else:
            body = bodies.BODY[route](shape, rid_text)
            if echo is not None:
                body = body[:-1] + b',"echo":' + orjson.dumps(echo["echo"]) + b"}"
            self._respond(req, plan, 200, body)

    def _embeddings(self, req: _Request, plan: _Plan | None, payload: dict[str, Any]) -> None:
        inp = payload.get("input")
        if isinstance(inp, list) and inp and not isinstance(inp[0], int):
            count = len(inp)
        elif isinstance(inp, (str, list)):
            count = 1
        else:
            self._error(req, plan, None, 400, "invalid_input")
            return
        dims = payload.get("dimensions")
        dim = dims if isinstance(dims, int) and 0 < dims <= 4096 else bodies.EMBEDDING_DIM
        model = payload.get("model")
        body = bodies.embeddings_body(
            model if isinstance(model, str) else "mock-embedding",
            count,
            bodies.estimate_tokens(inp),
            dim,
            payload.get("encoding_format") == "base64",
        )
        if plan is not None and plan.echo:
            body = body[:-1] + b',"echo":' + orjson.dumps(self._echo(req, payload)) + b"}"
        self._respond(req, plan, 200, body)

    def _echo(self, req: _Request, payload: object) -> dict[str, Any]:
        headers: dict[str, str] = {}
        for name, value in req.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = headers[key] + ", " + text if key in headers else text
        return {
            "method": req.method.decode(),
            "path": req.url.decode("latin-1"),
            "headers": headers,
            "body": payload,
        }

    def _fault_status(self, req: _Request, plan: _Plan, api: str | None) -> None:
        assert plan.fault is not None
        status = int(plan.fault)
        if not 100 <= status <= 599:
            status = 500
        extra = b""
        code = plan.fault_arg
        if status == 429:
            try:
                seconds = float(plan.fault_arg or 1)
            except ValueError:
                seconds = 1.0
            extra = b"retry-after: %d\r\nretry-after-ms: %d\r\n" % (
                math.ceil(seconds),
                round(seconds * 1000),
            )
            code = None
        self._error(req, plan, api, status, code, extra)

    def _error(
        self,
        req: _Request,
        plan: _Plan | None,
        api: str | None,
        status: int,
        code: str | None = None,
        extra: bytes = b"",
    ) -> None:
        prompt_tokens = max(1, len(req.body) // 4)
        body = bodies.error_body(api, status, code, prompt_tokens)
        if plan is not None:
            plan.fault = None  # an error answer is sent plainly (latency/stall still apply)
        self._respond(req, plan, status, body, extra)

    def _respond(
        self,
        req: _Request,
        plan: _Plan | None,
        status: int,
        body: bytes,
        extra: bytes = b"",
    ) -> None:
        """A non-streaming answer: written now, or played with its latency and faults."""
        keep_alive = req.keep_alive
        if plan is None or (plan.fault is None and not plan.latency and not plan.stall):
            head = _head(status, _JSON, len(body), close=not keep_alive, extra=extra)
            self._write_now(head + body, keep_alive)
            return
        steps: list[Step] = []
        if plan.latency:
            steps.append(plan.latency)
        if plan.stall:
            steps.append(plan.stall)
        fault = plan.fault
        if fault == "cut":
            head = _head(status, _JSON, len(body), extra=extra)
            steps += [head + body[: len(body) // 2], None]
        elif fault == "close-delimited":
            steps += [_head(status, _JSON, None, close=True, extra=extra) + body, None]
        elif fault == "chunked":
            third = max(1, len(body) // 3)
            framed = b"".join(_chunk(body[i : i + third]) for i in range(0, len(body), third))
            head = _head(status, _JSON, None, chunked=True, close=not keep_alive, extra=extra)
            steps.append(head + framed + _TERMINATOR)
        elif fault == "slow":
            steps.append(_head(status, _JSON, len(body), close=not keep_alive, extra=extra))
            quarter = max(1, (len(body) + 3) // 4)
            for i in range(0, len(body), quarter):
                if i:
                    steps.append(plan.interval)
                steps.append(body[i : i + quarter])
        elif fault in ("error-event", "error-first"):
            body = bodies.error_body(
                bodies.MESSAGES if req.url.find(b"/messages") >= 0 else None, 500, "mock_error"
            )
            steps.append(_head(500, _JSON, len(body), close=not keep_alive) + body)
        else:
            if fault == "malformed":
                body = body[: len(body) // 2]
            steps.append(_head(status, _JSON, len(body), close=not keep_alive, extra=extra) + body)
        if not keep_alive:
            steps.append(None)
        self._play(steps, False)

    def _stream_steps(
        self, req: _Request, plan: _Plan, route: str, events: list[bytes]
    ) -> list[Step]:
        fault = plan.fault
        first_content = bodies.FIRST_CONTENT[route]
        if fault == "malformed":
            events.insert(min(first_content + 1, len(events)), bodies.malformed_event(route))
        elif fault == "error-event":
            events = [*events[: first_content + 1], bodies.error_event(route)]
        elif fault == "error-first":
            events = [bodies.error_event(route)]
        cut = len(events) + 1
        if fault == "cut":
            try:
                cut = int(plan.fault_arg or _DEFAULT_CUT_EVENTS)
            except ValueError:
                cut = _DEFAULT_CUT_EVENTS
        delimited = fault == "close-delimited"
        keep_alive = req.keep_alive and not delimited
        frame: Callable[[bytes], bytes] = (lambda e: e) if delimited else _chunk

        steps: list[Step] = []
        if plan.latency:
            steps.append(plan.latency)
        if plan.stall:
            steps.append(plan.stall)
        pending = _head(200, _SSE, None, chunked=not delimited, close=not keep_alive)
        interval = plan.interval
        for i, event in enumerate(events):
            if i == cut:
                break
            if i and interval:
                steps.append(pending)
                pending = b""
                steps.append(interval)
            if i == first_content and plan.stall_token:
                steps.append(pending)
                pending = b""
                steps.append(plan.stall_token)
            pending += frame(event)
            if len(pending) >= _WRITE_BATCH:
                steps.append(pending)
                pending = b""
        if cut <= len(events):
            steps += [pending, None]
            return steps
        if not delimited:
            pending += _TERMINATOR
        steps.append(pending)
        if not keep_alive:
            steps.append(None)
        return steps


async def start_mock(opts: MockOptions, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Listen on host:port (0 = a free port: read ``server.sockets[0].getsockname()``)."""
    loop = asyncio.get_running_loop()
    state = _Server(opts)
    return await loop.create_server(
        lambda: MockProtocol(state), host, port, reuse_address=True, backlog=2048
    )


async def _serve(opts: MockOptions, host: str, port: int) -> None:
    server = await start_mock(opts, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    # A standalone mock allocates a few small objects per request and makes
    # almost no cycles: collect young objects less often (about 5 % of CPU),
    # and never rescan what startup allocated.
    gc.freeze()
    gc.set_threshold(20000, 20, 20)
    print(f"fastgw mock-upstream listening on http://{bound[0]}:{bound[1]}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()


def run_mock(opts: MockOptions, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM (then return normally, exit status 0)."""
    import uvloop

    uvloop.run(_serve(opts, host, port))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the mock-upstream options (SPEC section 2) to a (sub)command parser."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=9000, help="port to listen on (0 = any)")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay before the response head"
    )
    parser.add_argument(
        "--chunks",
        type=int,
        default=8,
        help="content chunks per stream, also completion tokens (default 8)",
    )
    parser.add_argument(
        "--chunk-interval-ms",
        type=float,
        default=0.0,
        help="delay between stream events (0 = unpaced, all at once)",
    )
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, help="fraction of requests answered 500"
    )
    parser.add_argument(
        "--status", type=int, default=None, help="answer every API request with this status"
    )
    parser.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer K' or 'x-api-key: K'"
    )
    parser.add_argument(
        "--require-anthropic-version",
        action="store_true",
        help="answer /v1/messages without an anthropic-version header with 400",
    )


def options_from_args(ns: argparse.Namespace) -> MockOptions:
    if ns.chunks < 0:
        raise SystemExit("--chunks must be >= 0")
    if not 0.0 <= ns.fail_rate <= 1.0:
        raise SystemExit("--fail-rate must be between 0 and 1")
    if ns.status is not None and not 100 <= ns.status <= 599:
        raise SystemExit("--status must be an HTTP status code (100-599)")
    return MockOptions(
        latency_ms=ns.latency_ms,
        chunks=ns.chunks,
        chunk_interval_ms=ns.chunk_interval_ms,
        fail_rate=ns.fail_rate,
        status=ns.status,
        api_key=ns.api_key,
        require_anthropic_version=ns.require_anthropic_version,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastgw.mock",
        description="A fast fake OpenAI- and Anthropic-compatible upstream.",
    )
    add_arguments(parser)
    ns = parser.parse_args(argv)
    run_mock(options_from_args(ns), ns.host, ns.port)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
