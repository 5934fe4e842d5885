"""The admin API and the dashboard: read-only views of the running gateway.

``GET /admin/config``, ``/admin/targets``, ``/admin/keys/{name}``,
``/admin/stats`` (JSON, the admin key when ``admin.key_sha256`` is set) and
``GET /ui`` (the dashboard page; its data comes from ``/admin/stats``). They
read what the request path keeps anyway (target states, limiter buckets, the
metrics and the recorder's ring of recent errors) and are looked up only for
paths the proxy does not serve: a proxied request pays nothing for them.
"""

from __future__ import annotations

import asyncio
import math
import time
from importlib import resources
from typing import Any
from urllib.parse import unquote

import orjson

from fastgw.admin.redact import redact_config
from fastgw.admin.stats import StatsReader
from fastgw.errors import GatewayError, NotFound, ServiceUnavailable
from fastgw.limits.local import LocalLimiter
from fastgw.limits.redis import RedisLimiter
from fastgw.limits.rules import DIM_NAMES, USD, ScopeSpec
from fastgw.metrics import BUDGET_REMAINING_USD, BUDGET_USD, MULTIPROCESS
from fastgw.pipeline.gateway import Gateway, request_id_line
from fastgw.pipeline.snapshot import Snapshot
from fastgw.routing.health import EJECTED, HALF_OPEN, HEALTHY
from fastgw.server.protocol import Cycle

_JSON = b"content-type: application/json\r\ncache-control: no-store\r\n"
_HTML = (
    b"content-type: text/html; charset=utf-8\r\ncache-control: no-store\r\n"
    b"x-content-type-options: nosniff\r\nx-frame-options: DENY\r\n"
    # The page may talk to this gateway only: no other host, no inline frames.
    b"content-security-policy: default-src 'none'; script-src 'unsafe-inline'; "
    b"style-src 'unsafe-inline'; img-src data:; connect-src 'self'; "
    b"frame-ancestors 'none'\r\n"
)
_STATES = {HEALTHY: "healthy", EJECTED: "ejected", HALF_OPEN: "half_open"}
KEYS_PREFIX = b"/admin/keys/"
RECENT_ERRORS_SHOWN = 50


