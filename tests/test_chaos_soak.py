"""The chaos soak (benchmarks/chaos.py) for 40 seconds: mixed traffic through
--workers 2 with upstream faults, reloads, a worker SIGKILLed and Redis restarted;
every invariant of its report must hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "chaos.py"


@pytest.mark.timeout(300)
def test_chaos_soak_keeps_every_invariant(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--duration", "40", "--concurrency", "12",
                        "--json", str(out)], capture_output=True, text=True, timeout=280,
                       check=False)
    assert out.exists(), r.stdout + r.stderr
    report = json.loads(out.read_text())
    failed = [c for c in report["checks"] if not c["ok"]]
    assert r.returncode == 0 and not failed, r.stdout + r.stderr
    names = [e[0] for e in report["events"]]
    assert "worker SIGKILL" in names and "redis restarted" in names
    assert names.count("sighup") >= 8
    assert report["requests"] > 1000 and report["lost"] == 0
    # the faults were really met: failures of each kind reached the clients
    assert {502, 504, 429} <= {int(s) for s in report["statuses"]}
