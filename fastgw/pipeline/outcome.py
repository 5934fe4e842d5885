"""The answer: the one place a request's outcome reaches the client, and its log.

An exchange (``pipeline/exchange.py``) only gets an upstream's answer; what
the client sees is decided here: :meth:`Responder.respond` for a whole 2xx
answer (translated into the client's dialect when the target speaks another,
then the route's ``response`` filters), :meth:`Responder.stream_head` for the
head of a relayed stream, :meth:`Responder.fail_to_proxy` for every error (in
the client's dialect), and :meth:`Responder.logging`, always, at the end.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from time import perf_counter
from typing import Any, cast

import orjson

from fastgw._native import response_block
from fastgw.accesslog import AccessLog
from fastgw.errors import (
    ContextLengthExceeded,
    GatewayError,
    UpstreamStatusError,
)
from fastgw.metrics import Recorder
from fastgw.pipeline import headers as hdr
from fastgw.pipeline.access import Access
from fastgw.pipeline.attempt import Attempt
from fastgw.pipeline.ctx import RequestCtx
from fastgw.pipeline.snapshot import TargetRuntime
from fastgw.providers import openai
from fastgw.providers.base import ANTHROPIC
from fastgw.streaming.relay import scrub
from fastgw.tracing import Report, Trace, Tracer
from fastgw.types import HeaderPairs, cache_counts, usage_numbers
from fastgw.upstream.connection import UpstreamConnection

# A Report from a plain tuple, without the named tuple's Python __new__.
_report = cast("Callable[[type[Report], tuple[Any, ...]], Report]", tuple.__new__)

_JSON = b"application/json"
_CONTEXT_CODE = re.compile(rb'"code"\s*:\s*"context_length_exceeded"')


class Responder:
    __slots__ = ("access", "access_log", "recorder", "tracer")

    def __init__(self, recorder: Recorder, access_log: AccessLog, access: Access,
                 tracer: Tracer | None = None) -> None:
        self.recorder = recorder
        self.access_log = access_log
        self.access = access
        self.tracer = tracer

    # -- whole answers -------------------------------------------------------------------

    def respond(self, ctx: RequestCtx, attempt: Attempt, conn: UpstreamConnection
                ) -> Coroutine[Any, Any, None] | None:
        """A complete upstream answer: answer the client from it, or raise its
        error status; the connection goes back to its pool either way (once the
        answer is on its way: the client's write comes first). When the route has
        awaited response hooks, the answer is sent by the coroutine returned."""
        target = attempt.target
        sent = attempt.sent
        ctx.upstream_s += perf_counter() - sent
        ctx.ttfb_s = conn.head_at - sent
        status = conn.status
        body = conn.body()
        up_headers = conn.headers
        try:
            if status >= 300:
                raise self.status_error(attempt, status, body, up_headers)
            trans = attempt.trans
            route = attempt.route
            if trans is None:
                usage = openai.extract_usage(body)
                if route.usage_detail and usage is not None:
                    cache = ctx.cache_usage = openai.cache_usage(body)
                    if target.dialect == ANTHROPIC:  # its input count leaves the cache out
                        usage = (usage[0] + cache[0] + cache[1], usage[1])
            else:
                body, full = trans.response(body)
                usage = usage_numbers(full)
                if route.usage_detail:
                    ctx.cache_usage = cache_counts(full)
            if usage is not None:
                ctx.prompt_tokens, ctx.completion_tokens = usage
                ctx.usage_known = True
            chain = route.chain
            if chain:
                for hook in chain.response:
                    body = hook(ctx, status, body)
                if chain.response_async:  # (a task: such a route never takes the direct path)
                    return self._respond_later(ctx, target, status, up_headers, body,
                                               chain.response_async)
            ctx.status = status
            # (response_head, inline; the answer rendered whole in one native call)
            overhead = perf_counter() - ctx.t0 - ctx.upstream_s
            ctx.overhead_s = overhead = overhead if overhead > 0.0 else 0.0
            ctx.cycle.send_answer(status, _JSON, ctx.request_id, target.response_headers,
                                  ctx.attempts, overhead, ctx.extra_headers, up_headers,
                                  target.provider.secrets, body)
            return None
        finally:
            target.provider.pool.release(conn, reuse=True)
            target.state.observe_ttfb(ctx.ttfb_s)

    async def _respond_later(self, ctx: RequestCtx, target: TargetRuntime, status: int,
                             up_headers: HeaderPairs, body: bytes,
                             hooks: tuple[Callable[[RequestCtx, int, bytes],
                                                   Awaitable[bytes]], ...]) -> None:
        """The route's awaited response hooks, then the answer."""
        for hook in hooks:
            body = await hook(ctx, status, body)
        ctx.status = status
        ctx.cycle.send(status, self.response_head(ctx, target, up_headers, _JSON), body)

    # -- streams -------------------------------------------------------------------------

    def stream_head(self, ctx: RequestCtx, target: TargetRuntime, conn: UpstreamConnection,
                    ctype: bytes) -> bytes:
        return self.response_head(ctx, target, conn.headers,
                                  hdr.content_type(conn.headers, ctype))

    # -- shared --------------------------------------------------------------------------

    def response_head(self, ctx: RequestCtx, target: TargetRuntime,
                      up_headers: HeaderPairs, ctype: bytes) -> bytes:
        overhead = perf_counter() - ctx.t0 - ctx.upstream_s
        if overhead < 0.0:
            overhead = 0.0
        ctx.overhead_s = overhead
        # (the allow-listed upstream headers last, scrubbed of the provider's secrets:
        # an upstream may echo its credential in a header it sends)
        return response_block(ctype, ctx.request_id, target.response_headers, ctx.attempts,
                              overhead, ctx.extra_headers, up_headers,
                              target.provider.secrets)

    def status_error(self, attempt: Attempt, status: int, body: bytes,
                     up_headers: HeaderPairs) -> UpstreamStatusError:
        """An upstream's error status as the error the runner judges: provider
        secrets scrubbed, the body in the client's dialect."""
        provider = attempt.target.provider
        body = scrub(body, provider.secrets)
        message = _upstream_message(body)
        text = f"upstream {provider.name!r} answered {status}" + (f": {message}"
                                                                   if message else "")
        passed = [(n, v) for n, v in up_headers if n in (b"retry-after", b"retry-after-ms")]
        retry_after = _retry_after(up_headers)
        context = status == 400 and (_CONTEXT_CODE.search(body) is not None
                                     or body.find(b"prompt is too long") >= 0)
        if attempt.trans is not None:
            body = attempt.trans.error(status, body)
        if context:
            return ContextLengthExceeded(text, upstream_status=status, body=body,
                                         headers=passed, retry_after=retry_after)
        return UpstreamStatusError(text, upstream_status=status, body=body, headers=passed,
                                   retry_after=retry_after)

    # -- errors (the one place) ------------------------------------------------------------

    def fail_to_proxy(self, ctx: RequestCtx, exc: GatewayError) -> None:
        """The one place where a failed request becomes the client's answer, in the
        client's dialect."""
        ctx.error = exc.message
        cycle = ctx.cycle
        if cycle.started:
            ctx.status = exc.status
            if not cycle.finished:
                if ctx.stream:
                    # A stream whose head went out (every failover before its first
                    # content failed): end it with a typed SSE error event.
                    cycle.write(ctx.dialect.error_event(exc))
                    cycle.end()
                else:
                    cycle.abort()
            return
        extra = b"x-request-id: " + ctx.request_id + b"\r\n" + ctx.extra_headers
        if ctx.attempts:
            extra += b"x-fastgw-attempts: %d\r\n" % ctx.attempts
            if ctx.target is not None:
                extra += ctx.target.response_headers
        if isinstance(exc, UpstreamStatusError) and 400 <= exc.upstream_status < 500:
            # The upstream's own 4xx (400, 404, 422, and 408/409/429 after retries):
            # its status and body, provider secrets already scrubbed.
            ctx.status = exc.upstream_status
            passed = b"".join(n + b": " + v + b"\r\n" for n, v in exc.headers)
            cycle.send(exc.upstream_status, b"content-type: application/json\r\n" + extra
                       + passed, exc.upstream_body)
            return
        ctx.status = exc.status
        cycle.send_error(exc, extra, ctx.dialect.error_body(exc))

    # -- logging (always runs) -------------------------------------------------------------

    def logging(self, ctx: RequestCtx) -> None:
        now = perf_counter()
        duration = now - ctx.t0
        target = ctx.target
        provider = target.provider.name if target is not None else ""
        route = ctx.route  # the model that served (a fallback or variant maybe)
        asked = ctx.asked
        model = asked.name if asked is not None else "unknown"
        cost = 0.0
        usage = ctx.usage_known and route is not None
        if usage:
            assert route is not None
            cost = (ctx.prompt_tokens * route.input_per_token
                    + ctx.completion_tokens * route.output_per_token)
            cache = ctx.cache_usage
            if cache is not None:  # cache reads and writes at their own prices
                cost += (cache[0] * (route.cached_input_per_token - route.input_per_token)
                         + cache[1] * (route.cache_write_per_token - route.input_per_token))
        ttft = tpot = -1.0
        first = ctx.first_token
        if first and route is not None:  # a stream's first content reached the client
            ttft = first - ctx.t0
            n = ctx.completion_tokens if usage else 0
            if n > 1:
                tpot = (now - first) / (n - 1)
        self.recorder.finished(model, provider, ctx.status, route.name if route else model,
                               ctx.key_name, duration, ctx.ttfb_s, ctx.overhead_s,
                               ctx.prompt_tokens if usage else 0,
                               ctx.completion_tokens if usage else 0, cost, ttft, tpot)
        if ctx.status >= 400:  # failures only: the admin API's ring of recent errors
            self.recorder.errors.append((
                time.time(), ctx.request_id.decode("latin-1"), ctx.status, model, provider,
                ctx.key_name, ctx.error))
        trace = ctx.trace
        if trace is not None:
            ctx.trace = None
            self.trace(ctx, trace, now, usage)
        buffer = self.access_log.buffer  # (None: the log is off)
        if buffer is not None:
            cycle = ctx.cycle
            access = self.access
            # The line rendered straight into the log's buffer; True: the first since
            # the last flush, which the log then schedules.
            if buffer.access(
                    time.time(), ctx.request_id, ctx.key_name,
                    access.client_ip(cycle) if access.trusts_xff else cycle.client_addr[0],
                    cycle.path, ctx.model or None, target.model if target is not None else None,
                    route.name if route is not None else None, ctx.variant, provider or None,
                    ctx.status, ctx.stream, ctx.attempts, duration, ctx.ttfb_s, ctx.overhead_s,
                    (ctx.prompt_tokens, ctx.completion_tokens, cost) if usage else None,
                    ctx.error, None if ctx.cache is None else ctx.cache.result):
                self.access_log.arm()


    def trace(self, ctx: RequestCtx, trace: Trace, now: float, usage: bool) -> None:
        """The request's span: what it reports, then the trace to the exporter."""
        cycle = ctx.cycle
        route = ctx.route
        target = ctx.target
        cache = ctx.cache
        first = ctx.first_token
        # One tuple (a Report, built without its __new__): what the encoder reads.
        trace.report = _report(Report, (
            ctx.t0, now, ctx.status, ctx.error, cycle.method, cycle.path, ctx.endpoint,
            ctx.model, "" if route is None else route.name,
            "" if target is None else target.model,
            "" if target is None else target.provider.name,
            ctx.key_name, None if cache is None else cache.result, ctx.variant,
            ctx.request_id, ctx.stream,
            (ctx.prompt_tokens, ctx.completion_tokens) if usage else None,
            ctx.overhead_s, first - ctx.t0 if first else -1.0,
        ))  # fmt: skip
        assert self.tracer is not None
        self.tracer.submit(trace)


def _retry_after(headers: HeaderPairs) -> float | None:
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
