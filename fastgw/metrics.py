"""Every Prometheus metric of the gateway, declared once.

With ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before
this module is imported, so prometheus-client keeps values in shared files and
``/metrics`` on any worker aggregates all of them (:func:`render`).

The request path never touches prometheus-client: :class:`Recorder` adds to
plain accumulators, found with one dict lookup per finished request, and
pushes them into the labelled children once a second (label sets are
bounded: models, providers and statuses come from the configuration; per-key
labels are opt-in and capped).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections import deque
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST as CONTENT_TYPE,
)
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
    multiprocess,
)

from fastgw._native import Tally

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0)
_OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                     0.1)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                 2.5)

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
CACHE = Counter("fastgw_cache_total", "Requests of cached models, by the cache's verdict "
                "(hit, miss, bypass).", ["result"])
CACHE_SAVED = Counter("fastgw_cache_saved_usd_total", "Cost of the answers served from the "
                      "cache instead of upstream, by model.", ["model"])
GUARDRAIL = Counter("fastgw_guardrail_total", "What models' guardrails did (redact, deny; a "
                    "webhook's allow, or error when it could not be consulted).",
                    ["model", "guardrail", "action"])
FALLBACKS = Counter("fastgw_fallbacks_total", "Fallbacks from one model to another.",
                    ["from", "to"])
VARIANTS = Counter("fastgw_variant_requests_total", "Requests per variant of a model.",
                   ["model", "variant"])
CASCADE = Counter("fastgw_cascade_total", "Requests to a cascade model, by the step used "
                  "(its model); an escalation counts the next step too.", ["model", "step"])
SHADOW = Counter("fastgw_shadow_total", "Requests mirrored to a model's shadow, by result "
                 "(ok, error, skipped: past max_inflight).", ["model", "result"])
FEEDBACK = Counter("fastgw_feedback_total", "Scores given with POST /v1/feedback, by model "
                   "asked, the variant that answered and the score's name.",
                   ["model", "variant", "name"])
FEEDBACK_VALUE = Summary("fastgw_feedback_value", "The scores' values: _sum over "
                         "fastgw_feedback_total is the mean score.", ["model", "variant", "name"])
VARIANT_DURATION = Histogram("fastgw_variant_request_duration_seconds", "Time from request "
                             "received to response finished, per variant of a model (answers "
                             "and 5xx; 4xx left out).",
                             ["model", "variant"], buckets=_LATENCY_BUCKETS)
VARIANT_ERRORS = Counter("fastgw_variant_errors_total", "Requests of a variant answered with "
                         "a 5xx status (upstream or gateway failures).", ["model", "variant"])
TARGET_HEALTHY = Gauge("fastgw_target_healthy", "1 when a target is taking traffic.",
                       ["provider", "model"], multiprocess_mode="livemax")
REDIS_FALLBACKS = Counter("fastgw_redis_fallbacks_total", "Decisions made without Redis "
                          "(unreachable or slow): limits by redis.on_error mode, and cache "
                          "lookups and writes (mode cache).", ["mode"])
KEY_REQUESTS = Counter("fastgw_key_requests_total", "Requests answered, by API key or token "
                       "subject (only with observability.key_labels; capped).", ["key"])
KEY_TOKENS = Counter("fastgw_key_tokens_total", "Tokens counted from upstream usage, by key "
                     "(only with observability.key_labels; capped).", ["key", "direction"])
BUDGET_USD = Gauge("fastgw_budget_usd", "A USD budget's amount per period, by limit scope and "
                   "bucket (local limits backend; read when scraped).", ["scope", "bucket"],
                   multiprocess_mode="mostrecent")
BUDGET_REMAINING_USD = Gauge("fastgw_budget_remaining_usd", "What is left of a USD budget in "
                             "its current period (local limits backend; read when scraped).",
                             ["scope", "bucket"], multiprocess_mode="mostrecent")
TTFT = Histogram("fastgw_ttft_seconds", "Streams: time from request received to the first "
                 "content sent to the client, by the model that served.", ["model"],
                 buckets=_LATENCY_BUCKETS)
TPOT = Histogram("fastgw_tpot_seconds", "Streams: time per output token after the first, by "
                 "the model that served.", ["model"], buckets=_TPOT_BUCKETS)
TRACE_SPANS = Counter("fastgw_trace_spans_exported_total", "Spans the OTLP collector "
                      "accepted.")
TRACE_DROPPED = Counter("fastgw_trace_spans_dropped_total", "Spans not exported: queue_full "
                        "(the collector is behind), unreachable, timeout, rejected (an error "
                        "status).", ["reason"])
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


RECENT_ERRORS = 100  # failed requests the admin API can show

# (unix time, request id, status, model asked, provider, key name, message)
RecentError = tuple[float, str, int, str, str, str | None, str | None]


def families() -> list[Any]:
    """The metric families as ``/metrics`` shows them (all workers aggregated)."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return list(registry.collect())
    from prometheus_client import REGISTRY

    return list(REGISTRY.collect())


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

    def add(self, counts: list[int], total: float) -> None:
        """Observations counted elsewhere (a Tally), bucket by bucket."""
        mine = self.counts
        for i, n in enumerate(counts):
            if n:
                mine[i] += n
        self.total += total

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


