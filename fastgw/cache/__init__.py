"""Answers cached by request: exact match on the normalized request, shared by
streamed and unstreamed requests.

- :mod:`fastgw.cache.entry`: :class:`CacheEntry`, one whole answer, and its
  compact zstd-compressed form for Redis.
- :mod:`fastgw.cache.memory`: :class:`MemoryCache` (native), the in-process LRU
  bounded by entries and bytes.
- :mod:`fastgw.cache.redis`: :class:`RedisCache`, entries shared by instances;
  Redis failing is a miss, never an error.
- :mod:`fastgw.cache.replay`: a whole answer as the stream its client expects
  (:func:`to_stream`), a relayed stream as a whole answer
  (:class:`StreamRecorder`), and a hit's new id (:func:`with_id`).

Nothing here knows a request: the key, the TTL, ``Cache-Control`` and the
metrics of hits belong to the filter that uses these pieces.
"""

from fastgw.cache.entry import CacheEntry, CorruptEntry
from fastgw.cache.memory import MemoryCache, memory_cache
from fastgw.cache.redis import RedisCache, make_client, redis_cache
from fastgw.cache.replay import (
    STREAM_ENDPOINTS,
    ReplayError,
    StreamRecorder,
    fresh_id,
    to_stream,
    with_id,
)

__all__ = [
    "STREAM_ENDPOINTS",
    "CacheEntry",
    "CorruptEntry",
    "MemoryCache",
    "RedisCache",
    "ReplayError",
    "StreamRecorder",
    "fresh_id",
    "make_client",
    "memory_cache",
    "redis_cache",
    "to_stream",
    "with_id",
]
