"""Per-route filter chains: where a model's features plug into the request path.

A feature (a cache, a transform, a guardrail...) is one :class:`Filter`
subclass overriding only the hooks it needs. A model's filters are compiled
once per configuration into a :class:`Chain` (on ``ModelRoute.chain``), one
tuple of bound methods per hook; a model with no filter has no chain, and
every phase below pays one falsy check for the lot. The hooks, in the order a
request meets them (``pipeline/runner.py`` draws the whole path)::

    request            after the model is found, before limits are reserved: may edit
                       ctx.doc / ctx.body, refuse (raise a GatewayError), or answer
                       by returning a Reply (nothing goes upstream; limits still count
                       it as a request), or return Later when it must wait this once
    upstream_request   per attempt, the body about to be sent to a target (after
                       translation into the target's dialect): returns the body to send
    response           a whole 2xx answer, in the client's dialect, before it is sent:
                       returns the body to send
    response_async     the same, awaited (a filter with it sets ``awaits``: the task
                       path), after the ``response`` hooks
    chunk              each piece of a 2xx stream, in the client's dialect, before it is
                       written: returns the bytes to write (b"" holds them back)
    logging            always, once, when the request ends (whatever happened)

A filter whose ``request`` hook must wait (I/O: a Redis lookup, a webhook)
sets ``awaits = True`` and makes ``request`` a coroutine function: a request
on such a route then always takes the task path (the direct path never
awaits). Filters apply to the model being tried (``ctx.route``): the
``request`` hooks of the model the client asked (after its variant is chosen),
the others of the model serving the attempt (a fallback's own filters).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from fastgw.pipeline.ctx import RequestCtx
    from fastgw.pipeline.snapshot import TargetRuntime


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer a ``request`` hook gives instead of the upstream's; ``stream``: the
    body is an SSE stream, sent chunked."""

    status: int
    body: bytes
    headers: bytes = b"content-type: application/json\r\n"  # a header block, CRLF-ended
    stream: bool = False


class Later:
    """What a ``request`` hook of a filter that does not await says when, this
    once, it must wait: a task awaits ``wait()`` for its answer (a Reply, or None
    to go on). Nothing is started until then."""

    __slots__ = ("wait",)

    def __init__(self, wait: Callable[[], Awaitable[Reply | None]]) -> None:
        self.wait = wait


class Filter:
    """Base of a route's features: every hook is optional (the defaults do nothing
    and are left out of the chain)."""

    awaits: ClassVar[bool] = False  # request() is a coroutine function

    def request(self, ctx: RequestCtx) -> Reply | Later | Awaitable[Reply | None] | None:
        return None

    def upstream_request(self, ctx: RequestCtx, target: TargetRuntime, body: bytes) -> bytes:
        return body

    def response(self, ctx: RequestCtx, status: int, body: bytes) -> bytes:
        return body

    async def response_async(self, ctx: RequestCtx, status: int, body: bytes) -> bytes:
        return body

    def chunk(self, ctx: RequestCtx, data: bytes) -> bytes:
        return data

    def logging(self, ctx: RequestCtx) -> None:
        return None


_HOOKS = ("request", "upstream_request", "response", "response_async", "chunk", "logging")


class Chain:
    """A route's filters, one tuple of bound hooks per phase (only overridden ones)."""

    __slots__ = ("awaits", "chunk", "filters", "logging", "request", "response",
                 "response_async", "upstream_request")

    def __init__(self, filters: tuple[Filter, ...]) -> None:
        self.filters = filters
        self.awaits = any(f.awaits for f in filters)
        for hook in _HOOKS:
            base = getattr(Filter, hook)
            bound = tuple(getattr(f, hook) for f in filters
                          if getattr(type(f), hook) is not base)
            setattr(self, hook, bound)
        self.request: tuple[Callable[[RequestCtx], Any], ...]
        self.upstream_request: tuple[Callable[[RequestCtx, TargetRuntime, bytes], bytes], ...]
        self.response: tuple[Callable[[RequestCtx, int, bytes], bytes], ...]
        self.response_async: tuple[Callable[[RequestCtx, int, bytes], Awaitable[bytes]], ...]
        self.chunk: tuple[Callable[[RequestCtx, bytes], bytes], ...]
        self.logging: tuple[Callable[[RequestCtx], None], ...]


def compile_chain(filters: tuple[Filter, ...]) -> Chain | None:
    """The chain of ``filters``; None when there are none (a plain route)."""
    return Chain(filters) if filters else None


class ChunkSink:
    """A stream's client side with the route's ``chunk`` hooks in front."""

    __slots__ = ("ctx", "hooks", "sink")

    def __init__(self, sink: Any, ctx: RequestCtx,
                 hooks: tuple[Callable[[RequestCtx, bytes], bytes], ...]) -> None:
        self.sink = sink
        self.ctx = ctx
        self.hooks = hooks

    def write(self, data: bytes) -> None:
        for hook in self.hooks:
            data = hook(self.ctx, data)
        if data:
            self.sink.write(data)
