"""Balancing cost per request, every strategy in one run, as a ratio to round-robin.

Measures what the runner does per request to pick a target: the balancer's
``order(key)`` plus the health filter (``usable``), over 4 targets, some with
load. Run: ``python benchmarks/bench_routing.py [--targets 4] [--n 200000]``.
"""

from __future__ import annotations

import argparse
import time

from fastgw.config import HealthConfig
from fastgw.routing.balancer import TargetState, make_balancer, usable
from fastgw.routing.health import Health

STRATEGIES = ("round-robin", "weighted", "least-inflight", "latency", "consistent-hash")


def measure(kind: str, targets: int, n: int) -> float:
    states = [TargetState(f"p/t{i}", 1.0 + i % 3, Health(HealthConfig())) for i in range(targets)]
    for i, s in enumerate(states):
        s.inflight = i * 2
        s.observe_ttfb(0.05 + 0.01 * i)
    bal = make_balancer(kind, states)
    keys = [b"user-%d" % i for i in range(1024)]
    now = 1000.0
    best = float("inf")
    for _ in range(5):  # best of 5 on a noisy machine
        t0 = time.perf_counter()
        for i in range(n):
            usable(bal.order(keys[i & 1023]), states, now)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    results = {k: measure(k, args.targets, args.n) for k in STRATEGIES}
    base = results["round-robin"]
    print(f"{'strategy':<18}{'us/request':>12}{'x round-robin':>16}  (target <= 2 us)")
    for k, v in results.items():
        print(f"{k:<18}{v * 1e6:>12.3f}{v / base:>16.2f}  {'ok' if v <= 2e-6 else 'OVER'}")


if __name__ == "__main__":
    main()
