"""MemoryCache (native, and its pure-Python reference): LRU bounded by entries and
bytes, TTL and max_age, O(1) bookkeeping that stays exact (checked against a plain
model under random operations); the two give the same answers, the same order and
the same counts for the same operations."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw._native import MemoryCache as NativeCache
from fastgw._native import cache_key
from fastgw._reference.memcache import MemoryCache as ReferenceCache
from fastgw.cache.entry import ENTRY_OVERHEAD, CacheEntry

T0 = 1_700_000_000.0

Make = Callable[[int, int], Any]


@pytest.fixture(params=[NativeCache, ReferenceCache], ids=["native", "reference"])
def MemoryCache(request: pytest.FixtureRequest) -> Make:
    cls = request.param
    return lambda max_entries, max_bytes: cls(max_entries, max_bytes, ENTRY_OVERHEAD)


def entry(body: bytes = b"{}", created: float = T0) -> CacheEntry:
    return CacheEntry(created, body, 1, 2)


def cost(key: bytes, body: bytes) -> int:
    return len(key) + len(body) + ENTRY_OVERHEAD


def test_get_returns_what_put_stored(MemoryCache: Make) -> None:
    c = MemoryCache(10, 1 << 20)
    e = entry(b'{"id":"a"}')
    assert c.put(b"k", e, 60, T0)
    assert c.get(b"k", T0 + 1) is e
    assert c.get(b"other", T0 + 1) is None
    assert len(c) == 1 and c.bytes == cost(b"k", b'{"id":"a"}')


def test_entry_count_bound_evicts_the_least_recently_used(MemoryCache: Make) -> None:
    c = MemoryCache(3, 1 << 20)
    for k in (b"a", b"b", b"c"):
        c.put(k, entry(), 60, T0)
    assert c.get(b"a", T0) is not None  # a becomes the most recently used
    c.put(b"d", entry(), 60, T0)
    assert b"b" not in c
    assert [k for k in (b"a", b"c", b"d") if k in c] == [b"a", b"c", b"d"]
    assert len(c) == 3 and c.evictions == 1


def test_byte_bound_evicts_until_the_total_fits(MemoryCache: Make) -> None:
    body = b"x" * 1000
    one = cost(b"k0", body)
    c = MemoryCache(100, 3 * one + 10)
    for i in range(3):
        c.put(b"k%d" % i, entry(body), 60, T0)
    assert len(c) == 3 and c.bytes == 3 * one
    big = b"y" * 2500  # needs the room of two and a half of them
    c.put(b"big", entry(big), 60, T0)
    assert c.bytes <= c.max_bytes
    assert b"big" in c and b"k0" not in c and b"k1" not in c and b"k2" not in c
    assert c.bytes == cost(b"big", big)


def test_an_entry_larger_than_the_byte_bound_is_not_stored(MemoryCache: Make) -> None:
    c = MemoryCache(10, 2000)
    c.put(b"small", entry(b"s"), 60, T0)
    assert not c.put(b"huge", entry(b"h" * 2000), 60, T0)
    assert b"huge" not in c
    assert b"small" in c  # nothing evicted for it


def test_replacing_a_key_replaces_its_bytes(MemoryCache: Make) -> None:
    c = MemoryCache(10, 1 << 20)
    c.put(b"k", entry(b"a" * 500), 60, T0)
    c.put(b"k", entry(b"b" * 10), 60, T0)
    assert len(c) == 1 and c.bytes == cost(b"k", b"b" * 10)
    assert c.get(b"k", T0) is not None and c.get(b"k", T0).body == b"b" * 10
    # a replacement that cannot be stored leaves nothing (the old answer is stale)
    assert not c.put(b"k", entry(b"c"), 0, T0)
    assert b"k" not in c and c.bytes == 0


def test_ttl_expires_an_entry(MemoryCache: Make) -> None:
    c = MemoryCache(10, 1 << 20)
    c.put(b"k", entry(), 30, T0)
    assert c.get(b"k", T0 + 29.9) is not None
    assert c.get(b"k", T0 + 30) is None
    assert len(c) == 0 and c.bytes == 0  # dropped when found expired


def test_max_age_refuses_an_older_entry_but_keeps_it(MemoryCache: Make) -> None:
    c = MemoryCache(10, 1 << 20)
    c.put(b"k", entry(created=T0 - 100), 3600, T0)
    assert c.get(b"k", T0, max_age=50) is None
    assert c.get(b"k", T0, max_age=100) is None  # exactly max_age old: stale
    assert c.get(b"k", T0, max_age=101) is not None
    assert c.get(b"k", T0, max_age=0) is None  # max-age=0 accepts nothing
    assert c.get(b"k", T0) is not None  # still there for requests without max-age


def test_expired_entries_at_the_front_go_before_live_ones_are_evicted(MemoryCache: Make) -> None:
    c = MemoryCache(2, 1 << 20)
    c.put(b"old", entry(), 10, T0)
    c.put(b"live", entry(), 1000, T0)
    c.put(b"new", entry(), 1000, T0 + 20)  # old has expired: it goes, live stays
    assert b"live" in c and b"new" in c and b"old" not in c
    assert c.evictions == 0


def test_a_dead_entry_behind_a_live_one_frees_the_room_before_the_live_one_goes(
        MemoryCache: Make) -> None:
    """TTLs differ: the entry that expired is not at the LRU's front. Its room is
    enough for the newcomer, so the live entry in front of it stays."""
    a, b, n = cost(b"a", b""), cost(b"b", b"x" * 112), cost(b"n", b"y")
    c = MemoryCache(3, a + b)  # room for a and b, or a and n, not for all three
    assert n <= b
    c.put(b"a", entry(b""), 2, T0)  # the least recently used, alive at T0 + 1
    c.put(b"b", entry(b"x" * 112), 1, T0)  # expires at T0 + 1
    c.put(b"n", entry(b"y"), 1, T0 + 1)
    assert b"a" in c and b"n" in c and b"b" not in c
    assert c.evictions == 0 and c.bytes == a + n
    # and when the dead one's room is not enough, the LRU order decides as usual
    c2 = MemoryCache(2, 10_000)
    c2.put(b"a", entry(), 60, T0)
    c2.put(b"b", entry(), 60, T0)
    c2.put(b"c", entry(), 60, T0)
    assert b"a" not in c2 and b"b" in c2 and b"c" in c2 and c2.evictions == 1


def test_delete_and_clear(MemoryCache: Make) -> None:
    c = MemoryCache(10, 1 << 20)
    c.put(b"a", entry(), 60, T0)
    c.put(b"b", entry(), 60, T0)
    assert c.delete(b"a") and not c.delete(b"a")
    assert len(c) == 1 and c.bytes == cost(b"b", b"{}")
    c.clear()
    assert len(c) == 0 and c.bytes == 0


def test_bounds_must_be_positive(MemoryCache: Make) -> None:
    with pytest.raises(ValueError):
        MemoryCache(0, 100)
    with pytest.raises(ValueError):
        MemoryCache(10, 0)


def test_bytes_is_an_honest_measure_of_memory(MemoryCache: Make) -> None:
    """What ``bytes`` says the cache holds is at least what Python really allocated."""
    n = 5000
    for body_len in (0, 100, 4000):
        c = MemoryCache(n, 1 << 40)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(n):
                c.put(os.urandom(32), CacheEntry(T0, os.urandom(body_len), 1000, 2000), 60, T0)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown <= c.bytes, (body_len, grown / n, c.bytes / n)
        if isinstance(c, ReferenceCache):  # (the native store's own nodes are not traced)
            assert c.bytes <= grown * 1.6  # and not a wild overestimate


OPS = st.lists(st.tuples(st.sampled_from(["put", "get", "delete"]),
                         st.integers(0, 4),  # key
                         st.integers(0, 200),  # body length
                         st.integers(0, 8),  # time step
                         st.integers(0, 60)),  # ttl
               min_size=8, max_size=120)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # a stateless factory
@given(OPS, st.integers(1, 4), st.integers(600, 2500))
def test_random_operations_keep_lru_order_bounds_and_exact_bytes(
        MemoryCache: Make,
        ops: list[tuple[str, int, int, int, int]], max_entries: int, max_bytes: int) -> None:
    c = MemoryCache(max_entries, max_bytes)
    held: dict[bytes, tuple[int, float, int]] = {}  # key -> (body length, expires, cost)
    recency: list[bytes] = []  # the keys held, least recently used first
    now = T0
    for op, k, blen, step, ttl in ops:
        now += step
        key = b"key%d" % k
        if op == "put":
            size = cost(key, b"b" * blen)
            stored = c.put(key, entry(b"b" * blen, created=now), ttl, now)
            assert stored == (ttl > 0 and size <= max_bytes)
            if key in held:
                del held[key]
                recency.remove(key)
            if stored:
                held[key] = (blen, now + ttl, size)
                recency.append(key)
            dropped = [x for x in recency if x not in c]
            live_dropped = [x for x in dropped if held[x][1] > now]
            if live_dropped:
                # evicted from the LRU end only: every live entry used less recently than
                # one evicted was evicted too, and the last one evicted did not fit
                last = recency.index(live_dropped[-1])
                assert all(x in dropped for x in recency[:last] if held[x][1] > now)
                assert (len(c) + 1 > max_entries
                        or c.bytes + held[live_dropped[-1]][2] > max_bytes)
            for x in dropped:
                del held[x]
                recency.remove(x)
        elif op == "get":
            got = c.get(key, now)
            if key in held and held[key][1] > now:
                assert got is not None and len(got.body) == held[key][0]
                recency.remove(key)
                recency.append(key)
            else:
                assert got is None
                if key in held:
                    del held[key]
                    recency.remove(key)
        else:
            assert c.delete(key) == (key in held)
            if key in held:
                del held[key]
                recency.remove(key)
        assert set(held) == {x for x in recency if x in c}
        assert len(c) == len(held)
        assert c.bytes == sum(v[2] for v in held.values())
        assert len(c) <= max_entries and c.bytes <= max_bytes


# The agreement test's operations: put an entry, store an answer's parts, get, delete.
AGREE_OPS = st.lists(st.tuples(st.sampled_from(["put", "store", "get", "delete"]),
                               st.integers(0, 4), st.integers(0, 200), st.integers(0, 8),
                               st.integers(0, 60)),
                     min_size=8, max_size=120)


@settings(max_examples=300, deadline=None)
@given(AGREE_OPS, st.integers(1, 4), st.integers(600, 2500),
       st.lists(st.one_of(st.none(), st.integers(0, 30)), min_size=1, max_size=8))
def test_native_and_reference_agree(ops: list[tuple[str, int, int, int, int]],
                                    max_entries: int, max_bytes: int,
                                    ages: list[int | None]) -> None:
    native = NativeCache(max_entries, max_bytes, ENTRY_OVERHEAD, CacheEntry)
    ref = ReferenceCache(max_entries, max_bytes, ENTRY_OVERHEAD, CacheEntry)
    now = T0
    for i, (op, k, blen, step, ttl) in enumerate(ops):
        now += step
        key = b"key%d" % k
        if op == "put":
            e = entry(b"b" * blen, created=now - step)
            assert native.put(key, e, ttl, now) == ref.put(key, e, ttl, now)
        elif op == "store":  # whole objects (whitespace around or not), and cut ones
            body = (b"{%s}", b" \n{%s}\x0c", b"{%s", b"%s}", b"\x0b{%s} ")[k] % (b"s" * blen)
            assert (native.store(key, body, blen, k, ttl, now)
                    == ref.store(key, body, blen, k, ttl, now))
        elif op == "get":
            age = ages[i % len(ages)]
            got = native.get(key, now, age)
            assert got == ref.get(key, now, age)
            if got is not None:  # an entry, made once from stored parts
                assert type(got) is CacheEntry
                assert native.get(key, now, age) is got
                ref.get(key, now, age)
        else:
            assert native.delete(key) == ref.delete(key)
        assert native.keys() == ref.keys()
        assert (len(native), native.bytes, native.evictions) == (
            len(ref), ref.bytes, ref.evictions)


@pytest.mark.parametrize("cls", [NativeCache, ReferenceCache], ids=["native", "reference"])
def test_store_keeps_an_answer_read_back_as_its_entry(cls: Any) -> None:
    import time

    c = cls(4, 1 << 20, ENTRY_OVERHEAD, CacheEntry)
    body = b'{"id":"chatcmpl-1"}'
    assert c.store(b"k", body, 7, 9, 60, T0)
    assert c.bytes == cost(b"k", body)
    got = c.get(b"k", T0 + 1)
    assert got == CacheEntry(T0, body, 7, 9) and got.body is body
    assert c.get(b"k", T0 + 61) is None  # its TTL from when it was stored
    assert not c.store(b"k", body, 7, 9, 0, T0) and b"k" not in c  # no TTL: nothing kept
    before = time.time()
    assert c.store(b"k", body, 1, 2, 60)  # no time given: the clock
    created = c.get(b"k", time.time()).created
    assert before <= created <= time.time()
    for cut in (b'{"id":"chatcmpl-1"', b'"id":"chatcmpl-1"}', b"", b"{", b" } {"):
        assert not c.store(b"k", cut, 1, 2, 60, T0)  # never stored, the entry kept
        assert c.get(b"k", T0 + 1) is not None
    assert c.store(b"k", b' \r\n{"a":1}\t', 1, 2, 60, T0)
    with pytest.raises(TypeError, match="factory"):
        cls(4, 1 << 20, ENTRY_OVERHEAD).store(b"k", body, 1, 2, 60, T0)


_NAMES = st.text(st.characters(codec="utf-8"), max_size=12)
_VALUES = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=8), st.booleans(),
                   st.none())
_BODIES = st.one_of(
    st.dictionaries(st.text(max_size=6), _VALUES, max_size=4).map(orjson.dumps),
    st.sampled_from([b"[1]", b"", b"{", b'{"a":}', b"  {\"b\": 2} ", b"null"]))


@settings(max_examples=300, deadline=None)
@given(_BODIES, _NAMES, st.sampled_from(["chat", "embeddings", "messages"]), _NAMES,
       st.booleans(), st.sampled_from([None, 0, 5, 100]), st.integers(0, 50))
def test_lookup_is_the_key_then_get(body: bytes, scope: str, endpoint: str, model: str,
                                    stored: bool, max_age: int | None, later: int) -> None:
    """One call gives what cache_key then get give, native and reference alike; a body
    that is not a JSON object is a ValueError from both."""
    for cache in (NativeCache(4, 1 << 20, ENTRY_OVERHEAD),
                  ReferenceCache(4, 1 << 20, ENTRY_OVERHEAD)):
        try:
            key = cache_key(body, scope.encode(), endpoint.encode(), model.encode())
        except ValueError:
            with pytest.raises(ValueError):
                cache.lookup(body, scope, endpoint, model, T0, max_age)
            continue
        e = entry(created=T0)
        if stored:
            cache.put(key, e, 30, T0)
        now = T0 + later
        want = cache.get(key, now, max_age)
        assert cache.lookup(body, scope, endpoint, model, now, max_age) == (key, want)
        if stored and later < 30 and (max_age is None or later < max_age):
            assert want is e
        else:
            assert want is None


def test_lookup_reads_the_clock_when_not_told_the_time() -> None:
    import time

    for cache in (NativeCache(4, 1 << 20, ENTRY_OVERHEAD),
                  ReferenceCache(4, 1 << 20, ENTRY_OVERHEAD)):
        key = cache_key(b"{}", b"", b"chat", b"m")
        e = entry(created=time.time())
        cache.put(key, e, 3600, time.time())
        assert cache.lookup(b"{}", "", "chat", "m") == (key, e)  # live now
        cache.put(key, e, 3600, time.time() - 7200)  # stored two hours ago: gone by now
        assert cache.lookup(b"{}", "", "chat", "m") == (key, None)


# A temperature as the client wrote it: JSON numbers equal to zero in their many
# spellings, numbers that are not, and values that are not numbers at all.
_TEMPERATURES = st.one_of(
    st.sampled_from([b"0", b"-0", b"0.0", b"-0.0", b"0e5", b"0E-3", b"-0e+2", b"1e-400",
                     b"0.000", b"1", b"-1", b"0.5", b"1e-300", b"false", b"true", b"null",
                     b'"0"', b"[0]", b"{}", b'{"temperature":0}']),
    st.integers(-2, 2).map(orjson.dumps),
    st.floats(-1.0, 1.0).map(orjson.dumps))


@settings(max_examples=400, deadline=None)
@given(st.lists(_TEMPERATURES, max_size=3), st.booleans(), st.booleans())
def test_the_temperature_test_is_the_filters_rule(temperatures: list[bytes], nested: bool,
                                                   deterministic: bool) -> None:
    """lookup(deterministic=True) answers (None, None) exactly when the filter's rule on
    the parsed body (a number equal to 0, never False: ``t != 0 or t is False``) says
    the request is not deterministic: the last top-level ``temperature`` counts, one
    inside another member does not; native and reference alike."""
    members = [b'"model":"m"'] + [b'"temperature":' + t for t in temperatures]
    if nested:
        members.append(b'"metadata":{"temperature":0}')
    body = b"{" + b",".join(members) + b"}"
    t = orjson.loads(body).get("temperature")
    refused = deterministic and (t != 0 or t is False)
    key = cache_key(body, b"s", b"chat", b"m")
    for cache in (NativeCache(4, 1 << 20, ENTRY_OVERHEAD),
                  ReferenceCache(4, 1 << 20, ENTRY_OVERHEAD)):
        cache.put(key, entry(), 60, T0)
        got = cache.lookup(body, "s", "chat", "m", T0, None, deterministic)
        assert got == ((None, None) if refused else (key, entry())), (body, t)
