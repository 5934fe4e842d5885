"""Every Prometheus metric of the gateway, declared once.

With ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before
this module is imported, so prometheus-client keeps values in shared files and
``/metrics`` on any worker aggregates all of them (:func:`render`).

The request path never builds label tuples twice: :class:`Recorder` caches the
labelled children it has seen (label sets are bounded: models, providers and
statuses come from the configuration; per-key labels are opt-in and capped).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST as CONTENT_TYPE,
)
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0)
_OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                     0.1)

REQUESTS = Counter("fastgw_requests_total", "Requests answered, by model asked, provider and "
                   "status.", ["model", "provider", "status"])
DURATION = Histogram("fastgw_request_duration_seconds", "Time from request received to "
                     "response finished.", ["model"], buckets=_LATENCY_BUCKETS)
UPSTREAM_TTFB = Histogram("fastgw_upstream_ttfb_seconds", "Time from request sent upstream "
                          "to the response head.", ["provider"], buckets=_LATENCY_BUCKETS)
OVERHEAD = Histogram("fastgw_overhead_seconds", "Time spent in the gateway, upstream time "
                     "excluded.", buckets=_OVERHEAD_BUCKETS)
TOKENS = Counter("fastgw_tokens_total", "Tokens counted from upstream usage.",
                 ["model", "direction"])
COST = Counter("fastgw_cost_usd_total", "Cost in USD from the price table.", ["model", "key"])
RATELIMITED = Counter("fastgw_ratelimited_total", "Requests refused by a limit.", ["scope"])
UPSTREAM_ERRORS = Counter("fastgw_upstream_errors_total", "Failed upstream attempts.",
                          ["provider", "reason"])
INFLIGHT = Gauge("fastgw_inflight_requests", "Requests being answered now.",
                 multiprocess_mode="livesum")
CACHE = Counter("fastgw_cache_total", "Cache lookups.", ["result"])
FALLBACKS = Counter("fastgw_fallbacks_total", "Fallbacks from one model to another.",
                    ["from", "to"])
VARIANTS = Counter("fastgw_variant_requests_total", "Requests per variant of a model.",
                   ["model", "variant"])
TARGET_HEALTHY = Gauge("fastgw_target_healthy", "1 when a target is taking traffic.",
                       ["provider", "model"], multiprocess_mode="livemax")
REDIS_FALLBACKS = Counter("fastgw_redis_fallbacks_total", "Limit decisions made without Redis "
                          "(unreachable), by redis.on_error mode.", ["mode"])
JWKS_FETCHES = Counter("fastgw_jwks_fetches_total", "JWKS fetches from the identity provider.",
                       ["result"])


def render() -> tuple[bytes, bytes]:
    """(content type, body) of the metrics page, aggregated over workers."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return CONTENT_TYPE.encode(), generate_latest(registry)
    from prometheus_client import REGISTRY

    return CONTENT_TYPE.encode(), generate_latest(REGISTRY)


class _Hist:
    """Observations of one histogram child, counted per bucket until flushed."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: list[float] = list(child._upper_bounds)  # internals of the child
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # prometheus-client counts each observation in the first bucket whose upper
        # bound holds it (buckets are made cumulative when exposed): the same here.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        buckets = self.child._buckets  # one inc per bucket, not per request
        counts = self.counts
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
                counts[i] = 0
        if self.total:
            self.child._sum.inc(self.total)
            self.total = 0.0


class Recorder:
    """Records finished requests into the metrics without touching prometheus-client
    on the request path: plain counters and bucket counts here, pushed into the
    prometheus metrics by :meth:`flush` (every second, and before each scrape)."""

    __slots__ = ("_counts", "_hists", "_inflight_seen", "_keys", "_max_keys", "inflight",
                 "key_labels")

    def __init__(self, key_labels: bool = False, max_key_labels: int = 100) -> None:
        self.key_labels = key_labels
        self._max_keys = max_key_labels
        self._keys: set[str] = set()
        # (metric, label values) -> pending amount / histogram accumulator
        self._counts: dict[tuple[Any, tuple[str, ...]], float] = {}
        self._hists: dict[tuple[Any, tuple[str, ...]], _Hist] = {}
        self.inflight = 0  # requests being answered now (a gauge, set on flush)
        self._inflight_seen = -1

    def _hist(self, metric: Any, labels: tuple[str, ...]) -> _Hist:
        h = self._hists.get((metric, labels))
        if h is None:
            h = self._hists[(metric, labels)] = _Hist(metric.labels(*labels) if labels
                                                      else metric)
        return h

    def request(self, model: str, provider: str, status: int, duration: float) -> None:
        counts = self._counts
        key = (REQUESTS, (model, provider, str(status)))
        counts[key] = counts.get(key, 0.0) + 1.0
        self._hist(DURATION, (model,)).observe(duration)

    def ttfb(self, provider: str, seconds: float) -> None:
        self._hist(UPSTREAM_TTFB, (provider,)).observe(seconds)

    def overhead(self, seconds: float) -> None:
        self._hist(OVERHEAD, ()).observe(seconds)

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        counts = self._counts
        if prompt:
            key = (TOKENS, (model, "input"))
            counts[key] = counts.get(key, 0.0) + prompt
        if completion:
            key = (TOKENS, (model, "output"))
            counts[key] = counts.get(key, 0.0) + completion

    def key_label(self, key: str | None) -> str:
        """The ``key`` label value: empty unless per-key labels are on; capped."""
        if not self.key_labels or key is None:
            return ""
        keys = self._keys
        if key in keys:
            return key
        if len(keys) < self._max_keys:
            keys.add(key)
            return key
        return "_other"

    def cost(self, model: str, key: str, usd: float) -> None:
        counts = self._counts
        k = (COST, (model, key))
        counts[k] = counts.get(k, 0.0) + usd

    @staticmethod
    def upstream_error(provider: str, reason: str) -> None:
        UPSTREAM_ERRORS.labels(provider, reason).inc()

    def flush(self) -> None:
        """Push everything recorded since the last flush into prometheus-client."""
        counts = self._counts
        if counts:
            self._counts = {}
            for (metric, labels), amount in counts.items():
                metric.labels(*labels).inc(amount)
        for h in self._hists.values():
            h.flush()
        if self.inflight != self._inflight_seen:
            self._inflight_seen = self.inflight
            INFLIGHT.set(self.inflight)
