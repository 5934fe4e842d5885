"""Retries and fallbacks: the task path's loop over models and their targets.

::

    forward        the model, then its fallbacks (context_fallbacks on a
                   context_length_exceeded), until one answers
    try_model      up to retry.attempts tries over the model's healthy targets, in
                   the balancer's order (pick), within the retry budget, with backoff
                   and Retry-After; the first maybe begun already by the direct path
    run_attempt    the provider's quota, then one exchange (pipeline/exchange.py)

Each try is an :class:`~fastgw.pipeline.ctx.Attempt`; a failure judged here
counts against its target's health (only upstream faults do).
"""

from __future__ import annotations

import asyncio
import math
import random

from fastgw.config import RetryConfig
from fastgw.errors import (
    BadRequest,
    ContextLengthExceeded,
    GatewayError,
    NoHealthyTarget,
    RateLimited,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from fastgw.metrics import FALLBACKS, Recorder
from fastgw.pipeline.attempt import Attempt, pick, serving
from fastgw.pipeline.controls import Controls, apply_order, hash_key
from fastgw.pipeline.ctx import RequestCtx
from fastgw.pipeline.exchange import Forwarder
from fastgw.pipeline.snapshot import ModelRoute, TargetRuntime
from fastgw.routing.balancer import TargetState, usable
from fastgw.routing.quota import QuotaExceeded

_DEFAULT_COMPLETION_TOKENS = 256  # quota estimate when the request sets no max_tokens


class Failover:
    __slots__ = ("forwarder", "loop", "recorder", "rng")

    def __init__(self, loop: asyncio.AbstractEventLoop, recorder: Recorder,
                 forwarder: Forwarder) -> None:
        self.loop = loop
        self.recorder = recorder
        self.forwarder = forwarder
        self.rng = random.Random()

    async def forward(self, ctx: RequestCtx, controls: Controls,
                      begun: Attempt | None = None) -> None:
        """Try the model, then its fallbacks, until one answers (the model's first
        attempt maybe ``begun`` already)."""
        route = ctx.route
        assert route is not None
        models = route.fallback_routes or ctx.snapshot.models  # a variant's: its copies
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
                await self.try_model(ctx, model, controls, begun if i == 0 else None)
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
            except BadRequest as exc:
                # This model cannot serve the endpoint at all: a fallback may.
                if i + 1 == len(chain) or exc.code != "unsupported_endpoint":
                    raise
                last = exc
            i += 1
        assert last is not None
        raise last

    def order(self, ctx: RequestCtx, route: ModelRoute, controls: Controls) -> list[int]:
        """The model's targets in the order to try them (the balancer decides)."""
        assert route.balancer is not None
        order = apply_order(route.balancer.order(hash_key(ctx, route.cfg.hash_key)), route,
                            controls)
        return serving(order, route, ctx.endpoint) if ctx.endpoint in route.partial else order

    async def try_model(self, ctx: RequestCtx, route: ModelRoute, controls: Controls,
                        begun: Attempt | None = None) -> None:
        """Up to ``retry.attempts`` tries over the model's healthy targets; the first
        maybe ``begun`` already (on the direct path)."""
        loop = self.loop
        order = ctx.order
        if order is not None:
            ctx.order = None  # the direct path's (the first model's), used once
        else:
            order = self.order(ctx, route, controls)
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
        resumed = begun
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
                    idx = resumed.idx  # its target was taken already
                else:
                    picked = pick(live, states, tried, loop.time())
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
                        begun, resumed = resumed, None
                        await self.resume(begun)
                    else:
                        await self.run_attempt(ctx, route, idx)
                except UpstreamError as exc:
                    # Typed and expected: its traceback would only keep these frames
                    # (and through their locals, itself) alive until a GC pass.
                    exc.__traceback__ = None
                    self.judge(target, exc)
                    if ctx.trace is not None:
                        _trace_failure(ctx, exc)
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

    def _backoff(self, retry: RetryConfig, n: int, last: UpstreamError | None) -> float:
        base = min(retry.backoff_ms * 2.0 ** max(0, n - 1), retry.max_backoff_ms) / 1000.0
        delay = base * (0.5 + 0.5 * self.rng.random())
        if isinstance(last, UpstreamStatusError) and last.retry_after is not None:
            delay = max(delay, min(last.retry_after, retry.max_backoff_ms / 1000.0))
        return delay

    def judge(self, target: TargetRuntime, exc: UpstreamError) -> None:
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

    async def run_attempt(self, ctx: RequestCtx, route: ModelRoute, idx: int) -> None:
        """One upstream request: the provider's quota, then one exchange."""
        provider = route.targets[idx].provider
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
        try:
            attempt = Attempt(ctx, route, idx, quota, estimate)
        except BaseException:
            if quota is not None:
                quota.release()
            raise
        try:
            if ctx.stream:
                await self.forwarder.stream(attempt)
            else:
                await self.forwarder.whole(attempt)
        finally:
            attempt.end()

    async def resume(self, attempt: Attempt) -> None:
        """The rest of an attempt the direct path began: its connection failed (and
        may be recovered), a stream's head is an error status, or the attempt
        failed for good (``conn`` None: its error is final)."""
        try:
            if attempt.conn is None:
                error, attempt.error = attempt.error, None  # raised once, held by nobody
                assert isinstance(error, UpstreamError)
                raise error
            if attempt.ctx.stream:
                await self.forwarder.stream(attempt, resumed=True)
            else:
                await self.forwarder.whole(attempt, resumed=True)
        finally:
            attempt.end()


def _trace_failure(ctx: RequestCtx, exc: UpstreamError) -> None:
    """The failed attempt's span says how it failed."""
    attempt = ctx.attempt
    span = attempt.span if attempt is not None else None
    if span is not None and span.error is None:
        span.error = exc.reason
        if isinstance(exc, UpstreamStatusError):
            span.status = exc.upstream_status


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
