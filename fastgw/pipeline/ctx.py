"""Per-request state shared by the phases of the pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from fastgw.pipeline.snapshot import ModelRoute, Snapshot, TargetRuntime
from fastgw.providers.dialects import OPENAI_CLIENT, ClientDialect
from fastgw.server.protocol import Cycle

if TYPE_CHECKING:
    from fastgw.pipeline.attempt import Attempt
    from fastgw.pipeline.cache import CacheState
    from fastgw.tracing import Trace


class RequestCtx:
    """Everything the phases learn about one request, for the next phase and the log."""

    __slots__ = (
        "asked",
        "attempt",
        "attempts",
        "body",
        "body_controls",
        "cache",
        "cache_key",
        "cache_usage",
        "client_usage",
        "completion_tokens",
        "cycle",
        "dialect",
        "endpoint",
        "error",
        "extra_headers",
        "first_token",
        "fwd",
        "grant",
        "guards",
        "key_name",
        "model",
        "opened",
        "order",
        "overhead_s",
        "parsed_doc",
        "peeked_completion",
        "peeked_usage",
        "prompt_tokens",
        "request_id",
        "route",
        "running",
        "snapshot",
        "status",
        "stream",
        "t0",
        "target",
        "trace",
        "ttfb_s",
        "upstream_s",
        "usage_known",
        "variant",
    )

    # Set by the cache filter with a state that needs it (not in __init__: most
    # requests never have one).
    cache_key: bytes  # the request's cache key

    def __init__(self, cycle: Cycle, snapshot: Snapshot, endpoint: str, request_id: bytes,
                 fwd: bytes, dialect: ClientDialect = OPENAI_CLIENT) -> None:
        self.cycle = cycle
        self.snapshot = snapshot
        self.endpoint = endpoint
        self.dialect = dialect  # the client's: its errors and error events
        self.request_id = request_id
        self.fwd = fwd  # the client headers forwarded upstream, for every attempt
        self.t0 = cycle.received_at
        self.body = cycle.body
        # The body as a dict: parsed on first use (ctx.doc) when the request phase
        # read what it needs without parsing it (fastgw._native.peek_request).
        self.parsed_doc: dict[str, Any] | None = {}
        self.body_controls = False  # a top-level "fastgw" member (routing controls)
        # The completion tokens the limits' estimate reserves, as the peek read them
        # (-1: not peeked); valid while parsed_doc is None (the body as received).
        self.peeked_completion = -1
        # stream_options as the peek read them (True: usage asked; False: none; None:
        # ask the dict); valid while parsed_doc is None.
        self.peeked_usage: bool | None = None
        self.model = ""
        self.asked: ModelRoute | None = None  # the model the client named
        self.route: ModelRoute | None = None  # the model being tried (variant, fallback)
        self.variant: str | None = None
        self.target: TargetRuntime | None = None
        self.stream = False
        # A stream's opening events (OpenAI's role chunk, Anthropic's message_start)
        # reached the client: a failover's stream leaves its own out. Not when the
        # failed upstream sent nothing before its error.
        self.opened = False
        self.client_usage = True  # False: the usage chunk was asked for by the gateway
        self.attempts = 0
        self.status = 0
        self.upstream_s = 0.0
        self.ttfb_s = -1.0
        self.overhead_s = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.usage_known = False
        # (prompt-cache reads, writes) when the route reads them (usage_detail)
        self.cache_usage: tuple[int, int] | None = None
        self.cache: CacheState | None = None  # set by the route's cache filter
        self.error: str | None = None
        self.key_name: str | None = None
        # Set by access control: who is calling and what they were granted
        # (reservations to settle); headers added to every answer (x-ratelimit-*).
        self.grant: Any = None
        self.extra_headers = b""
        # The first model's targets in the balancer's order, when the direct path
        # computed it already (the task path then starts from it).
        self.order: list[int] | None = None
        self.attempt: Attempt | None = None  # the latest attempt
        self.running = False  # a task is answering (it ends the request itself)
        self.trace: Trace | None = None  # set when traces are on and this one is sampled
        # A stream's output guardrails, by filter (from their first chunk). (Set here:
        # reading an unset slot raises, and a caught AttributeError costs more.)
        self.guards: dict[Any, Any] | None = None
        self.first_token = 0.0  # a stream's first content went to the client (perf_counter)

    @property
    def doc(self) -> dict[str, Any]:
        """The body parsed as a JSON object (the request phase refused anything else)."""
        doc = self.parsed_doc
        if doc is None:
            doc = self.parsed_doc = orjson.loads(self.body)
        return doc

    @doc.setter
    def doc(self, doc: dict[str, Any]) -> None:
        self.parsed_doc = doc
