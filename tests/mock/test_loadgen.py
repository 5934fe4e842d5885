"""benchmarks/loadgen.py against the mock: counts, framing, errors, schedules."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import orjson
from mock_helpers import CHAT, MockThread

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from loadgen import LoadSpec, Percentiles, run_load_sync  # type: ignore[import-not-found,unused-ignore]

BODY = orjson.dumps(CHAT)
STREAM_BODY = orjson.dumps({**CHAT, "stream": True})


def url(m: MockThread) -> str:
    return m.base + "/v1/chat/completions"


def test_percentiles_are_exact_nearest_rank() -> None:
    p = Percentiles.of([i / 1000 for i in range(1, 1001)])
    assert p is not None
    assert (p.p50, p.p90, p.p99, p.p999, p.min, p.max) == (500, 900, 990, 999, 1, 1000)
    assert Percentiles.of([]) is None


def test_closed_loop_fixed_number_of_requests(mock: MockThread) -> None:
    r = run_load_sync(LoadSpec(url(mock), BODY, connections=4, duration=None, requests=200))
    assert r.requests == r.ok == 200
    assert r.errors == {} and r.non_2xx == {}
    assert r.latency_ms is not None and 0 < r.latency_ms.p50 <= r.latency_ms.p99
    assert mock.stats()["requests"] == 200


def test_streams_count_events_and_time_the_first(mock: MockThread) -> None:
    spec = LoadSpec(
        url(mock),
        STREAM_BODY,
        headers={"x-mock-chunks": "20", "x-mock-chunk-interval-ms": "25"},
        stream=True,
        connections=2,
        duration=None,
        requests=6,
    )
    r = run_load_sync(spec)
    assert r.requests == 6
    assert r.events_per_stream == 23  # role + 20 + finish + [DONE]
    assert r.ttfb_ms is not None and r.latency_ms is not None
    # The first event comes at once; the stream lasts at least 20 pauses of 25 ms.
    assert r.ttfb_ms.max < 250 <= r.latency_ms.min


def test_non_2xx_and_resets_are_counted(mock: MockThread) -> None:
    spec = LoadSpec(
        url(mock),
        BODY,
        headers={"x-mock-fault": "503"},
        connections=2,
        duration=None,
        requests=10,
    )
    assert run_load_sync(spec).non_2xx == {503: 10}
    spec = LoadSpec(
        url(mock),
        STREAM_BODY,
        headers={"x-mock-fault": "cut:2"},
        stream=True,
        connections=1,
        duration=0.3,
    )
    r = run_load_sync(spec)
    assert r.errors.get("reset", 0) >= 1
    assert r.ok == 0


def test_open_loop_keeps_its_schedule_and_measures_from_it(
    mock_factory: Callable[..., MockThread],
) -> None:
    m = mock_factory(latency_ms=30)
    # 100/s for 0.5 s against a 30 ms server: about 3 requests in flight at
    # once, so the pool must grow beyond its single pre-opened connection.
    spec = LoadSpec(url(m), BODY, rate=100, connections=1, duration=0.5)
    r = run_load_sync(spec)
    assert 45 <= r.requests <= 55
    assert r.connections >= 3
    assert r.latency_ms is not None and r.latency_ms.p50 >= 29
    assert r.lag_ms is not None and r.lag_ms.p50 < 5
