"""The proxy: the phases of one request, in order, and nowhere else.

::

    request_filter          parse JSON, validate, find the model route
    upstream_peer           choose the target
    upstream_request        render the upstream request bytes
    exchange                send on a pooled connection, wait for the head/answer
    response / relay        whole answer, or a stream relayed chunk by chunk
    fail_to_proxy           any GatewayError -> the OpenAI error answer
    logging                 always: metrics and one access-log line

Phases stop the request by raising a :class:`~fastgw.errors.GatewayError`;
the mapping to HTTP happens once, in :meth:`Proxy.fail_to_proxy`.
"""

from __future__ import annotations

import asyncio
import time
from time import perf_counter
from typing import Any

import orjson

from fastgw.accesslog import AccessLog
from fastgw.errors import (
    BadRequest,
    GatewayError,
    ModelNotFound,
    UpstreamError,
    UpstreamStatusError,
)
from fastgw.metrics import INFLIGHT, Recorder
from fastgw.pipeline import headers as hdr
from fastgw.pipeline.access import Access
from fastgw.pipeline.ctx import RequestCtx
from fastgw.pipeline.snapshot import Snapshot, TargetRuntime
from fastgw.providers import openai
from fastgw.server.protocol import Cycle
from fastgw.streaming.relay import StreamRelay
from fastgw.upstream.client import exchange

_JSON = b"application/json"
_SSE = b"text/event-stream"
_STREAM_HEADERS = b"cache-control: no-cache\r\nx-accel-buffering: no\r\n"
_USAGE_ENDPOINTS = frozenset({"chat", "completions"})


