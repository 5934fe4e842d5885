"""A shared table kept in a file and reopened after a restart (``server.state_dir``):
``recover`` frees the in-flight counters and keeps every other bucket, as the
reference's ``recover`` does; ``flush`` writes the file."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import limiter as ref

from .test_native_limiter import KEYS, T0, cost, dt
from .test_native_shm import run_both

_runs = itertools.count()

ops = st.lists(
    st.tuples(
        st.lists(st.integers(0, len(KEYS) - 1), min_size=1, max_size=4),
        st.lists(cost, min_size=4, max_size=4),
        dt,
        st.sampled_from(["keep", "keep", "settle", "release"]),  # kept: still in flight
    ),
    max_size=25,
)




@settings(max_examples=60, deadline=None)
@given(before=ops, after=ops)
def test_reopened_and_recovered_table_matches_the_reference(
        tmp_path_factory: Any, before: list[Any], after: list[Any]) -> None:
    path: Path = tmp_path_factory.getbasetemp() / f"recover-{next(_runs)}.table"
    local = ref.LimiterTable()
    shared = native.SharedLimiterTable(path, slots=4096)
    now = run_both(shared, local, before, T0)
    shared.flush()
    del shared  # the process that used it is gone
    reopened = native.SharedLimiterTable(path, slots=99)  # an existing file keeps its size
    # The shared table keeps idle buckets the reference has already swept, so the
    # counts freed may differ; what must agree is every answer after it.
    busy = sum(1 for k in KEYS if "inflight" in k and (local.peek(k) or (0.0,))[0] > 0)
    freed = reopened.recover()
    local.recover()
    assert freed >= busy
    run_both(reopened, local, after, now)


def test_flush_writes_what_a_new_mapping_reads(tmp_path: Path) -> None:
    path = tmp_path / "t.table"
    scope = native.Scope("k:rpm", native.Limit.rate(3))
    table = native.SharedLimiterTable(path)
    for _ in range(3):
        assert table.reserve([scope], [1.0], T0).admitted
    table.flush()
    again = native.SharedLimiterTable(path)
    assert again.recover() == 0
    assert not again.reserve([scope], [1.0], T0).admitted
