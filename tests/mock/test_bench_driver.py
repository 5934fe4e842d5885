"""benchmarks/run.py: --scaling (when it refuses to run, how its figure is judged) and
--rounds (which round is reported)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import run  # type: ignore[import-not-found,unused-ignore]
import scaling  # type: ignore[import-not-found,unused-ignore]
from loadgen import LoadResult, Percentiles  # type: ignore[import-not-found,unused-ignore]


def test_scaling_needs_two_cpus_per_worker_when_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert scaling.refusal(3, pin=True) is None
    why = scaling.refusal(4, pin=True)
    assert why is not None and "needs 8 CPUs" in why and "has 6" in why
    assert scaling.refusal(4, pin=False) is None  # unpinned: mechanics only
    assert "N >= 2" in (scaling.refusal(1, pin=False) or "")


def test_the_driver_refuses_before_measuring_anything(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(SystemExit) as e:
        run.main(["--scaling", "2", "--scaling-only"])
    assert e.value.code == 2
    assert "needs 4 CPUs" in capsys.readouterr().err


def _scaling(ratio: float, pinned: bool) -> dict[str, object]:
    return {"workers": 4, "pinned": pinned, "cpus": 8, "ratio": ratio}


def test_a_pinned_scaling_figure_is_checked_against_085() -> None:
    ok = [c for c in run.spec_checks({}, None, _scaling(0.9, True)) if "workers" in c["what"]]
    miss = [c for c in run.spec_checks({}, None, _scaling(0.8, True)) if "workers" in c["what"]]
    assert [c["ok"] for c in ok] == [True] and [c["ok"] for c in miss] == [False]
    assert ok[0]["target"] == 0.85 and ok[0]["value"] == 0.9


def test_an_unpinned_scaling_figure_is_not_judged() -> None:
    checks = [c for c in run.spec_checks({}, None, _scaling(0.9, False)) if "workers" in c["what"]]
    assert len(checks) == 1 and checks[0]["ok"] is None and "unpinned" in checks[0]["what"]


def _measured(mode: str, rps: float, p50: float) -> run.Measured:
    lat = Percentiles(p50, p50, p50, p50, p50, p50, p50)
    result = LoadResult(mode, "u", False, 1, None, 1.0, 1, 1, {}, {}, rps, lat)
    return run.Measured(result, None, None, None)


def test_rounds_report_the_median_round_and_of_two_the_worse() -> None:
    closed = run.SCENARIOS[0]
    assert closed.name == "max_rps"
    three = [_measured("closed", r, 1.0) for r in (10.0, 30.0, 20.0)]
    assert run.median_run(closed, three).result.rps == 20.0
    two = [_measured("closed", r, 1.0) for r in (30.0, 10.0)]
    assert run.median_run(closed, two).result.rps == 10.0  # the lower rate
    low = next(s for s in run.SCENARIOS if s.name == "open_low")
    two = [_measured("open", 50.0, p) for p in (0.4, 0.9)]
    chosen = run.median_run(low, two).result.latency_ms
    assert chosen is not None and chosen.p50 == 0.9  # the higher latency


def test_steal_is_the_largest_share_taken_from_one_cpu() -> None:
    tick = run.CLK_TCK
    before = {"cpu0": 100, "cpu1": 50}
    after = {"cpu0": 100 + tick // 2, "cpu1": 50 + tick // 10}
    assert run.steal_share(before, after, 2.0) == (tick // 2) / tick / 2.0
    assert run.steal_share({}, after, 2.0) is None  # no /proc/stat: unknown, not zero
    assert set(run.steal_ticks()) >= {"cpu0"}  # this Linux machine has a cpu0 line