class Proxy:
    __slots__ = ("access", "access_log", "loop", "recorder")

    def __init__(self, loop: asyncio.AbstractEventLoop, recorder: Recorder,
                 access_log: AccessLog, access: Access | None = None) -> None:
        self.loop = loop
        self.recorder = recorder
        self.access_log = access_log
        self.access = access if access is not None else Access()

    async def run(self, cycle: Cycle, snapshot: Snapshot, endpoint: str) -> None:
        fwd, rid = hdr.forwarded(cycle.headers)
        ctx = RequestCtx(cycle, snapshot, endpoint, rid or hdr.new_request_id())
        INFLIGHT.inc()
        access = self.access
        try:
            self.request_filter(ctx)
            await access.authenticate(ctx)
            self.find_route(ctx)
            await access.admit(ctx)
            target = self.upstream_peer(ctx)
            request = self.upstream_request(ctx, target, fwd)
            if ctx.stream:
                await self.relay_stream(ctx, target, request)
            else:
                await self.proxy_whole(ctx, target, request)
        except GatewayError as exc:
            self.fail_to_proxy(ctx, exc)
        except asyncio.CancelledError:
            ctx.status = 499  # the client went away (nginx's convention)
            ctx.error = "client disconnected"
            raise
        finally:
            INFLIGHT.dec()
            access.settle(ctx)
            self.logging(ctx)

    # -- phases -----------------------------------------------------------------------

    def request_filter(self, ctx: RequestCtx) -> None:
        body = ctx.body
        if not body:
            raise BadRequest("the request body is empty; send a JSON object with at least "
                             "'model'")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the request body is not valid JSON ({exc}); send a JSON "
                             "object") from None
        if not isinstance(doc, dict):
            raise BadRequest("the request body must be a JSON object, not "
                             f"{type(doc).__name__}")
        ctx.doc = doc
        model = doc.get("model")
        if model is None:
            raise BadRequest("missing required field 'model'; name one of the models "
                             "GET /v1/models lists", param="model")
        if not isinstance(model, str):
            raise BadRequest("'model' must be a string", param="model")
        ctx.model = model
        stream = doc.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be true or false", param="stream")
        ctx.stream = stream

    def find_route(self, ctx: RequestCtx) -> None:
        model = ctx.model
        route = ctx.snapshot.models.get(model)
        if route is None:
            raise ModelNotFound(f"the model {model!r} does not exist; GET /v1/models lists "
                                "the models you can use", param="model")
        ctx.route = route

    def upstream_peer(self, ctx: RequestCtx) -> TargetRuntime:
        assert ctx.route is not None
        target = ctx.route.targets[0]
        ctx.target = target
        return target

    def upstream_request(self, ctx: RequestCtx, target: TargetRuntime, fwd: bytes) -> bytes:
        body = openai.rewrite_model(ctx.body, ctx.doc, ctx.model, target.model)
        ctx.client_usage = True
        if ctx.stream and ctx.endpoint in _USAGE_ENDPOINTS:
            body, ctx.client_usage = openai.ask_for_usage(body, ctx.doc)
        return (target.prefix(ctx.endpoint) + b"content-length: %d\r\nx-request-id: %s\r\n"
                % (len(body), ctx.request_id) + fwd + b"\r\n" + body)

    async def proxy_whole(self, ctx: RequestCtx, target: TargetRuntime, request: bytes) -> None:
        provider = target.provider
        ctx.attempts += 1
        sent = perf_counter()
        try:
            conn = await exchange(provider.pool, request, provider.timeouts, whole=True)
        except UpstreamError as exc:
            ctx.upstream_s += perf_counter() - sent
            self.recorder.upstream_error(provider.name, exc.reason)
            raise
        ctx.upstream_s += perf_counter() - sent
        ctx.ttfb_s = conn.head_at - sent
        status = conn.status
        body = conn.body()
        up_headers = conn.headers
        provider.pool.release(conn, reuse=True)
        if status >= 300:
            self.upstream_failed(ctx, target, status, body, up_headers)
            return
        usage = openai.extract_usage(body)
        if usage is not None:
            ctx.prompt_tokens, ctx.completion_tokens = usage
            ctx.usage_known = True
        cycle = ctx.cycle
        ctx.status = status
        cycle.send(status, self.response_head(ctx, target, up_headers, _JSON), body)

    async def relay_stream(self, ctx: RequestCtx, target: TargetRuntime, request: bytes) -> None:
        provider = target.provider
        ctx.attempts += 1
        sent = perf_counter()
        try:
            conn = await exchange(provider.pool, request, provider.timeouts, whole=False)
        except UpstreamError as exc:
            ctx.upstream_s += perf_counter() - sent
            self.recorder.upstream_error(provider.name, exc.reason)
            raise
        ctx.ttfb_s = conn.head_at - sent
        ctx.upstream_s += ctx.ttfb_s
        if conn.status >= 300:
            try:
                await conn.wait_done()
            except BaseException:
                provider.pool.release(conn, reuse=False)
                raise
            body = conn.body()
            provider.pool.release(conn, reuse=True)
            self.upstream_failed(ctx, target, conn.status, body, conn.headers)
            return
        cycle = ctx.cycle
        ctx.status = conn.status
        ctype = hdr.content_type(conn.headers, _SSE)
        cycle.start(conn.status,
                    self.response_head(ctx, target, conn.headers, ctype) + _STREAM_HEADERS)
        relay = StreamRelay(cycle, drop_usage=not ctx.client_usage)
        flow = cycle.flow
        flow.listener = (conn.pause_reading, conn.resume_reading)
        if flow.write_paused:
            conn.pause_reading()
        reuse = False
        try:
            conn.set_sink(relay.feed)
            await conn.wait_done()
            relay.flush()
            reuse = True
        except UpstreamError as exc:
            # The head went out already: end the stream with a typed error event.
            self.recorder.upstream_error(provider.name, exc.reason)
            ctx.status = exc.status
            ctx.error = exc.message
            relay.fail(exc)
        finally:
            flow.listener = None
            provider.pool.release(conn, reuse=reuse)
            self.take_usage(ctx, relay.usage)
        cycle.end()

    # -- outcomes ---------------------------------------------------------------------

    def response_head(self, ctx: RequestCtx, target: TargetRuntime,
                      up_headers: list[tuple[bytes, bytes]], ctype: bytes) -> bytes:
        now = perf_counter()
        overhead = max(0.0, now - ctx.t0 - ctx.upstream_s)
        ctx.overhead_s = overhead
        return (b"content-type: " + ctype + b"\r\nx-request-id: " + ctx.request_id + b"\r\n"
                + target.response_headers
                + b"x-fastgw-attempts: %d\r\nx-fastgw-overhead-ms: %.3f\r\n"
                % (ctx.attempts, overhead * 1000.0)
                + ctx.extra_headers + hdr.response_headers(up_headers))

    def upstream_failed(self, ctx: RequestCtx, target: TargetRuntime, status: int, body: bytes,
                        up_headers: list[tuple[bytes, bytes]]) -> None:
        """An upstream error status: 4xx passes through (scrubbed), 5xx becomes 502."""
        provider = target.provider
        for secret in provider.secrets:
            body = body.replace(secret, b"[redacted]")
        if status >= 500 or status in (408, 409, 429) or status < 400:
            self.recorder.upstream_error(provider.name, f"status_{status}")
        if 400 <= status < 500:
            ctx.status = status
            ctype = hdr.content_type(up_headers, _JSON)
            ctx.cycle.send(status, self.response_head(ctx, target, up_headers, ctype), body)
            return
        message = _upstream_message(body)
        raise UpstreamStatusError(
            f"upstream {provider.name!r} answered {status}"
            + (f": {message}" if message else ""), upstream_status=status, body=body)

    def fail_to_proxy(self, ctx: RequestCtx, exc: GatewayError) -> None:
        ctx.status = exc.status
        ctx.error = exc.message
        cycle = ctx.cycle
        if cycle.started:
            if not cycle.finished:
                cycle.abort()
            return
        extra = b"x-request-id: " + ctx.request_id + b"\r\n" + ctx.extra_headers
        if ctx.attempts:
            extra += b"x-fastgw-attempts: %d\r\n" % ctx.attempts
            if ctx.target is not None:
                extra += ctx.target.response_headers
        cycle.send_error(exc, extra)

    def take_usage(self, ctx: RequestCtx, usage: tuple[int, int] | None) -> None:
        if usage is not None:
            ctx.prompt_tokens, ctx.completion_tokens = usage
            ctx.usage_known = True

    # -- logging (always runs) ------------------------------------------------------------

    def logging(self, ctx: RequestCtx) -> None:
        now = perf_counter()
        duration = now - ctx.t0
        target = ctx.target
        provider = target.provider.name if target is not None else ""
        route = ctx.route
        model = route.name if route is not None else "unknown"
        rec = self.recorder
        rec.request(model, provider, ctx.status, duration)
        if ctx.ttfb_s >= 0:
            rec.ttfb(provider, ctx.ttfb_s)
        if ctx.overhead_s:
            rec.overhead(ctx.overhead_s)
        cost = 0.0
        if ctx.usage_known and route is not None:
            rec.tokens(model, ctx.prompt_tokens, ctx.completion_tokens)
            cost = (ctx.prompt_tokens * route.input_per_token
                    + ctx.completion_tokens * route.output_per_token)
            if cost:
                rec.cost(model, ctx.key_name or "", cost)
        if self.access_log.enabled:
            cycle = ctx.cycle
            record: dict[str, Any] = {
                "time": time.time(),
                "request_id": ctx.request_id.decode("latin-1"),
                "key": ctx.key_name,
                "client_ip": cycle.client_addr[0],
                "method": cycle.method.decode("latin-1"),
                "path": cycle.path.decode("latin-1"),
                "model": ctx.model or None,
                "served_model": target.model if target is not None else None,
                "provider": provider or None,
                "status": ctx.status,
                "stream": ctx.stream,
                "attempts": ctx.attempts,
                "latency_ms": round(duration * 1000.0, 3),
                "ttfb_ms": round(ctx.ttfb_s * 1000.0, 3) if ctx.ttfb_s >= 0 else None,
                "overhead_ms": round(ctx.overhead_s * 1000.0, 3),
                "tokens_in": ctx.prompt_tokens if ctx.usage_known else None,
                "tokens_out": ctx.completion_tokens if ctx.usage_known else None,
                "cost_usd": round(cost, 8) if ctx.usage_known else None,
                "cache": None,
            }
            if ctx.error is not None:
                record["error"] = ctx.error
            self.access_log.write(record)


def _upstream_message(body: bytes) -> str:
    """The error message inside an upstream error body, if it has one (short)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:200].decode("utf-8", "replace").strip()
        return text
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])[:500]
    if isinstance(err, str):
        return err[:500]
    return ""
