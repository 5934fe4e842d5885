"""RedisCache against a real redis-server: entries stored compressed with their TTL
in Redis, hash-tagged keys that spread over cluster slots, and a Redis that is
killed, stalled or holds garbage turning into misses within the timeout, counted
in fastgw_redis_fallbacks_total{mode="cache"}."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cache_helpers import fallbacks, run, wait_for
from redis.crc import key_slot
from redistest import RedisServer, redis_server

from fastgw.cache.entry import CacheEntry
from fastgw.cache.redis import RedisCache, make_client, redis_cache
from fastgw.config import RedisConfig

TIMEOUT = 0.2
BODY = orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                     "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant",
                                                            "content": "cached words " * 100}}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 300,
                               "total_tokens": 305}})
KEY = bytes.fromhex("00ff" * 16)


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(workdir=tmp_path) as server:
        yield server


def cfg(server: RedisServer, **kw: object) -> RedisConfig:
    return RedisConfig(url=server.url, timeout_s=TIMEOUT, **kw)  # type: ignore[arg-type]


def entry(created: float | None = None) -> CacheEntry:
    return CacheEntry(time.time() if created is None else created, BODY, 5, 300)


def test_put_then_get_gives_the_entry_back(redis_srv: RedisServer) -> None:
    async def go() -> CacheEntry | None:
        cache = redis_cache(cfg(redis_srv))
        try:
            assert await cache.start()
            assert await cache.get(KEY) is None
            assert await cache.put(KEY, entry(1_700_000_000.5), 60)
            return await cache.get(KEY)
        finally:
            await cache.close()

    got = run(go())
    assert got is not None
    assert (got.created, got.body, got.prompt_tokens, got.completion_tokens) == (
        1_700_000_000.5, BODY, 5, 300)


def test_the_value_is_compressed_under_a_hash_tagged_key(redis_srv: RedisServer) -> None:
    async def go() -> None:
        cache = redis_cache(cfg(redis_srv, key_prefix="team{x}"))
        try:
            assert await cache.put(KEY, entry(), 60)
        finally:
            await cache.close()

    run(go())
    keys = redis_srv.client().keys("*")
    # the prefix's braces are dropped: the tag is the entry's hex
    assert keys == [b"teamx:cache:{" + KEY.hex().encode() + b"}"]
    raw = redis_srv.client().get(keys[0])
    assert isinstance(raw, bytes)
    assert raw[:3] == b"FGC" and raw[4] & 1  # zstd
    assert len(raw) < len(BODY) // 4
    assert CacheEntry.loads(raw).body == BODY


def test_hash_tags_spread_entries_over_cluster_slots() -> None:
    cache = RedisCache(None, prefix="fastgw", timeout_s=TIMEOUT)
    keys = [os.urandom(32) for _ in range(200)]
    slots = {key_slot(cache.redis_key(k)) for k in keys}
    for k in keys[:20]:
        assert key_slot(cache.redis_key(k)) == key_slot(k.hex().encode())
    assert len(slots) > 150  # one slot per entry, all over the 16384


def test_ttl_is_set_in_redis(redis_srv: RedisServer) -> None:
    async def go() -> tuple[bool, CacheEntry | None]:
        cache = redis_cache(cfg(redis_srv))
        try:
            assert await cache.put(KEY, entry(), 90.5)
            assert await cache.put(b"short", entry(), 0.3)
            assert not await cache.put(b"none", entry(), 0.0004)  # under a millisecond
            gone = wait_for(lambda: redis_srv.client().exists(cache.redis_key(b"short")) == 0,
                            timeout=10)
            return gone, await cache.get(b"short")
        finally:
            await cache.close()

    gone, got = run(go())
    c = redis_srv.client()
    pttl = c.pttl(b"fastgw:cache:{" + KEY.hex().encode() + b"}")
    assert isinstance(pttl, int) and 80_000 < pttl <= 90_500
    assert gone and got is None
    assert c.exists(b"fastgw:cache:{" + b"none".hex().encode() + b"}") == 0


def test_max_age_refuses_an_older_entry(redis_srv: RedisServer) -> None:
    async def go() -> list[bool]:
        cache = redis_cache(cfg(redis_srv))
        try:
            await cache.put(KEY, entry(created=1000.0), 60)
            return [await cache.get(KEY, max_age, now=1100.0) is not None
                    for max_age in (None, 50, 100, 101)]
        finally:
            await cache.close()

    assert run(go()) == [True, False, False, True]


@pytest.mark.parametrize("how", ["garbage", "foreign-version", "wrong-type"])
def test_an_unreadable_value_is_a_counted_miss_and_redis_stays_in_use(
        redis_srv: RedisServer, how: str) -> None:
    async def go() -> tuple[CacheEntry | None, bool, CacheEntry | None]:
        cache = redis_cache(cfg(redis_srv))
        name = cache.redis_key(KEY)
        c = redis_srv.client()
        if how == "garbage":
            c.set(name, b"\x00garbage, not an entry")
        elif how == "foreign-version":
            c.set(name, b"FGC\x02" + entry().dumps()[4:])
        else:
            c.rpush(name, b"a list")
        try:
            bad = await cache.get(KEY)
            healthy = cache.healthy
            c.delete(name)
            await cache.put(KEY, entry(), 60)  # not skipped: Redis is not taken as down
            return bad, healthy, await cache.get(KEY)
        finally:
            await cache.close()

    before = fallbacks()
    bad, healthy, good = run(go())
    assert bad is None and healthy
    assert good is not None and good.body == BODY
    assert fallbacks() - before == 1


class CountingGets:
    """Counts the GETs a client is asked for."""

    def __init__(self, cache: RedisCache) -> None:
        self.calls = 0
        real = cache.client.get

        async def get(name: bytes) -> object:
            self.calls += 1
            return await real(name)

        cache.client.get = get


def test_a_killed_redis_is_a_miss_within_the_timeout(redis_srv: RedisServer) -> None:
    async def go() -> tuple[CacheEntry | None, bool, float]:
        cache = redis_cache(cfg(redis_srv))
        try:
            await cache.put(KEY, entry(), 60)
            redis_srv.stop()
            t0 = time.monotonic()
            got = await cache.get(KEY)
            stored = await cache.put(b"other", entry(), 60)
            return got, stored, time.monotonic() - t0
        finally:
            await cache.close()

    before = fallbacks()
    got, stored, elapsed = run(go())
    assert got is None and not stored
    assert elapsed < 10 * TIMEOUT  # refused at once; nothing waits past the timeout
    assert fallbacks() - before == 2


def test_redis_is_used_again_once_it_is_back(redis_srv: RedisServer) -> None:
    async def go() -> tuple[bool, CacheEntry | None]:
        cache = redis_cache(cfg(redis_srv))
        try:
            redis_srv.stop()
            assert await cache.get(KEY) is None
            assert not cache.healthy
            redis_srv.start()  # empty, on the same port
            stored = False
            deadline = time.monotonic() + 10  # one call probes it after RETRY_S
            while not stored and time.monotonic() < deadline:
                stored = await cache.put(KEY, entry(), 60)
                await asyncio.sleep(0.05)
            return cache.healthy, await cache.get(KEY)
        finally:
            await cache.close()

    healthy, got = run(go())
    assert healthy and got is not None and got.body == BODY


def test_a_stalled_redis_is_a_miss_after_the_timeout_then_left_alone(
        redis_srv: RedisServer) -> None:
    async def go() -> tuple[float, list[object], int, bool]:
        cache = redis_cache(cfg(redis_srv))
        gets = CountingGets(cache)
        try:
            await cache.put(KEY, entry(), 60)
            redis_srv.pause()
            t0 = time.monotonic()
            first = await cache.get(KEY)  # waits for the timeout
            waited = time.monotonic() - t0
            calls = gets.calls
            # Within RETRY_S of the failure: misses and skipped stores without a call.
            rest = [await cache.get(KEY) for _ in range(5)]
            stored = await cache.put(b"other", entry(), 60)
            return waited, [first, *rest], gets.calls - calls, stored
        finally:
            redis_srv.resume()
            await cache.close()

    before = fallbacks()
    waited, results, later_calls, stored = run(go())
    assert results == [None] * 6 and not stored
    assert TIMEOUT * 0.5 < waited < 10 * TIMEOUT
    assert later_calls == 0
    assert fallbacks() - before == 7
    assert redis_srv.client().exists(b"fastgw:cache:{" + b"other".hex().encode() + b"}") == 0


def test_redis_down_at_start_misses_without_raising(tmp_path: Path) -> None:
    server = RedisServer(workdir=tmp_path)  # never started: nothing listens on its port

    async def go() -> tuple[bool, CacheEntry | None, bool]:
        cache = redis_cache(cfg(server))
        try:
            started = await cache.start(timeout_s=2)
            return started, await cache.get(KEY), await cache.put(KEY, entry(), 60)
        finally:
            await cache.close()

    assert run(go()) == (False, None, False)


def test_failures_are_logged_at_most_once_per_ten_seconds(
        redis_srv: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    redis_srv.stop()

    async def go() -> None:
        cache = redis_cache(cfg(redis_srv))
        try:
            for _ in range(50):
                assert await cache.get(KEY) is None
        finally:
            await cache.close()

    with caplog.at_level(logging.INFO, logger="fastgw.cache"):
        run(go())
    records = [r for r in caplog.records if r.name == "fastgw.cache"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING


def test_a_cluster_client_stores_and_reads_entries(tmp_path: Path) -> None:
    server = RedisServer(cluster=True, workdir=tmp_path)
    server.start()
    try:
        async def go() -> CacheEntry | None:
            conf = RedisConfig(url=server.url, cluster=True, timeout_s=1.0)
            cache = RedisCache(make_client(conf), prefix="fastgw", timeout_s=1.0)
            try:
                assert await cache.start()
                for i in range(20):
                    assert await cache.put(b"k%d" % i, entry(), 60)
                return await cache.get(b"k7")
            finally:
                await cache.close()

        got = run(go())
        assert got is not None and got.body == BODY
        assert len(server.client().keys("fastgw:cache:*")) == 20
    finally:
        server.stop()
