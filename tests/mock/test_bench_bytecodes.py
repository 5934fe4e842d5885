"""benchmarks/bench_hotpath.py --bytecodes: bytecodes counted per function, exactly."""

from __future__ import annotations

import asyncio
import dis
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_hotpath  # type: ignore[import-not-found,unused-ignore]


def straight(x: int) -> int:  # no branch, no loop: each instruction runs once a call
    y = x * 3
    return y + 1


class FakeRig:
    async def run(self, n: int) -> float:
        for i in range(n):
            straight(i)
        return 0.0


def test_each_function_counts_its_bytecodes_per_call() -> None:
    counts = asyncio.run(bench_hotpath.bytecodes(FakeRig(), 50))  # type: ignore[arg-type]
    # (every instruction but RESUME: the trace function is set by the call event,
    # which comes with it)
    per_call = len([i for i in dis.get_instructions(straight) if i.opname != "RESUME"])
    key = (__file__, straight.__code__.co_firstlineno, "straight")
    assert counts[key] == 50 * per_call
    # The rig's own frames count too when they are not the benchmark's file (here:
    # FakeRig.run); the benchmark's own would be left out.
    assert counts[(__file__, FakeRig.run.__code__.co_firstlineno, "run")] > 0
    text = bench_hotpath.report_bytecodes("fake", counts, 50, 1)
    assert text.splitlines()[0].startswith("fake: ")
    assert "straight" in text or "run" in text
