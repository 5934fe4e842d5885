"""Active health probes: a cheap ``GET {base_url}/models`` per provider that asks
for it (``probe: true``), every ``health.probe_interval_s``. Never a completion,
so probes cost no tokens. A failed probe counts as a failure for every target of
that provider; a good one brings an ejected target back without waiting for its
cooldown."""

from __future__ import annotations

import asyncio
import logging
import random

from fastgw.errors import UpstreamError
from fastgw.pipeline.snapshot import ProviderRuntime, Snapshot
from fastgw.providers.registry import request_prefix
from fastgw.upstream.client import exchange

log = logging.getLogger("fastgw.probes")


class Prober:
    __slots__ = ("_loop", "_task", "snapshot")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task: asyncio.Task[None] | None = None
        self.snapshot: Snapshot | None = None

    def start(self, snapshot: Snapshot) -> None:
        """(Re)start probing for this snapshot's providers."""
        self.stop()
        self.snapshot = snapshot
        if any(p.cfg.probe for p in snapshot.providers.values()):
            self._task = self._loop.create_task(self._run(snapshot))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self, snapshot: Snapshot) -> None:
        interval = snapshot.config.health.probe_interval_s
        providers = [p for p in snapshot.providers.values() if p.cfg.probe]
        while True:
            # Jitter so many gateways do not probe in lockstep.
            await asyncio.sleep(interval * (0.8 + 0.4 * random.random()))
            await asyncio.gather(*(self.probe(snapshot, p) for p in providers))

    async def probe(self, snapshot: Snapshot, provider: ProviderRuntime) -> bool:
        ok = False
        try:
            prefix = _probe_request(provider)
            conn = await exchange(provider.pool, prefix, provider.timeouts, whole=True)
            ok = 200 <= conn.status < 300
            provider.pool.release(conn, reuse=True)
        except UpstreamError as exc:
            log.info("health probe of %s failed: %s", provider.name, exc.message)
        now = self._loop.time()
        for route in snapshot.models.values():
            for target in route.targets:
                if target.provider is provider:
                    if ok:
                        if target.state.health.state != 0:
                            target.state.health.success(now)
                    else:
                        target.state.health.failure(now)
        return ok


def _probe_request(provider: ProviderRuntime) -> bytes:
    ep = provider.endpoint
    prefix = request_prefix(provider.cfg, ep.host_header, ep.path_prefix, "models", "",
                            b"GET")
    assert prefix is not None  # every provider kind lists its models
    return prefix + b"content-length: 0\r\n\r\n"
