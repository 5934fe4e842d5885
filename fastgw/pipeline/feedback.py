"""Variants' feedback: which caller each answer of a model with variants went to,
and the scores callers give those answers (``POST /v1/feedback``).

Only requests served through a model with variants are remembered: the
variant's route is a copy of the model it names whose chain ends with a
:class:`VariantFeedback` filter (built by the snapshot), so a plain route, or
the same model asked for directly, pays nothing. Its ``logging`` hook records
the answer (2xx only) as ``request id -> (caller, model, variant)``, with the
variant's latency and 5xx counts.

Where answers are remembered (:class:`FeedbackStore`)::

    memory   this process: a dict in arrival order, at most feedback.max_entries
             (the oldest dropped first), each for feedback.ttl_s seconds
    redis    every instance and worker: one string per answer,
             {prefix}:feedback:{<request id>}, SET NX EX ttl_s; a score's mark
             {prefix}:feedback:{<request id>}:<name> (same hash tag: same slot)

A Redis that fails or answers later than ``redis.timeout_s`` is never the
caller's problem: the answer is remembered in memory instead, a lookup reads
memory, each counted in ``fastgw_redis_fallbacks_total{mode="feedback"}``, and
Redis is left alone for a second before it is asked again.

The first request to use a request id owns it (a client may choose its
``x-request-id``: a later request reusing one cannot take over the first
one's answer). Each answer takes one score per name: a second is 409.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import orjson
from redis.exceptions import ResponseError

from fastgw.cache.redis import make_client
from fastgw.config import FeedbackConfig, RedisConfig
from fastgw.errors import BadRequest, ClientError, NotFound
from fastgw.metrics import (
    FEEDBACK,
    FEEDBACK_VALUE,
    REDIS_FALLBACKS,
    VARIANT_DURATION,
    VARIANT_ERRORS,
    batched,
    batched_hist,
)
from fastgw.pipeline import headers as hdr
from fastgw.pipeline.filters import Filter

if TYPE_CHECKING:
    from fastgw.pipeline.ctx import RequestCtx

log = logging.getLogger("fastgw.feedback")

RETRY_S: Final = 1.0  # after a Redis failure, Redis is left alone this long
LOG_EVERY_S: Final = 10.0
ANONYMOUS: Final = "-"  # the caller of an open gateway (no credentials asked)
_FAILED: Any = object()


class Answer(NamedTuple):
    """An answer that can be scored: who got it, the model asked, the variant."""

    owner: str
    model: str
    variant: str


# One answer remembered in memory: (expires, owner, model, variant, names scored).
# A plain tuple of strings and a float: the collector stops tracking it, so a
# full store costs garbage collections nothing.
_Kept = tuple[float, str, str, str, tuple[str, ...]]


class AlreadyScored(ClientError):
    """The answer has a score of this name already."""

    status = 409
    default_code = "already_scored"


class FeedbackStore:
    """The answers of models with variants, in memory or Redis; shared by every
    variant of a configuration and kept across reloads with the same settings."""

    __slots__ = ("_down_until", "_head", "_logged_at", "_unlogged", "cfg", "fallbacks",
                 "kept", "loop", "max_entries", "redis", "redis_cfg", "ttl_s", "writes")

    def __init__(self, cfg: FeedbackConfig, redis_cfg: RedisConfig,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.redis_cfg = redis_cfg
        self.loop = loop
        self.kept: dict[bytes, _Kept] = {}  # in arrival order: the oldest first
        self.ttl_s = cfg.ttl_s
        self.max_entries = cfg.max_entries
        self.redis: Any = make_client(redis_cfg) if cfg.backend == "redis" else None
        prefix = redis_cfg.key_prefix.replace("{", "").replace("}", "")
        self._head = prefix.encode() + b":feedback:{"
        self.writes: set[asyncio.Task[None]] = set()  # Redis writes in progress
        self._down_until = 0.0
        self._logged_at = -LOG_EVERY_S
        self._unlogged = 0
        self.fallbacks = 0  # stores and lookups done without Redis

    def same(self, cfg: FeedbackConfig, redis_cfg: RedisConfig) -> bool:
        return cfg == self.cfg and (cfg.backend != "redis" or redis_cfg == self.redis_cfg)

    def redis_key(self, request_id: bytes) -> bytes:
        return self._head + request_id + b"}"

    # -- remembering ---------------------------------------------------------------------

    def remember(self, request_id: bytes, owner: str, model: str, variant: str) -> None:
        """Remember an answer (the logging phase: never waits)."""
        if self.redis is None:
            self._keep(request_id, owner, model, variant)
            return
        task = self.loop.create_task(self._put(request_id, owner, model, variant))
        self.writes.add(task)  # held until done: never collected half-way
        task.add_done_callback(self.writes.discard)

    def _keep(self, request_id: bytes, owner: str, model: str, variant: str) -> None:
        kept = self.kept
        now = time.monotonic()
        if request_id in kept:
            if kept[request_id][0] > now:
                return  # the first request with this id owns it
            del kept[request_id]
        kept[request_id] = (now + self.ttl_s, owner, model, variant, ())
        if len(kept) > self.max_entries:
            del kept[next(iter(kept))]
        for oldest in kept:  # the front expired: dropped, one per store
            if kept[oldest][0] <= now:
                del kept[oldest]
            break

    async def _put(self, request_id: bytes, owner: str, model: str, variant: str) -> None:
        value = orjson.dumps([owner, model, variant])
        ttl = max(1, int(self.cfg.ttl_s))
        key = self.redis_key(request_id)
        done = await self._ask(lambda: self.redis.set(key, value, ex=ttl, nx=True), "store")
        if done is _FAILED:
            self._keep(request_id, owner, model, variant)

    # -- scoring -------------------------------------------------------------------------

    async def score(self, request_id: bytes, caller: str, name: str) -> Answer:
        """The answer ``request_id`` names, marked as scored under ``name`` for
        ``caller``: NotFound when it is unknown, expired or another caller's,
        AlreadyScored when it has a score of this name."""
        answer: Answer | None = None
        if self.redis is not None:
            raw = await self._ask(lambda: self.redis.get(self.redis_key(request_id)), "lookup")
            if raw is not _FAILED and raw is not None:
                try:
                    answer = Answer(*orjson.loads(raw))
                except (orjson.JSONDecodeError, TypeError):
                    answer = None  # not one of ours: as if unknown
        kept = None
        if answer is None:
            kept = self.kept.get(request_id)
            if kept is not None and kept[0] > time.monotonic():
                answer = Answer(kept[1], kept[2], kept[3])
        if answer is None or answer.owner != caller:
            raise NotFound(f"no answer with request id {request_id.decode()!r} can be scored "
                           "by this caller: it is unknown, older than feedback.ttl_s, or was "
                           "another caller's (only answers of models with variants are "
                           "kept)", param="request_id", code="request_not_found")
        if kept is not None:
            first = name not in kept[4]
            if first:
                self.kept[request_id] = (*kept[:4], (*kept[4], name))
        else:
            mark = self.redis_key(request_id) + b":" + name.encode()
            ttl = max(1, int(self.cfg.ttl_s))
            done = await self._ask(lambda: self.redis.set(mark, b"1", ex=ttl, nx=True), "mark")
            first = done is _FAILED or bool(done)  # without Redis: counted, not checked
        if not first:
            raise AlreadyScored(f"the answer {request_id.decode()!r} has a {name!r} score "
                                "already; each answer takes one score per name",
                                param="name")
        return answer

    # -- Redis -------------------------------------------------------------------------------

    async def _ask(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        """``call`` on Redis within ``redis.timeout_s``; _FAILED (counted) when Redis is
        down, slow, or was down less than RETRY_S ago."""
        if time.monotonic() < self._down_until:
            self._fall_back(what, "skipped: redis is down")
            return _FAILED
        try:
            async with asyncio.timeout(self.redis_cfg.timeout_s):
                return await call()
        except Exception as exc:  # redis-py errors, OSError, TimeoutError: Redis is down
            if not isinstance(exc, ResponseError):  # an error reply: Redis is up
                self._down_until = time.monotonic() + RETRY_S
            self._fall_back(what, f"{exc.__class__.__name__}: {exc}")
            return _FAILED

    def _fall_back(self, what: str, why: str) -> None:
        self.fallbacks += 1
        REDIS_FALLBACKS.labels("feedback").inc()
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.warning("redis feedback store: %d store(s)/lookup(s) done in memory since the "
                        "last report (last: %s %s)", self._unlogged, what, why)
            self._logged_at = now
            self._unlogged = 0

    async def close(self) -> None:
        if self.writes:
            await asyncio.wait(list(self.writes), timeout=self.redis_cfg.timeout_s * 4)
        if self.redis is not None:
            try:
                await self.redis.aclose()
            except Exception:  # closing a broken connection pool must not fail shutdown
                pass


class VariantFeedback(Filter):
    """The last filter of a variant's route: remembers each answer for scoring and
    counts the variant's latency and failures."""

    def __init__(self, store: FeedbackStore, model: str, variant: str) -> None:
        self.store = store
        self.model = model
        self.variant = variant
        self.duration = batched_hist(VARIANT_DURATION, model, variant)
        self.errors = batched(VARIANT_ERRORS, model, variant)

    def logging(self, ctx: RequestCtx) -> None:
        status = ctx.status
        if 400 <= status < 500:
            return  # the client's doing (refused, limited, gone): not the variant's
        self.duration.observe(perf_counter() - ctx.t0)
        if status >= 500:
            self.errors.value += 1.0
        elif status < 300:
            grant = ctx.grant
            owner = ANONYMOUS if grant is None else grant.principal.id
            self.store.remember(ctx.request_id, owner, self.model, self.variant)


