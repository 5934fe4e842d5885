"""CacheEntry's stored form: compact, versioned, compressed, and every damaged or
foreign value refused with CorruptEntry (which the stores turn into a miss)."""

from __future__ import annotations

import math
import os
import struct

import orjson
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.cache.entry import ENTRY_OVERHEAD, MAX_BODY, CacheEntry, CorruptEntry

HEAD = struct.Struct("<3sBBdQQI")

JSON_BODY = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant",
                                         "content": "the same words again " * 200},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 800, "total_tokens": 811}})


def test_round_trip_keeps_every_field() -> None:
    e = CacheEntry(1_700_000_000.25, JSON_BODY, 11, 800)
    back = CacheEntry.loads(e.dumps())
    assert (back.created, back.body, back.prompt_tokens, back.completion_tokens) == (
        1_700_000_000.25, JSON_BODY, 11, 800)


def test_a_json_body_is_stored_compressed() -> None:
    raw = CacheEntry(1.0, JSON_BODY).dumps()
    assert raw[:3] == b"FGC" and raw[3] == 1
    assert raw[4] & 1  # the zstd flag
    assert len(raw) < len(JSON_BODY) // 5
    assert zstandard.ZstdDecompressor().decompress(raw[HEAD.size:]) == JSON_BODY


def test_a_small_or_incompressible_body_is_stored_as_it_is() -> None:
    for body in (b'{"id":"x"}', os.urandom(600)):
        raw = CacheEntry(1.0, body).dumps()
        if raw[4] & 1:
            pytest.fail("stored compressed although that does not make it smaller")
        assert raw[HEAD.size:] == body
        assert CacheEntry.loads(raw).body == body


def test_size_counts_the_body_and_the_overhead() -> None:
    assert CacheEntry(0.0, b"x" * 1000).size == 1000 + ENTRY_OVERHEAD


def test_out_of_range_counts_do_not_make_dumps_fail() -> None:
    back = CacheEntry.loads(CacheEntry(1.0, b"{}", -5, 1 << 70).dumps())
    assert (back.prompt_tokens, back.completion_tokens) == (0, (1 << 64) - 1)


def _valid() -> bytes:
    return CacheEntry(2.0, JSON_BODY, 1, 2).dumps()


def _with_head(raw: bytes, **fields: object) -> bytes:
    names = ("magic", "version", "flags", "created", "prompt", "completion", "length")
    values = dict(zip(names, HEAD.unpack_from(raw), strict=True))
    values.update(fields)
    return HEAD.pack(*values.values()) + raw[HEAD.size:]


def _flip(raw: bytes, at: int) -> bytes:
    b = bytearray(raw)
    b[at] ^= 0x5A
    return bytes(b)


@pytest.mark.parametrize("value", [
    b"",
    b"FGC",
    b"not a cache entry at all, but long enough to have a header",
    b'{"id":"chatcmpl-1","object":"chat.completion"}',
    _with_head(_valid(), magic=b"XYZ"),
    _with_head(_valid(), version=2),
    _with_head(_valid(), flags=0x80 | 1),
    _with_head(_valid(), created=math.nan),
    _with_head(_valid(), length=MAX_BODY + 1),
    _with_head(_valid(), length=len(JSON_BODY) + 1),  # the frame says otherwise
    _with_head(_valid(), flags=0),  # compressed bytes read as a plain body: wrong length
    _valid()[:-1],  # truncated frame
    _valid() + b"tail",  # bytes after the frame
    _flip(_valid(), len(_valid()) - 10),  # damaged payload: checksum or decoder
    _with_head(CacheEntry(1.0, b"plain").dumps(), length=4),
], ids=lambda v: repr(v[:12]))
def test_a_damaged_or_foreign_value_is_corrupt(value: bytes) -> None:
    with pytest.raises(CorruptEntry):
        CacheEntry.loads(value)


def test_a_decoded_reply_is_corrupt_not_a_crash() -> None:
    with pytest.raises(CorruptEntry):
        CacheEntry.loads("FGC...")  # type: ignore[arg-type]  # a client with decode_responses


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_load_or_raise_corrupt_entry(data: bytes) -> None:
    for value in (data, b"FGC\x01" + data, b"FGC\x01\x01" + data[:28] + _valid()[33:]):
        try:
            CacheEntry.loads(value)
        except CorruptEntry:
            pass


@settings(max_examples=200, deadline=None)
@given(created=st.floats(allow_nan=False, allow_infinity=False),
       body=st.binary(max_size=3000) | st.text(max_size=1500).map(str.encode),
       prompt=st.integers(0, 1 << 40), completion=st.integers(0, 1 << 40))
def test_round_trip_any_entry(created: float, body: bytes, prompt: int,
                              completion: int) -> None:
    back = CacheEntry.loads(CacheEntry(created, body, prompt, completion).dumps())
    assert (back.created, back.body, back.prompt_tokens, back.completion_tokens) == (
        created, body, prompt, completion)
