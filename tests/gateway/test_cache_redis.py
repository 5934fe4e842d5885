"""The cache's backends through running gateways: the memory LRU bounded by
max_entries; Redis shared by two gateway instances (an entry made on one is a
hit on the other); Redis killed or stalled mid-run turning lookups into misses answered
normally (never an error, never a hang), counted in
fastgw_redis_fallbacks_total{mode="cache"}."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cache_gw import KEY_B, cache_yaml, doc, post, unique, upstream
from gwtest import Gateway, running, wait_for
from redistest import RedisServer, redis_server

from fastgw import metrics

REDIS_CACHE = "{enabled: true, backend: redis}"


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(workdir=tmp_path) as server:
        yield server


def stored(server: RedisServer) -> int:
    """Cache entries in Redis."""
    return len(server.client().keys("fastgw:cache:*"))


def fallbacks(gw: Gateway) -> float:
    return gw.metric(metrics.REDIS_FALLBACKS, "cache")


def test_memory_keeps_at_most_max_entries() -> None:
    with running(lambda p: cache_yaml(p, cache="{enabled: true, max_entries: 2}")) as g:
        a, b, c = (doc(text=unique()) for _ in range(3))
        for d in (a, b, c):
            assert post(g, d).headers["x-fastgw-cache"] == "miss"
        assert upstream(g) == 3
        # a, the least recently used, made room for c
        assert post(g, c).headers["x-fastgw-cache"] == "hit"
        assert post(g, b).headers["x-fastgw-cache"] == "hit"
        assert post(g, a).headers["x-fastgw-cache"] == "miss"
        assert upstream(g) == 4
        # a pushed c out (b was used more recently)
        assert post(g, b).headers["x-fastgw-cache"] == "hit"
        assert post(g, c).headers["x-fastgw-cache"] == "miss"
        assert upstream(g) == 5


def test_two_gateways_share_entries_through_redis(redis_srv: RedisServer) -> None:
    yaml = lambda p: cache_yaml(p, cache=REDIS_CACHE, redis_url=redis_srv.url)  # noqa: E731
    with running(yaml) as a, running(yaml) as b:
        d = doc(text=unique())
        made = post(a, d)
        assert made.status == 200 and made.headers["x-fastgw-cache"] == "miss"
        # the store is written after the answer: wait for it in Redis
        assert wait_for(lambda: stored(redis_srv) == 1, timeout=10)
        got = post(b, d)
        assert got.status == 200, got.body
        assert got.headers["x-fastgw-cache"] == "hit"
        assert upstream(a) == 1 and upstream(b) == 0
        first, second = orjson.loads(made.body), orjson.loads(got.body)
        assert second["choices"] == first["choices"] and second["id"] != first["id"]
        # streamed on A from the entry B reads too; the scope still holds across instances
        assert post(a, doc(text=d["messages"][0]["content"], stream=True)
                    ).headers["x-fastgw-cache"] == "hit"
        assert post(b, d, key=KEY_B).headers["x-fastgw-cache"] == "miss"
        assert upstream(b) == 1
        # the value is compressed (zstd) and expires in Redis
        value = redis_srv.client().get(redis_srv.client().keys("fastgw:cache:*")[0])
        assert value is not None and value[:3] == b"FGC"
        assert redis_srv.client().pttl(redis_srv.client().keys("fastgw:cache:*")[0]) > 0


@pytest.mark.parametrize(("stream", "how"), [(False, "kill"), (True, "kill"),
                                             (False, "pause"), (True, "pause")])
def test_redis_down_mid_run_turns_lookups_into_misses(redis_srv: RedisServer,
                                                      stream: bool, how: str) -> None:
    yaml = lambda p: cache_yaml(p, cache=REDIS_CACHE, redis_url=redis_srv.url)  # noqa: E731
    with running(yaml) as g:
        d = doc(text=unique(), stream=stream)
        assert post(g, d).headers["x-fastgw-cache"] == "miss"
        assert wait_for(lambda: stored(redis_srv) == 1, timeout=10)
        assert post(g, d).headers["x-fastgw-cache"] == "hit"
        before_fallbacks, calls = fallbacks(g), upstream(g)
        redis_srv.stop() if how == "kill" else redis_srv.pause()
        for body in (d, doc(text=unique(), stream=stream), d):
            t0 = time.monotonic()
            r = post(g, body)
            assert r.status == 200, r.body
            assert r.headers["x-fastgw-cache"] == "miss"
            assert time.monotonic() - t0 < 5.0  # redis.timeout_s is 0.25: no hang
            if stream:
                assert r.body.endswith(b"data: [DONE]\n\n")
            else:
                assert orjson.loads(r.body)["choices"][0]["message"]["content"]
        assert upstream(g) - calls == 3
        assert fallbacks(g) - before_fallbacks >= 3
