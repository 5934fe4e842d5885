"""API keys: configured as sha256 hashes, found by the hash of what is presented.

The configuration never holds a key, only ``key_sha256`` (lowercase hex of
the SHA-256 of the key's UTF-8). A presented key is hashed once and its
32-byte digest looked up in a dict built at configuration time. Timing can
only tell an attacker about the *digest* of their guess, which says nothing
about a configured key (finding a digest prefix match needs preimages), so
the lookup is constant-time where it matters; the found entry is confirmed
with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from hashlib import sha256

from fastgw.auth.principal import ModelGlobs, Principal
from fastgw.config import KeyConfig


class KeyStore:
    """``sha256(key) -> Principal`` for every configured key."""

    __slots__ = ("_by_digest", "principals")

    def __init__(self, keys: Iterable[KeyConfig]) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Principal]] = {}
        self.principals: list[Principal] = []
        for k in keys:
            p = Principal("key", k.name, ModelGlobs(k.models), tier=k.tier, limits=k.limits,
                          metadata=k.metadata)
            digest = bytes.fromhex(k.key_sha256)
            self._by_digest[digest] = (digest, p)
            self.principals.append(p)

    def lookup(self, presented: bytes) -> Principal | None:
        """The key's principal, or None when no configured key has this hash."""
        digest = sha256(presented).digest()
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        return found[1]

    def __len__(self) -> int:
        return len(self._by_digest)
