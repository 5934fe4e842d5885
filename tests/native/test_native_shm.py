"""The shared-memory limiter table: same answers as the reference, one count
across processes (forked children and processes opening the same path)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import limiter as ref

from .test_native_limiter import KEYS, T0, _scopes, _view, cost, dt

# Sockets leaked by other tests' servers can be collected while these run;
# pytest would blame the test that happens to trigger the collection.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
)


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.lists(st.integers(0, len(KEYS) - 1), min_size=1, max_size=4),
            st.lists(cost, min_size=4, max_size=4),
            dt,
            st.sampled_from(["keep", "settle", "release"]),
        ),
        max_size=40,
    )
)
def test_shared_table_matches_the_reference(ops: list[Any]) -> None:
    run_both(native.SharedLimiterTable(slots=4096), ref.LimiterTable(), ops, T0)


def run_both(shared: Any, local: Any, ops: list[Any], now: float) -> float:
    """``ops`` (scope indexes, costs, time step, then keep | settle | release) on the
    shared table and on the reference, every answer compared; the time reached."""
    scopes = (_scopes(native), _scopes(ref))
    for idx, costs, step, then in ops:
        now += step
        a = shared.reserve([scopes[0][i] for i in idx], costs[: len(idx)], now)
        b = local.reserve([scopes[1][i] for i in idx], costs[: len(idx)], now)
        assert _view(a) == _view(b)
        if then == "settle":
            actual = list(reversed(costs))[: len(idx)]
            assert shared.settle(a, actual, now) == local.settle(b, actual, now)
        elif then == "release":
            assert shared.release(a, now) == local.release(b, now)
    return now


def test_forked_children_share_one_count() -> None:
    table = native.SharedLimiterTable()
    scope = native.Scope("team-a:rpm", native.Limit.rate(100))
    children = []
    for _ in range(4):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: count admissions, report, exit without cleanup
            os.close(r)
            n = sum(table.reserve([scope], [1], T0).admitted for _ in range(60))
            os.write(w, str(n).encode())
            os._exit(0)
        os.close(w)
        children.append((pid, r))
    total = 0
    for pid, r in children:
        total += int(os.read(r, 64))
        os.close(r)
        assert os.waitpid(pid, 0)[1] == 0
    assert total == 100
    assert not table.reserve([scope], [1], T0).admitted


def test_processes_opening_one_path_share_counts(tmp_path: Path) -> None:
    path = tmp_path / "limits.shm"
    table = native.SharedLimiterTable(path, slots=1024)
    inflight = native.Scope("k:inflight", native.Limit.concurrency(3))
    held = table.reserve([inflight, inflight], [1, 1], T0)
    assert held.admitted
    script = textwrap.dedent(
        f"""
        from fastgw import _native as n
        t = n.SharedLimiterTable({str(path)!r}, slots=7)
        s = n.Scope("k:inflight", n.Limit.concurrency(3))
        print(t.capacity, [t.reserve([s], [1], {T0}).admitted for _ in range(3)])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split(maxsplit=1) == [str(table.capacity), "[True, False, False]\n"]
    assert table.release(held, T0)
    assert table.reserve([inflight], [2], T0).admitted


def test_a_file_that_is_not_a_region_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-region"
    bad.write_bytes(b"\x07" * 4096)
    with pytest.raises(OSError, match="not a fastgw limiter region"):
        native.SharedLimiterTable(bad)


def test_too_many_scopes_in_one_call_is_a_value_error() -> None:
    table = native.SharedLimiterTable(slots=64)
    s = native.Scope("x", native.Limit.rate(10))
    with pytest.raises(ValueError, match="at most 16"):
        table.reserve([s] * 17, [0.0] * 17, T0)


def test_a_full_region_stays_bounded_and_keeps_counting() -> None:
    table = native.SharedLimiterTable(slots=64)
    assert table.capacity == 64
    rpm = native.Limit.rate(5)
    for i in range(1000):
        table.reserve([native.Scope(f"user-{i}", rpm)], [1], T0 + i)
    assert len(table) <= 64
    hot = native.Scope("hot", rpm)
    assert [table.reserve([hot], [1], T0 + 1000).admitted for _ in range(6)] == [True] * 5 + [False]
    before = len(table)
    assert table.evict_idle(T0 + 10_000) == before
    assert len(table) == 0


