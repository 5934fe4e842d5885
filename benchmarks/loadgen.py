"""A lean HTTP/1.1 load generator for the fastgw benchmarks.

uvloop, raw ``asyncio.Protocol`` connections kept alive, one pre-encoded
request, ``httptools`` response framing with as few Python callbacks as
possible (no header callbacks; ``on_body`` only for streams). Exact
percentiles (all samples sorted).

Two modes:

* closed loop (default): ``connections`` connections each send the next
  request as soon as the previous answer ends, for ``duration`` seconds or
  ``requests`` requests: the maximum throughput.
* open loop (``rate`` set): requests start on a fixed schedule, R per second,
  whatever the server does. Latency is measured from the *scheduled* start,
  so a slow server cannot hide its queueing (no coordinated omission). A new
  connection is opened whenever none is idle, so requests do not queue
  behind each other. ``lag`` reports how late the generator itself sent them.

Streams (``stream=True``): time to the first complete SSE event, time to
the first event carrying content (a non-empty ``"content":"..."`` delta: a
gateway may hold a role-only first event until then), time to the last
byte, and events (``\\n\\n``-terminated) per second.

Library: ``await run_load(LoadSpec(...)) -> LoadResult``.
CLI: ``python benchmarks/loadgen.py URL [-c 32] [-d 10] [--rate R] [--stream] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httptools

perf_counter = time.perf_counter


@dataclass
class LoadSpec:
    url: str  # http://host:port/path
    body: bytes | None = None  # POST body (JSON); None = GET
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False  # measure time to first event and events/s
    connections: int = 32  # closed loop: concurrency; open loop: initial pool
    duration: float | None = 10.0  # seconds of measurement (after warmup)
    requests: int | None = None  # or a fixed number of requests
    rate: float | None = None  # requests/s: open loop
    warmup: float = 0.0  # seconds run before measuring
    timeout: float = 30.0  # per request
    max_connections: int = 4096  # open loop: pool limit


@dataclass
class Percentiles:
    p50: float
    p90: float
    p99: float
    p999: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples: list[float], scale: float = 1000.0) -> Percentiles | None:
        """Exact nearest-rank percentiles of samples (seconds), in ms by default."""
        if not samples:
            return None
        s = sorted(samples)
        n = len(s)

        def rank(q: float) -> float:
            return s[min(n - 1, max(0, math.ceil(q * n) - 1))] * scale

        return cls(
            p50=rank(0.50),
            p90=rank(0.90),
            p99=rank(0.99),
            p999=rank(0.999),
            min=s[0] * scale,
            max=s[-1] * scale,
            mean=sum(s) / n * scale,
        )


@dataclass
class LoadResult:
    mode: str  # "closed" | "open"
    url: str
    stream: bool
    connections: int  # connections opened in total
    target_rate: float | None
    elapsed: float  # seconds measured
    requests: int  # answers completed in the measurement window
    ok: int  # of which 2xx
    non_2xx: dict[int, int]
    errors: dict[str, int]  # connect | reset | timeout | parse
    rps: float
    latency_ms: Percentiles | None  # to the last byte
    ttfb_ms: Percentiles | None = None  # streams: to the first complete SSE event
    ttfc_ms: Percentiles | None = None  # streams: to the first event carrying content
    events: int = 0
    events_per_s: float = 0.0
    events_per_stream: float = 0.0
    lag_ms: Percentiles | None = None  # open loop: send time - scheduled time

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        lat = self.latency_ms
        parts = [
            f"{self.mode}",
            f"{self.rps:,.0f} req/s",
            f"{self.requests} reqs",
            f"ok {self.ok}",
        ]
        if lat is not None:
            parts.append(
                f"p50 {lat.p50:.3f} p90 {lat.p90:.3f} p99 {lat.p99:.3f} "
                f"p99.9 {lat.p999:.3f} max {lat.max:.3f} ms"
            )
        if self.ttfb_ms is not None:
            parts.append(f"ttfe p50 {self.ttfb_ms.p50:.3f} p99 {self.ttfb_ms.p99:.3f} ms")
        if self.ttfc_ms is not None:
            parts.append(f"ttfc p50 {self.ttfc_ms.p50:.3f} p99 {self.ttfc_ms.p99:.3f} ms")
            parts.append(f"{self.events_per_s:,.0f} events/s ({self.events_per_stream:.1f}/stream)")
        if self.lag_ms is not None:
            parts.append(f"lag p99 {self.lag_ms.p99:.3f} ms")
        if self.non_2xx:
            parts.append(f"non-2xx {self.non_2xx}")
        if self.errors:
            parts.append(f"errors {self.errors}")
        return " | ".join(parts)


def encode_request(spec: LoadSpec) -> tuple[str, int, bytes]:
    u = urlsplit(spec.url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"only http:// URLs are supported: {spec.url!r}")
    port = u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    method = "POST" if spec.body is not None else "GET"
    lines = [f"{method} {path} HTTP/1.1", f"Host: {u.hostname}:{port}"]
    names = {k.lower() for k in spec.headers}
    if spec.body is not None:
        if "content-type" not in names:
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(spec.body)}")
    lines.extend(f"{k}: {v}" for k, v in spec.headers.items())
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (spec.body or b"")
    return u.hostname, port, raw


class _Conn(asyncio.Protocol):
    """One keep-alive client connection; at most one request in flight."""

    __slots__ = ("busy", "dead", "parser", "run", "sent", "t0", "transport")

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.busy = False
        self.dead = False
        self.t0 = 0.0  # latency reference: send time (closed) or scheduled time (open)
        self.sent = 0.0  # actual send time

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.run.fail(self, "parse")

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.lost(self)

    def send(self, t0: float, now: float) -> None:
        self.t0 = t0
        self.sent = now
        self.busy = True
        self.transport.write(self.run.request)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self.run.done(self, perf_counter())


_CONTENT = b'"content":"'


def _find_content(buf: bytes) -> int:
    """End offset of the first non-empty ``"content":"...`` in buf, or -1.

    A role-only first event carries ``"content":""``; the first real token
    is the first content string that does not close at once.
    """
    i = buf.find(_CONTENT)
    while i >= 0:
        j = i + len(_CONTENT)
        if j >= len(buf):
            return -1  # the value is in the next read
        if buf[j] != 0x22:  # '"'
            return j
        i = buf.find(_CONTENT, j)
    return -1


class _StreamConn(_Conn):
    """A connection that also times the first SSE event and the first content
    event, and counts events.

    Events are counted on the raw bytes (every event ends with a blank line,
    and chunked framing never makes one), so httptools needs no ``on_body``
    callback: one Python call per read, not one per chunk. The content search
    runs only until the first token is seen (usually within the first read).
    """

    __slots__ = ("content", "events", "first", "last_nl", "tail")

    def __init__(self, run: _Run) -> None:
        super().__init__(run)
        self.first = 0.0
        self.content = 0.0
        self.events = 0
        self.last_nl = False
        self.tail = b""  # the end of the previous read, while content is unseen

    def send(self, t0: float, now: float) -> None:
        self.first = 0.0
        self.content = 0.0
        self.events = 0
        self.last_nl = False
        self.tail = b""
        super().send(t0, now)

    def data_received(self, data: bytes) -> None:
        # An event may straddle two reads: "\n" | "\n".
        n = data.count(b"\n\n") + (self.last_nl and data[:1] == b"\n")
        self.last_nl = data[-1:] == b"\n"
        if not self.content:
            # The content event is timed when it is complete (its blank line
            # has arrived), like the first event.
            buf = self.tail + data
            at = _find_content(buf)
            if at >= 0 and buf.find(b"\n\n", at) >= 0:
                self.content = perf_counter()
            else:
                # Keep the start of an event that is not complete yet.
                start = buf.rfind(b"\n\n", 0, at) if at >= 0 else len(buf) - 32
                self.tail = buf[max(start, 0) :]
        if n:
            if not self.events:
                self.first = perf_counter()
            self.events += n
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.run.fail(self, "parse")


class _Run:
    """The state of one load run (closed or open loop)."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.host, self.port, self.request = encode_request(spec)
        self.conn_cls = _StreamConn if spec.stream else _Conn
        self.open = spec.rate is not None
        self.conns: set[_Conn] = set()
        self.idle: list[_Conn] = []
        self.pending: collections.deque[float] = collections.deque()
        self.connecting = 0
        self.opened = 0
        self.issuing = True
        self.issued = 0
        self.inflight = 0
        self.record_from = 0.0
        self.finished = self.loop.create_future()
        # samples
        self.lat: list[float] = []
        self.ttfb: list[float] = []
        self.ttfc: list[float] = []
        self.lag: list[float] = []
        self.events = 0
        self.ok = 0
        self.non_2xx: collections.Counter[int] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.last_done = 0.0

    # -- connections -----------------------------------------------------------------

    async def connect(self) -> None:
        self.connecting += 1
        try:
            _, proto = await self.loop.create_connection(
                lambda: self.conn_cls(self), self.host, self.port
            )
        except OSError:
            self.errors["connect"] += 1
            self.connecting -= 1
            await asyncio.sleep(0.01)  # do not spin on a refusing server
            self._check_finished()
            if self.issuing and not self.open:
                self.loop.create_task(self.connect())
            return
        self.connecting -= 1
        self.opened += 1
        self.conns.add(proto)
        self.next_request(proto, perf_counter())

    def fail(self, conn: _Conn, kind: str) -> None:
        if conn.busy:
            self.errors[kind] += 1
            conn.busy = False
            self.inflight -= 1
        conn.dead = True
        if conn.transport is not None:
            conn.transport.abort()

    def lost(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.busy:  # the server closed mid-answer
            self.errors["reset"] += 1
            conn.busy = False
            self.inflight -= 1
        conn.dead = True
        if self.issuing and not self.open:
            self.loop.create_task(self.connect())
        elif self.open and self.pending:
            self.grow()
        self._check_finished()

    def grow(self) -> None:
        if self.connecting < len(self.pending) and len(self.conns) + self.connecting < (
            self.spec.max_connections
        ):
            self.loop.create_task(self.connect())

    # -- requests --------------------------------------------------------------------

    def next_request(self, conn: _Conn, now: float) -> None:
        """Give an idle connection its next request, if any."""
        if self.open:
            if self.pending:
                intended = self.pending.popleft()
                if intended >= self.record_from:
                    self.lag.append(now - intended)
                self.inflight += 1
                conn.send(intended, now)
            else:
                self.idle.append(conn)
            return
        if self.issuing:
            limit = self.spec.requests
            if limit is not None:
                if self.issued >= limit:
                    self.issuing = False
                    self._check_finished()
                    return
                self.issued += 1
            self.inflight += 1
            conn.send(now, now)
        else:
            self._check_finished()

    def done(self, conn: _Conn, now: float) -> None:
        conn.busy = False
        self.inflight -= 1
        if conn.t0 >= self.record_from:
            self.lat.append(now - conn.t0)
            self.last_done = now
            status = conn.parser.get_status_code()
            if 200 <= status < 300:
                self.ok += 1
            else:
                self.non_2xx[status] += 1
            if isinstance(conn, _StreamConn):
                self.events += conn.events
                if conn.first:
                    self.ttfb.append(conn.first - conn.t0)
                if conn.content:
                    self.ttfc.append(conn.content - conn.t0)
        if not conn.parser.should_keep_alive():
            conn.dead = True
            if conn.transport is not None:
                conn.transport.close()
            return  # lost() opens a replacement
        self.next_request(conn, now)

    def _check_finished(self) -> None:
        if (
            not self.issuing
            and self.inflight <= 0
            and not self.pending
            and not self.finished.done()
        ):
            self.finished.set_result(None)

    # -- open loop schedule ----------------------------------------------------------

    def start_schedule(self, start: float, stop_at: float, count: int | None) -> None:
        assert self.spec.rate is not None
        self.interval = 1.0 / self.spec.rate
        self.next_due = start
        self.stop_at = stop_at
        self.remaining = count
        # Below this rate the dispatcher wakes early and then polls (call_soon)
        # to send on time; above it, libuv's 1 ms timer batches the sends.
        self.precise = self.spec.rate <= 2000
        self.tick()

    def tick(self) -> None:
        now = perf_counter()
        while self.issuing and self.next_due <= now:
            intended = self.next_due
            self.next_due += self.interval
            if self.remaining is not None:
                self.remaining -= 1
                if self.remaining <= 0:
                    self.issuing = False
            if self.next_due >= self.stop_at:
                self.issuing = False
            if self.idle:
                conn = self.idle.pop()
                if intended >= self.record_from:
                    self.lag.append(now - intended)
                self.inflight += 1
                conn.send(intended, now)
            else:
                self.pending.append(intended)
                self.grow()
        if not self.issuing:
            self._check_finished()
            return
        delay = self.next_due - perf_counter()
        if self.precise:
            # libuv timers have 1 ms resolution against a cached clock: wake
            # 3 ms early, then poll (I/O still served) until the due time.
            if delay > 0.003:
                self.loop.call_later(delay - 0.003, self.tick)
            else:
                self.loop.call_soon(self.tick)
        else:
            self.loop.call_later(max(delay, 0.001), self.tick)

    # -- timeouts --------------------------------------------------------------------

    async def sweep(self) -> None:
        timeout = self.spec.timeout
        while not self.finished.done():
            await asyncio.sleep(0.1)
            now = perf_counter()
            for conn in list(self.conns):
                if conn.busy and now - conn.sent > timeout:
                    self.fail(conn, "timeout")
            if self.open:
                while self.pending and now - self.pending[0] > timeout:
                    self.pending.popleft()
                    self.errors["timeout"] += 1
                self._check_finished()


async def run_load(spec: LoadSpec) -> LoadResult:
    """Run one load test on the running loop and return its figures."""
    if spec.duration is None and spec.requests is None:
        raise ValueError("give a duration or a number of requests")
    run = _Run(spec)
    sweeper = asyncio.get_running_loop().create_task(run.sweep())
    try:
        if run.open:
            # Pre-open the pool, then start the schedule.
            await asyncio.gather(*(run.connect() for _ in range(spec.connections)))
            start = perf_counter()
            run.record_from = start + spec.warmup
            stop_at = run.record_from + spec.duration if spec.duration is not None else math.inf
            run.start_schedule(start, stop_at, spec.requests)
        else:
            start = perf_counter()
            run.record_from = start + spec.warmup
            await asyncio.gather(*(run.connect() for _ in range(spec.connections)))
            if spec.duration is not None:
                run.loop.call_at(
                    run.loop.time() + spec.warmup + spec.duration,
                    lambda: setattr(run, "issuing", False),
                )
        await run.finished
    finally:
        sweeper.cancel()
        for conn in list(run.conns):
            if conn.transport is not None:
                conn.transport.close()
    if run.open and spec.duration is not None:
        elapsed = spec.duration
    else:
        elapsed = max(run.last_done - run.record_from, 1e-9)
    n = len(run.lat)
    return LoadResult(
        mode="open" if run.open else "closed",
        url=spec.url,
        stream=spec.stream,
        connections=run.opened,
        target_rate=spec.rate,
        elapsed=elapsed,
        requests=n,
        ok=run.ok,
        non_2xx=dict(run.non_2xx),
        errors=dict(run.errors),
        rps=n / elapsed,
        latency_ms=Percentiles.of(run.lat),
        ttfb_ms=Percentiles.of(run.ttfb) if spec.stream else None,
        ttfc_ms=Percentiles.of(run.ttfc) if spec.stream else None,
        events=run.events,
        events_per_s=run.events / elapsed,
        events_per_stream=run.events / n if n else 0.0,
        lag_ms=Percentiles.of(run.lag) if run.open else None,
    )


def run_load_sync(spec: LoadSpec) -> LoadResult:
    """run_load on a fresh uvloop loop (blocking)."""
    import uvloop

    return uvloop.run(run_load(spec))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("-c", "--connections", type=int, default=32)
    p.add_argument("-d", "--duration", type=float, default=None, help="seconds (default 10)")
    p.add_argument("-n", "--requests", type=int, default=None)
    p.add_argument("-r", "--rate", type=float, default=None, help="open loop: requests/s")
    p.add_argument("--warmup", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--stream", action="store_true", help="streaming answers (SSE)")
    p.add_argument("--body", default=None, help="JSON body, or @FILE (default: a chat request)")
    p.add_argument("--get", action="store_true", help="send GET without a body")
    p.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)
    if a.get:
        body = None
    elif a.body is None:
        msg: dict[str, Any] = {
            "model": "mock-model",
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        }
        if a.stream:
            msg["stream"] = True
        body = json.dumps(msg, separators=(",", ":")).encode()
    elif a.body.startswith("@"):
        with open(a.body[1:], "rb") as f:
            body = f.read()
    else:
        body = a.body.encode()
    headers = {}
    for h in a.header:
        k, _, v = h.partition(":")
        headers[k.strip()] = v.strip()
    duration = a.duration if a.duration is not None or a.requests is not None else 10.0
    spec = LoadSpec(
        url=a.url,
        body=body,
        headers=headers,
        stream=a.stream,
        connections=a.connections,
        duration=duration,
        requests=a.requests,
        rate=a.rate,
        warmup=a.warmup,
        timeout=a.timeout,
    )
    result = run_load_sync(spec)
    print(json.dumps(result.as_dict()) if a.json else result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
