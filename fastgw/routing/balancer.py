"""Balancers: the order in which a model's targets are tried.

Each balancer is built once per routing snapshot from the targets' weights and
answers ``order(key)``: every target index, best first, the rest as fallbacks.
Health filtering happens after (in :func:`usable`), so a strategy never needs
to know about ejection. Live figures (in-flight count, EWMA of time to first
byte) sit in one :class:`TargetState` per target, updated by the pipeline.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import count

from fastgw._native import HashRing
from fastgw.routing.health import Health

EWMA_ALPHA = 0.3  # weight of the newest time-to-first-byte sample


class TargetState:
    """Live figures of one target, shared by every request of a snapshot."""

    # The latest ``not_before`` set on any target: once past it, no target is
    # cooling down and the filter can skip that check.
    cooling_until = 0.0

    __slots__ = ("ewma_ttfb", "health", "inflight", "name", "not_before", "samples", "weight")

    def __init__(self, name: str, weight: float, health: Health) -> None:
        self.name = name
        self.weight = weight
        self.health = health
        self.inflight = 0
        self.ewma_ttfb = 0.0
        self.samples = 0
        self.not_before = 0.0  # loop time before which it asked not to be called (429)

    def observe_ttfb(self, seconds: float) -> None:
        if self.samples == 0:
            self.ewma_ttfb = seconds
        else:
            self.ewma_ttfb += EWMA_ALPHA * (seconds - self.ewma_ttfb)
        self.samples += 1


class Balancer:
    """Base: targets in configuration order."""

    __slots__ = ("n", "states")

    def __init__(self, states: Sequence[TargetState]) -> None:
        self.states = tuple(states)
        self.n = len(self.states)

    def order(self, key: str | bytes | None) -> list[int]:
        return list(range(self.n))


class RoundRobin(Balancer):
    __slots__ = ("_counter",)

    def __init__(self, states: Sequence[TargetState]) -> None:
        super().__init__(states)
        self._counter = count()

    def order(self, key: str | bytes | None) -> list[int]:
        n = self.n
        if n == 1:
            return [0]
        start = next(self._counter) % n
        return [*range(start, n), *range(start)]


class Weighted(Balancer):
    """Smooth weighted round robin (as nginx): exact shares, evenly interleaved."""

    __slots__ = ("_by_weight", "_current", "_total", "_weights")

    def __init__(self, states: Sequence[TargetState]) -> None:
        super().__init__(states)
        self._weights = [s.weight for s in self.states]
        self._total = sum(self._weights)
        self._current = [0.0] * self.n
        self._by_weight = sorted(range(self.n), key=lambda i: -self._weights[i])

    def order(self, key: str | bytes | None) -> list[int]:
        n = self.n
        if n == 1:
            return [0]
        current = self._current
        weights = self._weights
        best = 0
        best_value = -1e300
        for i in range(n):
            v = current[i] + weights[i]
            current[i] = v
            if v > best_value:
                best_value = v
                best = i
        current[best] -= self._total
        return [best, *(i for i in self._by_weight if i != best)]


class LeastInflight(RoundRobin):
    __slots__ = ()

    def order(self, key: str | bytes | None) -> list[int]:
        if self.n == 1:
            return [0]
        idx = super().order(key)  # rotated, so ties are spread evenly
        states = self.states
        # Fewest in flight relative to weight first.
        idx.sort(key=lambda i: states[i].inflight / states[i].weight)
        return idx


class Latency(Balancer):
    """Power of two choices on the EWMA of time to first byte.

    Targets with no sample yet are tried first, so every target gets measured.
    """

    __slots__ = ("_rng",)

    def __init__(self, states: Sequence[TargetState]) -> None:
        super().__init__(states)
        self._rng = random.Random()
        # (the order of the rest only matters when the first choice fails)

    def order(self, key: str | bytes | None) -> list[int]:
        n = self.n
        if n == 1:
            return [0]
        rnd = self._rng.random
        a = int(rnd() * n)
        b = int(rnd() * (n - 1))
        if b >= a:
            b += 1
        # Unmeasured targets score 0 so they get explored; load breaks near-ties.
        scores = [(s.ewma_ttfb if s.samples else 0.0) * (1.0 + 0.1 * s.inflight / s.weight)
                  for s in self.states]
        first = a if scores[a] <= scores[b] else b
        order = sorted(range(n), key=scores.__getitem__)
        order.remove(first)
        order.insert(0, first)
        return order


class ConsistentHash(Balancer):
    """The native ring with bounded load: a key sticks to its target unless one
    more request would take that target past ``c`` times its fair share of the
    in-flight requests, rounded up (with two targets and one request in flight,
    the key stays)."""

    __slots__ = ("_fallback", "c", "ring")

    def __init__(self, states: Sequence[TargetState], c: float = 1.25) -> None:
        super().__init__(states)
        self.ring = HashRing([(s.name, s.weight) for s in self.states])
        self._fallback = Weighted(states)
        self.c = c

    def order(self, key: str | bytes | None) -> list[int]:
        if key is None:
            return self._fallback.order(None)
        if self.n == 1:
            return [0]
        # The ring's order for the key; bounded load (with requests in flight): the
        # first target not above c x its fair share leads. One native call.
        return self.ring.order(key, self.states, self.c)


def make_balancer(kind: str, states: Sequence[TargetState]) -> Balancer:
    if kind == "round-robin":
        return RoundRobin(states)
    if kind == "weighted":
        return Weighted(states)
    if kind == "least-inflight":
        return LeastInflight(states)
    if kind == "latency":
        return Latency(states)
    if kind == "consistent-hash":
        return ConsistentHash(states)
    raise ValueError(f"unknown balance strategy {kind!r}")


def usable(order: list[int], states: Sequence[TargetState], now: float) -> list[int]:
    """``order`` without ejected targets (a target whose cooldown is over stays in:
    the first request to reach it is its half-open probe) and without targets
    cooling down after a 429, unless only those are left."""
    if not Health.degraded and now >= TargetState.cooling_until:
        return order  # the usual case: everyone is fine
    return [i for i in order if states[i].health.peek(now) and states[i].not_before <= now] \
        or [i for i in order if states[i].health.peek(now)]