class _Sum:
    """An amount added to one counter child until flushed."""

    __slots__ = ("child", "value")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.value = 0.0

    def flush(self) -> None:
        if self.value:
            self.child.inc(self.value)
            self.value = 0.0


class _Fanout(_Sum):
    """An amount added once on the request path and pushed into two counter children
    when flushed (a model's count and its key's): per-key figures cost the request
    path nothing more than the model's."""

    __slots__ = ("other",)

    def __init__(self, child: Any, other: Any) -> None:
        super().__init__(child)
        self.other = other

    def flush(self) -> None:
        if self.value:
            self.child.inc(self.value)
            self.other.inc(self.value)
            self.value = 0.0


Accumulator = _Sum  # what batched() gives: add to ``value``

# Counters added to off the Recorder (by filters, with labels fixed at load):
# plain accumulators too, pushed by every Recorder's flush.
_SHARED_SUMS: dict[tuple[Any, tuple[str, ...]], _Sum] = {}


def batched(metric: Any, *labels: str) -> _Sum:
    """An accumulator of ``metric{labels}`` for the request path: add to ``value``;
    prometheus-client sees it at the next flush (once a second)."""
    key = (metric, labels)
    acc = _SHARED_SUMS.get(key)
    if acc is None:
        acc = _SHARED_SUMS[key] = _Sum(metric.labels(*labels))
    return acc


_SHARED_HISTS: dict[tuple[Any, tuple[str, ...]], _Hist] = {}


def batched_hist(metric: Any, *labels: str) -> _Hist:
    """:func:`batched` for a histogram: ``observe`` on the request path."""
    key = (metric, labels)
    acc = _SHARED_HISTS.get(key)
    if acc is None:
        acc = _SHARED_HISTS[key] = _Hist(metric.labels(*labels))
    return acc


class _Finished:
    """Where one kind of finished request is counted: a native tally of every number
    it adds (one call per request), drained at each flush into the accumulators of
    the metrics it touches."""

    __slots__ = ("cost", "duration", "overhead", "requests", "tally", "tokens_in",
                 "tokens_out", "tpot", "ttfb", "ttft")

    def __init__(self, rec: Recorder, model: str, provider: str, status: int, route: str,
                 key: str) -> None:
        self.duration = rec.hist(DURATION, (model,))
        self.ttfb = rec.hist(UPSTREAM_TTFB, (provider,))
        self.ttft = rec.hist(TTFT, (route,))  # streams: by the model that served
        self.tpot = rec.hist(TPOT, (route,))
        self.overhead = rec.hist(OVERHEAD, ())
        self.cost = rec.sum(COST, (route, key))
        if key:  # per-key labels: the same sums also feed the key's counters
            self.requests: _Sum = rec.fanout(REQUESTS, (model, provider, str(status)),
                                             KEY_REQUESTS, (key,))
            self.tokens_in: _Sum = rec.fanout(TOKENS, (route, "input"), KEY_TOKENS,
                                              (key, "input"))
            self.tokens_out: _Sum = rec.fanout(TOKENS, (route, "output"), KEY_TOKENS,
                                               (key, "output"))
        else:
            self.requests = rec.sum(REQUESTS, (model, provider, str(status)))
            self.tokens_in = rec.sum(TOKENS, (route, "input"))
            self.tokens_out = rec.sum(TOKENS, (route, "output"))
        self.tally = Tally([h.bounds for h in (self.duration, self.ttfb, self.ttft,
                                               self.tpot, self.overhead)])

    def drain(self) -> None:
        """What the tally counted since the last drain, into the accumulators."""
        requests, tokens_in, tokens_out, cost, hists = self.tally.take()
        if requests:
            self.requests.value += requests
        if tokens_in:
            self.tokens_in.value += tokens_in
        if tokens_out:
            self.tokens_out.value += tokens_out
        if cost:
            self.cost.value += cost
        for acc, taken in zip((self.duration, self.ttfb, self.ttft, self.tpot, self.overhead),
                              hists, strict=True):
            if taken is not None:
                acc.add(*taken)


