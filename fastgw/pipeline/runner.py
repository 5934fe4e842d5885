"""The proxy: the phases of one request, in order, and the retry/failover loop.

::

    request_filter          parse JSON, validate model and stream
    access.authenticate     who is calling (401/403)
    find_route              the model asked (404), its variant when it has some
    controls                per-request routing controls (body ``fastgw`` / headers)
    access.admit            model allowed? reserve limits (403/429)
    forward                 for each model of the chain (asked, then fallbacks):
      upstream_peer           targets in the balancer's order, healthy ones only
      attempt                 provider quota, then one exchange (pipeline/forward.py)
      retry                   on a retryable failure, within retry.attempts and the
                              retry budget, with backoff; Retry-After is honoured
    fail_to_proxy           any GatewayError -> the client's answer (the one place)
    access.settle           always: correct reservations with real usage
    logging                 always: metrics and one access-log line

Phases stop a request by raising a :class:`~fastgw.errors.GatewayError`.
Nothing is sent to the client before an attempt succeeds (a stream: before its
commit point), so every failure before that can still fail over.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Coroutine
from time import perf_counter
from typing import Any

import orjson

from fastgw._native import access_line
from fastgw.accesslog import AccessLog
from fastgw.config import RetryConfig
from fastgw.errors import (
    BadRequest,
    ContextLengthExceeded,
    GatewayError,
    InternalError,
    ModelNotFound,
    NoHealthyTarget,
    RateLimited,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from fastgw.metrics import FALLBACKS, VARIANTS, Recorder
from fastgw.pipeline import headers as hdr
from fastgw.pipeline.access import Access
from fastgw.pipeline.controls import (
    NO_CONTROLS,
    Controls,
    apply_order,
    choose_variant,
    hash_key,
    read_controls,
)
from fastgw.pipeline.ctx import Begun, RequestCtx
from fastgw.pipeline.forward import Forwarder, Pipe
from fastgw.pipeline.snapshot import ModelRoute, Snapshot, TargetRuntime
from fastgw.providers import openai
from fastgw.routing.balancer import TargetState, usable
from fastgw.routing.health import HEALTHY
from fastgw.routing.quota import QuotaExceeded
from fastgw.server.protocol import Cycle
from fastgw.streaming.sse import error_event

log = logging.getLogger("fastgw.proxy")

_USAGE_ENDPOINTS = frozenset({"chat", "completions"})
_DEFAULT_COMPLETION_TOKENS = 256  # quota estimate when the request sets no max_tokens


class Proxy:
    __slots__ = ("_done", "_head", "_lost", "_rng", "_streamed", "access", "access_log",
                 "forwarder", "loop", "recorder")

    def __init__(self, loop: asyncio.AbstractEventLoop, recorder: Recorder,
                 access_log: AccessLog, access: Access | None = None) -> None:
        self.loop = loop
        self.recorder = recorder
        self.access_log = access_log
        self.access = access if access is not None else Access()
        self.forwarder = Forwarder(loop, recorder)
        self._rng = random.Random()
        self._lost = self._on_lost  # bound once, not per request
        self._done = self._direct_done
        self._head = self._direct_head
        self._streamed = self._direct_streamed

    def run(self, cycle: Cycle, snapshot: Snapshot,
            endpoint: str) -> Coroutine[Any, Any, None] | None:
        """Handle one proxied request. When access control need not wait (no Redis,
        no JWKS to fetch), the phases run at once; an answer (whole or streamed)
        from a pooled connection then needs no task at all: the direct path.
        Otherwise the rest runs in the coroutine returned (the server makes it a
        task)."""
        fwd, rid, has_controls = cycle.forwarded or hdr.forwarded(cycle.headers)
        ctx = RequestCtx(cycle, snapshot, endpoint, rid or hdr.new_request_id())
        self.recorder.inflight += 1
        snapshot.retry_budget.requests += 1
        cycle.owner = ctx
        cycle.on_lost = self._lost
        access = self.access
        try:
            self.request_filter(ctx)
            if access.passthrough:  # open: no credentials, IP rules nor limits
                controls = self.route_phase(ctx, has_controls)
            else:
                if not access.sync or not access.authenticate_now(ctx):
                    return self._proceed(ctx, fwd, has_controls, None, None)
                controls = self.route_phase(ctx, has_controls)
                access.admit_now(ctx)
            begun = None
            if controls is NO_CONTROLS:
                begun = self._direct(ctx, fwd)
                if begun is None:
                    return None  # the upstream's answer completes it (_direct_done)
            return self._proceed(ctx, fwd, has_controls, controls, begun)
        except GatewayError as exc:
            self.fail_to_proxy(ctx, exc)
        except Exception:
            log.exception("unhandled error in the proxy")
            self.fail_to_proxy(ctx, _internal_error())
        self._end(ctx)
        return None

    async def _proceed(self, ctx: RequestCtx, fwd: bytes, has_controls: bool,
                       controls: Controls | None, begun: Begun | None) -> None:
        """The rest of a request, in a task: the access phases when they may wait
        (``controls`` None), then forwarding (resuming ``begun``)."""
        ctx.running = True
        access = self.access
        try:
            if controls is None:
                await access.authenticate(ctx)
                controls = self.route_phase(ctx, has_controls)
                await access.admit(ctx)
            await self.forward(ctx, fwd, controls, begun)
        except GatewayError as exc:
            self.fail_to_proxy(ctx, exc)
            _drop_tracebacks(exc)
        except asyncio.CancelledError:
            ctx.status = 499  # the client went away (nginx's convention)
            ctx.error = "client disconnected"
            raise
        except Exception:
            log.exception("unhandled error in the proxy")
            self.fail_to_proxy(ctx, _internal_error())
        finally:
            self._end(ctx)

    def _end(self, ctx: RequestCtx) -> None:
        """Once per request, however it ended: counters, settlement, log line."""
        cycle = ctx.cycle
        cycle.owner = None  # no reference cycle: the request is freed at once, not by GC
        cycle.on_lost = None
        ctx.begun = None
        ctx.snapshot.retry_budget.requests -= 1
        self.recorder.inflight -= 1
        if ctx.grant is not None:
            self.access.settle(ctx)
        self.logging(ctx)

    def _on_lost(self, cycle: Cycle) -> None:
        """The client left before its answer was complete. A running task handles
        that itself (it is cancelled); otherwise the request ends here: a direct
        exchange is aborted, a task that never started is accounted for."""
        ctx: RequestCtx = cycle.owner
        if ctx.running:
            return
        ctx.running = True  # ends once
        ctx.status = 499
        ctx.error = "client disconnected"
        begun = ctx.begun
        if begun is not None and begun.conn is not None:
            pipe = begun.pipe
            if pipe is not None and pipe.drains():
                return  # read on for the usage; _direct_streamed ends it
            self._abort_direct(ctx, begun)
        self._end(ctx)

    @staticmethod
    def _abort_direct(ctx: RequestCtx, begun: Begun) -> None:
        """Drop a direct exchange still running: its connection closed, never reused."""
        conn, begun.conn = begun.conn, None
        assert conn is not None
        conn.on_done(None)
        target = ctx.target
        assert target is not None
        pipe, begun.pipe = begun.pipe, None
        if pipe is not None:
            pipe.close(reuse=False)
        else:
            target.provider.pool.release(conn, reuse=False)
        target.state.inflight -= 1

    # -- the direct path ----------------------------------------------------------------

    def _direct(self, ctx: RequestCtx, fwd: bytes) -> Begun | None:
        """Begin the first attempt without a task: when the first target in the
        balancer's order is healthy and not cooling down (so it is also the one
        ``try_model`` would pick), has no provider quota and its pool an idle
        connection. None when begun; else what the task must start from."""
        route = ctx.route
        assert route is not None and route.balancer is not None
        now = self.loop.time()
        spec = route.cfg.hash_key
        # The balancer's order (apply_order leaves it as it is without controls).
        begun = Begun(route.balancer.order(None if spec is None else hash_key(ctx, spec)), fwd)
        if not begun.order:
            return begun
        idx = begun.order[0]
        target = route.targets[idx]
        state = target.state
        if state.health.state != HEALTHY or state.not_before > now:
            return begun  # the task picks among the others (try_model)
        provider = target.provider
        if provider.quota is not None:
            return begun
        conn = provider.pool.take_idle()
        if conn is None:
            return begun
        begun.idx = idx
        begun.conn = conn
        ctx.begun = begun
        ctx.target = target
        ctx.attempts += 1
        state.inflight += 1
        request = begun.request = self.upstream_request(ctx, target, fwd)
        begun.sent = perf_counter()
        timeouts = provider.timeouts
        if ctx.stream:
            conn.send(request, timeouts.first_byte_s, timeouts.idle_s, timeouts.total_s,
                      self._head, ctx, True)
        else:
            conn.send(request, timeouts.first_byte_s, timeouts.idle_s, timeouts.total_s,
                      self._done, ctx)
        return None

    def _handover(self, ctx: RequestCtx, begun: Begun) -> None:
        """The direct exchange cannot finish the request alone: a task takes over
        (recovers a stale connection, reads an error status, retries and falls
        back as usual). Not "running" until it starts: a client leaving before
        that is handled by _on_lost (the task is then never run)."""
        ctx.cycle.run_task(self._proceed(ctx, begun.fwd, False, NO_CONTROLS, begun))

    def _direct_head(self, ctx: RequestCtx) -> None:
        """A direct stream's head is in (or its exchange failed first): relay it
        from here on, or hand it to a task."""
        begun = ctx.begun
        target = ctx.target
        assert begun is not None and target is not None
        conn = begun.conn
        if conn is None:
            return  # the client left first (_on_lost)
        if conn.error is not None or conn.status >= 300:
            begun.error = conn.error
            self._handover(ctx, begun)
            return
        try:
            self.forwarder.head_in(ctx, target, conn, begun.sent)
            begun.pipe = Pipe(self.forwarder, ctx, target, conn)
        except Exception:
            log.exception("unhandled error in the proxy")
            self._abort_direct(ctx, begun)
            self.fail_to_proxy(ctx, _internal_error())
            ctx.running = True
            self._end(ctx)
            return
        conn.on_done(self._streamed, ctx)

    def _direct_streamed(self, ctx: RequestCtx) -> None:
        """A direct stream's exchange ended: end the stream, or (a failure before its
        commit point) hand the failover to a task."""
        begun = ctx.begun
        target = ctx.target
        assert begun is not None and target is not None
        conn, pipe = begun.conn, begun.pipe
        if conn is None or pipe is None:
            return  # the client left first (_on_lost)
        begun.conn = begun.pipe = None
        reuse = False
        state = target.state
        state.inflight -= 1
        try:
            try:
                reuse = pipe.end(conn.error)
            finally:
                pipe.close(reuse)
        except UpstreamError as exc:
            begun.error = exc  # final: the task judges it and tries the next target
            self._handover(ctx, begun)
            return
        except Exception:
            log.exception("unhandled error in the proxy")
            self.fail_to_proxy(ctx, _internal_error())
        else:
            state.health.success(self.loop.time())
        ctx.cycle.end()
        ctx.running = True
        self._end(ctx)

    def _direct_done(self, ctx: RequestCtx) -> None:
        """The direct exchange ended: answer from it, or hand the failure to a task
        (which recovers a stale connection, retries and falls back as usual)."""
        begun = ctx.begun
        target = ctx.target
        assert begun is not None and target is not None
        conn = begun.conn
        if conn is None:
            return  # the client left first (_on_lost)
        try:
            if conn.error is not None:
                begun.error = conn.error
                self._handover(ctx, begun)
                return
            begun.conn = None
            state = target.state
            state.inflight -= 1
            try:
                self.forwarder.answer_whole(ctx, target, conn, begun.sent)
            except UpstreamError as exc:
                begun.error = exc
                self._handover(ctx, begun)
                return
            state.health.success(self.loop.time())
        except GatewayError as exc:
            self.fail_to_proxy(ctx, exc)
        except Exception:
            log.exception("unhandled error in the proxy")
            self.fail_to_proxy(ctx, _internal_error())
        ctx.running = True
        self._end(ctx)

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

    def route_phase(self, ctx: RequestCtx, has_controls: bool) -> Controls:
        """The model: allowed for the caller (403), known (404), its variant; then the
        request's routing controls."""
        self.access.check_model(ctx)
        self.find_route(ctx)
        return read_controls(ctx) if has_controls or "fastgw" in ctx.doc else NO_CONTROLS

    def find_route(self, ctx: RequestCtx) -> None:
        model = ctx.model
        models = ctx.snapshot.models
        route = models.get(model)
        if route is None:
            raise ModelNotFound(f"the model {model!r} does not exist; GET /v1/models lists "
                                "the models you can use", param="model")
        ctx.asked = route
        if route.variants:
            variant = choose_variant(ctx, route, self._rng.random())
            ctx.variant = variant.name
            ctx.extra_headers += b"x-fastgw-variant: " + variant.name.encode() + b"\r\n"
            VARIANTS.labels(route.name, variant.name).inc()
            route = models[variant.model]
        ctx.route = route

    async def forward(self, ctx: RequestCtx, fwd: bytes, controls: Controls,
                      begun: Begun | None = None) -> None:
        """Try the model, then its fallbacks, until one answers (the model's first
        attempt maybe ``begun`` already)."""
        route = ctx.route
        assert route is not None
        models = ctx.snapshot.models
        chain = [route]
        if controls.allow_fallbacks:
            chain += [models[n] for n in route.cfg.fallbacks]
        chain = [r for r in chain if controls.affordable(r)]
        if not chain:
            raise BadRequest(f"the model {route.name!r} and its fallbacks cost more than "
                             "the request's max_price", param="fastgw.max_price")
        last: GatewayError | None = None
        context_switched = False
        i = 0
        while i < len(chain):
            model = chain[i]
            if i:
                assert ctx.route is not None
                FALLBACKS.labels(ctx.route.name, model.name).inc()
            ctx.route = model
            try:
                await self.try_model(ctx, model, fwd, controls, begun if i == 0 else None)
                return
            except ContextLengthExceeded as exc:
                fallbacks = [models[n] for n in model.cfg.context_fallbacks]
                if context_switched or not fallbacks or not controls.allow_fallbacks:
                    raise
                # Only bigger-context models can help: they replace the rest of the chain.
                context_switched = True
                chain = chain[:i + 1] + [r for r in fallbacks if controls.affordable(r)]
                exc.__traceback__ = None
                last = exc
            except UpstreamStatusError as exc:
                if not exc.retryable:
                    raise
                exc.__traceback__ = None
                last = exc
            except (UpstreamError, NoHealthyTarget) as exc:
                exc.__traceback__ = None
                last = exc
            i += 1
        assert last is not None
        raise last

    def _order(self, ctx: RequestCtx, route: ModelRoute, controls: Controls) -> list[int]:
        """The model's targets in the order to try them (the balancer decides)."""
        assert route.balancer is not None
        return apply_order(route.balancer.order(hash_key(ctx, route.cfg.hash_key)), route,
                           controls)

    async def try_model(self, ctx: RequestCtx, route: ModelRoute, fwd: bytes,
                        controls: Controls, begun: Begun | None = None) -> None:
        """Up to ``retry.attempts`` tries over the model's healthy targets; the first
        maybe ``begun`` already (on the direct path)."""
        loop = self.loop
        order = begun.order if begun is not None else self._order(ctx, route, controls)
        resumed = begun if begun is not None and begun.idx >= 0 else None
        if not order:
            raise NoHealthyTarget(f"no target of model {route.name!r} is allowed by the "
                                  "request's only/ignore controls")
        targets = route.targets
        states = [t.state for t in targets]
        live = usable(order, states, loop.time())
        if not live:
            raise NoHealthyTarget(f"every target of model {route.name!r} is unhealthy "
                                  "or cooling down after a 429; try again shortly")
        retry = route.retry
        budget = ctx.snapshot.retry_budget
        last: UpstreamError | None = None
        tried: set[int] = set()
        for n in range(retry.attempts):
            if n:
                assert last is not None
                if not _retry_allowed(retry.retry_on, last):
                    raise last
                if not budget.try_acquire():
                    ctx.error = "retry budget exhausted"
                    raise last
            booked = n > 0
            try:
                if resumed is not None:
                    idx = resumed.idx  # its target was taken (available()) already
                else:
                    picked = self._next_target(live, states, tried, loop.time())
                    if picked is None:
                        raise last if last is not None else NoHealthyTarget(
                            f"every target of model {route.name!r} is unhealthy")
                    idx = picked
                    if idx in tried:
                        # Same target again: back off (and honour its Retry-After).
                        await asyncio.sleep(self._backoff(retry, len(tried), last))
                tried.add(idx)
                target = targets[idx]
                health = target.state.health
                if resumed is None and not health.available(loop.time()):
                    continue
                try:
                    if resumed is not None:
                        r, resumed = resumed, None
                        await self.resume_attempt(ctx, target, r)
                    else:
                        await self.attempt(ctx, target, fwd)
                except UpstreamError as exc:
                    # Typed and expected: its traceback would only keep these frames
                    # (and through their locals, itself) alive until a GC pass.
                    exc.__traceback__ = None
                    self._judge(target, exc)
                    if isinstance(exc, UpstreamStatusError) and not exc.retryable:
                        raise
                    last = exc
                    continue
                except BaseException:
                    health.release_probe()
                    raise
                health.success(loop.time())
                return
            finally:
                if booked:
                    budget.release()
        if last is None:
            # Every pick was taken meanwhile (another request holds the half-open
            # probe of an ejected target): nothing was tried.
            raise NoHealthyTarget(f"every target of model {route.name!r} is unhealthy; "
                                  "try again shortly")
        raise last

    def _next_target(self, live: list[int], states: list[TargetState], tried: set[int],
                     now: float) -> int | None:
        """The next target to try: an untried healthy one first, else the best again."""
        for i in live:
            if i not in tried and states[i].health.peek(now) and states[i].not_before <= now:
                return i
        for i in live:
            if states[i].health.peek(now):
                return i
        return None

    def _backoff(self, retry: RetryConfig, n: int, last: UpstreamError | None) -> float:
        base = min(retry.backoff_ms * 2.0 ** max(0, n - 1), retry.max_backoff_ms) / 1000.0
        delay = base * (0.5 + 0.5 * self._rng.random())
        if isinstance(last, UpstreamStatusError) and last.retry_after is not None:
            delay = max(delay, min(last.retry_after, retry.max_backoff_ms / 1000.0))
        return delay

    def _judge(self, target: TargetRuntime, exc: UpstreamError) -> None:
        """Count a failure against the target's health (only upstream faults do)."""
        now = self.loop.time()
        self.recorder.upstream_error(target.provider.name, exc.reason)
        state = target.state
        if isinstance(exc, UpstreamStatusError):
            status = exc.upstream_status
            if status == 429 or (status == 503 and exc.retry_after is not None):
                # Throttled, not broken: keep away until Retry-After, no ejection.
                state.not_before = now + (exc.retry_after or 1.0)
                TargetState.cooling_until = max(TargetState.cooling_until, state.not_before)
                state.health.release_probe()
                return
            if status < 500:
                state.health.success(now)  # it answered; the request was the problem
                return
        state.health.failure(now)

    async def attempt(self, ctx: RequestCtx, target: TargetRuntime, fwd: bytes) -> None:
        """One upstream request: the provider's quota, then one exchange."""
        provider = target.provider
        quota = provider.quota
        estimate = 0
        if quota is not None:
            estimate = _token_estimate(ctx)
            tenant = ctx.key_name or ctx.cycle.client_addr[0]
            try:
                await quota.acquire(tenant, estimate)
            except QuotaExceeded as exc:
                raise RateLimited(
                    f"provider {provider.name!r} is at its configured quota and its queue "
                    + ("is full" if exc.reason == "queue_full" else
                       f"did not free up within {quota.cfg.queue_timeout_s:g} s")
                    + "; retry later", code="provider_quota",
                    headers=[(b"retry-after", b"%d" % max(1, math.ceil(exc.retry_after)))],
                ) from None
        ctx.target = target
        ctx.attempts += 1
        state = target.state
        state.inflight += 1
        request = self.upstream_request(ctx, target, fwd)
        try:
            if ctx.stream:
                await self.forwarder.stream(ctx, target, request)
            else:
                await self.forwarder.whole(ctx, target, request)
        finally:
            state.inflight -= 1
            if quota is not None:
                quota.release()
                if ctx.usage_known:
                    quota.settle_tokens(estimate, ctx.prompt_tokens + ctx.completion_tokens)

    async def resume_attempt(self, ctx: RequestCtx, target: TargetRuntime,
                             begun: Begun) -> None:
        """The rest of an attempt the direct path began: its connection failed (and
        may be recovered), a stream's head is an error status, or the attempt
        failed for good (``conn`` None: its error is final)."""
        error, begun.error = begun.error, None  # raised once, then held by nobody
        if begun.conn is None:
            assert isinstance(error, UpstreamError)
            raise error
        begun.error = error
        try:
            if ctx.stream:
                await self.forwarder.stream(ctx, target, begun.request, begun)
            else:
                await self.forwarder.whole(ctx, target, begun.request, begun)
        finally:
            target.state.inflight -= 1

    def upstream_request(self, ctx: RequestCtx, target: TargetRuntime, fwd: bytes) -> bytes:
        body = openai.rewrite_model(ctx.body, ctx.doc, ctx.model, target.model)
        ctx.client_usage = True
        if ctx.stream and ctx.endpoint in _USAGE_ENDPOINTS:
            body, ctx.client_usage = openai.ask_for_usage(body, ctx.doc)
        return (target.prefix(ctx.endpoint) + b"content-length: %d\r\nx-request-id: %s\r\n"
                % (len(body), ctx.request_id) + fwd + b"\r\n" + body)

    # -- outcome ------------------------------------------------------------------------

    def fail_to_proxy(self, ctx: RequestCtx, exc: GatewayError) -> None:
        """The one place where a failed request becomes the client's answer."""
        ctx.error = exc.message
        cycle = ctx.cycle
        if cycle.started:
            ctx.status = exc.status
            if not cycle.finished:
                if ctx.stream:
                    # A stream whose head went out (every failover before its first
                    # content failed): end it with a typed SSE error event.
                    cycle.write(error_event(exc))
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
        cycle.send_error(exc, extra)

    # -- logging (always runs) ------------------------------------------------------------

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
        self.recorder.finished(model, provider, ctx.status, route.name if route else model,
                               ctx.key_name, duration, ctx.ttfb_s, ctx.overhead_s,
                               ctx.prompt_tokens if usage else 0,
                               ctx.completion_tokens if usage else 0, cost)
        if self.access_log.enabled:
            cycle = ctx.cycle
            self.access_log.write_line(access_line(
                time.time(), ctx.request_id, ctx.key_name, self.access.client_ip(cycle),
                cycle.path, ctx.model or None, target.model if target is not None else None,
                route.name if route is not None else None, ctx.variant, provider or None,
                ctx.status, ctx.stream, ctx.attempts, duration, ctx.ttfb_s, ctx.overhead_s,
                (ctx.prompt_tokens, ctx.completion_tokens, cost) if usage else None, ctx.error))