# -- POST /v1/feedback -----------------------------------------------------------------------


def read_score(body: bytes, names: tuple[str, ...]) -> tuple[bytes, str, float]:
    """(request id, name, value) of a feedback body; BadRequest naming the field."""
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc}); send "
                         '{"request_id": ..., "name": ..., "value": ...}') from None
    if not isinstance(doc, dict):
        raise BadRequest('the body must be a JSON object: {"request_id": "<the x-request-id '
                         'of the answer>", "name": "score", "value": 1}')
    rid = doc.get("request_id")
    if not isinstance(rid, str) or not hdr.valid_request_id(rid.encode()):
        raise BadRequest("'request_id' must be the x-request-id of the answer to score (1 to "
                         "128 letters, digits, '.', '_', ':' or '-')", param="request_id")
    name = doc.get("name")
    if not isinstance(name, str):
        raise BadRequest("'name' must be a string, one of: " + ", ".join(names), param="name")
    if name not in names:
        raise BadRequest(f"unknown score name {name[:64]!r}; this gateway accepts: "
                         + ", ".join(names) + " (feedback.names)", param="name")
    value = doc.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0:
        raise BadRequest("'value' must be a finite number, 0 or more (scores are summed; "
                         "e.g. 1 for a thumbs up, 0 for a thumbs down)", param="value")
    return rid.encode(), name, float(value)


async def give_score(store: FeedbackStore | None, caller: str, body: bytes,
                     names: tuple[str, ...]) -> bytes:
    """Record one score from ``caller``; the answer's JSON body."""
    request_id, name, value = read_score(body, names)
    if store is None:
        raise NotFound("no model of this gateway has variants: there is no answer to score",
                       param="request_id", code="request_not_found")
    answer = await store.score(request_id, caller, name)
    FEEDBACK.labels(answer.model, answer.variant, name).inc()
    FEEDBACK_VALUE.labels(answer.model, answer.variant, name).observe(value)
    return orjson.dumps({"ok": True, "request_id": request_id.decode(), "model": answer.model,
                         "variant": answer.variant, "name": name, "value": value})
