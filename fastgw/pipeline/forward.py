"""One attempt: send the request to one target and answer the client from it.

An attempt either answers the client (whole response, or a stream past its
commit point) or raises without having sent anything, so the runner may try
another target. Upstream error statuses come back as
:class:`~fastgw.errors.UpstreamStatusError`; the runner decides what the
client finally sees.
"""

from __future__ import annotations

import asyncio
import re
from time import perf_counter

from fastgw.errors import (
    ContextLengthExceeded,
    StreamFailedBeforeCommit,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from fastgw.metrics import Recorder
from fastgw.pipeline import headers as hdr
from fastgw.pipeline.ctx import Begun, RequestCtx
from fastgw.pipeline.snapshot import TargetRuntime
from fastgw.providers import openai
from fastgw.streaming.relay import StreamRelay, error_message
from fastgw.upstream.client import exchange, recover, start_pooled
from fastgw.upstream.connection import UpstreamConnection

_JSON = b"application/json"
_SSE = b"text/event-stream"
_STREAM_HEADERS = b"cache-control: no-cache\r\nx-accel-buffering: no\r\n"
_CONTEXT_CODE = re.compile(rb'"code"\s*:\s*"context_length_exceeded"')


class Forwarder:
    __slots__ = ("loop", "recorder")

    def __init__(self, loop: asyncio.AbstractEventLoop, recorder: Recorder) -> None:
        self.loop = loop
        self.recorder = recorder

    # -- whole answers ----------------------------------------------------------------

    async def whole(self, ctx: RequestCtx, target: TargetRuntime, request: bytes,
                    begun: Begun | None = None) -> None:
        """One whole (non-streaming) exchange; with ``begun``, the rest of one begun
        without a task whose connection failed (a stale pooled one is retried)."""
        provider = target.provider
        pool = provider.pool
        sent = perf_counter() if begun is None else begun.sent
        try:
            if begun is not None:
                failed, begun.conn = begun.conn, None
                error, begun.error = begun.error, None
                assert failed is not None and error is not None
                conn = await recover(pool, failed, error, request, provider.timeouts,
                                     whole=True)
            else:
                started = start_pooled(pool, request, provider.timeouts, whole=True)
                if started is None:
                    conn = await exchange(pool, request, provider.timeouts, whole=True)
                else:
                    conn, fut = started
                    if fut is not None:
                        try:
                            await fut
                        except BaseException as exc:
                            conn = await recover(pool, conn, exc, request, provider.timeouts,
                                                 whole=True)
        except UpstreamError:
            ctx.upstream_s += perf_counter() - sent
            raise
        self.answer_whole(ctx, target, conn, sent)

    def answer_whole(self, ctx: RequestCtx, target: TargetRuntime, conn: UpstreamConnection,
                     sent: float) -> None:
        """A complete upstream response: release the connection, then answer the client
        from it, or raise its error status."""
        ctx.upstream_s += perf_counter() - sent
        ttfb = conn.head_at - sent
        ctx.ttfb_s = ttfb
        target.state.observe_ttfb(ttfb)
        status = conn.status
        body = conn.body()
        up_headers = conn.headers
        target.provider.pool.release(conn, reuse=True)
        if status >= 300:
            raise self.status_error(target, status, body, up_headers)
        usage = openai.extract_usage(body)
        if usage is not None:
            ctx.prompt_tokens, ctx.completion_tokens = usage
            ctx.usage_known = True
        ctx.status = status
        ctx.cycle.send(status, self.response_head(ctx, target, up_headers, _JSON), body)

    # -- streams ------------------------------------------------------------------------

    async def stream(self, ctx: RequestCtx, target: TargetRuntime, request: bytes,
                     begun: Begun | None = None) -> None:
        """One streamed exchange; with ``begun``, the rest of one begun without a task
        whose connection failed before its head (a stale pooled one is retried) or
        whose head is an error status."""
        provider = target.provider
        pool = provider.pool
        sent = perf_counter() if begun is None else begun.sent
        try:
            if begun is None:
                conn = await exchange(pool, request, provider.timeouts, whole=False)
            else:
                failed, begun.conn = begun.conn, None
                error, begun.error = begun.error, None
                assert failed is not None
                conn = failed if error is None else await recover(
                    pool, failed, error, request, provider.timeouts, whole=False)
        except UpstreamError:
            ctx.upstream_s += perf_counter() - sent
            raise
        self.head_in(ctx, target, conn, sent)
        if conn.status >= 300:
            try:
                await conn.wait_done()
            except BaseException:
                pool.release(conn, reuse=False)
                raise
            body = conn.body()
            pool.release(conn, reuse=True)
            raise self.status_error(target, conn.status, body, conn.headers)
        pipe = Pipe(self, ctx, target, conn)
        reuse = False
        try:
            try:
                await conn.wait_done()
            except UpstreamError as exc:
                reuse = pipe.end(exc)
            else:
                reuse = pipe.end(None)
        except asyncio.CancelledError:
            if pipe.drains():
                try:
                    await conn.wait_done()
                except (UpstreamError, asyncio.CancelledError):
                    pass
            raise
        finally:
            pipe.close(reuse)
        ctx.cycle.end()

    def head_in(self, ctx: RequestCtx, target: TargetRuntime, conn: UpstreamConnection,
                sent: float) -> None:
        """A stream's head arrived: its time to first byte."""
        ttfb = conn.head_at - sent
        ctx.ttfb_s = ttfb
        ctx.upstream_s += ttfb
        target.state.observe_ttfb(ttfb)

    # -- shared -------------------------------------------------------------------------

    def status_error(self, target: TargetRuntime, status: int, body: bytes,
                     up_headers: list[tuple[bytes, bytes]]) -> UpstreamStatusError:
        provider = target.provider
        for secret in provider.secrets:
            body = body.replace(secret, b"[redacted]")
        message = _upstream_message(body)
        text = f"upstream {provider.name!r} answered {status}" + (f": {message}"
                                                                   if message else "")
        passed = [(n, v) for n, v in up_headers if n in (b"retry-after", b"retry-after-ms")]
        retry_after = _retry_after(up_headers)
        if status == 400 and _CONTEXT_CODE.search(body):
            return ContextLengthExceeded(text, upstream_status=status, body=body,
                                         headers=passed, retry_after=retry_after)
        return UpstreamStatusError(text, upstream_status=status, body=body, headers=passed,
                                   retry_after=retry_after)

    def response_head(self, ctx: RequestCtx, target: TargetRuntime,
                      up_headers: list[tuple[bytes, bytes]], ctype: bytes) -> bytes:
        overhead = max(0.0, perf_counter() - ctx.t0 - ctx.upstream_s)
        ctx.overhead_s = overhead
        return (b"content-type: " + ctype + b"\r\nx-request-id: " + ctx.request_id + b"\r\n"
                + target.response_headers
                + b"x-fastgw-attempts: %d\r\nx-fastgw-overhead-ms: %.3f\r\n"
                % (ctx.attempts, overhead * 1000.0)
                + ctx.extra_headers + hdr.response_headers(up_headers))


class Pipe:
    """One upstream stream with a 2xx head, relayed to the client.

    Made when the head is in: it sends the client's head (unless a failover
    resumes a stream whose head went out), feeds the relay from the
    connection, ties the client's write flow control to the connection's
    reading and watches for the first content (``first_byte_s`` from the
    request, on the connection's timer). When the exchange has ended,
    :meth:`end` says what became of it, then :meth:`close` releases
    everything. Used the same way by a task (awaiting the connection) and by
    the direct path (its callbacks).
    """

    __slots__ = ("conn", "ctx", "failure", "flow", "forwarder", "lost", "provider", "relay")

    def __init__(self, forwarder: Forwarder, ctx: RequestCtx, target: TargetRuntime,
                 conn: UpstreamConnection) -> None:
        provider = target.provider
        cycle = ctx.cycle
        resumed = cycle.started  # a failover before the commit point
        if not resumed:
            ctx.status = conn.status
            cycle.start(conn.status,
                        forwarder.response_head(ctx, target, conn.headers,
                                                hdr.content_type(conn.headers, _SSE))
                        + _STREAM_HEADERS)
        self.forwarder = forwarder
        self.ctx = ctx
        self.conn = conn
        self.provider = provider
        self.lost = False
        self.failure: list[UpstreamError] = []
        relay = self.relay = StreamRelay(cycle, drop_usage=not ctx.client_usage,
                                         resumed=resumed, on_error=self._on_error,
                                         on_commit=conn.sink_per_read)
        flow = self.flow = cycle.flow
        flow.listener = (conn.pause_reading, conn.resume_reading)
        if flow.write_paused:
            conn.pause_reading()
        conn.watch_content(self._no_content)
        conn.set_sink(relay.feed, each_chunk=True)

    def _on_error(self) -> None:
        """An error event before any content: fail this attempt (it may fail over)."""
        payload = self.relay.error_payload
        assert payload is not None
        self.failure.append(StreamFailedBeforeCommit(
            f"upstream {self.provider.name!r} sent an error before any content: "
            f"{error_message(payload)}", sent=True))
        self.conn.abort()

    def _no_content(self) -> None:
        """first_byte_s passed and the stream has not reached its first content."""
        if self.relay.committed or self.conn.closed:
            return
        self.failure.append(UpstreamTimeout(
            f"upstream {self.provider.name!r} sent no content within first_byte_s "
            f"({self.provider.timeouts.first_byte_s:g} s)", sent=True))
        self.conn.abort()

    def end(self, error: UpstreamError | None) -> bool:
        """The exchange ended, cleanly (``error`` None) or not. A failure before the
        commit point is raised: nothing of it reached the client, the caller may
        fail over. Past it, the stream ends with a typed error event. True when
        the connection may be reused."""
        relay = self.relay
        failure = self.failure
        if not relay.committed:
            if failure:
                raise failure[0] from None
            if error is not None:
                raise error from None
        if error is None:
            relay.finish()
            return True
        if not self.lost:
            ctx = self.ctx
            self.forwarder.recorder.upstream_error(self.provider.name, error.reason)
            ctx.status = error.status
            ctx.error = error.message
            relay.fail(error)
        return False

    def drains(self) -> bool:
        """The client left. When the model says ``drain_for_usage`` and the stream
        is past its commit point, keep reading the upstream (bounded by its
        timeouts) only to count its tokens: True. Else False."""
        ctx = self.ctx
        conn = self.conn
        if ctx.route is None or ctx.route.cfg.on_disconnect != "drain_for_usage" \
                or not self.relay.committed or conn.closed:
            return False
        self.lost = True
        self.relay.discard()
        conn.resume_reading()
        return True

    def close(self, reuse: bool) -> None:
        """Release the connection and the callbacks; read the usage."""
        self.conn.watch_content(None)
        relay = self.relay
        relay.release()
        self.failure.clear()
        self.flow.listener = None
        self.provider.pool.release(self.conn, reuse=reuse)
        usage = relay.usage  # read natively once
        if usage is not None:
            ctx = self.ctx
            ctx.prompt_tokens, ctx.completion_tokens = usage
            ctx.usage_known = True


def _retry_after(headers: list[tuple[bytes, bytes]]) -> float | None:
    for name, value in headers:
        if name == b"retry-after-ms":
            try:
                return float(value) / 1000.0
            except ValueError:
                continue
        if name == b"retry-after":
            try:
                return float(value)
            except ValueError:
                continue  # an HTTP date: not worth parsing for a retry decision
    return None


def _upstream_message(body: bytes) -> str:
    """The error message inside an upstream error body, if it has one (short)."""
    import orjson

    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip()
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])[:500]
    if isinstance(err, str):
        return err[:500]
    return ""
