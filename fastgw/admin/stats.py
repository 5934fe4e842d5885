"""The dashboard's figures, read from the same metric families ``/metrics`` renders
(so the two always agree), plus rates between two readings."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

from fastgw import metrics

QUANTILES = (0.5, 0.9, 0.99)
RATE_WINDOW_S = 60.0  # requests/s is measured over about this long
_MAX_SAMPLES = 256


def _samples(fams: Iterable[Any]) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in fams:
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, float(s.value)))
    return out


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: ``buckets`` are (upper bound, cumulative
    count), sorted, ending with +Inf. None when there are no observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # past the last finite bucket: its bound, as Prometheus does
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _histograms(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, by: str | None
) -> dict[str, list[tuple[float, float]]]:
    """Cumulative buckets per value of label ``by`` (all summed under "" when None)."""
    acc: dict[str, dict[float, float]] = {}
    for labels, value in samples.get(name + "_bucket", ()):
        group = labels.get(by, "") if by else ""
        le = float(labels["le"])
        per = acc.setdefault(group, {})
        per[le] = per.get(le, 0.0) + value
    return {g: sorted(per.items()) for g, per in acc.items()}


def _percentiles(buckets: list[tuple[float, float]]) -> dict[str, float | None]:
    return {f"p{round(q * 100)}": quantile(q, buckets) for q in QUANTILES}


class StatsReader:
    """Turns metric families into the dashboard's numbers; keeps a few earlier
    totals (one per call, bounded) to compute rates."""

    __slots__ = ("_history",)

    def __init__(self) -> None:
        # (monotonic time, requests, server errors, client errors)
        self._history: deque[tuple[float, float, float, float]] = deque(maxlen=_MAX_SAMPLES)

    def read(self, now: float, fams: Iterable[Any] | None = None) -> dict[str, Any]:
        samples = _samples(metrics.families() if fams is None else fams)
        models: dict[str, dict[str, Any]] = {}

        def model(name: str) -> dict[str, Any]:
            m = models.get(name)
            if m is None:
                m = models[name] = {
                    "requests": 0.0,
                    "errors": 0.0,
                    "client_errors": 0.0,
                    "tokens_in": 0.0,
                    "tokens_out": 0.0,
                    "cost_usd": 0.0,
                }
            return m

        total = server_err = client_err = 0.0
        by_status: dict[str, float] = {}
        for labels, value in samples.get("fastgw_requests_total", ()):
            status = labels["status"]
            m = model(labels["model"])
            m["requests"] += value
            total += value
            by_status[status] = by_status.get(status, 0.0) + value
            code = int(status) if status.isdigit() else 0
            if code >= 500:
                m["errors"] += value
                server_err += value
            elif code >= 400:
                m["client_errors"] += value
                client_err += value
        for labels, value in samples.get("fastgw_tokens_total", ()):
            m = model(labels["model"])
            m["tokens_in" if labels["direction"] == "input" else "tokens_out"] += value
        keys: dict[str, dict[str, float]] = {}

        def key(name: str) -> dict[str, float]:
            k = keys.get(name)
            if k is None:
                k = keys[name] = {
                    "requests": 0.0,
                    "tokens_in": 0.0,
                    "tokens_out": 0.0,
                    "cost_usd": 0.0,
                }
            return k

        for labels, value in samples.get("fastgw_cost_usd_total", ()):
            model(labels["model"])["cost_usd"] += value
            if labels["key"]:
                key(labels["key"])["cost_usd"] += value
        for labels, value in samples.get("fastgw_key_requests_total", ()):
            key(labels["key"])["requests"] += value
        for labels, value in samples.get("fastgw_key_tokens_total", ()):
            key(labels["key"])["tokens_in" if labels["direction"] == "input" else "tokens_out"] += (
                value
            )
        duration = _histograms(samples, "fastgw_request_duration_seconds", "model")
        for name, buckets in duration.items():
            model(name)["latency_s"] = _percentiles(buckets)
        all_duration = _histograms(samples, "fastgw_request_duration_seconds", None)
        ttfb = _histograms(samples, "fastgw_upstream_ttfb_seconds", None)
        overhead = _histograms(samples, "fastgw_overhead_seconds", None)
        inflight = sum(v for _, v in samples.get("fastgw_inflight_requests", ()))
        ratelimited = {
            labels["scope"]: v for labels, v in samples.get("fastgw_ratelimited_total", ())
        }
        upstream_errors = [
            {"provider": labels["provider"], "reason": labels["reason"], "count": v}
            for labels, v in samples.get("fastgw_upstream_errors_total", ())
        ]
        rate = self._rate(now, total, server_err, client_err)
        return {
            "totals": {
                "requests": total,
                "errors": server_err,
                "client_errors": client_err,
                "error_rate": server_err / total if total else 0.0,
                "tokens_in": sum(m["tokens_in"] for m in models.values()),
                "tokens_out": sum(m["tokens_out"] for m in models.values()),
                "cost_usd": sum(m["cost_usd"] for m in models.values()),
                "inflight": inflight,
                "by_status": by_status,
            },
            "rate": rate,
            "latency_s": _percentiles(all_duration.get("", [])),
            "upstream_ttfb_s": _percentiles(ttfb.get("", [])),
            "overhead_s": _percentiles(overhead.get("", [])),
            "models": [{"model": n, **m} for n, m in sorted(models.items())],
            "keys": [{"key": n, **k} for n, k in sorted(keys.items())],
            "ratelimited": ratelimited,
            "upstream_errors": upstream_errors,
        }

    def _rate(
        self, now: float, total: float, server_err: float, client_err: float
    ) -> dict[str, float | None]:
        """Per second since the oldest reading of the last ``RATE_WINDOW_S`` (None on
        the first reading)."""
        history = self._history
        while len(history) > 1 and now - history[1][0] >= RATE_WINDOW_S:
            history.popleft()
        base = history[0] if history else None
        history.append((now, total, server_err, client_err))
        if base is None or now <= base[0]:
            return {
                "window_s": None,
                "requests_per_s": None,
                "errors_per_s": None,
                "error_rate": None,
            }
        dt = now - base[0]
        d_total = max(0.0, total - base[1])
        d_err = max(0.0, server_err - base[2])
        return {
            "window_s": dt,
            "requests_per_s": d_total / dt,
            "errors_per_s": d_err / dt,
            "error_rate": d_err / d_total if d_total else 0.0,
        }
