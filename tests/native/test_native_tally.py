"""The native Tally counts what its Python reference counts, and the recorder's
metrics after a flush are what the requests added."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import tally as ref

_BOUNDS = [[0.005, 0.01, 0.1, 1.0, math.inf], [0.001, 0.1, math.inf], [0.5, math.inf],
           [0.01, 0.02, 0.05, math.inf], [1e-5, 1e-4, 1e-3, math.inf]]
_secs = st.floats(-1.0, 20.0, allow_nan=False) | st.sampled_from([0.0, 0.005, 0.1, 1.0, 1e-5])
_record = st.tuples(_secs, _secs, _secs, st.integers(0, 10**6), st.integers(0, 10**6),
                    st.floats(0, 10, allow_nan=False), _secs, _secs)


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(st.lists(_record, max_size=8), min_size=1, max_size=4))
def test_the_native_tally_matches_the_reference(batches: list[list[Any]]) -> None:
    mine, theirs = native.Tally(_BOUNDS), ref.Tally(_BOUNDS)
    for batch in batches:
        for rec in batch:
            mine.record(*rec)
            theirs.record(*rec)
        got, want = mine.take(), theirs.take()
        assert got[:4] == want[:4]
        assert [None if h is None else (list(h[0]), h[1]) for h in got[4]] == list(want[4])
    assert mine.take()[0] == 0.0  # taken: zeroed


def test_bounds_must_ascend() -> None:
    bads: list[list[list[float]]] = [[[1.0, 1.0]] * 5, [[]] * 5, [[1.0]] * 4]
    for bad in bads:
        with pytest.raises(ValueError):
            native.Tally(bad)
        with pytest.raises(ValueError):
            ref.Tally(bad)
