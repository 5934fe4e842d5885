"""The response cache as a filter of the routes that have one.

::

    request    Cache-Control (no-store: bypass; no-cache: no read, refresh;
               max-age=N), deterministic (temperature 0, or an embedding)? then
               the key (native, one call: scope, endpoint, the model asked, the
               body normalised) -> a hit answers at once, whole or replayed as a
               stream in the client's dialect, with a new id; a miss becomes the
               key's *flight* (identical misses meanwhile wait for its answer,
               bounded by the model's total_s, instead of going upstream too)
    response   a whole 2xx answer is stored (and handed to the flight's waiters)
    chunk      a stream's bytes are recorded as they are relayed (no extra latency)
    logging    a stream that ended well is stored; the flight ends (its waiters
               get the answer, or the error, uncached)

Every answer of a cached model says ``x-fastgw-cache: hit|miss|bypass``. A hit
counts as a request for the limits (rpm) but spends no tokens and no budget.
The store is shared by every route and kept across reloads that leave the
``cache`` and ``redis`` sections as they were: in memory (LRU) or in Redis, where
a failure is a miss, never an error.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from fastgw._native import cache_key
from fastgw.cache import (
    STREAM_ENDPOINTS,
    CacheEntry,
    MemoryCache,
    RedisCache,
    ReplayError,
    StreamRecorder,
    fresh_id,
    memory_cache,
    redis_cache,
    to_stream,
    with_id,
)
from fastgw.config import CacheConfig, RedisConfig
from fastgw.errors import GatewayError
from fastgw.metrics import CACHE, CACHE_SAVED, batched
from fastgw.pipeline.filters import Filter, Later, Reply
from fastgw.types import usage_asked

if TYPE_CHECKING:
    from fastgw.pipeline.ctx import RequestCtx
    from fastgw.pipeline.snapshot import ModelRoute

log = logging.getLogger("fastgw.cache")

HIT, MISS, BYPASS = "hit", "miss", "bypass"
_HEADERS = {r: b"x-fastgw-cache: " + r.encode() + b"\r\n" for r in (HIT, MISS, BYPASS)}
_COUNT = {r: batched(CACHE, r) for r in (HIT, MISS, BYPASS)}
_MISS_HEADER, _MISS_COUNT = _HEADERS[MISS], _COUNT[MISS]
_CACHEABLE = frozenset({"chat", "completions", "embeddings", "responses", "messages"})
_STREAMED = _CACHEABLE & STREAM_ENDPOINTS  # cached streams: replayed as streams
_ENDPOINT = {e: e.encode() for e in _CACHEABLE}
_MAX_AGE = re.compile(rb"max-age\s*=\s*(\d+)")
_SSE_HEAD = (b"content-type: text/event-stream\r\ncache-control: no-cache\r\n"
             b"x-accel-buffering: no\r\n")


class SharedFailure(GatewayError):
    """The error that ended the flight a request waited on, answered again."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = {400: "invalid_request_error", 401: "authentication_error",
                     403: "permission_error", 404: "not_found_error",
                     429: "rate_limit_error", 504: "timeout_error"}.get(
                         status, "invalid_request_error" if status < 500 else "api_error")
        self.code = "upstream_error" if status >= 500 else None


