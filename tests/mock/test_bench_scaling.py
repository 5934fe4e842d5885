"""benchmarks/run.py --scaling: when it refuses to run, and how its figure is judged."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import run  # type: ignore[import-not-found,unused-ignore]
import scaling  # type: ignore[import-not-found,unused-ignore]


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
