"""Traces over real sockets: W3C trace context in and out, OTLP/HTTP export to a
collector run by the test (decoded with opentelemetry-proto), sampling, and
collectors that are down or stalled; stream metrics (TTFT, TPOT, in-band
errors after the commit point)."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from gwtest import Gateway, chat, http, minimal_yaml, running, wait_for
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from fastgw.metrics import REQUESTS, TPOT, TRACE_DROPPED, TRACE_SPANS, TTFT
from fastgw.mock import MockOptions

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


class Collector:
    """An OTLP/HTTP receiver on a free port: every POST /v1/traces decoded."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                req = ExportTraceServiceRequest.FromString(body)
                with collector.lock:
                    collector.requests.append(req)
                    collector.headers.append(
                        {k.lower(): v for k, v in self.headers.items()} | {":path": self.path}
                    )
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[Span]:
        with self.lock:
            return [
                s
                for r in self.requests
                for rs in r.resource_spans
                for ss in rs.scope_spans
                for s in ss.spans
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def collector() -> Iterator[Collector]:
    c = Collector()
    try:
        yield c
    finally:
        c.close()


def post(
    port: int, method: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    r = http(port, method, path, body, headers)
    return r.status, r.body


def attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def traced_yaml(port: int, obs: str, extra_models: str = "") -> Any:
    def build(mock_port: int) -> str:
        text = minimal_yaml(mock_port)
        text = text.replace(
            "observability: {access_log: off}", f"observability: {{access_log: off, {obs}}}"
        )
        if extra_models:
            text = text.replace("models:\n", "models:\n" + extra_models, 1)
        return text.replace(
            "providers:\n",
            f"""providers:
  - name: down
    kind: openai
    base_url: http://127.0.0.1:{port}/v1
    api_key: sk-down
""",
            1,
        )

    return build


FLAKY = """  - name: flaky
    targets: [{provider: down, model: down-deployment}]
    retry: {attempts: 1}
    fallbacks: [gpt-test]
"""


def export_now(gw: Gateway) -> None:
    """Run one export at once (instead of waiting for the exporter's interval)."""
    exporter = gw.app.exporter
    assert exporter is not None
    for _ in range(20):
        if not exporter.queued:
            return
        gw.lt.run(exporter.export_once(), timeout=10)


def test_trace_is_continued_with_one_span_per_attempt_and_genai_attributes() -> None:
    down = dead_port()
    with (
        collector() as col,
        running(
            traced_yaml(
                down,
                f"otlp_endpoint: 'http://127.0.0.1:{col.port}', "
                "otlp_headers: {authorization: Bearer collector-token}",
                FLAKY,
            )
        ) as gw,
    ):
        status, body = post(
            gw.port,
            "POST",
            "/v1/chat/completions",
            chat("flaky"),
            headers={"traceparent": TRACEPARENT, "x-mock-echo": "1"},
        )
        assert status == 200, body
        doc = orjson.loads(body)
        upstream_tp = doc["echo"]["headers"]["traceparent"]
        export_now(gw)
        assert wait_for(lambda: len(col.spans()) >= 3, timeout=10)
        spans = col.spans()
        assert col.headers[0]["authorization"] == "Bearer collector-token"
        assert col.headers[0][":path"] == "/v1/traces"
        assert col.headers[0]["content-type"] == "application/x-protobuf"
    assert {s.trace_id.hex() for s in spans} == {CLIENT_TRACE}
    (request,) = [s for s in spans if s.kind == Span.SpanKind.SPAN_KIND_SERVER]
    attempts = [s for s in spans if s.kind == Span.SpanKind.SPAN_KIND_CLIENT]
    assert request.parent_span_id.hex() == CLIENT_SPAN
    assert len(attempts) == 2
    assert all(a.parent_span_id == request.span_id for a in attempts)
    first, second = sorted(attempts, key=lambda s: attrs(s)["fastgw.attempt"])
    assert attrs(first)["error.type"] == "connect"
    assert first.status.code == first.status.STATUS_CODE_ERROR
    assert attrs(first)["fastgw.provider"] == "down"
    a2 = attrs(second)
    assert a2["gen_ai.request.model"] == "mock-deployment"
    assert a2["gen_ai.response.model"] == "mock-deployment"
    assert a2["gen_ai.usage.input_tokens"] > 0 and a2["gen_ai.usage.output_tokens"] > 0
    assert a2["fastgw.model"] == "gpt-test" and "error.type" not in a2
    # The upstream's parent is the answering attempt's span, in the client's trace.
    assert upstream_tp == f"00-{CLIENT_TRACE}-{second.span_id.hex()}-01"
    r = attrs(request)
    assert r["gen_ai.request.model"] == "flaky"
    assert r["gen_ai.response.model"] == "mock-deployment"
    assert r["gen_ai.system"] == "_OTHER" and r["gen_ai.operation.name"] == "chat"
    assert r["gen_ai.usage.output_tokens"] == a2["gen_ai.usage.output_tokens"]
    assert r["fastgw.attempts"] == 2 and r["fastgw.model"] == "gpt-test"
    assert r["fastgw.provider"] == "mock" and r["http.response.status_code"] == 200
    assert r["fastgw.overhead_ms"] >= 0.0
    assert request.start_time_unix_nano <= first.start_time_unix_nano
    assert second.end_time_unix_nano <= request.end_time_unix_nano
    assert abs(request.start_time_unix_nano / 1e9 - time.time()) < 60


def test_a_trace_is_started_when_the_client_sends_none_and_streams_are_traced() -> None:
    with (
        collector() as col,
        running(traced_yaml(dead_port(), f"otlp_endpoint: 'http://127.0.0.1:{col.port}'")) as gw,
    ):
        status, body = post(
            gw.port, "POST", "/v1/chat/completions", chat(stream=True), headers={"x-mock-echo": "1"}
        )
        assert status == 200 and b"[DONE]" in body
        export_now(gw)
        assert wait_for(lambda: len(col.spans()) >= 2, timeout=10)
        spans = col.spans()
    (request,) = [s for s in spans if s.kind == Span.SpanKind.SPAN_KIND_SERVER]
    (attempt,) = [s for s in spans if s.kind == Span.SpanKind.SPAN_KIND_CLIENT]
    assert not request.parent_span_id and len(request.trace_id) == 16
    assert attempt.trace_id == request.trace_id
    r = attrs(request)
    assert r["fastgw.stream"] is True and r["fastgw.ttft_ms"] > 0
    assert r["gen_ai.usage.output_tokens"] > 0


def test_sampling_ratio_zero_exports_nothing_and_passes_the_header_through() -> None:
    with (
        collector() as col,
        running(
            traced_yaml(
                dead_port(), f"otlp_endpoint: 'http://127.0.0.1:{col.port}', trace_sample_ratio: 0"
            )
        ) as gw,
    ):
        for _ in range(5):
            status, body = post(
                gw.port,
                "POST",
                "/v1/chat/completions",
                chat(),
                headers={"traceparent": TRACEPARENT, "x-mock-echo": "1"},
            )
            assert status == 200
            assert orjson.loads(body)["echo"]["headers"]["traceparent"] == TRACEPARENT
        exporter = gw.app.exporter
        assert exporter is not None and exporter.queued == 0
        gw.lt.run(exporter.export_once())
        time.sleep(0.2)
        assert col.spans() == []


def _latency(gw: Gateway, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        status, _ = post(gw.port, "POST", "/v1/chat/completions", chat())
        times.append(time.perf_counter() - t)
        assert status == 200
    return statistics.median(times)


def _dropped(gw: Gateway) -> float:
    return sum(
        gw.metric(TRACE_DROPPED, r) for r in ("queue_full", "unreachable", "timeout", "rejected")
    )


@pytest.mark.parametrize("kind", ["dead", "stalled"])
def test_a_collector_down_or_stalled_drops_spans_without_slowing_requests(kind: str) -> None:
    stalled = socket.socket()  # listens (the kernel accepts), never answers
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(64)
    port = dead_port() if kind == "dead" else stalled.getsockname()[1]
    try:
        with running() as plain:
            _latency(plain, 20)  # warm up
            baseline = _latency(plain, 60)
        with running(
            traced_yaml(
                dead_port(), f"otlp_endpoint: 'http://127.0.0.1:{port}', otlp_timeout_s: 0.3"
            )
        ) as gw:
            exporter = gw.app.exporter
            assert exporter is not None
            exporter.max_queue_spans = 16  # so the queue's bound is reached too
            exporter.interval_s = 0.05
            before = _dropped(gw)
            reason = "timeout" if kind == "stalled" else "unreachable"
            by_reason = gw.metric(TRACE_DROPPED, reason)
            full = gw.metric(TRACE_DROPPED, "queue_full")
            exported = gw.metric(TRACE_SPANS)  # process-wide: other tests' too
            _latency(gw, 20)
            traced = _latency(gw, 60)
            assert wait_for(lambda: gw.metric(TRACE_DROPPED, reason) > by_reason, timeout=10)
            assert gw.metric(TRACE_DROPPED, "queue_full") > full  # bounded, not buffered
            assert _dropped(gw) > before
            assert exporter.queued <= exporter.max_queue_spans
            assert gw.metric(TRACE_SPANS) == exported
    finally:
        stalled.close()
    # Generous: the same requests on the same machine, only the exporter differs.
    assert traced < baseline * 3 + 0.002, (traced, baseline)


def _hist(gw: Gateway, metric: Any, *labels: str) -> float:
    def read() -> float:
        assert gw.app.gateway is not None
        gw.app.gateway.proxy.recorder.flush()
        return float(metric.labels(*labels)._sum.get())

    return gw.lt.call(read)


def _hist_count(gw: Gateway, metric: Any, *labels: str) -> float:
    def read() -> float:
        assert gw.app.gateway is not None
        gw.app.gateway.proxy.recorder.flush()
        return float(sum(b.get() for b in metric.labels(*labels)._buckets))

    return gw.lt.call(read)


def test_ttft_and_tpot_are_observed_for_a_stream() -> None:
    opts = MockOptions(chunks=6, chunk_interval_ms=20, latency_ms=30)
    with running(mock=opts) as gw:
        n_ttft = _hist_count(gw, TTFT, "gpt-test")
        n_tpot = _hist_count(gw, TPOT, "gpt-test")
        s_ttft = _hist(gw, TTFT, "gpt-test")
        status, body = post(gw.port, "POST", "/v1/chat/completions", chat(stream=True))
        assert status == 200 and b"[DONE]" in body
        assert wait_for(lambda: _hist_count(gw, TTFT, "gpt-test") == n_ttft + 1)
        assert _hist_count(gw, TPOT, "gpt-test") == n_tpot + 1
        ttft = _hist(gw, TTFT, "gpt-test") - s_ttft
        assert 0.025 <= ttft < 2.0  # the mock's 30 ms before its first token
        # Whole answers have no first token: nothing more observed.
        http(gw.port, "POST", "/v1/chat/completions", chat())
        assert _hist_count(gw, TTFT, "gpt-test") == n_ttft + 1


def test_an_error_event_after_the_first_content_counts_as_an_error(tmp_path: Path) -> None:
    log = tmp_path / "access.log"

    def yaml_for(mock_port: int) -> str:
        return minimal_yaml(mock_port).replace(
            "observability: {access_log: off}", f"observability: {{access_log: '{log}'}}"
        )

    with running(yaml_for) as gw:
        before = gw.metric(REQUESTS, "gpt-test", "mock", "502")
        status, body = post(
            gw.port,
            "POST",
            "/v1/chat/completions",
            chat(stream=True),
            headers={"x-mock-fault": "error-event"},
        )
        assert status == 200 and b"error" in body  # the head went out before it
        assert gw.metric(REQUESTS, "gpt-test", "mock", "502") == before + 1

        def line() -> dict[str, Any] | None:
            text = log.read_text() if log.exists() else ""
            lines = [ln for ln in text.splitlines() if ln.strip()]
            return orjson.loads(lines[-1]) if lines else None

        assert wait_for(lambda: line() is not None)
        entry = line()
        assert entry is not None
        assert entry["status"] == 502
        assert "error event after the stream started" in entry["error"]


JUDGED = """  - name: judged
    cascade:
      - {model: gpt-test, accept_if: {judge: {model: same-name, prompt: "Simple? {input}",
                                              accept: ".", timeout_ms: 5000}}}
      - {model: same-name}
"""


def test_a_judge_request_is_a_span_of_the_request_that_asked_it() -> None:
    with (
        collector() as col,
        running(traced_yaml(dead_port(), f"otlp_endpoint: 'http://127.0.0.1:{col.port}'",
                            JUDGED)) as gw,
    ):
        status, body = post(gw.port, "POST", "/v1/chat/completions", chat("judged"),
                            headers={"traceparent": TRACEPARENT})
        assert status == 200, body
        export_now(gw)
        assert wait_for(lambda: len([s for s in col.spans()
                                     if s.kind == Span.SpanKind.SPAN_KIND_SERVER]) >= 2,
                        timeout=10)
        spans = col.spans()
    assert {s.trace_id.hex() for s in spans} == {CLIENT_TRACE}
    servers = {attrs(s)["gen_ai.request.model"]: s for s in spans
               if s.kind == Span.SpanKind.SPAN_KIND_SERVER}
    request, judge = servers["judged"], servers["same-name"]
    assert request.parent_span_id.hex() == CLIENT_SPAN
    assert judge.parent_span_id == request.span_id
    assert attrs(request)["fastgw.model"] == "gpt-test"  # the judge kept the cheap step
    clients = [s for s in spans if s.kind == Span.SpanKind.SPAN_KIND_CLIENT]
    assert {attrs(s)["fastgw.model"] for s in clients} == {"gpt-test", "same-name"}