class CacheStore:
    """Where entries live (memory or Redis) and the flights in progress; shared by
    every cached route of a configuration and kept across reloads."""

    __slots__ = ("cfg", "flights", "loop", "memory", "redis", "redis_cfg", "writes")

    def __init__(self, cfg: CacheConfig, redis_cfg: RedisConfig,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.redis_cfg = redis_cfg
        self.loop = loop
        self.memory: MemoryCache | None = memory_cache(cfg.max_entries, cfg.max_bytes) \
            if cfg.backend == "memory" else None
        self.redis: RedisCache | None = redis_cache(redis_cfg) \
            if cfg.backend == "redis" else None
        # Each key's flight: the request leading it (a miss gone upstream).
        self.flights: dict[bytes, RequestCtx] = {}
        self.writes: set[asyncio.Task[bool]] = set()  # Redis writes in progress

    def same(self, cfg: CacheConfig, redis_cfg: RedisConfig) -> bool:
        return cfg == self.cfg and (cfg.backend != "redis" or redis_cfg == self.redis_cfg)

    def put(self, key: bytes, entry: CacheEntry) -> None:
        ttl = self.cfg.ttl_s
        if self.memory is not None:
            self.memory.put(key, entry, ttl, entry.created)
        elif self.redis is not None:
            task = self.loop.create_task(self.redis.put(key, entry, ttl))
            self.writes.add(task)  # held until done: never collected half-way
            task.add_done_callback(self.writes.discard)

    def waiters(self) -> int:
        """Requests waiting for another one's answer."""
        return sum(ctx.cache.flight.waiters for ctx in self.flights.values()
                   if ctx.cache is not None and ctx.cache.flight is not None)

    async def close(self) -> None:
        if self.writes:
            await asyncio.wait(list(self.writes), timeout=self.redis_cfg.timeout_s * 4)
        if self.redis is not None:
            await self.redis.close()


class Flight:
    """The requests waiting for a leading miss's outcome (made by the first of them):
    a CacheEntry, a SharedFailure, or None (try yourself)."""

    __slots__ = ("future", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[Any] = loop.create_future()
        self.waiters = 0

    def land(self, outcome: Any) -> None:
        if not self.future.done():
            self.future.set_result(outcome)


class CacheState:
    """One request's dealings with the cache (``ctx.cache``; its key, when it has
    one, is ``ctx.cache_key``). The usual ones are shared constants: a miss whose
    whole answer is to be stored (``LEADING`` its key's flight, or ``WRITING``), a
    miss with nothing left to do (``MISSED``), a bypass; a request gets its own
    state when it has something of its own: a hit (what it saved), a stream being
    recorded, a leading miss others wait for (its ``flight``). A request leads its
    key's flight while ``flights[ctx.cache_key] is ctx`` (always so with
    ``LEADING``)."""

    # No __slots__: the attributes most states never set are read from these class
    # defaults, so making a state costs a store or two.
    write = False  # the answer is to be stored
    recorder: StreamRecorder | None = None
    flight: Flight | None = None  # the requests waiting for this one's answer
    saved = 0.0  # a hit: the price of the tokens it did not spend

    def __init__(self, result: str, write: bool = False) -> None:
        self.result = result
        if write:
            self.write = True

    @property
    def hit(self) -> bool:
        return self.result == HIT

    def keeps_going(self) -> bool:
        """Others wait for this request's answer: its client leaving must not
        cancel the upstream request."""
        flight = self.flight
        return flight is not None and flight.waiters > 0


_BYPASSED = CacheState(BYPASS)  # shared: a bypass keeps nothing
# Shared: a miss whose whole answer is to be stored, leading its key's flight (nobody
# waits for it: the first waiter gives the leader a state of its own)...
_LEADING = CacheState(MISS, write=True)
_WRITING = CacheState(MISS, write=True)  # ... or while another request leads it
_MISSED = CacheState(MISS)  # shared: a miss with nothing left to do
_new_state = cast("Callable[[type[CacheState]], CacheState]", object.__new__)


def _own(ctx: RequestCtx) -> CacheState:
    """The request's own state (a copy of a shared one, the first time)."""
    state = ctx.cache
    assert state is not None
    if state is _LEADING or state is _WRITING or state is _MISSED:
        state = ctx.cache = CacheState(MISS, state.write)
    return state


def _whole_object(body: bytes) -> bool:
    """Whether an upstream's whole answer looks like one whole JSON object: it starts
    with ``{`` and ends with ``}``. A cut answer (the usual way one breaks) fails
    this at no cost; one broken inside is caught when a hit replays it as a stream
    (then a miss), and a whole hit gives the bytes the upstream gave."""
    if not (body.endswith(b"}") or body.rstrip().endswith(b"}")):
        return False
    return body.startswith(b"{") or body.lstrip().startswith(b"{")


def _controls(control: bytes) -> tuple[bool, bool, float | None]:
    """(read, write, max-age) of a request's ``Cache-Control``: ``no-store`` neither
    reads nor writes, ``no-cache`` refreshes (writes without reading)."""
    control = control.lower()
    read = write = True
    if control.find(b"no-store") >= 0:
        read = write = False
    elif control.find(b"no-cache") >= 0:
        read = False
    m = _MAX_AGE.search(control)
    return read, write, None if m is None else float(m.group(1))


def _bypass(ctx: RequestCtx) -> None:
    ctx.cache = _BYPASSED
    ctx.extra_headers += _HEADERS[BYPASS]
    _COUNT[BYPASS].value += 1


class CacheFilter(Filter):
    """The cache of one route (see the module's docstring)."""

    def __init__(self, store: CacheStore, route: ModelRoute) -> None:
        self.store = store
        self.cfg = store.cfg
        self.route = route
        self.global_scope = store.cfg.scope == "global"
        # The endpoints whose requests must ask for temperature 0 (an embedding is
        # deterministic whatever it says).
        self.deterministic = _CACHEABLE - {"embeddings"} if store.cfg.only_deterministic \
            else frozenset()
        self.memory = store.memory
        self.ttl_s = store.cfg.ttl_s
        # A Redis lookup waits: the route's requests take the task path.
        self.awaits_lookup = store.redis is not None
        self.flights = store.flights

    # -- request -------------------------------------------------------------------------

    def request(self, ctx: RequestCtx) -> Reply | Later | None:
        endpoint = ctx.endpoint
        if endpoint not in (_STREAMED if ctx.stream else _CACHEABLE):
            _bypass(ctx)  # a streamed Responses request: no replay of its event form
            return None
        memory = self.memory
        # The forwarded headers (lowercase names) say in one search whether to look.
        if memory is None or ctx.fwd.find(b"cache-control") >= 0:
            return self._request(ctx, memory)
        # The usual case: the memory store, no Cache-Control (read, then write).
        try:  # the temperature test, the key and the lookup: one native call
            key, entry = memory.lookup(
                ctx.body, "" if self.global_scope else (ctx.key_name or ""), endpoint,
                ctx.model, None, None, endpoint in self.deterministic)
        except ValueError:
            key = None
        if key is None:  # not deterministic (or not a JSON object after all)
            _bypass(ctx)
            return None
        ctx.cache_key = key
        if entry is not None:
            return self._hit(ctx, entry)
        leader = self.flights.setdefault(key, ctx)
        if leader is not ctx:  # an identical miss is upstream: wait for its answer
            ctx.cache = _MISSED
            return Later(partial(self._follow, ctx, leader))
        # (_lead, inline: once per miss)
        ctx.extra_headers += _MISS_HEADER
        _MISS_COUNT.value += 1
        if ctx.stream:
            state = ctx.cache = CacheState(MISS, write=True)
            state.recorder = StreamRecorder(endpoint)
        else:
            ctx.cache = _LEADING
        return None

    def _request(self, ctx: RequestCtx, memory: MemoryCache | None) -> Reply | Later | None:
        """``request`` with a ``Cache-Control`` header, or the Redis store."""
        if ctx.endpoint in self.deterministic:
            t = ctx.doc.get("temperature")  # deterministic: a number equal to 0, never False
            if t != 0 or t is False:
                _bypass(ctx)
                return None
        read, write, max_age = _controls(ctx.cycle.header(b"cache-control") or b"")
        if not (read or write):
            _bypass(ctx)
            return None
        scope = "" if self.global_scope else (ctx.key_name or "")
        try:
            if read and memory is not None:  # the key and the lookup: one native call
                key, entry = memory.lookup(ctx.body, scope, ctx.endpoint, ctx.model, None,
                                           max_age)
            else:
                key = cache_key(ctx.body, scope.encode(), _ENDPOINT[ctx.endpoint],
                                ctx.model.encode())
                entry = None
        except ValueError:
            _bypass(ctx)
            return None
        assert key is not None  # (a lookup without the temperature test)
        ctx.cache_key = key
        ctx.cache = _MISSED
        if read:
            if entry is not None:
                return self._hit(ctx, entry)
            if self.awaits_lookup:
                return Later(partial(self._lookup, ctx, write, max_age))
            leader = self.flights.get(key)
            if leader is not None:
                return Later(partial(self._follow, ctx, leader))
        self._lead(ctx, write)
        return None

    async def _lookup(self, ctx: RequestCtx, write: bool,
                      max_age: float | None) -> Reply | None:
        assert self.store.redis is not None
        entry = await self.store.redis.get(ctx.cache_key, max_age)
        if entry is not None:
            return self._hit(ctx, entry)
        leader = self.flights.get(ctx.cache_key)
        if leader is not None:
            return await self._follow(ctx, leader)
        self._lead(ctx, write)
        return None

    def _lead(self, ctx: RequestCtx, write: bool = True) -> None:
        """This request goes upstream (a miss); when its answer is to be stored, it
        leads the key's flight unless another does: identical misses meanwhile wait
        for it."""
        ctx.extra_headers += _MISS_HEADER
        _MISS_COUNT.value += 1
        if not write:
            ctx.cache = _MISSED
            return
        leads = self.flights.setdefault(ctx.cache_key, ctx) is ctx
        if ctx.stream:
            state = ctx.cache = CacheState(MISS, write=True)
            state.recorder = StreamRecorder(ctx.endpoint)
        else:
            ctx.cache = _LEADING if leads else _WRITING

    async def _follow(self, ctx: RequestCtx, leader: RequestCtx) -> Reply | None:
        """Wait for the leader's answer (at most the model's total_s), then answer
        from it; when it gave nothing, go upstream."""
        key = ctx.cache_key
        if self.flights.get(key) is not leader:  # it has landed meanwhile
            entry = None if self.memory is None else self.memory.get(key, time.time())
            if entry is not None:
                return self._hit(ctx, entry)
            self._lead(ctx)
            return None
        lead = _own(leader)
        flight = lead.flight
        if flight is None:
            flight = lead.flight = Flight(self.store.loop)
        limit = max((t.provider.timeouts.total_s for t in self.route.targets), default=600.0)
        flight.waiters += 1
        try:
            outcome = await asyncio.wait_for(asyncio.shield(flight.future), limit)
        except TimeoutError:
            outcome = None
        finally:
            flight.waiters -= 1
        if isinstance(outcome, CacheEntry):
            return self._hit(ctx, outcome)
        if isinstance(outcome, SharedFailure):
            ctx.extra_headers += _HEADERS[MISS]
            _COUNT[MISS].value += 1
            raise SharedFailure(outcome.status, outcome.message)
        self._lead(ctx)
        return None

    def _hit(self, ctx: RequestCtx, entry: CacheEntry) -> Reply | None:
        """The answer from ``entry``; None (a miss: the request goes upstream and its
        answer replaces the entry) when the entry cannot be replayed as asked."""
        endpoint = ctx.endpoint
        body = with_id(endpoint, entry.body, fresh_id(endpoint))
        reply: Reply
        if not ctx.stream:
            reply = Reply(200, body)
        else:
            usage = usage_asked(ctx.doc) is True
            try:
                reply = Reply(200, to_stream(endpoint, body, include_usage=usage), _SSE_HEAD,
                              stream=True)
            except ReplayError:
                self._lead(ctx)
                return None
        # (CacheState(HIT) without its __init__: once per hit)
        state = ctx.cache = _new_state(CacheState)
        state.result = HIT
        ctx.extra_headers += _HEADERS[HIT]
        route = ctx.route or self.route
        # Counted when the answer is sent (logging): limits may still refuse it.
        state.saved = (entry.prompt_tokens * route.input_per_token
                       + entry.completion_tokens * route.output_per_token)
        return reply

    # -- the answer ------------------------------------------------------------------------

    def response(self, ctx: RequestCtx, status: int, body: bytes) -> bytes:
        state = ctx.cache
        if state is None or not state.write:
            return body
        memory = self.memory
        if state is not _LEADING or memory is None:
            return self._respond(ctx, state, body)
        # The usual miss: its flight is over (nobody waits: see _LEADING), its answer
        # stored unless cut (the parts kept; a CacheEntry is made if the key is read).
        ctx.cache = _MISSED
        key = ctx.cache_key
        del self.flights[key]
        memory.store(key, body, ctx.prompt_tokens, ctx.completion_tokens, self.ttl_s)
        return body

    def _respond(self, ctx: RequestCtx, state: CacheState, body: bytes) -> bytes:
        """``response`` for the others: a miss another request leads, a leader others
        wait for (they get its answer), a stream answered whole, the Redis store."""
        key = ctx.cache_key
        now = time.time()
        memory = self.memory
        if memory is not None:
            whole = memory.store(key, body, ctx.prompt_tokens, ctx.completion_tokens,
                                 self.ttl_s, now)
        else:
            whole = _whole_object(body)  # a 200 that is not a JSON object: never stored
        entry = CacheEntry(now, body, ctx.prompt_tokens, ctx.completion_tokens) \
            if whole else None
        if entry is not None and memory is None:
            self.store.put(key, entry)
        _finish(self.flights, ctx, entry)
        return body

    def chunk(self, ctx: RequestCtx, data: bytes) -> bytes:
        state = ctx.cache
        if state is not None and state.recorder is not None:
            state.recorder.feed(data)
        return data

    def logging(self, ctx: RequestCtx) -> None:
        state = ctx.cache
        if state is None or state is _MISSED or state is _BYPASSED:
            return  # the usual end: a whole answer stored already
        if state.result == HIT:
            if ctx.status == 200:  # served (not refused by the limits after the lookup)
                _COUNT[HIT].value += 1
                if state.saved:
                    batched(CACHE_SAVED, (ctx.route or self.route).name).value += state.saved
            return
        outcome: Any = None
        recorder = state.recorder
        if recorder is not None and state.write and 200 <= ctx.status < 300:
            usage = ({"prompt_tokens": ctx.prompt_tokens,
                      "completion_tokens": ctx.completion_tokens,
                      "total_tokens": ctx.prompt_tokens + ctx.completion_tokens}
                     if ctx.usage_known else None)
            body = recorder.result(usage)
            if body is not None:
                outcome = CacheEntry(time.time(), body, ctx.prompt_tokens,
                                     ctx.completion_tokens)
                self.store.put(ctx.cache_key, outcome)
        elif ctx.status >= 400 and ctx.status != 499 and ctx.attempts:
            # What the upstream answered; a refusal of this request's own (its limits,
            # after the lookup) is not the waiters': they go upstream themselves.
            outcome = SharedFailure(ctx.status, ctx.error or "the upstream request failed")
        _finish(self.flights, ctx, outcome)


def _finish(flights: dict[bytes, RequestCtx], ctx: RequestCtx, outcome: Any) -> None:
    """The request's answer is dealt with (stored or not): nothing is pending on its
    state any more, and its flight, when it leads one, is over: its waiters get
    ``outcome``."""
    state = ctx.cache
    assert state is not None
    if state is _LEADING or state is _WRITING:
        ctx.cache = _MISSED
    else:
        state.write = False
        state.recorder = None
    key = ctx.cache_key
    if flights.get(key) is ctx:
        del flights[key]
        flight = state.flight
        if flight is not None:
            state.flight = None
            flight.land(outcome)


def abandon(ctx: RequestCtx) -> None:
    """A request ends with its cache state still waiting for an answer: one served by
    a model without the cache (a fallback), whose hooks never saw it. Nothing is
    stored under the asked model's key; its flight, when it leads one, ends with
    nothing for its waiters (they go upstream themselves)."""
    store = ctx.snapshot.cache
    if ctx.cache is not None and store is not None:
        _finish(store.flights, ctx, None)


def cache_result(ctx: RequestCtx) -> str | None:
    """The access log's ``cache`` field."""
    state = ctx.cache
    return None if state is None else state.result
