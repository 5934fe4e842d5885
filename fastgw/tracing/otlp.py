"""OTLP/HTTP span export: finished traces queued, encoded and posted in batches.

:meth:`OtlpExporter.submit` is all the request path calls: one append to a
bounded queue (counted in spans), or a drop when it is full. A background task
takes a batch when the queue holds ``batch_spans`` or every ``interval_s``,
builds the protobuf messages (opentelemetry-proto's definitions) and POSTs
them to ``{endpoint}/v1/traces`` (``application/x-protobuf``) on a plain
asyncio connection kept alive between batches. One export runs at a time,
bounded by ``timeout_s``. A collector that is down or slow only loses spans
(``fastgw_trace_spans_dropped_total{reason}``): a failed export drops its
batch and, for a backoff that doubles up to 30 s, later batches are dropped
without being encoded, so a dead collector costs almost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Iterable
from time import perf_counter
from urllib.parse import urlsplit

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

import fastgw
from fastgw.metrics import TRACE_DROPPED, TRACE_SPANS, batched
from fastgw.tracing import AttemptSpan, Trace

log = logging.getLogger("fastgw.tracing")

MAX_BACKOFF_S = 30.0
_RESPONSE_HEAD_LIMIT = 64 * 1024

# gen_ai.system (and its newer name gen_ai.provider.name) by provider kind; an
# OpenAI-compatible server (vLLM, llama.cpp, ...) is none of the well-known ones.
_SYSTEM = {
    "openai": "openai",
    "azure": "az.ai.openai",
    "anthropic": "anthropic",
    "openai-compatible": "_OTHER",
}
# gen_ai.operation.name by client endpoint
_OPERATION = {
    "chat": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "responses": "chat",
    "messages": "chat",
}
_SERVER = Span.SpanKind.SPAN_KIND_SERVER
_CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
_ERROR = Status.StatusCode.STATUS_CODE_ERROR


class OtlpExporter:
    """The export queue and its background task, one per worker."""

    __slots__ = (
        "_backoff",
        "_conn",
        "_failures",
        "_head",
        "_host",
        "_port",
        "_queue",
        "_queue_full",
        "_retry_at",
        "_ssl",
        "_task",
        "_wake",
        "batch_spans",
        "interval_s",
        "loop",
        "max_queue_spans",
        "queued",
        "timeout_s",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        endpoint: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        timeout_s: float = 5.0,
        max_queue_spans: int = 4096,
        batch_spans: int = 512,
        interval_s: float = 1.0,
    ) -> None:
        self.loop = loop
        url = urlsplit(endpoint)
        self._host = url.hostname or "127.0.0.1"
        https = url.scheme == "https"
        self._port = url.port or (443 if https else 80)
        self._ssl = ssl.create_default_context() if https else None
        path = url.path.rstrip("/")
        if not path.endswith("/v1/traces"):
            path += "/v1/traces"
        host = self._host if url.port is None else f"{self._host}:{url.port}"
        self._head = (
            f"POST {path} HTTP/1.1\r\nhost: {host}\r\n"
            "content-type: application/x-protobuf\r\n"
            + "".join(f"{n}: {v}\r\n" for n, v in headers)
        ).encode("latin-1")
        self.timeout_s = timeout_s
        self.max_queue_spans = max_queue_spans
        self.batch_spans = batch_spans
        self.interval_s = interval_s
        self._queue: list[Trace] = []
        self.queued = 0  # spans in the queue
        self._queue_full = batched(TRACE_DROPPED, "queue_full")
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._retry_at = 0.0  # monotonic: batches before it are dropped unencoded
        self._backoff = 0.0
        self._failures = 0

    # -- the request path -------------------------------------------------------------------

    def submit(self, trace: Trace) -> None:
        """A finished trace: queued, or dropped (counted) when the queue is full."""
        n = 1 + len(trace.attempts)
        queued = self.queued + n
        if queued > self.max_queue_spans:
            self._queue_full.value += n
            return
        self._queue.append(trace)
        self.queued = queued
        if queued >= self.batch_spans:
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)

    # -- the background task ------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = self.loop.create_task(self._run())

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the task, then export what is queued (bounded by ``timeout_s``)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._queue and self.loop.time() >= self._retry_at:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.export_once(), timeout_s)
        self._close()

    async def _run(self) -> None:
        loop = self.loop
        while True:
            if self.queued < self.batch_spans:
                wake = self._wake = loop.create_future()
                timer = loop.call_later(self.interval_s, _set, wake)
                try:
                    await wake
                finally:
                    timer.cancel()
                    self._wake = None
            try:
                await self.export_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the exporter die: spans are only lost
                log.exception("span export failed")

    def take(self) -> list[Trace]:
        """Up to one batch of traces off the queue."""
        queue = self._queue
        n = 0
        i = 0
        limit = self.batch_spans
        while i < len(queue) and n < limit:
            n += 1 + len(queue[i].attempts)
            i += 1
        batch = queue[:i]
        del queue[:i]
        self.queued -= n
        return batch

    async def export_once(self) -> None:
        """Export one batch (or drop it while the collector is backed off)."""
        batch = self.take()
        if not batch:
            return
        spans = sum(1 + len(t.attempts) for t in batch)
        if self.loop.time() < self._retry_at:
            TRACE_DROPPED.labels("unreachable").inc(spans)
            return
        body = encode(batch)
        try:
            status = await asyncio.wait_for(self._post(body), self.timeout_s)
        except TimeoutError as exc:  # first: it is an OSError too
            self._close()
            self._failed(spans, "timeout", exc)
            return
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            ssl.SSLError,
        ) as exc:
            self._close()
            self._failed(spans, "unreachable", exc)
            return
        if 200 <= status < 300:
            TRACE_SPANS.inc(spans)
            self._failures = 0
            self._backoff = 0.0
        else:
            self._failed(spans, "rejected", RuntimeError(f"the collector answered {status}"))

    def _failed(self, spans: int, reason: str, exc: BaseException) -> None:
        TRACE_DROPPED.labels(reason).inc(spans)
        self._backoff = min(MAX_BACKOFF_S, self._backoff * 2.0 or 1.0)
        self._retry_at = self.loop.time() + self._backoff
        self._failures += 1
        if self._failures == 1:  # once per outage, not once per batch
            log.warning(
                "OTLP collector %s:%d: %s (%s); dropping spans, retrying in %g s",
                self._host,
                self._port,
                reason,
                str(exc) or type(exc).__name__,
                self._backoff,
            )

    async def _post(self, body: bytes) -> int:
        """POST one batch on the kept connection (a new one when there is none);
        the collector's status. The connection is kept when the answer's end is
        known (content-length) and the collector does not close it."""
        conn = self._conn
        if conn is None or conn[1].is_closing():
            conn = self._conn = await asyncio.open_connection(
                self._host, self._port, ssl=self._ssl, limit=_RESPONSE_HEAD_LIMIT
            )
        reader, writer = conn
        writer.write(self._head + b"content-length: %d\r\n\r\n" % len(body) + body)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
        status = int(parts[1])
        length = -1
        keep = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                keep = False
        if length >= 0:
            await reader.readexactly(length)
        if length < 0 or not keep:
            self._close()
        return status

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn[1].close()


def _set(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# -- encoding (off the request path) -----------------------------------------------------------
#
# Building a span field by field from Python costs about a microsecond per attribute
# (each one a KeyValue and an AnyValue), and most of a span's attributes are the same
# for every request of its kind: its route, target, provider, key, status... So a span
# is built from two serialized pieces, by protobuf's merge rule (a message's
# serialization followed by another's parses as the two merged, repeated fields
# appended): its kind's constant part (name, kind, those attributes), built once and
# kept as bytes, and its own part (ids, times, tokens, request id, overhead), set on a
# kept template message of its shape and serialized. One ``MergeFromString`` puts the
# span in the batch. The attributes come in that order, constant ones first; the plain
# construction, field by field, is ``fastgw._reference.otlp`` (the tests compare them).

# Constant parts kept (each map emptied when it reaches this: a bound, never reached
# by a configuration's routes, keys and statuses).
CACHE_MAX = 4096


def _ns(t: float, epoch: float) -> int:
    return int((t + epoch) * 1e9)


def _put(attrs: object, key: str, value: str | int | float | bool) -> None:
    kv: KeyValue = attrs.add()  # type: ignore[attr-defined]
    kv.key = key
    v = kv.value
    if isinstance(value, bool):
        v.bool_value = value
    elif isinstance(value, int):
        v.int_value = value
    elif isinstance(value, float):
        v.double_value = value
    else:
        v.string_value = value


_ENVELOPE: dict[int, bytes] = {}


def _envelope() -> bytes:
    """A request with its resource (this process) and scope, and no span yet."""
    pid = os.getpid()
    data = _ENVELOPE.get(pid)
    if data is None:
        req = ExportTraceServiceRequest()
        spans = req.resource_spans.add()
        attrs = spans.resource.attributes
        _put(attrs, "service.name", "fastgw")
        _put(attrs, "service.version", fastgw.__version__)
        _put(attrs, "process.pid", pid)
        spans.scope_spans.add(scope=InstrumentationScope(name="fastgw", version=fastgw.__version__))
        _ENVELOPE.clear()
        data = _ENVELOPE[pid] = req.SerializeToString()
    return data


class _Own:
    """A span's own part, one shape of it: a kept message refilled for each span, with
    its attributes' values at hand (None: not in this shape)."""

    __slots__ = ("input_tokens", "msg", "output_tokens", "overhead", "request_id", "status", "ttft")

    def __init__(self, *, tokens: bool, message: bool, request: bool, ttft: bool) -> None:
        msg = self.msg = Span()
        a = msg.attributes
        if tokens:
            _put(a, "gen_ai.usage.input_tokens", 0)
            _put(a, "gen_ai.usage.output_tokens", 0)
        if request:
            _put(a, "fastgw.request_id", "")
            _put(a, "fastgw.overhead_ms", 0.0)
        if ttft:
            _put(a, "fastgw.ttft_ms", 0.0)
        values = [kv.value for kv in a]
        self.input_tokens = values.pop(0) if tokens else None
        self.output_tokens = values.pop(0) if tokens else None
        self.request_id = values.pop(0) if request else None
        self.overhead = values.pop(0) if request else None
        self.ttft = values.pop(0) if ttft else None
        self.status = msg.status if message else None


