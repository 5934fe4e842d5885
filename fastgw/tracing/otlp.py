"""OTLP/HTTP span export: finished traces queued, encoded and posted in batches.

:meth:`OtlpExporter.submit` is all the request path calls: one append to a
bounded queue (counted in spans), or a drop when it is full. A background task
takes a batch when the queue holds ``batch_spans`` or every ``interval_s``,
encodes it (natively, with the opentelemetry-proto crate's messages) and POSTs
them to ``{endpoint}/v1/traces`` (``application/x-protobuf``) on a plain
asyncio connection kept alive between batches. One export runs at a time,
bounded by ``timeout_s``. A collector that is down or slow only loses spans
(``fastgw_trace_spans_dropped_total{reason}``): a failed export drops its
batch and, for a backoff that doubles up to 30 s, later batches are dropped
without being encoded, so a dead collector costs almost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Iterable
from time import perf_counter
from urllib.parse import urlsplit

import fastgw
from fastgw._native import OtlpEncoder
from fastgw.metrics import TRACE_DROPPED, TRACE_SPANS, batched
from fastgw.tracing import Trace

log = logging.getLogger("fastgw.tracing")

MAX_BACKOFF_S = 30.0
_RESPONSE_HEAD_LIMIT = 64 * 1024


class OtlpExporter:
    """The export queue and its background task, one per worker."""

    __slots__ = (
        "_backoff",
        "_conn",
        "_encoder",
        "_epoch",
        "_failures",
        "_head",
        "_host",
        "_port",
        "_queue_full",
        "_retry_at",
        "_ssl",
        "_task",
        "_unreachable",
        "_wake",
        "batch_spans",
        "interval_s",
        "loop",
        "max_queue_spans",
        "queued",
        "timeout_s",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        endpoint: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        timeout_s: float = 5.0,
        max_queue_spans: int = 4096,
        batch_spans: int = 512,
        interval_s: float = 1.0,
    ) -> None:
        self.loop = loop
        url = urlsplit(endpoint)
        self._host = url.hostname or "127.0.0.1"
        https = url.scheme == "https"
        self._port = url.port or (443 if https else 80)
        self._ssl = ssl.create_default_context() if https else None
        path = url.path.rstrip("/")
        if not path.endswith("/v1/traces"):
            path += "/v1/traces"
        host = self._host if url.port is None else f"{self._host}:{url.port}"
        self._head = (
            f"POST {path} HTTP/1.1\r\nhost: {host}\r\n"
            "content-type: application/x-protobuf\r\n"
            + "".join(f"{n}: {v}\r\n" for n, v in headers)
        ).encode("latin-1")
        self.timeout_s = timeout_s
        self.max_queue_spans = max_queue_spans
        self.batch_spans = batch_spans
        self.interval_s = interval_s
        self._encoder = OtlpEncoder()  # the pending spans, encoded
        self._epoch = time.time() - perf_counter()  # perf_counter -> Unix time
        self.queued = 0  # spans pending
        self._queue_full = batched(TRACE_DROPPED, "queue_full")
        self._unreachable = batched(TRACE_DROPPED, "unreachable")
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._retry_at = 0.0  # monotonic: traces before it are dropped unencoded
        self._backoff = 0.0
        self._failures = 0

    # -- the request path -------------------------------------------------------------------

    def submit(self, trace: Trace) -> None:
        """A finished trace: its spans encoded and pending, or dropped (counted) when
        that would pass ``max_queue_spans`` or while the collector is backed off."""
        n = 1 + len(trace.attempts)
        queued = self.queued + n
        if queued > self.max_queue_spans:
            self._queue_full.value += n
            return
        if self._retry_at and self.loop.time() < self._retry_at:
            self._unreachable.value += n
            return
        self.queued = self._encoder.add(trace, self._epoch)
        if queued >= self.batch_spans:
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)

    # -- the background task ------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = self.loop.create_task(self._run())

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the task, then export what is queued (bounded by ``timeout_s``)."""
        task, self._task = self._task, None
        if task is not None:
            # Cancelled until done: a cancellation can be lost (Python 3.11's
            # asyncio.wait_for drops one that arrives as the export it waits for
            # completes), and the task would then run on, its stop never returning.
            while not task.done():
                task.cancel()
                await asyncio.wait((task,), timeout=0.1)
        if self.queued and self.loop.time() >= self._retry_at:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.export_once(), timeout_s)
        self._close()

    async def _run(self) -> None:
        loop = self.loop
        while True:
            if self.queued < self.batch_spans:
                wake = self._wake = loop.create_future()
                timer = loop.call_later(self.interval_s, _set, wake)
                try:
                    await wake
                finally:
                    timer.cancel()
                    self._wake = None
            try:
                await self.export_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the exporter die: spans are only lost
                log.exception("span export failed")

    def take(self) -> tuple[bytes, int]:
        """The pending spans as one OTLP request body, and how many they are (none
        are pending after)."""
        spans, self.queued = self.queued, 0
        body = self._encoder.take(os.getpid(), fastgw.__version__)
        self._epoch = time.time() - perf_counter()  # kept from drifting
        return body, spans

    async def export_once(self) -> None:
        """Export what is pending (or drop it while the collector is backed off)."""
        if not self.queued:
            return
        body, spans = self.take()
        if self.loop.time() < self._retry_at:
            TRACE_DROPPED.labels("unreachable").inc(spans)
            return
        try:
            status = await asyncio.wait_for(self._post(body), self.timeout_s)
        except TimeoutError as exc:  # first: it is an OSError too
            self._close()
            self._failed(spans, "timeout", exc)
            return
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            ssl.SSLError,
        ) as exc:
            self._close()
            self._failed(spans, "unreachable", exc)
            return
        if 200 <= status < 300:
            TRACE_SPANS.inc(spans)
            self._failures = 0
            self._backoff = 0.0
            self._retry_at = 0.0
        else:
            self._failed(spans, "rejected", RuntimeError(f"the collector answered {status}"))

    def _failed(self, spans: int, reason: str, exc: BaseException) -> None:
        TRACE_DROPPED.labels(reason).inc(spans)
        self._backoff = min(MAX_BACKOFF_S, self._backoff * 2.0 or 1.0)
        self._retry_at = self.loop.time() + self._backoff
        self._failures += 1
        if self._failures == 1:  # once per outage, not once per batch
            log.warning(
                "OTLP collector %s:%d: %s (%s); dropping spans, retrying in %g s",
                self._host,
                self._port,
                reason,
                str(exc) or type(exc).__name__,
                self._backoff,
            )

    async def _post(self, body: bytes) -> int:
        """POST one batch on the kept connection (a new one when there is none);
        the collector's status. The connection is kept when the answer's end is
        known (content-length) and the collector does not close it."""
        conn = self._conn
        if conn is None or conn[1].is_closing():
            conn = self._conn = await asyncio.open_connection(
                self._host, self._port, ssl=self._ssl, limit=_RESPONSE_HEAD_LIMIT
            )
        reader, writer = conn
        writer.write(self._head + b"content-length: %d\r\n\r\n" % len(body) + body)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
        status = int(parts[1])
        length = -1
        keep = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.lower().find(b"close") >= 0:
                keep = False
        if length >= 0:
            await reader.readexactly(length)
        if length < 0 or not keep:
            self._close()
        return status

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn[1].close()


def _set(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# -- encoding (off the request path) -----------------------------------------------------------


def encode(batch: list[Trace], epoch: float | None = None) -> bytes:
    """The OTLP ``ExportTraceServiceRequest`` of ``batch``, serialized: for each
    trace its request span (SERVER, the client's span as parent) and one span per
    upstream attempt (CLIENT, the request span as parent). ``epoch`` turns
    perf_counter readings into Unix time (now's when not given).

    Native (``rust/src/otlp.rs``, the Rust ``opentelemetry-proto`` crate's
    messages), the same encoding as :meth:`OtlpExporter.submit`'s, one trace at a
    time: each kind of span's constant part (name, route, target, key, status...)
    is serialized once and kept, so a span costs its own part (ids, times, a few
    numbers); text is borrowed from the trace, not copied. The specification is
    ``fastgw._reference.otlp``, the same spans built field by field with the Python
    ``opentelemetry-proto`` classes (the tests compare them)."""
    if epoch is None:
        epoch = time.time() - perf_counter()
    return ENCODER.encode(batch, epoch, os.getpid(), fastgw.__version__)


# The encoder of encode() (exporters have their own).
ENCODER = OtlpEncoder()
