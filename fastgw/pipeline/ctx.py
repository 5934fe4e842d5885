"""Per-request state shared by the phases of the pipeline."""

from __future__ import annotations

from typing import Any

from fastgw.pipeline.snapshot import ModelRoute, Snapshot, TargetRuntime
from fastgw.server.protocol import Cycle


class RequestCtx:
    """Everything the phases learn about one request, for the next phase and the log."""

    __slots__ = (
        "asked",
        "attempts",
        "body",
        "client_usage",
        "completion_tokens",
        "cycle",
        "doc",
        "endpoint",
        "error",
        "extra_headers",
        "grant",
        "key_name",
        "model",
        "overhead_s",
        "prompt_tokens",
        "request_id",
        "route",
        "snapshot",
        "status",
        "stream",
        "t0",
        "target",
        "ttfb_s",
        "upstream_s",
        "usage_known",
        "variant",
    )

    def __init__(self, cycle: Cycle, snapshot: Snapshot, endpoint: str, request_id: bytes) -> None:
        self.cycle = cycle
        self.snapshot = snapshot
        self.endpoint = endpoint
        self.request_id = request_id
        self.t0 = cycle.received_at
        self.body = cycle.body
        self.doc: dict[str, Any] = {}
        self.model = ""
        self.asked: ModelRoute | None = None  # the model the client named
        self.route: ModelRoute | None = None  # the model being tried (variant, fallback)
        self.variant: str | None = None
        self.target: TargetRuntime | None = None
        self.stream = False
        self.client_usage = True  # False: the usage chunk was asked for by the gateway
        self.attempts = 0
        self.status = 0
        self.upstream_s = 0.0
        self.ttfb_s = -1.0
        self.overhead_s = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.usage_known = False
        self.error: str | None = None
        self.key_name: str | None = None
        # Set by access control: who is calling and what they were granted
        # (reservations to settle); headers added to every answer (x-ratelimit-*).
        self.grant: Any = None
        self.extra_headers = b""
