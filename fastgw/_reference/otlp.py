"""Pure-Python reference of the OTLP span encoder (``fastgw.tracing.otlp.encode``).

Every span built field by field with opentelemetry-proto's classes, the plain
way: slow (each attribute a message of its own), and the specification the
exporter's encoder (which reuses pre-serialized pieces) must match, span for
span and attribute for attribute, once decoded.

A span's attributes come in a fixed order: the ones that describe the request's
kind (its route, target, key, status...) first, then the ones that differ from
request to request (tokens, request id, overhead, time to first token).
"""

from __future__ import annotations

import os
import time
from time import perf_counter
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

import fastgw

__all__ = ["OPERATION", "SYSTEM", "encode", "put"]

# gen_ai.system (and its newer name gen_ai.provider.name) by provider kind; an
# OpenAI-compatible server (vLLM, llama.cpp, ...) is none of the well-known ones.
SYSTEM = {
    "openai": "openai",
    "azure": "az.ai.openai",
    "anthropic": "anthropic",
    "openai-compatible": "_OTHER",
}
# gen_ai.operation.name by client endpoint
OPERATION = {
    "chat": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "responses": "chat",
    "messages": "chat",
}
_SERVER = Span.SpanKind.SPAN_KIND_SERVER
_CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
_ERROR = Status.StatusCode.STATUS_CODE_ERROR


def put(attrs: Any, key: str, value: str | int | float | bool) -> None:
    """One attribute appended to ``attrs`` (a repeated ``KeyValue`` field)."""
    kv = attrs.add()
    kv.key = key
    v = kv.value
    if isinstance(value, bool):
        v.bool_value = value
    elif isinstance(value, int):
        v.int_value = value
    elif isinstance(value, float):
        v.double_value = value
    else:
        v.string_value = value


def _ns(t: float, epoch: float) -> int:
    return int((t + epoch) * 1e9)


def encode(batch: list[Any], epoch: float | None = None) -> bytes:
    """The OTLP ``ExportTraceServiceRequest`` of ``batch`` (a list of
    :class:`fastgw.tracing.Trace`), serialized: for each trace its request span
    (SERVER, the client's span as parent) and one span per upstream attempt
    (CLIENT, the request span as parent). ``epoch`` turns perf_counter readings
    into Unix time (now's when not given)."""
    if epoch is None:
        epoch = time.time() - perf_counter()
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    attrs = rs.resource.attributes
    put(attrs, "service.name", "fastgw")
    put(attrs, "service.version", fastgw.__version__)
    put(attrs, "process.pid", os.getpid())
    scope = InstrumentationScope(name="fastgw", version=fastgw.__version__)
    out = rs.scope_spans.add(scope=scope).spans
    for trace in batch:
        request_span(out.add(), trace, epoch)
        last = len(trace.attempts) - 1
        for i, attempt in enumerate(trace.attempts):
            attempt_span(out.add(), trace, attempt, i, i == last, epoch)
    data: bytes = req.SerializeToString()
    return data


def request_span(span: Span, trace: Any, epoch: float) -> None:
    t = trace.report
    attempts = trace.attempts
    operation = OPERATION.get(t.endpoint, t.endpoint)
    span.trace_id = trace.trace_id.to_bytes(16, "big")
    span.span_id = trace.span_id.to_bytes(8, "big")
    if trace.parent_id:
        span.parent_span_id = trace.parent_id.to_bytes(8, "big")
    method = t.method.decode("latin-1")
    path = t.path.decode("latin-1")
    span.name = f"{operation} {t.asked}" if t.asked else f"{method} {path}"
    span.kind = _SERVER
    span.start_time_unix_nano = _ns(t.start, epoch)
    span.end_time_unix_nano = _ns(t.finished, epoch)
    a = span.attributes
    put(a, "gen_ai.operation.name", operation)
    if attempts:
        system = SYSTEM.get(attempts[-1].kind, "_OTHER")
        put(a, "gen_ai.system", system)
        put(a, "gen_ai.provider.name", system)
    if t.asked:
        put(a, "gen_ai.request.model", t.asked)
    if t.response_model:
        put(a, "gen_ai.response.model", t.response_model)
    put(a, "http.request.method", method)
    put(a, "url.path", path)
    put(a, "http.response.status_code", t.status)
    if t.key is not None:
        put(a, "fastgw.key", t.key)
    if t.served:
        put(a, "fastgw.model", t.served)
    if t.provider:
        put(a, "fastgw.provider", t.provider)
    if t.variant is not None:
        put(a, "fastgw.variant", t.variant)
    if t.cache is not None:
        put(a, "fastgw.cache", t.cache)
    put(a, "fastgw.attempts", len(attempts))
    put(a, "fastgw.stream", t.stream)
    if t.error is not None:
        put(a, "error.type", str(t.status) if t.status >= 400 else "error")
        span.status.code = _ERROR
        span.status.message = t.error
    if t.tokens is not None:
        put(a, "gen_ai.usage.input_tokens", t.tokens[0])
        put(a, "gen_ai.usage.output_tokens", t.tokens[1])
    put(a, "fastgw.request_id", t.request_id.decode("latin-1"))
    put(a, "fastgw.overhead_ms", round(t.overhead_s * 1000.0, 3))
    if t.ttft_s >= 0.0:
        put(a, "fastgw.ttft_ms", round(t.ttft_s * 1000.0, 3))


def attempt_span(span: Span, trace: Any, attempt: Any, i: int, last: bool, epoch: float) -> None:
    t = trace.report
    operation = OPERATION.get(t.endpoint, t.endpoint)
    system = SYSTEM.get(attempt.kind, "_OTHER")
    span.trace_id = trace.trace_id.to_bytes(16, "big")
    span.span_id = attempt.span_id.to_bytes(8, "big")
    span.parent_span_id = trace.span_id.to_bytes(8, "big")
    span.name = f"{operation} {attempt.model}"
    span.kind = _CLIENT
    start = attempt.start or attempt.end or t.finished
    span.start_time_unix_nano = _ns(start, epoch)
    span.end_time_unix_nano = _ns(attempt.end or t.finished, epoch)
    a = span.attributes
    put(a, "gen_ai.operation.name", operation)
    put(a, "gen_ai.system", system)
    put(a, "gen_ai.provider.name", system)
    put(a, "gen_ai.request.model", attempt.model)
    put(a, "fastgw.provider", attempt.provider)
    put(a, "fastgw.model", attempt.route)
    put(a, "fastgw.attempt", i + 1)
    error = attempt.error
    # The last attempt answered the request unless it failed itself; a stream's
    # failure after its first content is the request's (and so this attempt's).
    if last and error is None:
        put(a, "gen_ai.response.model", attempt.model)
        if t.status:
            put(a, "http.response.status_code", attempt.status or t.status)
        if t.error is not None:
            span.status.code = _ERROR
            span.status.message = t.error
        if t.tokens is not None:
            put(a, "gen_ai.usage.input_tokens", t.tokens[0])
            put(a, "gen_ai.usage.output_tokens", t.tokens[1])
    elif error is not None:
        if attempt.status:
            put(a, "http.response.status_code", attempt.status)
        put(a, "error.type", error)
        span.status.code = _ERROR
        span.status.message = f"attempt failed: {error}"
