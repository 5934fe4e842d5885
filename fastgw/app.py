"""Composition root: builds one worker from a configuration and runs it.

Start order: (demo mock provider) -> upstream client and routing snapshot ->
metrics recorder and access log -> proxy and gateway handler -> listening
server -> signal handlers. Stop order is the reverse, after a drain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
import socket
import sys
import time

import uvloop

from fastgw import _native_check
from fastgw.accesslog import AccessLog
from fastgw.admin import AdminApi
from fastgw.config import Config, demo_config, load_config
from fastgw.errors import ConfigError
from fastgw.metrics import Recorder
from fastgw.pipeline import headers as hdr
from fastgw.pipeline.access import AccessState
from fastgw.pipeline.gateway import Gateway, GatewayState, error_body
from fastgw.pipeline.probes import Prober
from fastgw.pipeline.runner import Proxy
from fastgw.pipeline.snapshot import build_snapshot
from fastgw.server.lifecycle import drain, listen_socket, start_server
from fastgw.server.protocol import ServerSettings, ServerState
from fastgw.tracing import Tracer
from fastgw.tracing.otlp import OtlpExporter
from fastgw.upstream.client import UpstreamClient
from fastgw.upstream.writes import batch_for

log = logging.getLogger("fastgw")

METRICS_FLUSH_S = 1.0  # how stale /metrics of other workers may be
GC_GEN0_THRESHOLD = 20_000  # allocations between young-generation collections (default 700)


class App:
    """One worker: its server, upstream pools and current routing snapshot."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.client = UpstreamClient(self.loop)
        # Limiter table, Redis client and JWKS cache: kept across reloads.
        self.access_state = AccessState(self.client)
        self.server_state = ServerState()
        self.server: asyncio.Server | None = None
        self.mock: asyncio.Server | None = None
        self.access_log: AccessLog | None = None
        self.gateway: Gateway | None = None
        self.exporter: OtlpExporter | None = None  # spans, when observability.otlp_endpoint
        self.stopped = asyncio.Event()
        self._reload_lock = asyncio.Lock()

    async def start(self, sock: socket.socket | None = None) -> None:
        cfg = self.config
        if cfg.demo:
            # The built-in demo: an in-process mock provider on a free port.
            from fastgw.mock import MockOptions, start_mock

            self.mock = await start_mock(MockOptions(latency_ms=20, chunks=12,
                                                     chunk_interval_ms=30),
                                         "127.0.0.1", 0)
            port = self.mock.sockets[0].getsockname()[1]
            cfg = self.config = demo_config(f"http://127.0.0.1:{port}/v1", cfg.server.host,
                                            cfg.server.port, cfg.server.workers)
        snapshot = build_snapshot(cfg, self.client, int(time.time()))
        self.access_log = AccessLog(str(cfg.observability.access_log), self.loop)
        access = await self.access_state.build(cfg)
        obs = cfg.observability
        tracer = None
        if obs.otlp_endpoint is not None:
            self.exporter = OtlpExporter(self.loop, obs.otlp_endpoint, obs.otlp_headers.items(),
                                         timeout_s=obs.otlp_timeout_s)
            self.exporter.start()
            tracer = Tracer(obs.trace_sample_ratio, self.exporter.submit)
        proxy = Proxy(self.loop, Recorder(obs.key_labels, obs.max_key_labels), self.access_log,
                      access, tracer)
        snapshot.internal.bind(proxy)  # judges and shadows: requests through this proxy
        self.gateway = Gateway(GatewayState(snapshot), proxy, self.reload)
        AdminApi(self.gateway, self.loop).mount()
        self.prober = Prober(self.loop)
        self.prober.start(snapshot)
        self._recorder = proxy.recorder
        self._flusher = self.loop.call_later(METRICS_FLUSH_S, self._flush_metrics)
        s = cfg.server
        batch_for(self.loop).poll_s = s.busy_poll_us / 1e6  # (writes.py: why)
        settings = ServerSettings(max_body_bytes=s.max_body_bytes,
                                  max_header_bytes=s.max_header_bytes,
                                  keepalive_timeout_s=s.keepalive_timeout_s,
                                  header_timeout_s=s.header_timeout_s,
                                  finish_on_half_close=s.client_half_close == "finish",
                                  request_id=hdr.request_id_for,
                                  error_body=error_body)
        if sock is None:
            sock = listen_socket(s.host, s.port, reuse_port=s.workers > 1, backlog=s.backlog)
        self.server = await start_server(self.gateway, settings, self.server_state, sock,
                                         s.backlog)

    def _flush_metrics(self) -> None:
        """Push what requests recorded into the metrics (shared files with workers)."""
        self._recorder.flush()
        self._flusher = self.loop.call_later(METRICS_FLUSH_S, self._flush_metrics)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def reload(self) -> str:
        """Re-read the configuration file and swap the routing snapshot.

        A bad file is refused (ConfigError) and the old configuration keeps
        serving; connections are never dropped.
        """
        async with self._reload_lock:
            source = self.config.source
            if source is None:
                return "nothing to reload: the gateway runs the built-in demo"
            new = load_config(source)
            old = self.config
            if new.server != old.server:
                log.warning("server settings changed in %s; they apply after a restart", source)
            if _tracing(new) != _tracing(old):
                log.warning("trace settings changed in %s; they apply after a restart", source)
            new = dataclasses.replace(new, server=old.server)
            assert self.gateway is not None
            access = await self.access_state.build(new)  # ConfigError: nothing swapped yet
            snapshot = build_snapshot(new, self.client, int(time.time()), self.loop,
                                      previous=self.gateway.state.snapshot)
            previous = self.gateway.state.snapshot
            self.gateway.state.snapshot = snapshot
            if previous.cache is not None and previous.cache is not snapshot.cache:
                await previous.cache.close()
            if previous.feedback is not None and previous.feedback is not snapshot.feedback:
                await previous.feedback.close()
            self.prober.start(snapshot)
            self.gateway.proxy.set_access(access)
            self.config = new
            self.client.retire_unused({p.pool for p in snapshot.providers.values()})
            log.info("configuration reloaded: %s", new.summary())
            return new.summary()

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Drain (bounded by server.drain_timeout_s) and release everything."""
        if self.server is not None and self.gateway is not None:
            self.gateway.state.draining = True
            clean = await drain(self.server, self.server_state,
                                self.config.server.drain_timeout_s if drain_timeout_s is None
                                else drain_timeout_s)
            if not clean:
                log.warning("drain timeout: closed connections still in flight")
        await self.access_state.close()
        if self.gateway is not None:
            cache = self.gateway.state.snapshot.cache
            if cache is not None:
                await cache.close()
            feedback = self.gateway.state.snapshot.feedback
            if feedback is not None:
                await feedback.close()
            self.prober.stop()
            self._flusher.cancel()
            if self.exporter is not None:
                await self.exporter.stop()
            self._recorder.flush()
        self.client.close()
        if self.mock is not None:
            self.mock.close()
        if self.access_log is not None:
            self.access_log.close()
        self.stopped.set()


def _tracing(cfg: Config) -> tuple[object, ...]:
    o = cfg.observability
    return (o.otlp_endpoint, dict(o.otlp_headers), o.trace_sample_ratio, o.otlp_timeout_s)


async def serve(config: Config, sock: socket.socket | None = None,
                ready: asyncio.Future[int] | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT; SIGHUP reloads. Returns the exit code."""
    app = App(config)
    await app.start(sock)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        async def go() -> None:
            try:
                await app.reload()
            except ConfigError as exc:
                log.error("reload refused, the previous configuration keeps serving:\n%s", exc)
        tasks.add(t := loop.create_task(go()))
        t.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    log.info("fastgw listening on http://%s:%d (%s)", app.config.server.host, app.port,
             "built-in demo" if app.config.demo else app.config.summary())
    # Everything built so far lives as long as the process: keep it out of the
    # collector's way, and collect the young generation less often (requests make
    # short-lived, acyclic garbage that reference counting already frees).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
    if ready is not None:
        ready.set_result(app.port)
    await stop.wait()
    log.info("draining")
    await app.stop()
    return 0


def run_worker(config: Config, sock: socket.socket | None = None) -> int:
    """Blocking entry point of one worker process."""
    _native_check.require()
    setup_logging()
    return uvloop.run(serve(config, sock))


def setup_logging() -> None:
    root = logging.getLogger("fastgw")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s fastgw[%(process)d] %(levelname)s "
                                               "%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
