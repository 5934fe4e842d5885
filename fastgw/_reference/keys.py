"""Pure-Python reference of the native key index (``rust/src/keys.rs``): configured
keys' SHA-256 digests -> their objects, found by the SHA-256 of what is presented
and confirmed with :func:`hmac.compare_digest`. A key found once is remembered as
presented (at most one per configured digest) and found again by a comparison,
without hashing."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from hashlib import sha256
from typing import Any

__all__ = ["KeyIndex"]


class KeyIndex:
    def __init__(self, entries: Iterable[tuple[bytes, Any]]) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Any]] = {}
        for digest, value in entries:
            if len(digest) != 32:
                raise ValueError(f"a key's SHA-256 has 32 bytes, not {len(digest)}")
            self._by_digest[bytes(digest)] = (bytes(digest), value)
        self._seen: dict[bytes, Any] = {}

    def lookup(self, presented: bytes) -> Any:
        presented = bytes(presented)
        if presented in self._seen:
            return self._seen[presented]
        digest = sha256(presented).digest()
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        if len(self._seen) < len(self._by_digest):
            self._seen[presented] = found[1]
        return found[1]

    def remembered(self) -> int:
        return len(self._seen)

    def __len__(self) -> int:
        return len(self._by_digest)
