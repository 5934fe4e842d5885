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
from hypothesis import given, settings
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
    shared = native.SharedLimiterTable(slots=4096)
    local = ref.LimiterTable()
    scopes = (_scopes(native), _scopes(ref))
    now = T0
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
