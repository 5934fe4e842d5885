"""One exchange: send an attempt's request to its target and get the answer.

An exchange gets the upstream's answer and hands it to the
:class:`~fastgw.pipeline.outcome.Responder` (a whole answer), or to a
:class:`Pipe` that relays a stream as it arrives; it never writes to the
client itself. It either ends with the client answered (a whole response, or
a stream past its commit point) or raises without having sent anything, so
the runner may try another target. Upstream error statuses come back as
:class:`~fastgw.errors.UpstreamStatusError`; the runner decides what the
client finally sees.
"""

from __future__ import annotations

import asyncio
import time
from time import perf_counter

from fastgw._native import SseScanner
from fastgw.errors import StreamFailedBeforeCommit, UpstreamError, UpstreamTimeout
from fastgw.metrics import Recorder
from fastgw.pipeline.attempt import Attempt
from fastgw.pipeline.filters import ChunkSink
from fastgw.pipeline.outcome import Responder
from fastgw.streaming.relay import StreamRelay, error_message, scrub
from fastgw.types import StreamScanner, StreamSink
from fastgw.upstream.client import exchange, recover, start_pooled
from fastgw.upstream.connection import UpstreamConnection

_SSE = b"text/event-stream"
_STREAM_HEADERS = b"cache-control: no-cache\r\nx-accel-buffering: no\r\n"


class Forwarder:
    __slots__ = ("loop", "recorder", "responder")

    def __init__(self, loop: asyncio.AbstractEventLoop, recorder: Recorder,
                 responder: Responder) -> None:
        self.loop = loop
        self.recorder = recorder
        self.responder = responder

    # -- whole answers ----------------------------------------------------------------

    async def whole(self, attempt: Attempt, resumed: bool = False) -> None:
        """One whole (non-streaming) exchange; ``resumed``: the rest of one the
        direct path began, whose connection failed (a stale pooled one is sent
        again)."""
        ctx = attempt.ctx
        provider = attempt.target.provider
        pool = provider.pool
        request = attempt.request
        if not resumed:
            attempt.sent = perf_counter()
        try:
            if resumed:
                failed, attempt.conn = attempt.conn, None
                error, attempt.error = attempt.error, None
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
            ctx.upstream_s += perf_counter() - attempt.sent
            raise
        later = self.responder.respond(ctx, attempt, conn)
        if later is not None:
            await later

    # -- streams ------------------------------------------------------------------------

    async def stream(self, attempt: Attempt, resumed: bool = False) -> None:
        """One streamed exchange; ``resumed``: the rest of one the direct path began,
        whose connection failed before its head (a stale pooled one is sent again)
        or whose head is an error status."""
        ctx = attempt.ctx
        target = attempt.target
        provider = target.provider
        pool = provider.pool
        if not resumed:
            attempt.sent = perf_counter()
        try:
            if not resumed:
                conn = await exchange(pool, attempt.request, provider.timeouts, whole=False)
            else:
                failed, attempt.conn = attempt.conn, None
                error, attempt.error = attempt.error, None
                assert failed is not None
                conn = failed if error is None else await recover(
                    pool, failed, error, attempt.request, provider.timeouts, whole=False)
        except UpstreamError:
            ctx.upstream_s += perf_counter() - attempt.sent
            raise
        self.head_in(attempt, conn)
        if conn.status >= 300:
            try:
                await conn.wait_done()
            except BaseException:
                pool.release(conn, reuse=False)
                raise
            body = conn.body()
            pool.release(conn, reuse=True)
            raise self.responder.status_error(attempt, conn.status, body, conn.headers)
        pipe = Pipe(self, attempt, conn)
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

    def head_in(self, attempt: Attempt, conn: UpstreamConnection) -> None:
        """A stream's head arrived: its time to first byte."""
        ttfb = conn.head_at - attempt.sent
        ctx = attempt.ctx
        ctx.ttfb_s = ttfb
        ctx.upstream_s += ttfb
        attempt.target.state.observe_ttfb(ttfb)


class Pipe:
    """One upstream stream with a 2xx head, relayed to the client.

    Made when the head is in: it sends the client's head (unless a failover
    resumes a stream whose head went out), feeds the relay from the
    connection (the native scanner, or the target's translator into the
    client's dialect), ties the client's write flow control to the
    connection's reading and watches for the first content (``first_byte_s``
    from the request, on the connection's timer). When the exchange has
    ended, :meth:`end` says what became of it, then :meth:`close` releases
    everything. Used the same way by a task (awaiting the connection) and by
    the direct path (its callbacks).
    """

    __slots__ = ("conn", "ctx", "detail", "failure", "flow", "forwarder", "lost", "provider",
                 "relay")

    def __init__(self, forwarder: Forwarder, attempt: Attempt,
                 conn: UpstreamConnection) -> None:
        ctx = attempt.ctx
        target = attempt.target
        cycle = ctx.cycle
        resumed = cycle.started  # a failover before the commit point
        if not resumed:
            ctx.status = conn.status
            cycle.start(conn.status,
                        forwarder.responder.stream_head(ctx, target, conn, _SSE)
                        + _STREAM_HEADERS)
        self.forwarder = forwarder
        self.ctx = ctx
        self.conn = conn
        self.provider = target.provider
        self.lost = False
        self.detail = attempt.route.usage_detail
        self.failure: list[UpstreamError] = []
        trans = attempt.trans
        scanner: StreamScanner = SseScanner(drop_usage=not ctx.client_usage) if trans is None \
            else trans.stream(include_usage=ctx.client_usage, created=int(time.time()))
        sink: StreamSink = cycle
        chain = attempt.route.chain
        if chain and chain.chunk:
            sink = ChunkSink(cycle, ctx, chain.chunk)
        dialect = ctx.dialect
        relay = self.relay = StreamRelay(sink, scanner, resumed=resumed and ctx.opened,
                                         on_error=self._on_error,
                                         error_event=dialect.error_event,
                                         on_commit=conn.sink_per_read,
                                         opening=dialect.opening,
                                         secrets=self.provider.secrets)
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
        payload = scrub(payload, self.provider.secrets)
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
            late = relay.late_error
            if late is not None and not self.lost:
                # The upstream ended the stream with an error event after its first
                # content: the client has it (in-band); the request failed.
                ctx = self.ctx
                self.forwarder.recorder.upstream_error(self.provider.name,
                                                       StreamFailedBeforeCommit.reason)
                ctx.status = StreamFailedBeforeCommit.status
                ctx.error = (f"upstream {self.provider.name!r} sent an error event after "
                             f"the stream started: {error_message(late)}")
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
        if relay.opened:
            self.ctx.opened = True
        if relay.committed_at:
            self.ctx.first_token = relay.committed_at
        relay.release()
        self.failure.clear()
        self.flow.listener = None
        self.provider.pool.release(self.conn, reuse=reuse)
        usage = relay.usage  # read natively once
        if usage is not None:
            ctx = self.ctx
            ctx.prompt_tokens, ctx.completion_tokens = usage
            ctx.usage_known = True
            if self.detail:
                ctx.cache_usage = relay.cache_usage
