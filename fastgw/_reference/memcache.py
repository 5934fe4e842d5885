"""Pure-Python reference of the response cache's in-process store
(``fastgw._native.MemoryCache``): an LRU bounded by entry count and by bytes.

One ``OrderedDict`` from key to ``(entry, expires, cost)``: a hit moves its key
to the end, eviction pops from the front, so every operation is O(1) (plus the
entries an insertion evicts). Expiry is lazy: an entry past its TTL is dropped
when it is looked up, or when it reaches the front of the LRU; a few expired
entries at the front are also dropped on each insertion, so with one TTL for
all (the usual configuration) dead entries do not linger until the bounds push
them out.

Time is passed in (``now``, unix seconds, the clock of ``CacheEntry.created``):
the caller reads the clock once per request, and tests need no clock at all.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

CacheEntry = Any  # an object with ``created`` (unix seconds) and ``body`` (bytes)

__all__ = ["MemoryCache"]

_PURGE: Final = 2  # expired entries looked for at the LRU's front per insertion


class MemoryCache:
    """Whole answers by key, least recently used evicted first."""

    __slots__ = ("_bytes", "_entries", "evictions", "factory", "max_bytes", "max_entries",
                 "overhead")

    def __init__(self, max_entries: int, max_bytes: int, overhead: int = 0,
                 factory: Callable[[float, bytes, Any, Any], CacheEntry] | None = None
                 ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a memory cache needs max_entries >= 1 and max_bytes >= 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.overhead = overhead  # bytes an entry costs besides its body's and key's
        self.factory = factory  # makes the entry of what store() is given
        self._entries: OrderedDict[bytes, tuple[CacheEntry, float, int]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0  # entries pushed out by a bound (not by their TTL)

    def get(self, key: bytes, now: float, max_age: float | None = None) -> CacheEntry | None:
        """The entry under ``key`` unless it has expired, or is ``max_age`` seconds old or
        older (HTTP's freshness rule: ``max-age=0`` accepts nothing). A hit becomes the
        most recently used; an entry too old for this ``max_age`` is kept for others."""
        slot = self._entries.get(key)
        if slot is None:
            return None
        entry, expires, cost = slot
        if now >= expires:
            del self._entries[key]
            self._bytes -= cost
            return None
        if max_age is not None and now - entry.created >= max_age:
            return None
        self._entries.move_to_end(key)
        return entry

    def lookup(self, body: bytes, scope: str, endpoint: str, model: str,
               now: float | None = None, max_age: float | None = None,
               deterministic: bool = False) -> tuple[bytes | None, CacheEntry | None]:
        """``(key, entry or None)``: the cache key of ``body`` asked by ``scope`` on
        ``endpoint`` for ``model`` (their UTF-8) and what :meth:`get` gives for it;
        ``now`` None reads the clock. With ``deterministic``, ``(None, None)`` when the
        body's ``temperature`` is not a number equal to zero. ValueError when ``body``
        is not a JSON object."""
        from fastgw._reference.cachekey import cache_key, zero_temperature

        key = cache_key(body, scope.encode(), endpoint.encode(), model.encode())
        if deterministic and not zero_temperature(body):
            return None, None
        return key, self.get(key, time.time() if now is None else now, max_age)

    def put(self, key: bytes, entry: CacheEntry, ttl_s: float, now: float) -> bool:
        """Store ``entry`` for ``ttl_s`` seconds from ``now``, replacing what ``key`` held,
        and evict the least recently used entries past the bounds. False (and nothing
        stored, the old entry gone too) when ``ttl_s`` is not positive or the entry alone
        is larger than ``max_bytes``."""
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self._bytes -= old[2]
        cost = len(entry.body) + self.overhead + len(key)
        if ttl_s <= 0 or cost > self.max_bytes:
            return False
        if len(entries) >= self.max_entries or self._bytes + cost > self.max_bytes:
            # Full: dead entries at the front first, they should not push live ones out.
            for _ in range(_PURGE):
                if not entries:
                    break
                first = next(iter(entries))
                if entries[first][1] > now:
                    break
                self._bytes -= entries.pop(first)[2]
        entries[key] = (entry, now + ttl_s, cost)
        self._bytes += cost
        if len(entries) > self.max_entries or self._bytes > self.max_bytes:
            self._evict(now)
        return True

    def store(self, key: bytes, body: bytes, prompt_tokens: Any, completion_tokens: Any,
              ttl_s: float, now: float | None = None) -> bool:
        """:meth:`put` of the entry ``factory(now, body, prompt_tokens,
        completion_tokens)`` (``now`` None: the clock); False (nothing stored, what
        ``key`` held kept) when ``body`` does not begin with ``{`` and end with ``}``,
        ASCII whitespace aside. TypeError without a factory. (The native store keeps
        the parts and makes the entry when first read.)"""
        if self.factory is None:
            raise TypeError("MemoryCache.store needs the entry factory given to MemoryCache()")
        stripped = body.strip()
        if not (stripped[:1] == b"{" and stripped[-1:] == b"}"):
            return False
        if now is None:
            now = time.time()
        return self.put(key, self.factory(now, body, prompt_tokens, completion_tokens),
                        ttl_s, now)

    def _evict(self, now: float) -> None:
        """Pop from the LRU's front until the bounds hold. A dead entry behind live
        ones (TTLs differ) may free the room on its own: the live entries popped are
        then put back, most recently used first, while they still fit."""
        entries = self._entries
        popped: list[tuple[bytes, tuple[CacheEntry, float, int]]] = []
        while len(entries) > self.max_entries or self._bytes > self.max_bytes:
            key, slot = entries.popitem(last=False)
            self._bytes -= slot[2]
            if slot[1] > now:
                popped.append((key, slot))
        while popped:
            key, slot = popped[-1]
            if len(entries) + 1 > self.max_entries or self._bytes + slot[2] > self.max_bytes:
                break
            popped.pop()
            entries[key] = slot
            entries.move_to_end(key, last=False)
            self._bytes += slot[2]
        self.evictions += len(popped)

    def keys(self) -> list[bytes]:
        """The keys from least to most recently used."""
        return list(self._entries)

    def delete(self, key: bytes) -> bool:
        """Forget ``key``; False when it was not there."""
        slot = self._entries.pop(key, None)
        if slot is None:
            return False
        self._bytes -= slot[2]
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        """Bytes held: every entry's :attr:`CacheEntry.size` plus its key's length."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is held, expired or not (no LRU change)."""
        return key in self._entries
