"""Per-request state shared by the phases of the pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastgw.pipeline.snapshot import ModelRoute, Snapshot, TargetRuntime
from fastgw.server.protocol import Cycle
from fastgw.upstream.connection import UpstreamConnection

if TYPE_CHECKING:
    from fastgw.pipeline.forward import Pipe


class Begun:
    """The first model's first attempt, as the direct path (no task) began it.

    ``order`` is the balancer's order for the model (computed once). ``idx`` is
    the target tried (-1: none was). While the exchange runs, ``conn`` is its
    connection; when it fails on the connection, ``error`` says why and the
    task that takes over may still recover it; when it failed with an answer
    (an error status), ``conn`` is None and ``error`` is final. A stream's
    ``pipe`` relays it once its head is in.
    """

    __slots__ = ("conn", "error", "fwd", "idx", "order", "pipe", "request", "sent")

    def __init__(self, order: list[int], fwd: bytes) -> None:
        self.order = order
        self.fwd = fwd  # the forwarded client headers, for further attempts
        self.idx = -1
        self.conn: UpstreamConnection | None = None
        self.error: BaseException | None = None
        self.pipe: Pipe | None = None
        self.request = b""
        self.sent = 0.0


class RequestCtx:
    """Everything the phases learn about one request, for the next phase and the log."""

    __slots__ = (
        "asked",
        "attempts",
        "begun",
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
        "running",
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
        self.begun: Begun | None = None
        self.running = False  # a task is answering (it ends the request itself)
