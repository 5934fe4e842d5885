"""The in-process cache: an LRU bounded by entry count and by bytes, with a TTL.

The store is native (``fastgw._native.MemoryCache``, ``rust/src/lrucache.rs``):
a lookup and an insertion are one call each. Expiry is lazy: an entry past its
TTL is dropped when it is looked up, or when it reaches the front of the LRU; a
few expired entries at the front are also dropped on each insertion into a full
store, so dead entries do not push live ones out. An entry costs its body's and
its key's lengths plus :data:`~fastgw.cache.entry.ENTRY_OVERHEAD`.

Time is passed in (``now``, unix seconds, the clock of ``CacheEntry.created``):
the caller reads the clock once per request, and tests need no clock at all.
The reference, the same store in Python, is ``fastgw._reference.memcache``.
"""

from __future__ import annotations

from fastgw._native import MemoryCache
from fastgw.cache.entry import ENTRY_OVERHEAD, CacheEntry

__all__ = ["MemoryCache", "memory_cache"]


def memory_cache(max_entries: int, max_bytes: int) -> MemoryCache:
    """A store of cache entries bounded by ``max_entries`` and ``max_bytes``; what
    its ``store`` is given is read back as a :class:`CacheEntry`."""
    return MemoryCache(max_entries, max_bytes, ENTRY_OVERHEAD, CacheEntry)
