"""Cascades and shadows compiled into the snapshot's routes (after each model's
own filters, pipeline/snapshot.py's ``_features``).

A model with ``shadow`` gets a :class:`~fastgw.pipeline.shadow.ShadowFilter`
last in its chain. A cascade model gets a
:class:`~fastgw.pipeline.cascade.CascadeFilter` last in its chain (its own
request filters, a cache, come first), and each of its steps a route of its
own when the step needs one: the step model's route (same targets, live state,
balancer) with the step's :class:`~fastgw.pipeline.cascade.EscalateFilter` in
front of the model's filters, the cascade's own filters and shadow behind
them, and where an escalation goes. Other
routes are left as they are: a model used as a step costs its own requests
nothing.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from fastgw.pipeline.cascade import CascadeFilter, EscalateFilter, Escalation, Step
from fastgw.pipeline.filters import Filter, compile_chain
from fastgw.pipeline.internal import Internal
from fastgw.pipeline.shadow import ShadowFilter, ShadowState

if TYPE_CHECKING:
    from fastgw.pipeline.snapshot import ModelRoute

_ANSWER_REASONS = frozenset({"length", "content_filter"})


def _filters(route: ModelRoute) -> tuple[Filter, ...]:
    return route.chain.filters if route.chain else ()


def _shadow(route: ModelRoute, internal: Internal) -> ShadowFilter | None:
    cfg = route.cfg.shadow
    if cfg is None:
        return None
    key = f"shadow:{route.name}:{cfg.model}:{cfg.max_inflight}"
    state = internal.shared.get(key)
    if not isinstance(state, ShadowState):
        state = internal.shared[key] = ShadowState()
    return ShadowFilter(route.name, cfg, internal, state)


def orchestrate(models: dict[str, ModelRoute], internal: Internal) -> None:
    """Add the shadows' and cascades' filters (and the steps' routes)."""
    for route in models.values():
        if route.cfg.cascade:
            continue
        shadow = _shadow(route, internal)
        if shadow is not None:
            route.chain = compile_chain((*_filters(route), shadow))
    for route in models.values():
        steps_cfg = route.cfg.cascade
        if not steps_cfg:
            continue
        shadow = _shadow(route, internal)
        # The cascade model's own filters (a cache...) and shadow see the answers
        # of its steps: they ride on the steps' routes.
        own = _filters(route)
        tail: tuple[Filter, ...] = (*own, shadow) if shadow is not None else own
        steps: list[Step] = []
        nxt: ModelRoute | None = None
        for i in range(len(steps_cfg) - 1, -1, -1):
            sc = steps_cfg[i]
            base = models[sc.model]
            reasons = frozenset(sc.escalate_on) if nxt is not None else frozenset()
            escalation = Escalation(route.name, nxt, reasons) if reasons and nxt else None
            front: tuple[Filter, ...] = ()
            if reasons & _ANSWER_REASONS:
                front = (EscalateFilter(reasons & _ANSWER_REASONS),)
            whole = base
            if front or tail or escalation is not None:
                whole = dataclasses.replace(
                    base, chain=compile_chain((*front, *_filters(base), *tail)),
                    escalation=escalation)
            stream = base
            if tail:
                stream = dataclasses.replace(base, chain=compile_chain((*_filters(base), *tail)),
                                             escalation=None)
            steps.append(Step(sc.model, whole, stream, sc.accept_if))
            nxt = whole
        steps.reverse()
        cascade = CascadeFilter(route.name, tuple(steps), internal)
        # Last: its own request filters first (a cache hit needs no step, nor judge).
        route.chain = compile_chain((*own, cascade))
