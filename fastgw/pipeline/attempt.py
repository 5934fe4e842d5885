"""One upstream attempt, shared by the direct path and the task path: which
target (:func:`first`, :func:`pick`), and the :class:`Attempt` itself (what
goes to it, the in-flight count)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, cast

from fastgw._native import render_request
from fastgw.errors import BadRequest
from fastgw.pipeline.ctx import RequestCtx
from fastgw.pipeline.snapshot import ModelRoute, TargetRuntime
from fastgw.providers import openai
from fastgw.routing.balancer import TargetState, usable
from fastgw.routing.health import Health
from fastgw.routing.quota import ProviderQuota
from fastgw.tracing import AttemptSpan, Trace
from fastgw.types import usage_asked
from fastgw.upstream.connection import UpstreamConnection

NOTHING_TRIED: frozenset[int] = frozenset()

_USAGE_ENDPOINTS = frozenset({"chat", "completions"})

if TYPE_CHECKING:
    from fastgw.pipeline.exchange import Pipe


def pick(live: Sequence[int], states: Sequence[TargetState], tried: Collection[int],
         now: float) -> int | None:
    """The next target to try: an untried healthy one not cooling down after a 429
    first, in ``live``'s order (the balancer's), else the best one again."""
    for i in live:
        state = states[i]
        if i not in tried and state.health.peek(now) and state.not_before <= now:
            return i
    for i in live:
        if states[i].health.peek(now):
            return i
    return None


def first(order: list[int], states: Sequence[TargetState], now: float) -> int | None:
    """What :func:`pick` answers for the first try over ``order`` (the balancer's),
    with a shortcut for the usual case: no target anywhere unhealthy or cooling
    down, so the balancer's first choice is it."""
    if not Health.degraded and now >= TargetState.cooling_until:
        return order[0] if order else None
    return pick(usable(order, states, now), states, NOTHING_TRIED, now)


def serving(order: list[int], route: ModelRoute, endpoint: str) -> list[int]:
    """``order`` without the targets that cannot serve ``endpoint`` (an Anthropic
    deployment has no embeddings); 400 when none can. Called only when some
    cannot (``endpoint in route.partial``)."""
    targets = route.targets
    kept = [i for i in order if targets[i].plans[endpoint] is not None]
    if not kept and order:
        raise BadRequest(f"the model {route.name!r} cannot serve this endpoint: its "
                         "deployments speak another API (e.g. Anthropic serves chat "
                         "and messages only)", code="unsupported_endpoint")
    return kept


def _span(trace: Trace, target: TargetRuntime, route: ModelRoute,
          fwd: bytes) -> tuple[AttemptSpan, bytes]:
    """A sampled attempt's span (its parent the request's) and the forwarded header
    block with the ``traceparent`` that makes it the upstream request's parent."""
    provider = target.provider
    span_id = trace.new_id()
    span = AttemptSpan(span_id, provider.name, provider.cfg.kind, target.model, route.name)
    return span, b"traceparent: 00-%032x-%016x-01\r\n%s" % (trace.trace_id, span_id, fwd)


class Attempt:
    """One upstream request to one target, from the pick to its end.

    The one place a target's in-flight count moves: making one renders the
    request and counts it (and the attempt in ``ctx.attempts``), :meth:`end`
    gives it back, once, whatever way the attempt ended (answered, failed, handed from the direct
    path to a task, dropped because the client left). While the exchange runs,
    ``conn`` is its connection; when it fails on the connection, ``error``
    says why and whoever takes over may still recover it; when it failed with
    an answer (an error status), ``conn`` is None and ``error`` is final. A
    stream's ``pipe`` relays it once its head is in. ``trans`` is how the
    request and its answer are translated for this target (None: the client's
    dialect is the target's, bytes pass through).
    """

    __slots__ = ("conn", "ctx", "error", "estimate", "idx", "live", "pipe", "quota", "request",
                 "route", "sent", "span", "target", "trans")

    def __init__(self, ctx: RequestCtx, route: ModelRoute, idx: int,
                 quota: ProviderQuota | None = None, estimate: int = 0) -> None:
        """The attempt goes out: its upstream request rendered (the target's
        constant prefix, the headers, the body for this deployment: the same
        dialect, the client's bytes with the model spliced in, no JSON
        re-encode; else the translated request), then counted on its target
        and on the request. ``quota``: a provider quota slot taken for it
        (``estimate`` tokens booked), given back by :meth:`end`. Raises (a
        request the target's dialect cannot express) before counting anything."""
        target = route.targets[idx]
        plan = target.plans[ctx.endpoint]
        assert plan is not None  # targets that cannot serve it were left out (serving)
        prefix, trans = plan
        chain = route.chain
        trace = ctx.trace
        request = None
        if trans is None and not ctx.stream and (not chain or not chain.upstream_request):
            # The common case in one native call: the client's bytes with the model
            # spliced in, after the request head (None: a spelling it leaves alone).
            if trace is None:
                span = None
                fwd = ctx.fwd
            else:
                span, fwd = _span(trace, target, route, ctx.fwd)
            new = target.model_json
            request = render_request(prefix, ctx.request_id, fwd, ctx.body,
                                     new if ctx.model == target.model
                                     else openai.json_string(ctx.model), new)
            if request is not None:
                ctx.client_usage = True
                self.span: AttemptSpan | None = span
                if trace is not None:
                    trace.attempts.append(cast(AttemptSpan, span))
        if request is None:  # the general way: usage asked, translated, hooks
            if trans is None:
                doc = ctx.parsed_doc  # (None: the body as received, read by the peek)
                body = openai.rewrite_model(ctx.body, doc, ctx.model, target.model)
                ctx.client_usage = True
                if ctx.stream and ctx.endpoint in _USAGE_ENDPOINTS:
                    body, ctx.client_usage = openai.ask_for_usage(body, doc, ctx.peeked_usage)
            else:
                cfg = route.cfg
                body = trans.request(ctx.doc, deployment=target.model, stream=ctx.stream,
                                     default_max_tokens=cfg.default_max_tokens,
                                     drop_unsupported=cfg.drop_unsupported_params)
                ctx.client_usage = ctx.endpoint == "messages" or usage_asked(ctx.doc) is True
            if chain:
                for hook in chain.upstream_request:
                    body = hook(ctx, target, body)
            if trace is None:
                self.span = None
                fwd = ctx.fwd
            else:
                self.span, fwd = _span(trace, target, route, ctx.fwd)
                trace.attempts.append(self.span)
            request = (prefix + b"content-length: %d\r\nx-request-id: %s\r\n"
                       % (len(body), ctx.request_id) + fwd + b"\r\n" + body)
        self.request = request
        self.ctx = ctx
        self.route = route  # the model tried (the asked one, a variant or a fallback)
        self.target = target
        self.idx = idx
        self.trans = trans
        self.conn: UpstreamConnection | None = None
        self.error: BaseException | None = None
        self.pipe: Pipe | None = None
        self.quota = quota
        self.estimate = estimate
        self.sent = 0.0
        ctx.target = target
        ctx.attempt = self
        ctx.attempts += 1
        target.state.inflight += 1
        self.live = True

    def end(self) -> None:
        """The attempt is over (idempotent): its in-flight count and quota slot back."""
        if self.live:
            self.live = False
            self.target.state.inflight -= 1
            span = self.span
            if span is not None:
                span.start = self.sent
                span.end = perf_counter()
        quota = self.quota
        if quota is not None:
            self.quota = None
            quota.release()
            ctx = self.ctx
            if ctx.usage_known:
                quota.settle_tokens(self.estimate, ctx.prompt_tokens + ctx.completion_tokens)
