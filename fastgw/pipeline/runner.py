"""The proxy: the phases of one request, in order, from the parsed request to the
log line. Its parts live beside it, one job each::

    runner.py     this lifecycle, and the direct path (no task)
    attempt.py    the target pick and the upstream request (both paths)
    failover.py   retries and fallbacks (the task path)
    exchange.py   one exchange with an upstream; a stream's Pipe
    outcome.py    the answer, every error answer, the log line
    filters.py    the per-route filter chains
    cascade.py    a cascade's step choice and escalation (the task path's forward)
    internal.py   requests the gateway makes to itself (judges, shadows)

The order of the phases::

    request_filter          parse JSON, validate model and stream
    access.authenticate     who is calling (401/403)
    route_phase             the model asked (404), its variant; per-request controls
    chain.request           the route's request filters (may answer at once)
    access.admit            model allowed? reserve limits (403/429)
    forward                 for each model of the chain (asked, then fallbacks):
      pick                    targets in the balancer's order, healthy ones only
      attempt                 provider quota, then one exchange: the request rendered
                              for the target (chain.upstream_request), translated when
                              the target speaks another dialect
      retry                   on a retryable failure, within retry.attempts and the
                              retry budget, with backoff; Retry-After is honoured
    respond                 the answer in the client's dialect (chain.response); a
                            stream relayed as it arrives (chain.chunk)
    fail_to_proxy           any GatewayError -> the client's answer (the one place)
    access.settle           always: correct reservations with real usage
    logging                 always: metrics, chain.logging, one access-log line

When access control need not wait and the route's filters need not either, a
request whose first target has an idle pooled connection takes the *direct
path*: the phases run as the request arrives and the answer is sent from the
upstream connection's callbacks, with no task at all. Anything the direct
exchange cannot finish alone (a stale connection, an error status, a failure
before a stream's first content) hands the begun attempt to a task.

Phases stop a request by raising a :class:`~fastgw.errors.GatewayError`.
Nothing is sent to the client before an attempt succeeds (a stream: before its
commit point), so every failure before that can still fail over.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Coroutine
from time import perf_counter
from typing import Any

import orjson

from fastgw._native import peek_request
from fastgw.accesslog import AccessLog
from fastgw.errors import BadRequest, GatewayError, InternalError, ModelNotFound, UpstreamError
from fastgw.metrics import Recorder
from fastgw.pipeline import cascade
from fastgw.pipeline import headers as hdr
from fastgw.pipeline.access import Access
from fastgw.pipeline.attempt import Attempt, first, serving
from fastgw.pipeline.cache import abandon
from fastgw.pipeline.controls import (
    NO_CONTROLS,
    Controls,
    choose_variant,
    hash_key,
    read_controls,
)
from fastgw.pipeline.ctx import RequestCtx
from fastgw.pipeline.exchange import Forwarder, Pipe
from fastgw.pipeline.failover import Failover
from fastgw.pipeline.filters import Chain, Later, Reply
from fastgw.pipeline.outcome import Responder
from fastgw.pipeline.snapshot import Snapshot
from fastgw.providers.dialects import ClientDialect
from fastgw.routing.balancer import TargetState
from fastgw.routing.health import HEALTHY, Health
from fastgw.server.protocol import Cycle
from fastgw.tracing import Tracer

log = logging.getLogger("fastgw.proxy")

# How far the phases got before a task took over (see _proceed).
_START = 0  # only request_filter ran
_ROUTED = 1  # authenticated and routed: the route's request filters and admit remain
_ADMITTED = 2  # only forwarding remains


class Proxy:
    __slots__ = ("_done", "_head", "_lost", "_streamed", "access", "access_log", "failover",
                 "forwarder", "loop", "recorder", "responder", "tracer")

    def __init__(self, loop: asyncio.AbstractEventLoop, recorder: Recorder,
                 access_log: AccessLog, access: Access | None = None,
                 tracer: Tracer | None = None) -> None:
        self.loop = loop
        self.recorder = recorder
        self.access_log = access_log
        self.access = access if access is not None else Access()
        self.tracer = tracer  # None: no traces (the client's traceparent passes through)
        self.responder = Responder(recorder, access_log, self.access, tracer)
        self.forwarder = Forwarder(loop, recorder, self.responder)
        self.failover = Failover(loop, recorder, self.forwarder)
        self._lost = self._on_lost  # bound once, not per request
        self._done = self._direct_done
        self._head = self._direct_head
        self._streamed = self._direct_streamed

    def set_access(self, access: Access) -> None:
        """A reload's access control (the responder logs its client addresses)."""
        self.access = access
        self.responder.access = access

    def run(self, cycle: Cycle, snapshot: Snapshot, endpoint: str,
            dialect: ClientDialect) -> Coroutine[Any, Any, None] | None:
        """Handle one proxied request. When access control and the route's filters
        need not wait (no Redis, no JWKS to fetch), the phases run at once; an
        answer (whole or streamed) from a pooled connection then needs no task at
        all: the direct path. Otherwise the rest runs in the coroutine returned
        (the server makes it a task)."""
        forwarded = cycle.forwarded
        if forwarded is None:  # (a request llhttp read: access control reads it too)
            forwarded = cycle.forwarded = hdr.forwarded(cycle.headers)
        fwd, rid, has_controls, _ = forwarded
        ctx = RequestCtx(cycle, snapshot, endpoint, rid or hdr.new_request_id(), fwd, dialect)
        tracer = self.tracer
        if tracer is not None:
            trace, incoming = tracer.start(cycle.headers, fwd)
            if trace is not None:
                ctx.trace = trace
                if incoming is not None:  # upstream gets the gateway's span as parent
                    ctx.fwd = fwd.replace(b"traceparent: " + incoming + b"\r\n", b"")
        self.recorder.inflight += 1
        snapshot.retry_budget.requests += 1
        cycle.owner = ctx
        cycle.on_lost = self._lost
        access = self.access
        try:
            self.request_filter(ctx)
            if not access.passthrough and (not access.sync or not access.authenticate_now(ctx)):
                return self._proceed(ctx, has_controls, None, None, _START)
            controls = self.route_phase(ctx, has_controls)
            assert ctx.route is not None
            chain = ctx.route.chain
            reply = None
            if chain:
                if chain.awaits:
                    return self._proceed(ctx, has_controls, controls, None, _ROUTED)
                # The request hooks in order, until one answers or must wait.
                i = 0
                for hook in chain.request:
                    said = hook(ctx)
                    if said is None:
                        i += 1
                        continue
                    if type(said) is Later:  # a hook must wait after all: a task
                        return self._proceed(ctx, has_controls, controls, None, _ROUTED,
                                             (i, said))
                    reply = said
                    break
            if not access.passthrough:  # open: no credentials, IP rules nor limits
                access.admit_now(ctx)  # a filter's answer counts as a request too
            if reply is not None:
                self._answer(ctx, reply)
                self._end(ctx)
                return None
            if controls is NO_CONTROLS and self._direct(ctx):
                return None  # the upstream's answer completes it (_direct_done)
            return self._proceed(ctx, has_controls, controls, None, _ADMITTED)
        except GatewayError as exc:
            self.responder.fail_to_proxy(ctx, exc)
        except Exception:
            log.exception("unhandled error in the proxy")
            self.responder.fail_to_proxy(ctx, _internal_error())
        self._end(ctx)
        return None

    async def _proceed(self, ctx: RequestCtx, has_controls: bool, controls: Controls | None,
                       begun: Attempt | None, stage: int,
                       pending: tuple[int, Later] | None = None) -> None:
        """The rest of a request, in a task, from ``stage`` on: the access phases and
        the route's request filters when they may wait (``pending``: the one that
        said so on the way, and where it stands in the chain), then forwarding
        (resuming ``begun``)."""
        ctx.running = True
        access = self.access
        try:
            if stage == _START:
                await access.authenticate(ctx)
                controls = self.route_phase(ctx, has_controls)
            if stage < _ADMITTED:
                assert ctx.route is not None
                chain = ctx.route.chain
                reply = await self._request_hooks_async(ctx, chain, pending) if chain else None
                await access.admit(ctx)
                if reply is not None:
                    self._answer(ctx, reply)
                    return
            assert controls is not None
            route = ctx.route
            if route is None or route.escalation is None:
                await self.failover.forward(ctx, controls, begun)
            else:  # a cascade step whose answer may send the request on to the next
                await cascade.forward(self.failover, ctx, controls)
        except GatewayError as exc:
            self.responder.fail_to_proxy(ctx, exc)
            _drop_tracebacks(exc)
        except asyncio.CancelledError:
            ctx.status = 499  # the client went away (nginx's convention)
            ctx.error = "client disconnected"
            raise
        except Exception:
            log.exception("unhandled error in the proxy")
            self.responder.fail_to_proxy(ctx, _internal_error())
        finally:
            self._end(ctx)

    def _end(self, ctx: RequestCtx) -> None:
        """Once per request, however it ended: counters, settlement, log line."""
        cycle = ctx.cycle
        cycle.owner = None  # no reference cycle: the request is freed at once, not by GC
        cycle.on_lost = None
        ctx.attempt = None
        ctx.snapshot.retry_budget.requests -= 1
        self.recorder.inflight -= 1
        if ctx.grant is not None:
            self.access.settle(ctx)
        route = ctx.route
        if route is not None and route.chain:
            for hook in route.chain.logging:
                try:
                    hook(ctx)
                except Exception:
                    log.exception("a logging filter failed")
        cache = ctx.cache
        if cache is not None and cache.write:  # answered by a model without its cache
            abandon(ctx)
        self.responder.logging(ctx)

    def _on_lost(self, cycle: Cycle) -> bool:
        """The client left before its answer was complete. A running task handles
        that itself (it is cancelled); otherwise the request ends here: a direct
        exchange is aborted, a task that never started is accounted for. True (go
        on, its answer written nowhere) when other requests wait for this one's
        answer (the cache's identical misses)."""
        ctx: RequestCtx = cycle.owner
        cache = ctx.cache
        if cache is not None and cache.keeps_going():
            ctx.error = "client disconnected; its answer served requests waiting for it"
            return True
        if ctx.running:
            return False
        ctx.running = True  # ends once
        ctx.status = 499
        ctx.error = "client disconnected"
        attempt = ctx.attempt
        if attempt is not None and attempt.conn is not None:
            pipe = attempt.pipe
            if pipe is not None and pipe.drains():
                return False  # read on for the usage; _direct_streamed ends it
            self._abort_direct(attempt)
        self._end(ctx)
        return False

    # -- the route's request filters ---------------------------------------------------------

    @staticmethod
    async def _request_hooks_async(ctx: RequestCtx, chain: Chain,
                                   pending: tuple[int, Later] | None) -> Reply | None:
        """The route's request hooks in a task, awaiting those that wait; after
        ``pending`` when a hook of the direct way asked for a task."""
        start = 0
        if pending is not None:
            i, later = pending
            reply = await later.wait()
            if reply is not None:
                return reply
            start = i + 1
        for hook in chain.request[start:]:
            reply = hook(ctx)
            if type(reply) is Later:
                reply = await reply.wait()
            elif inspect.isawaitable(reply):
                reply = await reply
            if reply is not None:
                return reply
        return None

    @staticmethod
    def _answer(ctx: RequestCtx, reply: Reply) -> None:
        """A request filter answered: send its reply (nothing goes upstream)."""
        ctx.status = reply.status
        head = b"x-request-id: " + ctx.request_id + b"\r\n" + ctx.extra_headers + reply.headers
        cycle = ctx.cycle
        if reply.stream:
            cycle.start(reply.status, head)
            cycle.write(reply.body)
            cycle.end()
        else:
            cycle.send(reply.status, head, reply.body)

    # -- the direct path ----------------------------------------------------------------

    def _direct(self, ctx: RequestCtx) -> bool:
        """Begin the first attempt without a task: when the target the task path
        would pick first is healthy and not cooling down, has no provider quota
        and its pool an idle connection. False: the task path must (ctx.order,
        the balancer's order, is computed already)."""
        route = ctx.route
        assert route is not None and route.balancer is not None
        now = self.loop.time()
        spec = route.cfg.hash_key
        order = route.balancer.order(None if spec is None else hash_key(ctx, spec))
        if route.partial and ctx.endpoint in route.partial:
            order = serving(order, route, ctx.endpoint)
        ctx.order = order
        states = route.states
        if not Health.degraded and now >= TargetState.cooling_until:
            idx: int | None = order[0] if order else None  # first()'s usual case, inline
        else:
            idx = first(order, states, now)
        if idx is None:
            return False
        state = states[idx]
        if state.health.state != HEALTHY or state.not_before > now:
            return False  # the task picks among the others (try_model)
        provider = route.targets[idx].provider
        if provider.quota is not None:
            return False
        conn = provider.pool.take_idle()
        if conn is None:
            return False
        try:
            attempt = Attempt(ctx, route, idx)
        except BaseException:
            provider.pool.put_back(conn)
            raise
        attempt.conn = conn
        attempt.sent = perf_counter()
        timeouts = provider.timeouts
        if ctx.stream:
            conn.send(attempt.request, timeouts.first_byte_s, timeouts.idle_s, timeouts.total_s,
                      self._head, ctx, True)
        else:
            conn.send(attempt.request, timeouts.first_byte_s, timeouts.idle_s, timeouts.total_s,
                      self._done, ctx)
        return True

    def _handover(self, ctx: RequestCtx, attempt: Attempt) -> None:
        """The direct exchange cannot finish the request alone: a task takes over
        (recovers a stale connection, reads an error status, retries and falls
        back as usual). Not "running" until it starts: a client leaving before
        that is handled by _on_lost (the task is then never run)."""
        ctx.cycle.run_task(self._proceed(ctx, False, NO_CONTROLS, attempt, _ADMITTED))

    @staticmethod
    def _abort_direct(attempt: Attempt) -> None:
        """Drop a direct exchange still running: its connection closed, never reused."""
        conn, attempt.conn = attempt.conn, None
        assert conn is not None
        conn.on_done(None)
        pipe, attempt.pipe = attempt.pipe, None
        if pipe is not None:
            pipe.close(reuse=False)
        else:
            attempt.target.provider.pool.release(conn, reuse=False)
        attempt.end()

    def _direct_head(self, ctx: RequestCtx) -> None:
        """A direct stream's head is in (or its exchange failed first): relay it
        from here on, or hand it to a task."""
        attempt = ctx.attempt
        assert attempt is not None
        conn = attempt.conn
        if conn is None:
            return  # the client left first (_on_lost)
        if conn.error is not None or conn.status >= 300:
            attempt.error = conn.error
            self._handover(ctx, attempt)
            return
        try:
            self.forwarder.head_in(attempt, conn)
            attempt.pipe = Pipe(self.forwarder, attempt, conn)
        except Exception:
            log.exception("unhandled error in the proxy")
            self._abort_direct(attempt)
            self.responder.fail_to_proxy(ctx, _internal_error())
            ctx.running = True
            self._end(ctx)
            return
        conn.on_done(self._streamed, ctx)

    def _direct_streamed(self, ctx: RequestCtx) -> None:
        """A direct stream's exchange ended: end the stream, or (a failure before its
        commit point) hand the failover to a task."""
        attempt = ctx.attempt
        assert attempt is not None
        conn, pipe = attempt.conn, attempt.pipe
        if conn is None or pipe is None:
            return  # the client left first (_on_lost)
        attempt.conn = attempt.pipe = None
        attempt.end()
        reuse = False
        try:
            try:
                reuse = pipe.end(conn.error)
            finally:
                pipe.close(reuse)
        except UpstreamError as exc:
            attempt.error = exc  # final: the task judges it and tries the next target
            self._handover(ctx, attempt)
            return
        except Exception:
            log.exception("unhandled error in the proxy")
            self.responder.fail_to_proxy(ctx, _internal_error())
        else:
            attempt.target.state.health.success(self.loop.time())
        ctx.cycle.end()
        ctx.running = True
        self._end(ctx)

    def _direct_done(self, ctx: RequestCtx) -> None:
        """The direct exchange ended: answer from it, or hand the failure to a task
        (which recovers a stale connection, retries and falls back as usual)."""
        attempt = ctx.attempt
        assert attempt is not None
        conn = attempt.conn
        if conn is None:
            return  # the client left first (_on_lost)
        try:
            if conn.error is not None:
                attempt.error = conn.error
                self._handover(ctx, attempt)
                return
            attempt.conn = None
            attempt.end()
            try:
                self.responder.respond(ctx, attempt, conn)
            except UpstreamError as exc:
                attempt.error = exc
                self._handover(ctx, attempt)
                return
            attempt.target.state.health.success(self.loop.time())
        except GatewayError as exc:
            self.responder.fail_to_proxy(ctx, exc)
        except Exception:
            log.exception("unhandled error in the proxy")
            self.responder.fail_to_proxy(ctx, _internal_error())
        ctx.running = True
        self._end(ctx)

    # -- phases -----------------------------------------------------------------------

    def request_filter(self, ctx: RequestCtx) -> None:
        body = ctx.body
        if not body:
            raise BadRequest("the request body is empty; send a JSON object with at least "
                             "'model'")
        # The usual body read natively without making its dict (made when first asked
        # for: ctx.doc); anything else parsed here, and refused with orjson's words.
        peeked = peek_request(body)
        if peeked is not None:
            (ctx.model, ctx.stream, ctx.body_controls, ctx.peeked_completion,
             ctx.peeked_usage) = peeked
            ctx.parsed_doc = None
            return
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the request body is not valid JSON ({exc}); send a JSON "
                             "object") from None
        if not isinstance(doc, dict):
            raise BadRequest("the request body must be a JSON object, not "
                             f"{type(doc).__name__}")
        ctx.doc = doc
        ctx.body_controls = "fastgw" in doc
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
        return read_controls(ctx) if has_controls or ctx.body_controls else NO_CONTROLS

    def find_route(self, ctx: RequestCtx) -> None:
        model = ctx.model
        models = ctx.snapshot.models
        route = models.get(model)
        if route is None:
            raise ModelNotFound(f"the model {model!r} does not exist; GET /v1/models lists "
                                "the models you can use", param="model")
        ctx.asked = route
        if route.variants:
            variant = choose_variant(ctx, route, self.failover.rng.random())
            ctx.variant = variant.name
            ctx.extra_headers += variant.header
            variant.requests.value += 1.0  # pushed to prometheus-client at the next flush
            route = variant.route or models[variant.model]  # with its feedback filter
        ctx.route = route


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


def _internal_error() -> InternalError:
    return InternalError("internal error; the request id identifies it in the gateway's logs")
