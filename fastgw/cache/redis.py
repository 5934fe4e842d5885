"""The cache shared by every gateway instance, in Redis.

One string per entry, ``{prefix}:cache:{<hex of the cache key>}``, holding
:meth:`CacheEntry.dumps` (zstd-compressed), written with ``SET ... PX`` so
Redis itself forgets it after the TTL. One ``GET`` per lookup, one ``SET`` per
store; nothing else.

Hash tag: the braces go around the per-entry hex, not around the prefix as the
limit buckets do (``{fastgw}:key:...``). A limit admission touches many keys in
one Lua script, so they must share a slot; a cache entry is one key read and
written alone, so the tag is chosen to *spread* entries: on Redis Cluster the
slot is the hex's, entries are spread evenly over all slots and nodes (the
prefix's tag would put the whole cache, memory and traffic, on one node), and a
companion key of the same entry (a lock for filling it across instances, say)
can carry the same ``{hex}`` and live in the same slot as its entry. Braces in
the prefix would take over the tag (Redis uses the first ``{...}``), so they are
removed from it.

Redis failing is never the client's problem: every call is bounded by
``timeout_s`` (``asyncio.timeout`` around it; the socket timeouts bound it
too); a Redis that is down, slow or answers something that is not an entry is
a miss (``get``) or a no-op (``put``), counted in
``fastgw_redis_fallbacks_total{mode="cache"}`` and logged at most once per 10 s.
After a failure Redis is left alone for a second (lookups miss at once instead
of each waiting ``timeout_s``), then one call probes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from fastgw.cache.entry import MAX_BODY, CacheEntry, CorruptEntry
from fastgw.config import RedisConfig
from fastgw.metrics import REDIS_FALLBACKS

__all__ = ["RedisCache", "make_client", "redis_cache"]

log = logging.getLogger("fastgw.cache")

RETRY_S: Final = 1.0  # after a failure, Redis is left alone this long (then one call probes)
LOG_EVERY_S: Final = 10.0
_SKIP, _CALL, _PROBE = 0, 1, 2  # what _may_call allows


def make_client(cfg: RedisConfig) -> Redis | RedisCluster:
    """A redis-py asyncio client for the cache: timeouts of ``timeout_s`` and one
    immediate reconnect on a dead pooled connection (Redis restarted).

    The same settings as the limiter's client (``fastgw.limits.redis.make_client``,
    which a level-1 package may not import), but for the socket timeout: the limiter
    waits long for a late reply because a reservation it made must be given back; a
    late cache reply is worth nothing, so the socket gives up with the request.
    """
    opts: dict[str, Any] = {
        "socket_timeout": cfg.timeout_s,
        "socket_connect_timeout": cfg.timeout_s,
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError],
    }
    if cfg.cluster:
        return RedisCluster.from_url(cfg.url, **opts)
    return Redis.from_url(cfg.url, **opts)


def redis_cache(cfg: RedisConfig) -> RedisCache:
    """A :class:`RedisCache` on a new client for ``cfg`` (prefix ``cfg.key_prefix``)."""
    return RedisCache(make_client(cfg), prefix=cfg.key_prefix, timeout_s=cfg.timeout_s)


class RedisCache:
    """Entries in Redis, every failure a miss. ``client`` is a redis-py asyncio
    ``Redis`` or ``RedisCluster`` (bytes replies: no ``decode_responses``)."""

    __slots__ = ("_counter", "_down", "_down_until", "_head", "_logged_at", "_probing",
                 "_unlogged", "client", "fallbacks", "timeout_s")

    def __init__(self, client: Any, *, prefix: str, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s
        prefix = prefix.replace("{", "").replace("}", "")
        self._head = prefix.encode() + b":cache:{"
        self._counter = REDIS_FALLBACKS.labels("cache")
        self._down = False
        self._down_until = 0.0
        self._probing = False
        self._logged_at = -LOG_EVERY_S
        self._unlogged = 0
        self.fallbacks = 0  # lookups and stores that did without Redis

    def redis_key(self, key: bytes) -> bytes:
        """The Redis key of cache key ``key``: ``{prefix}:cache:{<hex>}``."""
        return self._head + key.hex().encode() + b"}"

    @property
    def healthy(self) -> bool:
        return not self._down

    async def start(self, timeout_s: float = 5.0) -> bool:
        """Connect (a cluster client learns the slots) before the first request; a
        failure is logged and leaves the cache missing until Redis answers."""
        try:
            async with asyncio.timeout(timeout_s):
                if isinstance(self.client, RedisCluster):
                    await self.client.initialize()
                else:
                    await self.client.ping()
        except Exception as exc:  # Redis down at start: lookups miss
            self._failed()
            log.warning("redis cache unreachable at start (%s): lookups miss until it "
                        "answers", _describe(exc))
            self._logged_at = time.monotonic()
            return False
        return True

    async def get(self, key: bytes, max_age: float | None = None, *,
                  now: float | None = None) -> CacheEntry | None:
        """The entry under ``key``, None on a miss, on an entry ``max_age`` seconds old
        or older, and on any failure. ``now``: unix seconds (default: the clock)."""
        call = self._may_call()
        if call == _SKIP:
            self._fall_back("lookup skipped: redis is down")
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await self.client.get(self.redis_key(key))
        except Exception as exc:  # redis-py errors, OSError, TimeoutError: Redis is down
            if isinstance(exc, ResponseError):  # an error reply (WRONGTYPE, OOM): Redis is up
                self._answered()
            else:
                self._failed()
            self._fall_back(f"lookup failed: {_describe(exc)}")
            return None
        finally:
            if call == _PROBE:
                self._probing = False
        self._answered()
        if raw is None:
            return None
        try:
            entry = CacheEntry.loads(raw)
        except CorruptEntry as exc:  # Redis answered, but not with an entry we can read
            self._fall_back(f"unreadable entry: {exc}")
            return None
        if max_age is not None:
            if now is None:
                now = time.time()
            if now - entry.created >= max_age:
                return None
        return entry

    async def put(self, key: bytes, entry: CacheEntry, ttl_s: float) -> bool:
        """Store ``entry`` for ``ttl_s`` seconds (Redis expires it); False when it was not
        stored (Redis down or slow, a TTL under a millisecond, a body over ``MAX_BODY``)."""
        ttl_ms = int(ttl_s * 1000)
        if ttl_ms < 1 or len(entry.body) > MAX_BODY:
            return False
        call = self._may_call()
        if call == _SKIP:
            self._fall_back("store skipped: redis is down")
            return False
        try:
            value = entry.dumps()
            async with asyncio.timeout(self.timeout_s):
                await self.client.set(self.redis_key(key), value, px=ttl_ms)
        except Exception as exc:  # redis-py errors, OSError, TimeoutError: Redis is down
            if isinstance(exc, ResponseError):  # an error reply (WRONGTYPE, OOM): Redis is up
                self._answered()
            else:
                self._failed()
            self._fall_back(f"store failed: {_describe(exc)}")
            return False
        finally:
            if call == _PROBE:
                self._probing = False
        self._answered()
        return True

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception:  # closing a broken connection pool must not fail shutdown
            pass

    # -- failures ----------------------------------------------------------------------

    def _may_call(self) -> int:
        """Whether to send this call to Redis: always when it is up (``_CALL``); while it
        is down, one call at a time once ``RETRY_S`` has passed (``_PROBE``)."""
        if not self._down:
            return _CALL
        if self._probing or time.monotonic() < self._down_until:
            return _SKIP
        self._probing = True
        return _PROBE

    def _failed(self) -> None:
        self._down = True
        self._down_until = time.monotonic() + RETRY_S

    def _answered(self) -> None:
        if self._down:
            self._down = False
            now = time.monotonic()
            if now - self._logged_at >= LOG_EVERY_S:
                log.info("redis cache answers again")
                self._logged_at = now

    def _fall_back(self, why: str) -> None:
        self.fallbacks += 1
        self._counter.inc()
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.warning("redis cache: %d lookup(s)/store(s) done without redis since the last "
                        "report (last: %s)", self._unlogged, why)
            self._logged_at = now
            self._unlogged = 0


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