EVICT_KEYS = [f"user-{i}" for i in range(40)]


def _evict_limit(mod: Any, i: int) -> Any:
    # Rate buckets go idle as they refill; in-flight counters never do (nothing is
    # released here), so a full table must evict its least recently used one.
    return mod.Limit.rate(3) if i % 3 else mod.Limit.concurrency(2)


class _OneSetModel:
    """The 16 slots of a one-set shared table, each key's bucket kept by its own
    reference table: a new key takes an empty slot, else the first idle one
    (lossless), else the least recently used one (its count is forgotten)."""

    def __init__(self, ways: int) -> None:
        self.slots: list[str | None] = [None] * ways
        self.last_used: dict[str, float] = {}
        self.tables: dict[str, Any] = {}
        self.lost = 0  # busy buckets evicted

    def reserve(self, i: int, cost: float, now: float) -> Any:
        key = EVICT_KEYS[i]
        if key not in self.tables:
            if None in self.slots:
                at = self.slots.index(None)
            else:
                # An idle bucket is dropped from its reference table: absent and idle
                # are the same state.
                idle = [n for n, k in enumerate(self.slots) if k is not None
                        and (self.tables[k].evict_idle(now) == 1 or not len(self.tables[k]))]
                if idle:
                    at = idle[0]
                else:
                    at = min(range(len(self.slots)),
                             key=lambda n: self.last_used[self.slots[n] or ""])
                    self.lost += 1
                old = self.slots[at]
                assert old is not None
                del self.tables[old], self.last_used[old]
            self.slots[at] = key
            self.tables[key] = ref.LimiterTable()
        self.last_used[key] = now
        return self.tables[key].reserve([ref.Scope(key, _evict_limit(ref, i))], [cost], now)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, len(EVICT_KEYS) - 1),
                              st.sampled_from([0.0, 1.0, 1.0, 2.0]),
                              st.sampled_from([0.001, 0.01, 0.25, 1.0, 7.5, 20.0, 61.0])),
                    max_size=120))
def test_a_full_table_evicts_idle_then_least_recently_used_buckets(ops: list[Any]) -> None:
    # 16 slots are one set: where a key lands does not depend on the region's hash seed.
    table = native.SharedLimiterTable(slots=16)
    assert table.capacity == 16
    model = _OneSetModel(16)
    now = T0
    # The table is full from the start (every slot busy), so new keys evict.
    prefill = [(i, 1.0, 0.001) for i in range(0, 32, 2)]
    for i, spend, step in prefill + ops:
        now += step  # strictly increasing: the least recently used slot is unique
        got = table.reserve([native.Scope(EVICT_KEYS[i], _evict_limit(native, i))], [spend],
                            now)
        want = model.reserve(i, spend, now)
        assert _view(got) == _view(want)
        assert len(table) == sum(k is not None for k in model.slots) <= 16
    event(f"busy buckets evicted: {min(model.lost, 3)}+")


def test_a_busy_bucket_evicted_from_a_full_table_starts_afresh() -> None:
    table = native.SharedLimiterTable(slots=16)
    inflight = native.Limit.concurrency(1)
    for i in range(16):
        assert table.reserve([native.Scope(f"busy-{i}", inflight)], [1], T0 + i).admitted
    assert not table.reserve([native.Scope("busy-5", inflight)], [1], T0 + 16).admitted
    # A 17th key: no slot is idle, so the least recently used one (busy-0) goes.
    assert table.reserve([native.Scope("new", inflight)], [1], T0 + 17).admitted
    assert len(table) == 16
    assert table.reserve([native.Scope("busy-0", inflight)], [1], T0 + 18).admitted
    # busy-5 was used at T0 + 16, so it stayed (and still counts); busy-1 went for busy-0.
    assert not table.reserve([native.Scope("busy-5", inflight)], [1], T0 + 19).admitted
    assert table.reserve([native.Scope("busy-1", inflight)], [1], T0 + 20).admitted
