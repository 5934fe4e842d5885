"""One cached answer, and its compact, versioned form for Redis.

A :class:`CacheEntry` holds the whole answer as the client of its endpoint would
have received it unstreamed (the JSON body: an OpenAI ``chat.completion``,
``text_completion``, embeddings list or ``response``, or an Anthropic
``message``), when it was made, and its token counts (what a hit saves).

:meth:`CacheEntry.dumps` writes it as a 33-byte header and the body, the body
zstd-compressed when that makes it smaller (JSON usually shrinks 3 to 10 times)::

    b"FGC" | version (1) | flags (bit 0: zstd) | created (f64) |
    prompt_tokens (u64) | completion_tokens (u64) | body length (u32) | body

:meth:`CacheEntry.loads` checks every part of it (magic, version, flags, the
body's length against the header, the zstd frame's own size and checksum) and
raises :class:`CorruptEntry` on anything else, which a store turns into a miss:
a value written by a newer gateway, truncated, or not ours at all is never an
error for a client.
"""

from __future__ import annotations

import math
import struct
from typing import Final, NamedTuple

import zstandard

__all__ = ["ENTRY_OVERHEAD", "MAX_BODY", "CacheEntry", "CorruptEntry"]

MAGIC: Final = b"FGC"
VERSION: Final = 1
_ZSTD: Final = 1  # flags bit: the body is one zstd frame
_HEAD: Final = struct.Struct("<3sBBdQQI")

MAX_BODY: Final = 64 << 20
"""The largest body :meth:`CacheEntry.loads` accepts (a corrupt header must not make it
allocate gigabytes)."""

ENTRY_OVERHEAD: Final = 384
"""Bytes an entry costs in memory besides its body's and its key's contents: the object,
its numbers, the ``bytes`` headers of body and key, and the LRU's bookkeeping (measured
at 300 to 350, amortized, on CPython 3.11)."""

_COMPRESS_FROM: Final = 128  # shorter bodies gain nothing from a zstd frame
# zstd level 3 (its default): ~300 MB/s, a few times smaller JSON; the checksum (4 bytes)
# catches a value damaged in Redis. One compressor/decompressor each: the event loop's
# thread is the only user (they are not thread safe).
_compressor = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
_decompressor = zstandard.ZstdDecompressor()


def _u64(n: int) -> int:
    return min(max(n, 0), (1 << 64) - 1)


class CorruptEntry(ValueError):
    """A stored value that is not a cache entry this gateway can read (a miss)."""


class CacheEntry(NamedTuple):
    """A whole answer, when it was made (unix seconds) and its token counts.

    A named tuple: immutable, and made without a Python ``__init__`` where a miss
    stores one (``tuple.__new__(CacheEntry, (...))``)."""

    created: float
    body: bytes
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def size(self) -> int:
        """Bytes held in memory (the body and :data:`ENTRY_OVERHEAD`), for the byte bound."""
        return len(self.body) + ENTRY_OVERHEAD

    def age(self, now: float) -> float:
        """Seconds since the answer was made."""
        return now - self.created

    def dumps(self) -> bytes:
        """The value stored in Redis (see the module's docstring)."""
        body = self.body
        flags = 0
        if len(body) >= _COMPRESS_FROM:
            packed = _compressor.compress(body)
            if len(packed) < len(body):
                body = packed
                flags = _ZSTD
        # Counts are clamped to the header's range: a nonsense count from an upstream
        # must not make a store fail.
        head = _HEAD.pack(MAGIC, VERSION, flags, self.created, _u64(self.prompt_tokens),
                          _u64(self.completion_tokens), len(self.body))
        return head + body

    @classmethod
    def loads(cls, data: bytes) -> CacheEntry:
        """The entry :meth:`dumps` wrote; :class:`CorruptEntry` for anything else."""
        if type(data) is not bytes:
            raise CorruptEntry(f"a cache value is bytes, not {type(data).__name__}")
        if len(data) < _HEAD.size:
            raise CorruptEntry(f"a cache value of {len(data)} bytes is shorter than its header")
        magic, version, flags, created, prompt, completion, length = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise CorruptEntry("not a cache entry (bad magic)")
        if version != VERSION:
            raise CorruptEntry(f"cache entry version {version} is not {VERSION}")
        if flags & ~_ZSTD:
            raise CorruptEntry(f"unknown cache entry flags {flags:#x}")
        if not math.isfinite(created):
            raise CorruptEntry("cache entry has no valid creation time")
        if length > MAX_BODY:
            raise CorruptEntry(f"cache entry body of {length} bytes is over {MAX_BODY}")
        payload = data[_HEAD.size:]
        if flags & _ZSTD:
            # The frame's declared size must be the header's: decompress then allocates
            # exactly that much (bounded above), whatever the frame claims.
            try:
                if zstandard.frame_content_size(payload) != length:
                    raise CorruptEntry("cache entry's compressed size does not match its header")
                body = _decompressor.decompress(payload, max_output_size=length,
                                                allow_extra_data=False)
            except zstandard.ZstdError as exc:
                raise CorruptEntry(f"cache entry does not decompress: {exc}") from None
        else:
            body = payload
        if len(body) != length:
            raise CorruptEntry(f"cache entry body is {len(body)} bytes, its header says {length}")
        return cls(created, body, prompt, completion)

    def __repr__(self) -> str:
        return (f"CacheEntry(created={self.created!r}, body=<{len(self.body)} bytes>, "
                f"prompt_tokens={self.prompt_tokens}, "
                f"completion_tokens={self.completion_tokens})")
