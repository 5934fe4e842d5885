"""Shadow traffic: a share of a model's requests mirrored to another model.

The mirror starts once the client's answer is complete (the route's ``logging``
hook, then the next turn of the loop), so it can never delay nor change it. It
is the request as sent to the primary (after the route's request filters; its
``model`` set to the shadow's), sent through the gateway's own routing as the
same caller (pipeline/internal.py): latency, tokens and cost are recorded as
for any request, and its access-log line says ``"shadow":true``. Its answer,
whole or streamed, is read and dropped. At most ``max_inflight`` mirrors run
at once; past that a request is not mirrored, and counted as ``skipped``.
``fastgw_shadow_total{model,result}``: ok, error, skipped. A request the
gateway answered itself (refused, or served from its cache) is not mirrored,
nor are internal requests.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from fastgw.config import ShadowConfig
from fastgw.metrics import SHADOW, batched
from fastgw.pipeline.filters import Filter
from fastgw.pipeline.internal import SHADOW as MARK
from fastgw.pipeline.internal import Internal, InternalCycle
from fastgw.providers import openai

if TYPE_CHECKING:
    from fastgw.pipeline.ctx import RequestCtx
    from fastgw.pipeline.snapshot import Snapshot
    from fastgw.providers.dialects import ClientDialect

log = logging.getLogger("fastgw.shadow")

# Client headers a mirror leaves out: its own request id and trace context.
_NOT_MIRRORED = frozenset({b"x-request-id", b"traceparent", b"tracestate"})


class ShadowState:
    """A shadow's in-flight count, shared by every route that mirrors to it for one
    model (and kept across reloads that keep its settings)."""

    __slots__ = ("inflight",)

    def __init__(self) -> None:
        self.inflight = 0


class ShadowFilter(Filter):
    """On a model with ``shadow`` (and on its cascade steps' routes)."""

    def __init__(self, model: str, cfg: ShadowConfig, internal: Internal,
                 state: ShadowState, rng: random.Random | None = None) -> None:
        self.model = model  # the shadowed model (the metric's label)
        self.target = cfg.model
        self.share = cfg.percent / 100.0
        self.max_inflight = cfg.max_inflight
        self.internal = internal
        self.state = state
        self.rng = rng or random.Random()
        self._ok = batched(SHADOW, model, "ok")
        self._error = batched(SHADOW, model, "error")
        self._skipped = batched(SHADOW, model, "skipped")

    def logging(self, ctx: RequestCtx) -> None:
        if not ctx.attempts or type(ctx.cycle) is InternalCycle:
            return
        if self.share < 1.0 and self.rng.random() >= self.share:
            return
        state = self.state
        if state.inflight >= self.max_inflight:
            self._skipped.value += 1
            return
        state.inflight += 1  # booked now: the mirrors started this turn count too
        body = openai.rewrite_model(ctx.body, ctx.doc, ctx.model, self.target)
        headers = [(n, v) for n, v in ctx.cycle.headers if n not in _NOT_MIRRORED]
        asyncio.get_running_loop().call_soon(self._start, ctx, ctx.snapshot, body, headers,
                                             ctx.endpoint, ctx.dialect)

    def _start(self, ctx: RequestCtx, snapshot: Snapshot, body: bytes,
               headers: list[tuple[bytes, bytes]], endpoint: str,
               dialect: ClientDialect) -> None:
        try:
            cycle = self.internal.start(ctx, snapshot, body, MARK, endpoint=endpoint,
                                        dialect=dialect, headers=headers)
        except Exception:
            log.exception("shadow request to %s failed to start", self.target)
            self.state.inflight -= 1
            self._error.value += 1
            return
        cycle.done.add_done_callback(lambda _: self._done(cycle))

    def _done(self, cycle: InternalCycle) -> None:
        self.state.inflight -= 1
        if 200 <= cycle.status < 400:
            self._ok.value += 1
        else:
            self._error.value += 1