class Recorder:
    """Records finished requests into the metrics without touching prometheus-client
    on the request path: plain sums and bucket counts here, pushed into the
    prometheus metrics by :meth:`flush` (every second, and before each scrape)."""

    __slots__ = ("_finished", "_hists", "_inflight_seen", "_keys", "_max_keys",
                 "_sums", "errors", "inflight", "key_labels")

    def __init__(self, key_labels: bool = False, max_key_labels: int = 100,
                 recent_errors: int = RECENT_ERRORS) -> None:
        self.key_labels = key_labels
        # The latest failed requests (status >= 400), newest last: appended by the
        # log phase of a failure only, read by the admin API. Bounded.
        self.errors: deque[RecentError] = deque(maxlen=recent_errors)
        self._max_keys = max_key_labels
        self._keys: set[str] = set()
        # (metric, label values) -> accumulator; label sets are bounded (see above)
        self._sums: dict[tuple[Any, tuple[str, ...]], _Sum] = {}
        self._hists: dict[tuple[Any, tuple[str, ...]], _Hist] = {}
        self._finished: dict[tuple[str, str, int, str, str | None], _Finished] = {}
        self.inflight = 0  # requests being answered now (a gauge, set on flush)
        self._inflight_seen = -1

    def hist(self, metric: Any, labels: tuple[str, ...]) -> _Hist:
        h = self._hists.get((metric, labels))
        if h is None:
            h = self._hists[(metric, labels)] = _Hist(metric.labels(*labels) if labels
                                                      else metric)
        return h

    def sum(self, metric: Any, labels: tuple[str, ...]) -> _Sum:
        c = self._sums.get((metric, labels))
        if c is None:
            c = self._sums[(metric, labels)] = _Sum(metric.labels(*labels))
        return c

    def fanout(self, metric: Any, labels: tuple[str, ...], other: Any,
               other_labels: tuple[str, ...]) -> _Sum:
        """An accumulator of ``metric{labels}`` that also adds to ``other{other_labels}``."""
        key = (metric, (*labels, "\0", *other_labels))
        c = self._sums.get(key)
        if c is None:
            c = self._sums[key] = _Fanout(metric.labels(*labels),
                                          other.labels(*other_labels))
        return c

    def finished(self, model: str, provider: str, status: int, route: str, key: str | None,
                 duration: float, ttfb: float, overhead: float, prompt: int, completion: int,
                 cost: float, ttft: float = -1.0, tpot: float = -1.0) -> None:
        """One finished request: ``model`` as asked, ``route`` the model that served
        (for tokens and cost), ``ttfb`` < 0 when no upstream answered, ``overhead``
        0 when unknown; a stream's time to first token and time per output token
        after the first (< 0: not a stream, or unknown)."""
        f = self._finished.get((model, provider, status, route, key))
        if f is None:
            if len(self._finished) > 10_000:  # bounded: what they counted is kept
                for done in self._finished.values():
                    done.drain()
                self._finished.clear()
            f = self._finished[(model, provider, status, route, key)] = _Finished(
                self, model, provider, status, route, self.key_label(key))
        f.tally.record(duration, ttfb, overhead, prompt, completion, cost, ttft, tpot)

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

    @staticmethod
    def upstream_error(provider: str, reason: str) -> None:
        UPSTREAM_ERRORS.labels(provider, reason).inc()

    def flush(self) -> None:
        """Push everything recorded since the last flush into prometheus-client."""
        for f in self._finished.values():
            f.drain()
        for c in self._sums.values():
            c.flush()
        for c in _SHARED_SUMS.values():
            c.flush()
        for h in _SHARED_HISTS.values():
            h.flush()
        for h in self._hists.values():
            h.flush()
        if self.inflight != self._inflight_seen:
            self._inflight_seen = self.inflight
            INFLIGHT.set(self.inflight)