def _drop_tracebacks(exc: BaseException) -> None:
    """Forget where an answered error (and the errors before it) came from: a
    traceback keeps its frames, whose locals keep the error, a reference cycle
    only the GC would free."""
    e: BaseException | None = exc
    for _ in range(8):
        if e is None:
            return
        e.__traceback__ = None
        e = e.__context__ or e.__cause__


def _retry_allowed(retry_on: tuple[str, ...], exc: UpstreamError) -> bool:
    if isinstance(exc, UpstreamStatusError):
        status = exc.upstream_status
        if status >= 500:
            return "5xx" in retry_on
        return str(status) in retry_on
    if isinstance(exc, UpstreamTimeout):
        return "timeout" in retry_on
    if isinstance(exc, UpstreamConnectError):
        return "connect" in retry_on
    # A broken response or an in-band error before any content: a server fault.
    return "5xx" in retry_on or "connect" in retry_on


def _token_estimate(ctx: RequestCtx) -> int:
    """Tokens a request may use, for quotas: ~4 bytes per prompt token plus the
    completion budget it asks for."""
    doc = ctx.doc
    limit = doc.get("max_completion_tokens", doc.get("max_tokens"))
    completion = limit if isinstance(limit, int) and limit > 0 else _DEFAULT_COMPLETION_TOKENS
    return len(ctx.body) // 4 + completion


def _internal_error() -> InternalError:
    return InternalError("internal error; the request id identifies it in the gateway's logs")
