"""API keys: configured as sha256 hashes, found by the hash of what is presented.

The configuration never holds a key, only ``key_sha256`` (lowercase hex of
the SHA-256 of the key's UTF-8). A presented key is hashed once and its
32-byte digest looked up in a dict built at configuration time. Timing can
only tell an attacker about the *digest* of their guess, which says nothing
about a configured key (finding a digest prefix match needs preimages), so
the lookup is constant-time where it matters; the found entry is confirmed
with a constant-time comparison. Hashing and lookup are one native call
(:class:`fastgw._native.KeyIndex`), which remembers a key once found (in
memory, as presented, one per configured key at most) and finds it again by a
secretly keyed hash and a constant-time comparison instead of a SHA-256.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fastgw._native import KeyIndex
from fastgw.auth.principal import ModelGlobs, Principal
from fastgw.config import KeyConfig


class KeyStore:
    """``sha256(key) -> Principal`` for every configured key."""

    __slots__ = ("_index", "lookup", "principals")

    def __init__(self, keys: Iterable[KeyConfig]) -> None:
        self.principals: list[Principal] = []
        entries: list[tuple[bytes, Principal]] = []
        for k in keys:
            p = Principal("key", k.name, ModelGlobs(k.models), tier=k.tier, limits=k.limits,
                          metadata=k.metadata)
            entries.append((bytes.fromhex(k.key_sha256), p))
            self.principals.append(p)
        self._index = KeyIndex(entries)
        # The key's principal, or None when no configured key has this hash (the
        # native method itself: no Python frame per request).
        self.lookup: Callable[[bytes], Principal | None] = self._index.lookup

    def __len__(self) -> int:
        return len(self._index)
