"""The exporter's span encoder (native, the Rust opentelemetry-proto crate's messages)
against the plain construction, field by field, of the same spans with the Python
opentelemetry-proto classes (``fastgw._reference.otlp``): the same message once
decoded, span for span and attribute for attribute, for varied traces."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import fastgw
from fastgw._native import OtlpEncoder
from fastgw._reference import otlp as reference
from fastgw.tracing import AttemptSpan, Report, Trace, otlp

EPOCH = 1_700_000_000.25

ids64 = st.integers(1, (1 << 64) - 1)
names = st.sampled_from(["gpt-4o", "mock-model", "mock-model-a", "claude-3", "", "é-model"])
kinds = st.sampled_from(["openai", "azure", "anthropic", "openai-compatible", "other"])
times = st.floats(0.0, 1e6, allow_nan=False)
maybe = st.one_of(st.none(), st.sampled_from(["a", "b", "hit", "miss", "team-ü"]))
errors = st.one_of(st.none(), st.sampled_from(["connect", "timeout", "status", "stream"]))


@st.composite
def attempts(draw: Any) -> AttemptSpan:
    a = AttemptSpan(draw(ids64), draw(st.sampled_from(["mock", "down", "azure-east"])),
                    draw(kinds), draw(names), draw(names))
    a.start = draw(st.sampled_from([0.0, 12.5, 100.000123]))
    a.end = draw(st.sampled_from([0.0, 12.75, 100.000456]))
    a.error = draw(errors)
    a.status = draw(st.sampled_from([0, 200, 429, 500]))
    return a


@st.composite
def traces(draw: Any) -> Trace:
    t = Trace(draw(st.integers(1, (1 << 128) - 1)), draw(st.one_of(st.just(0), ids64)),
              draw(ids64))
    t.attempts = draw(st.lists(attempts(), max_size=3))
    start = draw(times)
    t.report = Report(
        start=start,
        finished=start + draw(st.floats(0.0, 100.0)),
        status=draw(st.sampled_from([0, 200, 400, 429, 502])),
        error=draw(st.one_of(st.none(), st.sampled_from(["upstream timed out", "stream: ü"]))),
        method=draw(st.sampled_from([b"POST", b"GET"])),
        path=draw(st.sampled_from([b"/v1/chat/completions", b"/v1/messages", b"/v1/models"])),
        endpoint=draw(st.sampled_from(["chat", "completions", "embeddings", "messages", ""])),
        asked=draw(names),
        served=draw(names),
        response_model=draw(names),
        provider=draw(st.sampled_from(["", "mock", "down"])),
        key=draw(maybe),
        cache=draw(maybe),
        variant=draw(maybe),
        request_id=b"req_%016x" % draw(ids64),
        stream=draw(st.booleans()),
        tokens=draw(st.one_of(st.none(), st.tuples(st.integers(0, 1 << 20),
                                                   st.integers(0, 1 << 20)))),
        overhead_s=draw(st.floats(0.0, 1.0)),
        ttft_s=draw(st.one_of(st.just(-1.0), st.floats(0.0, 10.0))),
    )
    return t


def decoded(data: bytes) -> ExportTraceServiceRequest:
    msg = ExportTraceServiceRequest()
    msg.ParseFromString(data)
    return msg


@settings(max_examples=300, deadline=None)
@given(st.lists(traces(), max_size=6))
def test_the_encoded_batch_is_the_plain_construction(batch: list[Trace]) -> None:
    got = decoded(otlp.encode(batch, EPOCH))
    want = decoded(reference.encode(batch, EPOCH))
    assert got == want
    # Twice: the second time from the kept constant parts.
    assert decoded(otlp.encode(batch, EPOCH)) == want


def test_spans_keep_their_ids_parents_and_own_attributes() -> None:
    batch = []
    for i in range(3):
        t = Trace(1000 + i, (i + 1) % 3, 2000 + i)  # the last one without a parent
        a = AttemptSpan(3000 + i, "mock", "openai", "gpt-4o", "gpt")
        a.start, a.end = 1.0 + i, 2.0 + i
        t.attempts.append(a)
        t.report = Report(start=0.5 + i, finished=3.0 + i, status=200, method=b"POST",
                          path=b"/v1/chat/completions", endpoint="chat", asked="gpt",
                          request_id=b"req_%d" % i,
                          tokens=(10 + i, 20 + i) if i != 1 else None,
                          ttft_s=0.25 if i == 2 else -1.0)
        batch.append(t)
    req = decoded(otlp.encode(batch, EPOCH))
    assert req == decoded(reference.encode(batch, EPOCH))
    spans = req.resource_spans[0].scope_spans[0].spans
    assert [s.span_id for s in spans] == [
        x.to_bytes(8, "big") for x in (2000, 3000, 2001, 3001, 2002, 3002)
    ]
    assert spans[2].parent_span_id == (2).to_bytes(8, "big") and not spans[4].parent_span_id
    request_ids = [kv.value.string_value for s in spans[::2] for kv in s.attributes
                   if kv.key == "fastgw.request_id"]
    assert request_ids == ["req_0", "req_1", "req_2"]
    tokens = [[kv.value.int_value for kv in s.attributes if kv.key.startswith("gen_ai.usage")]
              for s in spans]
    assert tokens == [[10, 20], [10, 20], [], [], [12, 22], [12, 22]]


def test_times_and_rounding_follow_python() -> None:
    """Nanoseconds as ``int((t + epoch) * 1e9)``, milliseconds as ``round(x, 3)``
    (exact ties to even), for awkward values."""
    batch = []
    for overhead in (0.0000625, 0.0010005, 0.002675, 1e-9, 0.123456789, 3.0):
        t = Trace(7, 0, 8)
        t.report = Report(start=0.1, finished=0.30000000000000004, overhead_s=overhead,
                          ttft_s=overhead / 2,
                          request_id=b"req_\xe9")  # Latin-1, as the reference decodes it
        batch.append(t)
    assert decoded(otlp.encode(batch, EPOCH)) == decoded(reference.encode(batch, EPOCH))


def test_a_malformed_trace_is_a_type_error_not_a_crash() -> None:
    t = Trace(1, 0, 2)
    t.report = Report(request_id="not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        otlp.encode([t], EPOCH)
    t.report = (1.0, 2.0)  # type: ignore[assignment]
    with pytest.raises(TypeError, match="19 fields"):
        otlp.encode([t], EPOCH)


def test_the_kept_constant_parts_are_bounded() -> None:
    """More kinds of spans than the bound: what is kept stays bounded, the spans
    stay right."""
    enc = OtlpEncoder()
    batch = []
    for i in range(4100):
        t = Trace(1 + i, 0, 1 + i)
        t.report = Report(key=f"key-{i}", request_id=b"req")
        batch.append(t)
    got = enc.encode(batch, EPOCH, os.getpid(), fastgw.__version__)
    assert enc.kept()[0] <= 4096
    assert decoded(got) == decoded(reference.encode(batch, EPOCH))
