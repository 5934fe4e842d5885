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

    async def stream(self, ctx: RequestCtx, target: TargetRuntime, request: bytes) -> None:
        provider = target.provider
        sent = perf_counter()
        try:
            conn = await exchange(provider.pool, request, provider.timeouts, whole=False)
        except UpstreamError:
            ctx.upstream_s += perf_counter() - sent
            raise
        ttfb = conn.head_at - sent
        ctx.ttfb_s = ttfb
        ctx.upstream_s += ttfb
        target.state.observe_ttfb(ttfb)
        if conn.status >= 300:
            try:
                await conn.wait_done()
            except BaseException:
                provider.pool.release(conn, reuse=False)
                raise
            body = conn.body()
            provider.pool.release(conn, reuse=True)
            raise self.status_error(target, conn.status, body, conn.headers)
        cycle = ctx.cycle
        flow = cycle.flow
        # A failover before the commit point finds the head already sent.
        resumed = cycle.started
        if not resumed:
            ctx.status = conn.status
            cycle.start(conn.status,
                        self.response_head(ctx, target, conn.headers,
                                           hdr.content_type(conn.headers, _SSE))
                        + _STREAM_HEADERS)
        failure: list[UpstreamError] = []

        def on_error() -> None:
            assert relay.error_payload is not None
            failure.append(StreamFailedBeforeCommit(
                f"upstream {provider.name!r} sent an error before any content: "
                f"{error_message(relay.error_payload)}", sent=True))
            conn.abort()

        relay = StreamRelay(cycle, drop_usage=not ctx.client_usage, resumed=resumed,
                            on_error=on_error, on_commit=conn.sink_per_read)
        flow.listener = (conn.pause_reading, conn.resume_reading)
        if flow.write_paused:
            conn.pause_reading()
        timer = self.loop.call_at(self.loop.time() + provider.timeouts.first_byte_s
                                  - (perf_counter() - sent), _no_content, conn, relay, failure,
                                  provider.name, provider.timeouts.first_byte_s)
        reuse = False
        try:
            conn.set_sink(relay.feed, each_chunk=True)
            await conn.wait_done()
            if failure and not relay.committed:
                # The whole (failed) stream had arrived before we looked at it.
                raise failure[0]
            relay.finish()
            reuse = True
        except UpstreamError as exc:
            if not relay.committed:
                # Before the commit point: the runner may fail over (and resume).
                raise (failure[0] if failure else exc) from None
            # Past the commit point: end the stream with a typed error event.
            self.recorder.upstream_error(provider.name, exc.reason)
            ctx.status = exc.status
            ctx.error = exc.message
            relay.fail(exc)
        except asyncio.CancelledError:
            if ctx.route is not None and ctx.route.cfg.on_disconnect == "drain_for_usage" \
                    and relay.committed and not conn.closed:
                await self._drain_for_usage(conn, relay)
            raise
        finally:
            timer.cancel()
            relay.release()
            failure.clear()
            flow.listener = None
            provider.pool.release(conn, reuse=reuse)
            usage = relay.usage  # read natively once
            if usage is not None:
                ctx.prompt_tokens, ctx.completion_tokens = usage
                ctx.usage_known = True
        cycle.end()

    async def _drain_for_usage(self, conn: UpstreamConnection, relay: StreamRelay) -> None:
        """The client left: read the rest upstream (bounded by its timeouts) only to
        count its tokens."""

        relay.discard()
        conn.resume_reading()
        try:
            await conn.wait_done()
        except (UpstreamError, asyncio.CancelledError):
            pass

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


def _no_content(conn: UpstreamConnection, relay: StreamRelay, failure: list[UpstreamError],
                provider: str, first_byte_s: float) -> None:
    """first_byte_s passed and the stream has not reached its first content."""
    if relay.committed or conn.closed:
        return
    failure.append(UpstreamTimeout(
        f"upstream {provider!r} sent no content within first_byte_s ({first_byte_s:g} s)",
        sent=True))
    conn.abort()


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
