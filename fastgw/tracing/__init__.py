"""Traces: W3C trace context in, spans recorded per request, OTLP export out.

The request path records numbers: :meth:`Tracer.start` reads the client's
``traceparent`` (continued) or starts a trace, decides once per trace whether
it is sampled, and gives the request a :class:`Trace`; each upstream attempt
adds an :class:`AttemptSpan` (its id, its start and end, its target, how it
failed) and sends ``traceparent`` with that span as the parent; the finished
request fills in its :class:`Report` and hands the trace to the exporter,
which encodes it natively at once (:mod:`.otlp`) and keeps only those bytes
until its background task posts them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

from fastgw.types import HeaderPairs

__all__ = ["AttemptSpan", "Report", "Trace", "Tracer", "parse_traceparent"]

_LOW64 = (1 << 64) - 1
# Ids need to be unique, not secret. Seeded anew by each Tracer (one per worker,
# made after the fork), so workers never share a sequence.
_RNG = random.Random()
_BITS = _RNG.getrandbits


class AttemptSpan:
    """One upstream attempt, as its span will say (filled in as it goes)."""

    __slots__ = ("end", "error", "kind", "model", "provider", "route", "span_id", "start", "status")

    def __init__(self, span_id: int, provider: str, kind: str, model: str, route: str) -> None:
        self.span_id = span_id
        self.provider = provider  # the provider's configured name
        self.kind = kind  # openai | azure | anthropic | openai-compatible
        self.model = model  # the deployment asked for upstream
        self.route = route  # the model of the gateway tried (asked, variant, fallback)
        self.start = 0.0  # perf_counter; 0 until sent
        self.end = 0.0
        self.error: str | None = None  # the failure's reason (connect, timeout, status, ...)
        self.status = 0  # the upstream's status when it answered one


class Report(NamedTuple):
    """What a finished request's span reports (pipeline/outcome.py fills it in once,
    as one tuple: the exporter's encoder reads it by position)."""

    start: float = 0.0  # perf_counter
    finished: float = 0.0
    status: int = 0
    error: str | None = None
    method: bytes = b""
    path: bytes = b""
    endpoint: str = ""
    asked: str = ""
    served: str = ""
    response_model: str = ""
    provider: str = ""
    key: str | None = None
    cache: str | None = None
    variant: str | None = None
    request_id: bytes = b""
    stream: bool = False
    tokens: tuple[int, int] | None = None
    overhead_s: float = 0.0
    ttft_s: float = -1.0  # negative: none


_NO_REPORT = Report()


class Trace:
    """One sampled request: the trace it belongs to, its own span, its attempts,
    and (once finished) what the request span reports."""

    __slots__ = ("attempts", "parent_id", "report", "span_id", "trace_id")

    def __init__(self, trace_id: int, parent_id: int, span_id: int) -> None:
        self.trace_id = trace_id
        self.parent_id = parent_id  # the client's span (0: this request starts the trace)
        self.span_id = span_id  # the request's span
        self.attempts: list[AttemptSpan] = []
        self.report = _NO_REPORT  # set when the request ends

    @staticmethod
    def new_id() -> int:
        """A new span id (non-zero)."""
        return _BITS(64) or 1

    def header(self, span_id: int) -> bytes:
        """The ``traceparent`` line sent upstream with ``span_id`` as the parent."""
        return b"traceparent: 00-%032x-%016x-01\r\n" % (self.trace_id, span_id)


def parse_traceparent(value: bytes) -> tuple[int, int] | None:
    """(trace id, parent span id) of a valid W3C ``traceparent``, else None.

    Version ``00`` is exactly 55 characters; a later version may add fields
    after the four known ones (read, the rest ignored); ``ff`` is invalid, as
    are all-zero ids."""
    if (
        len(value) < 55
        or value[2:3] != b"-"
        or value[35:36] != b"-"
        or value[52:53] != b"-"
        or (len(value) > 55 and value[55:56] != b"-")
    ):
        return None
    version = value[:2]
    if version == b"ff" or (version == b"00" and len(value) != 55):
        return None
    try:
        # int() also takes "_", "+" and spaces: only lowercase hex is valid here.
        if not value[:55].replace(b"-", b"").isalnum() or value != value.lower():
            return None
        int(version, 16)
        int(value[53:55], 16)
        trace_id = int(value[3:35], 16)
        parent = int(value[36:52], 16)
    except ValueError:
        return None
    if not trace_id or not parent:
        return None
    return trace_id, parent


class Tracer:
    """Starts traces for one worker: continues the client's, samples, makes ids."""

    __slots__ = ("_bound", "ratio", "submit")

    def __init__(self, ratio: float, submit: Callable[[Trace], None]) -> None:
        self.ratio = ratio
        # Sampled when the trace id's low 64 bits are below the bound (OpenTelemetry's
        # TraceIdRatioBased): decided by the trace id alone, so every attempt, every
        # worker and every instance that sees the trace decides the same.
        self._bound = int(ratio * (1 << 64))
        _RNG.seed()
        self.submit = submit  # the exporter's queue

    def start(self, headers: HeaderPairs,
              forwarded: bytes) -> tuple[Trace | None, bytes | None]:
        """The request's trace, or None when it is not sampled; and the client's
        ``traceparent`` value when it sent one (the caller removes it from what
        goes upstream, which then carries the gateway's own). ``forwarded``: the
        header lines forwarded upstream (lowercase names), where one search says
        whether to look for it at all."""
        incoming = None
        if forwarded.find(b"traceparent:") >= 0:
            for name, value in headers:
                if name == b"traceparent":
                    incoming = value
                    break
        ids = None if incoming is None else parse_traceparent(incoming)
        bits = _BITS
        if ids is None:
            trace_id, parent = bits(128) or 1, 0
        else:
            trace_id, parent = ids
        if trace_id & _LOW64 >= self._bound:
            return None, incoming
        return Trace(trace_id, parent, bits(64) or 1), incoming