class AdminApi:
    """The admin endpoints of one worker, mounted on its :class:`Gateway`."""

    __slots__ = ("_page", "_stats", "gateway", "loop")

    def __init__(self, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> None:
        self.gateway = gateway
        self.loop = loop
        self._stats = StatsReader()
        self._page: bytes | None = None

    def mount(self) -> None:
        self.gateway.mount(
            {
                b"/admin/config": self.config,
                b"/admin/targets": self.targets,
                b"/admin/stats": self.stats,
                b"/ui": self.ui,
                b"/ui/": self.ui,
            },
            ((KEYS_PREFIX, self.key),),
        )
        self.gateway.before_scrape.append(self.set_budget_gauges)

    # -- endpoints ---------------------------------------------------------------------------

    async def ui(self, cycle: Cycle) -> None:
        """The dashboard page: public (it holds no data; it asks for the admin key)."""
        page = self._page
        if page is None:
            page = self._page = resources.files("fastgw.admin").joinpath("ui.html").read_bytes()
        cycle.send(200, _HTML + request_id_line(cycle), page)

    async def config(self, cycle: Cycle) -> None:
        self.gateway.require_admin(cycle)
        self._json(cycle, redact_config(self.gateway.state.snapshot.config))

    async def targets(self, cycle: Cycle) -> None:
        self.gateway.require_admin(cycle)
        self._json(cycle, {"targets": self.target_rows(self.gateway.state.snapshot)})

    async def stats(self, cycle: Cycle) -> None:
        self.gateway.require_admin(cycle)
        proxy = self.gateway.proxy
        proxy.recorder.flush()
        doc = self._stats.read(time.monotonic())
        doc["time"] = time.time()
        doc["worker_pid_scope"] = "all workers" if MULTIPROCESS else "this process"
        doc["targets"] = self.target_rows(self.gateway.state.snapshot)
        errors = list(proxy.recorder.errors)[-RECENT_ERRORS_SHOWN:]
        errors.reverse()
        doc["recent_errors"] = [
            {
                "time": t,
                "request_id": rid,
                "status": status,
                "model": model,
                "provider": provider or None,
                "key": key,
                "message": message,
            }
            for t, rid, status, model, provider, key, message in errors
        ]
        self._json(cycle, doc)

    async def key(self, cycle: Cycle) -> None:
        self.gateway.require_admin(cycle)
        name = unquote(cycle.path[len(KEYS_PREFIX) :].decode("utf-8", "replace"))
        snap = self.gateway.state.snapshot
        cfg = next((k for k in snap.config.auth.keys if k.name == name), None)
        if cfg is None:
            raise NotFound(
                f"no API key is named {name!r}; auth.keys lists them",
                param="name",
                code="key_not_found",
            )
        specs = self._specs_of(snap, name)
        backend = self.gateway.proxy.access.backend
        figures: list[tuple[float, float]] = []
        if specs and backend is not None:
            try:
                if isinstance(backend, RedisLimiter):
                    figures = await backend.peek(specs)
                elif isinstance(backend, LocalLimiter):
                    figures = backend.peek(specs)
            except GatewayError:
                raise ServiceUnavailable(
                    "the limit store cannot be read now", code="limits_unavailable"
                ) from None
        limits = []
        for spec, (remaining, reset) in zip(specs, figures, strict=False):
            row: dict[str, Any] = {
                "scope": spec.label,
                "limit": DIM_NAMES[spec.dim],
                "value": spec.p1,
                "remaining": None if math.isnan(remaining) else remaining,
                "reset_s": reset,
                "shared": ":*:" in spec.key,
            }
            if spec.dim == USD:
                row["period"] = spec.key.rsplit(":", 1)[1]
                row["spent_usd"] = None if math.isnan(remaining) else spec.p1 - remaining
            limits.append(row)
        self._json(
            cycle,
            {
                "name": cfg.name,
                "tier": cfg.tier,
                "models": list(cfg.models),
                "backend": snap.config.limits_backend if specs else None,
                "limits": limits,
            },
        )

    # -- figures -----------------------------------------------------------------------------

    def target_rows(self, snap: Snapshot) -> list[dict[str, Any]]:
        now = self.loop.time()
        rows = []
        for route in snap.models.values():
            for t in route.targets:
                st = t.state
                h = st.health
                cooldown = max(0.0, h.ejected_until - now) if h.state == EJECTED else 0.0
                rows.append(
                    {
                        "model": route.name,
                        "provider": t.provider.name,
                        "target": t.model,
                        "weight": t.weight,
                        "state": _STATES.get(h.state, str(h.state)),
                        "healthy": h.state == HEALTHY,
                        "inflight": st.inflight,
                        "latency_ewma_s": st.ewma_ttfb if st.samples else None,
                        "samples": st.samples,
                        "ejections": h.ejections,
                        "consecutive_failures": h.consecutive,
                        "cooldown_left_s": cooldown,
                        "rate_limited_for_s": max(0.0, st.not_before - now),
                    }
                )
        return rows

    def _specs_of(self, snap: Snapshot, name: str) -> list[ScopeSpec]:
        rules = self.gateway.proxy.access.rules
        if rules is None:
            return []
        cfg = next(k for k in snap.config.auth.keys if k.name == name)
        routes = [(r.name, tuple(t.provider.name for t in r.targets)) for r in snap.models.values()]
        return rules.scopes_of("k:" + name, name, cfg.tier, cfg.limits, routes)

    def set_budget_gauges(self) -> None:
        """``fastgw_budget_usd`` and ``fastgw_budget_remaining_usd`` of every USD
        budget of every configured key, read when scraped (local backend only: a
        scrape never waits for Redis)."""
        backend = self.gateway.proxy.access.backend
        if not isinstance(backend, LocalLimiter):
            return
        snap = self.gateway.state.snapshot
        seen: dict[str, ScopeSpec] = {}
        for k in snap.config.auth.keys:
            for spec in self._specs_of(snap, k.name):
                if spec.dim == USD:
                    seen.setdefault(spec.key, spec)
        if not seen:
            return
        specs = list(seen.values())
        for spec, (remaining, _) in zip(specs, backend.peek(specs), strict=True):
            bucket = spec.key.split(":", 1)[1]  # without the "{prefix}:" hash tag
            BUDGET_USD.labels(spec.label, bucket).set(spec.p1)
            BUDGET_REMAINING_USD.labels(spec.label, bucket).set(remaining)

    @staticmethod
    def _json(cycle: Cycle, doc: Any) -> None:
        cycle.send(
            200, _JSON + request_id_line(cycle), orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)
        )
