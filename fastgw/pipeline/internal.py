"""Internal requests: the gateway asking itself (a cascade's judge, shadow traffic).

An internal request takes the same path as a client's (``pipeline/runner.py``):
access control with the caller's credentials (its limits and budgets count the
internal request too; the model check is left out: the configuration, not the
caller, named the model), routing, retries and fallbacks, metrics, tokens and
cost. Its answer goes to an :class:`InternalCycle`, which keeps it instead of
writing to a socket; its access-log line carries a mark (``"judge":true``,
``"shadow":true``).

::

    Internal         per process, carried from snapshot to snapshot: bound to the
                     proxy once (app), it makes the marked proxies on first use
    InternalProxy    the runner's Proxy, without the model check, logging marked
    InternalCycle    a Cycle with no connection: the answer kept (whole) or counted
                     and dropped (a stream), ``done`` when complete; lose() is the
                     client leaving (the request is cancelled, as for a client)
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import TYPE_CHECKING, Any

from fastgw._native import access_line
from fastgw.accesslog import AccessLog
from fastgw.errors import GatewayError, InternalError
from fastgw.server import wire
from fastgw.server.flow import FlowControl
from fastgw.server.protocol import Cycle
from fastgw.types import HeaderPairs

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from fastgw.pipeline.ctx import RequestCtx
    from fastgw.pipeline.runner import Proxy
    from fastgw.pipeline.snapshot import Snapshot
    from fastgw.providers.dialects import ClientDialect

log = logging.getLogger("fastgw.internal")

JUDGE = b',"judge":true}\n'
SHADOW = b',"shadow":true}\n'

# The paths the runner knows each endpoint by (what the access log shows).
_PATHS = {"chat": b"/v1/chat/completions", "completions": b"/v1/completions",
          "embeddings": b"/v1/embeddings", "responses": b"/v1/responses",
          "messages": b"/v1/messages"}
# Client headers an internal request carries: who is calling, nothing else.
_CREDENTIALS = frozenset({b"authorization", b"x-api-key", b"x-forwarded-for"})


class _NoFlow(FlowControl):
    """Flow control of a cycle without a connection: writing never pauses."""

    def __init__(self) -> None:  # no transport to watch
        self._reasons = 0
        self.write_paused = False
        self._drain = None
        self.listener = None


class InternalCycle(Cycle):
    """A request the gateway makes to itself: what a connection's Cycle is to the
    runner, with the answer kept here. ``done`` is set once it is complete."""

    __slots__ = ("_flow", "answer", "chunks", "done", "loop", "streamed_bytes")

    def __init__(self, loop: asyncio.AbstractEventLoop, path: bytes,
                 headers: HeaderPairs, body: bytes,
                 client_addr: Any) -> None:  # no connection: Cycle's own init needs one
        self.loop = loop
        self.path = path
        self.query = b""
        self.method = b"POST"
        self.headers = headers
        self.body = body
        self.client_addr = client_addr
        self.content_length = len(body)
        self.expect_continue = False
        self.keep_alive = True
        self.http10 = False
        self.started = False
        self.finished = False
        self.status = 0
        self.received_at = perf_counter()
        self.preset_error: GatewayError | None = None
        self.task: asyncio.Task[None] | None = None
        self.owner: Any = None
        self.on_lost = None
        self.forwarded = None
        self._chunked = False
        self._flow = _NoFlow()
        self.answer = b""  # a whole answer's body
        self.chunks = 0  # a stream's writes, counted and dropped
        self.streamed_bytes = 0
        self.done: asyncio.Future[None] = loop.create_future()

    @property
    def flow(self) -> FlowControl:
        return self._flow

    def send(self, status: int, header_block: bytes, body: bytes) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status
        self.answer = body
        self._complete()

    def send_answer(self, status: int, ctype: bytes, request_id: bytes, target_headers: bytes,
                    attempts: int, overhead_s: float, extra: bytes,
                    up_headers: HeaderPairs, secrets: tuple[bytes, ...],
                    body: bytes) -> None:
        self.send(status, b"", body)

    def send_error(self, exc: GatewayError, header_block: bytes | None = None,
                   body: bytes | None = None) -> None:
        status, _, envelope = wire.error_parts(exc)
        self.send(status, b"", envelope if body is None else body)

    def start(self, status: int, header_block: bytes) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        self.status = status

    def write(self, data: bytes) -> None:
        if data:
            self.chunks += 1
            self.streamed_bytes += len(data)

    def flush(self) -> None:
        return None

    def end(self, trailer: bytes = b"") -> None:
        if not self.finished:
            self.write(trailer)
            self._complete()

    def abort(self) -> None:
        if not self.finished:
            self.status = self.status if self.status >= 400 else 502
            self._complete()

    def _complete(self) -> None:
        self.finished = True
        if not self.done.done():
            self.done.set_result(None)

    def run_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.task = self.loop.create_task(coro)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self.finished:
            return
        if task.cancelled():
            self.status = 499
        else:
            exc = task.exception()
            if exc is not None and not isinstance(exc, GatewayError):
                log.error("unhandled error in an internal request", exc_info=exc)
            self.status = exc.status if isinstance(exc, GatewayError) else 500
        self._complete()

    def lose(self) -> None:
        """Give up on the answer (a judge's timeout): the request ends as when a
        client leaves, its upstream exchange dropped."""
        if self.finished:
            return
        hook = self.on_lost
        keep = hook is not None and hook(self)
        if not keep and self.task is not None:
            self.task.cancel()
        self.status = 499
        self._complete()


class _MarkedLog(AccessLog):
    """The access log, each line marked as an internal request's."""

    __slots__ = ("_inner", "_mark")

    def __init__(self, inner: AccessLog, mark: bytes) -> None:  # writes through ``inner``
        self._inner = inner
        self._mark = mark
        self.enabled = inner.enabled
        self.buffer = self if inner.buffer is not None else None  # (access, below)

    def access(self, *args: Any, **kwargs: Any) -> bool:
        """The log phase's line (``LogBuffer.access``'s arguments), marked, through
        ``inner`` (which schedules its own flush: never True)."""
        self.write_line(access_line(*args, **kwargs))
        return False

    def write_line(self, line: bytes) -> None:
        if line.endswith(b"}\n"):
            line = line[:-2] + self._mark
        self._inner.write_line(line)


_PROXY_CLASS: list[type[Proxy]] = []


def _proxy_class() -> type[Proxy]:
    """InternalProxy, made on first use: the runner imports the snapshot, whose
    filters import this module."""
    if _PROXY_CLASS:
        return _PROXY_CLASS[0]
    from fastgw.pipeline.controls import NO_CONTROLS, Controls
    from fastgw.pipeline.runner import Proxy

    class InternalProxy(Proxy):
        """The runner for internal requests: no model check (the configuration
        named the model) and no routing controls; the rest as for any request."""

        __slots__ = ()

        def route_phase(self, ctx: RequestCtx, has_controls: bool) -> Controls:
            self.find_route(ctx)
            return NO_CONTROLS

    _PROXY_CLASS.append(InternalProxy)
    return InternalProxy


class Internal:
    """Internal requests through the gateway's own routing; one per process, kept
    across reloads (each snapshot carries it), bound to the proxy at start."""

    __slots__ = ("_proxies", "proxy", "shared")

    def __init__(self) -> None:
        self.proxy: Proxy | None = None
        self._proxies: dict[bytes, Proxy] = {}
        # State the features using internal requests keep across reloads (a
        # shadow's in-flight count), by their own key.
        self.shared: dict[str, Any] = {}

    def bind(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self._proxies.clear()

    def _marked(self, mark: bytes) -> Proxy:
        main = self.proxy
        if main is None:
            raise InternalError("internal requests are not available (no proxy bound)")
        p = self._proxies.get(mark)
        if p is None:
            p = self._proxies[mark] = _proxy_class()(
                main.loop, main.recorder, _MarkedLog(main.access_log, mark), main.access,
                main.tracer)
        elif p.access is not main.access:  # a reload's access control
            p.set_access(main.access)
        return p

    def start(self, parent: RequestCtx, snapshot: Snapshot, body: bytes, mark: bytes, *,
              endpoint: str, dialect: ClientDialect,
              headers: list[tuple[bytes, bytes]] | None = None) -> InternalCycle:
        """Send ``body`` (a request to ``endpoint``, in ``dialect``) through the
        gateway as ``parent``'s caller; the cycle's ``done`` says when it is
        answered. ``headers``: the client headers it carries (default: the
        caller's credentials)."""
        proxy = self._marked(mark)
        cycle_in = parent.cycle
        if headers is None:
            headers = [(n, v) for n, v in cycle_in.headers if n in _CREDENTIALS]
        trace = parent.trace
        if trace is not None:  # the internal request's span: a child of the parent's
            line = trace.header(trace.span_id)
            headers = [*headers, (b"traceparent", line[len(b"traceparent: "):-2])]
        cycle = InternalCycle(proxy.loop, _PATHS.get(endpoint, cycle_in.path), headers, body,
                              cycle_in.client_addr)
        coro = proxy.run(cycle, snapshot, endpoint, dialect)
        if coro is not None:
            cycle.run_task(coro)
        return cycle