# By shape: tokens + 2 * time to first token + 4 * error message.
_REQUEST_OWN = [
    _Own(tokens=bool(i & 1), ttft=bool(i & 2), message=bool(i & 4), request=True) for i in range(8)
]
# By shape: tokens + 2 * error message.
_ATTEMPT_OWN = [
    _Own(tokens=bool(i & 1), ttft=False, message=bool(i & 2), request=False) for i in range(4)
]
_REQUEST_CONST: dict[tuple[object, ...], bytes] = {}
_ATTEMPT_CONST: dict[tuple[object, ...], bytes] = {}


def encode(batch: list[Trace], epoch: float | None = None) -> bytes:
    """The OTLP ``ExportTraceServiceRequest`` of ``batch``, serialized: for each
    trace its request span (SERVER, the client's span as parent) and one span per
    upstream attempt (CLIENT, the request span as parent). ``epoch`` turns
    perf_counter readings into Unix time (now's when not given)."""
    if epoch is None:
        epoch = time.time() - perf_counter()
    req = ExportTraceServiceRequest.FromString(_envelope())
    add = req.resource_spans[0].scope_spans[0].spans.add
    request_const = _REQUEST_CONST
    attempt_const = _ATTEMPT_CONST
    request_own = _REQUEST_OWN
    attempt_own = _ATTEMPT_OWN
    for t in batch:
        attempts = t.attempts
        n = len(attempts)
        error = t.error
        endpoint = t.endpoint
        key: tuple[object, ...] = (
            endpoint, attempts[-1].kind if n else "", t.asked, t.response_model, t.method,
            t.path, t.status, t.key, t.served, t.provider, t.variant, t.cache, n, t.stream,
            error is None,
        )  # fmt: skip
        const = request_const.get(key)
        if const is None:
            if len(request_const) >= CACHE_MAX:
                request_const.clear()
            const = request_const[key] = _request_const(t)
        tokens = t.tokens
        ttft = t.ttft_s
        own = request_own[
            (tokens is not None) + (2 if ttft >= 0.0 else 0) + (4 if error is not None else 0)
        ]
        m = own.msg
        trace_id = m.trace_id = t.trace_id.to_bytes(16, "big")
        span_id = m.span_id = t.span_id.to_bytes(8, "big")
        m.parent_span_id = t.parent_id.to_bytes(8, "big") if t.parent_id else b""
        m.start_time_unix_nano = int((t.start + epoch) * 1e9)
        finished = t.finished
        m.end_time_unix_nano = int((finished + epoch) * 1e9)
        if tokens is not None:
            own.input_tokens.int_value = tokens[0]  # type: ignore[union-attr]
            own.output_tokens.int_value = tokens[1]  # type: ignore[union-attr]
        own.request_id.string_value = t.request_id.decode("latin-1")  # type: ignore[union-attr]
        own.overhead.double_value = round(t.overhead_s * 1000.0, 3)  # type: ignore[union-attr]
        if ttft >= 0.0:
            own.ttft.double_value = round(ttft * 1000.0, 3)  # type: ignore[union-attr]
        if error is not None:
            own.status.message = error  # type: ignore[union-attr]
        add().MergeFromString(const + m.SerializeToString())
        last = n - 1
        for i, a in enumerate(attempts):
            failed = a.error
            detail: tuple[int, str | bool] | None
            if failed is not None:
                mode, detail = 1, (a.status, failed)
            elif i == last:
                # The last attempt answered the request unless it failed itself; a
                # stream's failure after its first content is the request's (and so
                # this attempt's).
                mode, detail = 0, ((a.status or t.status) if t.status else 0, error is None)
            else:
                mode, detail = 2, None
            akey = (endpoint, a.kind, a.model, a.provider, a.route, i, mode, detail)
            const = attempt_const.get(akey)
            if const is None:
                if len(attempt_const) >= CACHE_MAX:
                    attempt_const.clear()
                const = attempt_const[akey] = _attempt_const(t, a, i, mode)
            with_tokens = mode == 0 and tokens is not None
            with_message = mode == 0 and error is not None
            own = attempt_own[with_tokens + (2 if with_message else 0)]
            m = own.msg
            m.trace_id = trace_id
            m.span_id = a.span_id.to_bytes(8, "big")
            m.parent_span_id = span_id
            end = a.end or finished
            m.start_time_unix_nano = int(((a.start or end) + epoch) * 1e9)
            m.end_time_unix_nano = int((end + epoch) * 1e9)
            if with_tokens:
                own.input_tokens.int_value = tokens[0]  # type: ignore[union-attr,index]
                own.output_tokens.int_value = tokens[1]  # type: ignore[union-attr,index]
            if with_message:
                own.status.message = error  # type: ignore[union-attr]
            add().MergeFromString(const + m.SerializeToString())
    data: bytes = req.SerializeToString()
    return data


