"""Pure-Python reference of the native ``Tally`` (``rust/src/tally.rs``): one kind of
finished request's numbers between two metric flushes."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from itertools import pairwise

__all__ = ["Tally"]

Taken = tuple[list[int], float]


class _Hist:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, x: float) -> None:
        self.counts[min(bisect_left(self.bounds, x), len(self.counts) - 1)] += 1
        self.sum += x

    def take(self) -> Taken | None:
        if not self.sum and not any(self.counts):
            return None
        out = (self.counts, self.sum)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        return out


class Tally:
    """Requests, tokens, cost, and the buckets of five histograms (duration, ttfb,
    ttft, tpot, overhead), counted until :meth:`take`."""

    def __init__(self, bounds: Sequence[Sequence[float]]) -> None:
        if len(bounds) != 5 or any(not b or any(x >= y for x, y in pairwise(b))
                                   for b in bounds):
            raise ValueError("each histogram needs ascending bucket bounds")
        self.hists = [_Hist(b) for b in bounds]
        self.requests = self.tokens_in = self.tokens_out = self.cost = 0.0

    def record(self, duration: float, ttfb: float, overhead: float, prompt: float,
               completion: float, cost: float, ttft: float = -1.0,
               tpot: float = -1.0) -> None:
        """One finished request: ``ttfb`` < 0 without an upstream answer, ``ttft`` < 0
        unless a stream (``tpot`` then ignored), ``tpot`` < 0 when unknown,
        ``overhead`` 0 when unknown."""
        self.requests += 1.0
        self.hists[0].observe(duration)
        if ttfb >= 0.0:
            self.hists[1].observe(ttfb)
        if ttft >= 0.0:
            self.hists[2].observe(ttft)
            if tpot >= 0.0:
                self.hists[3].observe(tpot)
        if overhead != 0.0:
            self.hists[4].observe(overhead)
        self.tokens_in += prompt
        self.tokens_out += completion
        self.cost += cost

    def take(self) -> tuple[float, float, float, float, tuple[Taken | None, ...]]:
        """Everything since the last take (None for a histogram that saw nothing)."""
        out = (self.requests, self.tokens_in, self.tokens_out, self.cost,
               tuple(h.take() for h in self.hists))
        self.requests = self.tokens_in = self.tokens_out = self.cost = 0.0
        return out
