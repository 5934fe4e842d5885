"""``--workers N`` on N free cores (SPEC 6: at least 0.85 x N x one worker).

The minimal-policy gateway is measured twice in the same run, closed loop,
non-streaming: with one worker on one core, then with N workers on N cores.
Both gateways are pinned to the first N CPUs; everything else runs on the
next N: the upstream is nginx answering the mock's JSON itself (N workers,
so the upstream is never the bottleneck) and the load comes from N
load-generator processes, each with ``connections`` connections per gateway
worker. The figure is req/s(N workers) / (N x req/s(one worker)).

It needs 2N CPUs. With fewer, it refuses, unless ``--no-pin`` is given: then
every process floats over all CPUs and the result is printed as a check of
the mechanics, not a SPEC figure.

Run: ``python benchmarks/run.py --scaling N`` (alone, or with the other rows).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from run import (
    HERE,
    TARGETS,
    Processes,
    Settings,
    chat_body,
    cpu_seconds,
    free_port,
    mock_answer,
    pinned,
    render_nginx,
    start_fastgw,
    start_mock,
    start_nginx,
    tree_pids,
)

TARGET_SHARE = 0.85


def static_upstream(procs: Processes, workdir: Path, workers: int, cpus: str | None) -> int:
    """Port of an nginx (``workers`` workers) answering every request with the
    mock's chat completion, so the gateway relays what it relays in the other rows."""
    mock_port, _ = start_mock(procs, cpus)
    body = mock_answer(mock_port)
    port = free_port()
    conf = render_nginx(
        workdir / "nginx-upstream", port, mock_port, static_body=body.decode(), workers=workers
    )
    start_nginx(procs, conf, port, cpus, name="nginx-upstream")
    return port


def load(
    url: str, processes: int, connections: int, s: Settings, cpus: str | None, pids: list[int]
) -> dict[str, Any]:
    """Closed-loop load from ``processes`` load generators at once: their req/s
    summed, the worst p50, and the gateway's CPU use over the measured part."""
    cmd = [sys.executable, str(HERE / "loadgen.py"), url, "--json", "-c", str(connections)]
    cmd += ["-d", str(s.duration), "--warmup", str(s.warmup), "--timeout", "10"]
    cmd += ["--body", chat_body(False).decode()]
    gens = [
        subprocess.Popen(pinned(cmd, cpus), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(processes)
    ]
    try:
        time.sleep(s.warmup + 0.3)  # the generators' start-up and warm-up
        c0, t0 = cpu_seconds(pids), time.perf_counter()
        outs = [g.communicate(timeout=s.duration + s.warmup + 60) for g in gens]
        c1, t1 = cpu_seconds(pids), time.perf_counter()
    finally:
        for g in gens:
            if g.poll() is None:
                g.kill()
                g.wait()
    results = []
    for g, (out, err) in zip(gens, outs, strict=True):
        if g.returncode != 0:
            raise RuntimeError(f"load generator failed: {err.decode()[-500:]}")
        results.append(json.loads(out))
    return {
        "rps": sum(r["rps"] for r in results),
        "requests": sum(r["requests"] for r in results),
        "errors": sum(sum(r["errors"].values()) + sum(r["non_2xx"].values()) for r in results),
        "p50_ms": max(r["latency_ms"]["p50"] for r in results if r["latency_ms"]),
        "gateway_cpu": (c1 - c0) / (t1 - t0),
    }


def refusal(workers: int, pin: bool) -> str | None:
    """Why ``--scaling workers`` cannot run here, or None."""
    have = os.cpu_count() or 1
    if workers < 2:
        return "--scaling N needs N >= 2"
    if pin and have < 2 * workers:
        return (
            f"--scaling {workers} needs {2 * workers} CPUs ({workers} for the gateway, "
            f"{workers} for the load generators and the upstream); this machine has {have}. "
            "Add --no-pin to check the mechanics anyway (not a SPEC figure)."
        )
    return None


def run_scaling(workers: int, pin: bool, s: Settings, workdir: Path) -> dict[str, Any]:
    """One worker vs ``workers`` workers, minimal policy; see the module doc."""
    why = refusal(workers, pin)
    if why is not None:
        raise SystemExit(why)
    have = os.cpu_count() or 1
    gw_cpus = f"0-{workers - 1}" if pin else None
    client_cpus = f"{workers}-{2 * workers - 1}" if pin else None
    scaledir = workdir / "scaling"
    scaledir.mkdir(exist_ok=True)
    upstream = Processes(scaledir)
    out: dict[str, Any] = {"workers": workers, "pinned": pin, "cpus": have}
    print(
        f"\n--workers {workers} on {workers} cores vs one worker on one core "
        f"({'pinned' if pin else 'NOT pinned: mechanics only, not a SPEC figure'}); "
        f"{workers} load generators, {s.connections} connections per gateway worker"
    )
    try:
        up_port = static_upstream(upstream, scaledir, workers, client_cpus)
        for n, cpus in ((1, "0" if pin else None), (workers, gw_cpus)):
            gateway = Processes(scaledir)
            try:
                port, pid = start_fastgw(gateway, TARGETS["fastgw"], scaledir, up_port, cpus, n)
                time.sleep(0.5 * n)  # every worker listening
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                per_gen = max(1, s.connections * n // workers)
                r = load(url, workers, per_gen, s, client_cpus, tree_pids(pid))
            finally:
                gateway.stop()
            out[f"workers_{n}"] = r
            print(
                f"  {n} worker(s): {r['rps']:>10,.0f} req/s   p50 {r['p50_ms']:.3f} ms   "
                f"gateway CPU {r['gateway_cpu']:.0%}   errors {r['errors']}"
            )
    finally:
        upstream.stop()
    ratio = out[f"workers_{workers}"]["rps"] / (workers * out["workers_1"]["rps"])
    out["ratio"] = ratio
    print(f"  req/s({workers}) / ({workers} x req/s(1)) = {ratio:.2f} (target >= {TARGET_SHARE})")
    return out