def _request_const(t: Trace) -> bytes:
    """The request span's constant part (what the key in :func:`encode` decides)."""
    span = Span()
    operation = _OPERATION.get(t.endpoint, t.endpoint)
    method = t.method.decode("latin-1")
    path = t.path.decode("latin-1")
    span.name = f"{operation} {t.asked}" if t.asked else f"{method} {path}"
    span.kind = _SERVER
    a = span.attributes
    _put(a, "gen_ai.operation.name", operation)
    if t.attempts:
        system = _SYSTEM.get(t.attempts[-1].kind, "_OTHER")
        _put(a, "gen_ai.system", system)
        _put(a, "gen_ai.provider.name", system)
    if t.asked:
        _put(a, "gen_ai.request.model", t.asked)
    if t.response_model:
        _put(a, "gen_ai.response.model", t.response_model)
    _put(a, "http.request.method", method)
    _put(a, "url.path", path)
    _put(a, "http.response.status_code", t.status)
    if t.key is not None:
        _put(a, "fastgw.key", t.key)
    if t.served:
        _put(a, "fastgw.model", t.served)
    if t.provider:
        _put(a, "fastgw.provider", t.provider)
    if t.variant is not None:
        _put(a, "fastgw.variant", t.variant)
    if t.cache is not None:
        _put(a, "fastgw.cache", t.cache)
    _put(a, "fastgw.attempts", len(t.attempts))
    _put(a, "fastgw.stream", t.stream)
    if t.error is not None:
        _put(a, "error.type", str(t.status) if t.status >= 400 else "error")
        span.status.code = _ERROR
    data: bytes = span.SerializeToString()
    return data


