"""The native limiter table gives the reference's answers, bit for bit."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import limiter as ref

# Sockets leaked by other tests' servers can be collected while these run;
# pytest would blame the test that happens to trigger the collection.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def _limits(mod: Any) -> list[Any]:
    return [
        mod.Limit.rate(3),  # rpm 3
        mod.Limit.rate(1000, 60.0),  # tpm
        mod.Limit.rate(10, 1.0, burst=5),
        mod.Limit.concurrency(2),
        mod.Limit.budget(1.5, "day"),
        mod.Limit.budget(10.0, "month"),
        mod.Limit.budget(0.25, 3600.0),
    ]


KEYS = ["k:rpm", "k:tpm", "k:fast", "k:inflight", "k:usd-day", "k:usd-month", "k:usd-hour"]


def _scopes(mod: Any) -> list[Any]:
    return [mod.Scope(k, lim) for k, lim in zip(KEYS, _limits(mod), strict=True)]


def _view(r: Any) -> tuple[Any, ...]:
    return (r.admitted, r.retry_after, r.denied_index, r.limits, r.remaining, r.reset_after)


cost = st.sampled_from([0.0, 0.1, 0.5, 1.0, 1.0, 1.0, 2.0, 3.0, 250.0, 999.0, 1500.0])
dt = st.sampled_from([0.0, 0.0, 0.001, 0.25, 1.0, 7.5, 20.0, 61.0, 3599.0, 86_400.0, 20 * 86_400.0])
op: st.SearchStrategy[Any] = st.one_of(
    st.tuples(
        st.just("reserve"),
        st.lists(st.integers(0, len(KEYS) - 1), min_size=1, max_size=4),
        st.lists(cost, min_size=4, max_size=4),
        dt,
    ),
    # One scope at a time, often at the same instant: drives buckets empty.
    st.tuples(
        st.just("reserve"),
        st.lists(st.integers(0, len(KEYS) - 1), min_size=1, max_size=1),
        st.lists(st.sampled_from([0.5, 1.0, 1.0, 2.0]), min_size=4, max_size=4),
        st.sampled_from([0.0, 0.0, 0.0, 1.0]),
    ),
    st.tuples(st.just("settle"), st.integers(0, 50), st.lists(cost, min_size=4, max_size=4), dt),
    st.tuples(st.just("release"), st.integers(0, 50), st.just([]), dt),
    st.tuples(st.just("evict"), st.just(0), st.just([]), dt),
)


@settings(max_examples=400, deadline=None)
@given(ops=st.lists(op, max_size=80), max_keys=st.integers(1, 10))
def test_random_schedules_match_the_reference(ops: list[Any], max_keys: int) -> None:
    tables: tuple[Any, Any] = (
        native.LimiterTable(max_keys=max_keys),
        ref.LimiterTable(max_keys=max_keys),
    )
    scopes = (_scopes(native), _scopes(ref))
    made: list[tuple[Any, Any]] = []
    now = T0
    for kind, arg, costs, step in ops:
        now += step
        if kind == "reserve":
            results = [
                t.reserve([s[i] for i in arg], costs[: len(arg)], now)
                for t, s in zip(tables, scopes, strict=True)
            ]
            assert _view(results[0]) == _view(results[1])
            made.append((results[0], results[1]))
        elif kind in ("settle", "release") and made:
            pair = made[arg % len(made)]
            n = len(pair[0].costs)
            if kind == "settle":
                got = [t.settle(r, costs[:n], now) for t, r in zip(tables, pair, strict=True)]
            else:
                got = [t.release(r, now) for t, r in zip(tables, pair, strict=True)]
            assert got[0] == got[1]
        elif kind == "evict":
            assert tables[0].evict_idle(now) == tables[1].evict_idle(now)
        assert len(tables[0]) == len(tables[1])
        assert tables[0].evicted_busy == tables[1].evicted_busy
        for k in KEYS:
            assert tables[0].peek(k) == tables[1].peek(k)


@pytest.mark.parametrize("mod", [native, ref], ids=["native", "reference"])
def test_rpm_three_counts_the_current_request(mod: Any) -> None:
    table = mod.LimiterTable()
    scope = mod.Scope("key", mod.Limit.rate(3))
    got = [table.reserve([scope], [1], T0) for _ in range(4)]
    assert [int(r.remaining[0]) for r in got[:3]] == [2, 1, 0]
    assert [r.admitted for r in got] == [True, True, True, False]
    assert got[3].retry_after == pytest.approx(20.0)
    assert math.ceil(got[3].retry_after) == 20
    assert got[3].denied_index == 0
    assert not got[3]
    # Refill is continuous: one request's worth back after 20 s.
    assert table.reserve([scope], [1], T0 + 20.0).admitted


@pytest.mark.parametrize("mod", [native, ref], ids=["native", "reference"])
def test_reserve_is_all_or_none(mod: Any) -> None:
    table = mod.LimiterTable()
    tpm = mod.Scope("tpm", mod.Limit.rate(1000))
    inflight = mod.Scope("inflight", mod.Limit.concurrency(1))
    budget = mod.Scope("usd", mod.Limit.budget(1.0, "month"))
    first = table.reserve([tpm, inflight, budget], [400, 1, 0.5], T0)
    assert first.admitted
    second = table.reserve([tpm, inflight, budget], [400, 1, 0.25], T0)
    assert not second.admitted and second.denied_index == 1
    assert second.retry_after == 1.0
    # Neither the tpm bucket nor the budget paid for the refused request.
    assert table.peek("tpm") == (600.0, T0)
    assert table.peek("usd")[0] == 0.5
    assert table.release(first, T0)
    assert table.reserve([tpm, inflight, budget], [400, 1, 0.25], T0).admitted


@pytest.mark.parametrize("mod", [native, ref], ids=["native", "reference"])
def test_settle_refunds_or_debits_once(mod: Any) -> None:
    table = mod.LimiterTable()
    other = mod.LimiterTable()
    tpm = mod.Scope(b"tpm", mod.Limit.rate(1000))
    r = table.reserve([tpm], [500], T0)
    with pytest.raises(ValueError, match="another table"):
        other.settle(r, [100], T0)
    with pytest.raises(ValueError):
        table.settle(r, [100, 1], T0)
    assert not r.settled
    assert table.settle(r, [100], T0)
    assert r.settled
    assert not table.settle(r, [100], T0)
    assert table.peek("tpm") == (900.0, T0)
    r2 = table.reserve([tpm], [0], T0)
    assert table.settle(r2, [2500], T0)
    assert table.peek("tpm")[0] == -1600.0
    refused = table.reserve([tpm], [0], T0)
    assert not refused.admitted and refused.retry_after == pytest.approx(96.0)
    assert not table.settle(refused, [0], T0)


@pytest.mark.parametrize("mod", [native, ref], ids=["native", "reference"])
def test_budget_resets_at_the_month_boundary(mod: Any) -> None:
    table = mod.LimiterTable()
    usd = mod.Scope("usd", mod.Limit.budget(5.0, "month"))
    jan31 = 1_706_659_200.0  # 2024-01-31T00:00:00Z
    feb1 = 1_706_745_600.0
    assert table.reserve([usd], [4.0], jan31).admitted
    refused = table.reserve([usd], [2.0], jan31 + 10.0)
    assert refused.retry_after == feb1 - (jan31 + 10.0)
    assert table.reserve([usd], [4.5], feb1).admitted
    assert table.reserve([usd], [0.5], feb1).remaining == (0.0,)


@pytest.mark.parametrize("mod", [native, ref], ids=["native", "reference"])
def test_bad_arguments_raise_typed_errors(mod: Any) -> None:
    table = mod.LimiterTable()
    s = mod.Scope("k", mod.Limit.rate(1))
    with pytest.raises(ValueError):
        table.reserve([s], [-1.0], T0)
    with pytest.raises(ValueError):
        table.reserve([s], [1.0, 2.0], T0)
    with pytest.raises(ValueError):
        table.reserve([s], [1.0], math.nan)
    with pytest.raises(TypeError):
        table.reserve(["k"], [1.0], T0)
    with pytest.raises(ValueError):
        mod.Limit.rate(0)
    with pytest.raises(ValueError):
        mod.Limit.budget(1.0, "fortnight")
    with pytest.raises(ValueError):
        mod.Limit.concurrency(-1)
    with pytest.raises(TypeError):
        mod.Scope(42, mod.Limit.rate(1))


def test_idle_buckets_are_evicted_so_memory_follows_busy_keys() -> None:
    table = native.LimiterTable()
    rpm = native.Limit.rate(60)
    for i in range(200_000):
        table.reserve([native.Scope(f"user-{i}", rpm)], [1], T0)
    assert len(table) == 200_000
    hot = native.Scope("hot", rpm)
    # A second later every bucket has refilled; each reserve walks two buckets
    # and drops the idle ones.
    for _ in range(100_000):
        table.reserve([hot], [1], T0 + 1.0)
    # Down to the floor of idle buckets kept unswept (and the hot one).
    assert len(table) <= ref.SWEEP_FLOOR + 1
    assert table.evicted_busy == 0


@pytest.mark.parametrize("mod", [native, ref], ids=["native", "reference"])
def test_idle_buckets_below_the_floor_are_kept_and_answer_as_fresh_ones(mod: Any) -> None:
    # A few keys whose limits are far above their traffic: each bucket is idle
    # again long before the key's next request. Kept (not dropped and made again
    # at every request), and answering exactly as a new bucket would.
    table = mod.LimiterTable()
    a, b = mod.Scope("a", mod.Limit.rate(60)), mod.Scope("b", mod.Limit.rate(60))
    table.reserve([a], [1], T0)
    for i in range(1, 50):
        table.reserve([b], [1], T0 + i)  # a is idle from T0 + 1 on
    assert len(table) == 2
    kept = table.reserve([a], [1], T0 + 100)
    fresh = mod.LimiterTable().reserve([a], [1], T0 + 100)
    assert _view(kept) == _view(fresh)
    # Above the floor, idle buckets are swept again: memory follows busy keys.
    small = mod.LimiterTable(max_keys=8)  # floor 4
    for i in range(8):
        small.reserve([mod.Scope(f"k{i}", mod.Limit.rate(60))], [1], T0)
    for _ in range(8):
        small.reserve([a], [1], T0 + 100)
    assert len(small) <= 4  # (a sweep of n + 1 may end one or two below it)
    assert small.evicted_busy == 0


def test_max_keys_bounds_memory_even_when_all_are_busy() -> None:
    table = native.LimiterTable(max_keys=1000)
    inflight = native.Limit.concurrency(10)
    for i in range(10_000):
        assert table.reserve([native.Scope(f"u{i}", inflight)], [1], T0).admitted
        assert len(table) <= 1000
    assert table.evicted_busy == 9000


def test_limit_equality_and_introspection() -> None:
    assert native.Limit.rate(60) == native.Limit.rate(60, 60.0)
    assert native.Limit.rate(60) != native.Limit.rate(60, 1.0)
    assert hash(native.Limit.budget(1, "day")) == hash(native.Limit.budget(1, 86400))
    assert native.Limit.concurrency(3).kind == "concurrency"
    assert native.Limit.rate(100, burst=10).value == 10
    s = native.Scope(b"raw", native.Limit.rate(1))
    assert s.key == b"raw" and s.limit == native.Limit.rate(1)
