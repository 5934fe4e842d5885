"""The exporter's request side: a finished trace is encoded at once into the
pending spans (nothing of the request kept), bounded by ``max_queue_spans``,
and dropped unencoded while the collector is backed off; what is pending is
taken as one OTLP request body."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from fastgw._reference import otlp as reference
from fastgw.tracing import AttemptSpan, Report, Trace
from fastgw.tracing.otlp import OtlpExporter


@pytest.fixture
def exporter() -> Iterator[OtlpExporter]:
    loop = asyncio.new_event_loop()
    try:
        # Port 9 (discard): nothing listens; the task is never started here.
        yield OtlpExporter(loop, "http://127.0.0.1:9", max_queue_spans=8, batch_spans=4)
    finally:
        loop.close()


def finished(n: int, attempts: int = 1) -> Trace:
    t = Trace(0x1000 + n, 0, 0x2000 + n)
    for k in range(attempts):
        a = AttemptSpan(0x3000 + 16 * n + k, "mock", "openai", "gpt-4o", "gpt")
        a.start, a.end = 1.0 + k, 1.5 + k
        t.attempts.append(a)
    t.report = Report(start=0.5, finished=3.0, status=200, method=b"POST",
                      path=b"/v1/chat/completions", endpoint="chat", asked="gpt",
                      served="gpt", response_model="gpt-4o", provider="mock",
                      request_id=b"req_%d" % n, tokens=(3, 4), overhead_s=0.0001)
    return t


def decoded(body: bytes) -> ExportTraceServiceRequest:
    msg = ExportTraceServiceRequest()
    msg.ParseFromString(body)
    return msg


def test_submitted_traces_are_encoded_at_once_and_taken_together(
        exporter: OtlpExporter) -> None:
    traces = [finished(0), finished(1, attempts=2)]
    for t in traces:
        exporter.submit(t)
    assert exporter.queued == 5  # 1 + 1, 1 + 2
    body, spans = exporter.take()
    assert spans == 5 and exporter.queued == 0
    got = decoded(body)
    # The same spans the batch encoder's reference builds (at the exporter's epoch).
    want = decoded(reference.encode(traces, exporter._epoch))
    got_spans = got.resource_spans[0].scope_spans[0].spans
    want_spans = want.resource_spans[0].scope_spans[0].spans
    assert [s.span_id for s in got_spans] == [s.span_id for s in want_spans]
    assert [s.name for s in got_spans] == ["chat gpt", "chat gpt-4o"] + ["chat gpt"] + [
        "chat gpt-4o"] * 2
    for g, w in zip(got_spans, want_spans, strict=True):
        assert g.attributes == w.attributes and g.parent_span_id == w.parent_span_id
    # Nothing is left for the next take.
    assert not decoded(exporter.take()[0]).resource_spans[0].scope_spans[0].spans


def test_the_pending_spans_are_bounded(exporter: OtlpExporter) -> None:
    full = exporter._queue_full.value
    for n in range(10):
        exporter.submit(finished(n))  # 2 spans each; the bound is 8
    assert exporter.queued == 8
    assert exporter._queue_full.value - full == 12
    _, spans = exporter.take()
    assert spans == 8


def test_while_backed_off_traces_are_dropped_unencoded(exporter: OtlpExporter) -> None:
    exporter._retry_at = exporter.loop.time() + 60.0
    dropped = exporter._unreachable.value
    exporter.submit(finished(0, attempts=2))
    assert exporter.queued == 0 and exporter._encoder.pending() == 0
    assert exporter._unreachable.value - dropped == 3
    exporter._retry_at = exporter.loop.time() - 1.0  # the backoff is over
    exporter.submit(finished(1))
    assert exporter.queued == 2 == exporter._encoder.pending()


def test_an_export_while_backed_off_drops_what_is_pending(exporter: OtlpExporter) -> None:
    exporter.submit(finished(0))
    exporter._retry_at = exporter.loop.time() + 60.0
    exporter.loop.run_until_complete(exporter.export_once())  # no connection tried
    assert exporter.queued == 0 and exporter._encoder.pending() == 0
    assert exporter._conn is None


def test_stop_returns_when_a_cancellation_of_the_task_is_lost() -> None:
    """An export that swallows the cancellation (as Python 3.11's ``wait_for`` can,
    when the export it waits for completes at that moment): the task would run on,
    waiting for its next interval; stop cancels it again and returns."""

    class Stubborn(OtlpExporter):
        __slots__ = ("swallowed",)
        swallowed: int

        async def export_once(self) -> None:
            self.take()  # as an export does: what is pending is taken
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                if self.swallowed:
                    raise
                self.swallowed += 1  # lost, once: the export returns as if it had finished

    async def main() -> float:
        loop = asyncio.get_running_loop()
        exp = Stubborn(loop, "http://127.0.0.1:9", batch_spans=1, interval_s=30.0)
        exp.swallowed = 0
        exp.submit(finished(1))  # a full batch: the task exports at once
        exp.start()
        await asyncio.sleep(0.05)  # the task is in its export
        start = loop.time()
        await asyncio.wait_for(exp.stop(), 5)
        assert exp.swallowed == 1
        return loop.time() - start

    assert asyncio.run(main()) < 2.0