def _attempt_const(t: Trace, attempt: AttemptSpan, i: int, mode: int) -> bytes:
    """An attempt span's constant part; ``mode`` 0: the attempt that answered (the
    last one, not failed itself), 1: an attempt that failed, 2: neither."""
    operation = _OPERATION.get(t.endpoint, t.endpoint)
    system = _SYSTEM.get(attempt.kind, "_OTHER")
    span = Span()
    span.name = f"{operation} {attempt.model}"
    span.kind = _CLIENT
    a = span.attributes
    _put(a, "gen_ai.operation.name", operation)
    _put(a, "gen_ai.system", system)
    _put(a, "gen_ai.provider.name", system)
    _put(a, "gen_ai.request.model", attempt.model)
    _put(a, "fastgw.provider", attempt.provider)
    _put(a, "fastgw.model", attempt.route)
    _put(a, "fastgw.attempt", i + 1)
    if mode == 0:
        _put(a, "gen_ai.response.model", attempt.model)
        if t.status:
            _put(a, "http.response.status_code", attempt.status or t.status)
        if t.error is not None:
            span.status.code = _ERROR
    elif mode == 1:
        error = attempt.error
        assert error is not None
        if attempt.status:
            _put(a, "http.response.status_code", attempt.status)
        _put(a, "error.type", error)
        span.status.code = _ERROR
        span.status.message = f"attempt failed: {error}"
    data: bytes = span.SerializeToString()
    return data
