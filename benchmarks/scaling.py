"""``--scaling N``: fastgw ``--workers 1..N`` against nginx with N workers, on free cores.

What it needs: ``2N`` CPUs this process may run on (``os.sched_getaffinity``;
N + 2 x ceil(N / 2) for an odd N), split in three sets, each pinned with
taskset so that nothing competes for a core:

* **proxies**, N CPUs: the gateway with n workers (minimal policy) on the
  first n of them, for n = 1..N, and nginx as a reverse proxy with N
  workers on all N. They take turns: one proxy carries load at a time.
* **upstream**, ceil(N / 2) CPUs: nginx with as many workers answering the
  mock's chat completion itself (the mock answers once, to give the bytes):
  the one-process mock would cap the rate near 100k req/s.
* **load generator**, ceil(N / 2) CPUs: wrk with one thread per CPU and
  ``connections`` connections per proxy core, the same for every row.

It measures ``direct`` (wrk to the upstream), nginx, then the gateway with
1..N workers, ``--rounds`` times interleaved, and reports each row's median
round. Figures: req/s(n workers) / (n x req/s(one worker)) (SPEC 6: at least
0.85 for n = N), and req/s(n workers) / req/s(nginx, N workers). As in the
other rows, a ratio is refused when ``direct`` is not at least 1.2 times the
rate it is compared with: then the client side, not the proxies, set the
pace (see run.vs_nginx_refusal).

With fewer CPUs it refuses before starting anything, unless ``--no-pin`` is
given: then every process floats over all CPUs and the figures check the
mechanics only (the SPEC summary shows them unjudged).

Run: ``python benchmarks/run.py --scaling N --scaling-only`` (or with the other rows).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from run import (
    TARGETS,
    Measured,
    Processes,
    Settings,
    chat_body,
    free_port,
    measure_wrk,
    mock_answer,
    render_nginx,
    start_fastgw,
    start_mock,
    start_nginx,
    tree_pids,
    vs_nginx_refusal,
)
from wrk import WRK, WrkSpec

TARGET_SHARE = 0.85


@dataclass(frozen=True)
class Layout:
    """Which CPUs each part of a ``--scaling N`` run gets (None: unpinned)."""

    workers: int
    proxy: list[int] | None
    upstream: list[int] | None
    client: list[int] | None

    @staticmethod
    def needs(workers: int) -> tuple[int, int, int]:
        """CPUs for (the proxies, the upstream, the load generator)."""
        half = math.ceil(workers / 2)
        return workers, half, half

    def cpus(self, part: list[int] | None, n: int | None = None) -> str | None:
        """taskset's list of the first n CPUs of a part (all by default)."""
        if part is None:
            return None
        return ",".join(str(c) for c in part[: n or len(part)])

    @property
    def client_threads(self) -> int:
        return len(self.client) if self.client else self.needs(self.workers)[2]

    @property
    def upstream_workers(self) -> int:
        return len(self.upstream) if self.upstream else self.needs(self.workers)[1]


def available_cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def refusal(workers: int, pin: bool) -> str | None:
    """Why ``--scaling workers`` cannot run here, or None."""
    if workers < 2:
        return "--scaling N needs N >= 2"
    if WRK is None:
        return "--scaling needs wrk (Debian: apt-get install wrk)"
    if not pin:
        return None
    proxy, upstream, client = Layout.needs(workers)
    need = proxy + upstream + client
    have = available_cpus()
    if len(have) >= need:
        return None
    return (
        f"--scaling {workers} needs {need} CPUs of its own: {proxy} for the proxies "
        f"(fastgw --workers 1..{workers} on the first 1..{workers}, then nginx with "
        f"{workers} workers on all {workers}, one at a time), {upstream} for the upstream "
        f"(nginx serving the mock's answer, {upstream} worker(s)) and {client} for the load "
        f"generator (wrk, {client} thread(s)). This process may run on {len(have)} "
        f"(CPUs {','.join(map(str, have))}, os.sched_getaffinity): run it on a machine "
        f"with {need} free CPUs, or add --no-pin to check the mechanics (not a SPEC figure)."
    )


def layout(workers: int, pin: bool) -> Layout:
    if not pin:
        return Layout(workers, None, None, None)
    proxy, upstream, _ = Layout.needs(workers)
    have = available_cpus()
    return Layout(
        workers,
        have[:proxy],
        have[proxy : proxy + upstream],
        have[proxy + upstream : proxy + 2 * upstream],
    )


def static_upstream(procs: Processes, workdir: Path, lay: Layout) -> tuple[int, int]:
    """(port, pid) of an nginx answering every request with the mock's chat
    completion, so the gateway relays what it relays in the other rows."""
    cpus = lay.cpus(lay.upstream)
    mock_port, _ = start_mock(procs, cpus)
    body = mock_answer(mock_port)
    port = free_port()
    conf = render_nginx(
        workdir / "nginx-upstream",
        port,
        mock_port,
        static_body=body.decode(),
        workers=lay.upstream_workers,
    )
    pid = start_nginx(procs, conf, port, cpus, name="nginx-upstream")
    return port, pid


def _median(runs: list[Measured]) -> Measured:
    """The round with the median rate (of an even count, the lower middle one)."""
    ranked = sorted(runs, key=lambda m: -m.result.rps)
    return ranked[len(ranked) // 2]


def run_scaling(
    workers: int, pin: bool, s: Settings, workdir: Path, rounds: int = 1
) -> dict[str, Any]:
    """direct, nginx with ``workers`` workers, fastgw with 1..``workers``; see the module doc."""
    why = refusal(workers, pin)
    if why is not None:
        raise SystemExit(why)
    lay = layout(workers, pin)
    scaledir = workdir / "scaling"
    scaledir.mkdir(exist_ok=True)
    procs = Processes(scaledir)
    connections = s.connections * workers
    out: dict[str, Any] = {
        "workers": workers,
        "pinned": pin,
        "cpus": len(available_cpus()),
        "layout": {"proxy": lay.proxy, "upstream": lay.upstream, "client": lay.client},
        "connections": connections,
    }
    print(
        f"\nfastgw --workers 1..{workers} vs nginx with {workers} workers "
        f"({'pinned' if pin else 'NOT pinned: mechanics only, not a SPEC figure'}): "
        f"proxies on CPUs {lay.cpus(lay.proxy) or 'any'}, upstream on "
        f"{lay.cpus(lay.upstream) or 'any'}, wrk ({lay.client_threads} thread(s), "
        f"{connections} connections) on {lay.cpus(lay.client) or 'any'}"
    )
    try:
        up_port, up_pid = static_upstream(procs, scaledir, lay)
        rows: dict[str, tuple[int, int]] = {"direct": (up_port, up_pid)}
        port = free_port()
        conf = render_nginx(scaledir / "nginx-proxy", port, up_port, workers=workers)
        rows["nginx"] = (port, start_nginx(procs, conf, port, lay.cpus(lay.proxy)))
        for n in range(1, workers + 1):
            rows[f"fastgw-{n}w"] = start_fastgw(
                procs, TARGETS["fastgw"], scaledir, up_port, lay.cpus(lay.proxy, n), n
            )
        runs: dict[str, list[Measured]] = {name: [] for name in rows}
        for _ in range(rounds):
            for name, (port, pid) in rows.items():
                spec = WrkSpec(
                    url=f"http://127.0.0.1:{port}/v1/chat/completions",
                    body=chat_body(False),
                    connections=connections,
                    threads=lay.client_threads,
                    duration=s.duration,
                )
                pids = tree_pids(pid)
                runs[name].append(measure_wrk(spec, s.warmup, pids, scaledir, lay.cpus(lay.client)))
    finally:
        procs.stop()
    med = {name: _median(ms) for name, ms in runs.items()}
    fig = figures({name: m.result.rps for name, m in med.items()}, workers)
    print(
        f"  {'row':<14}{'req/s':>12}{'p50 ms':>10}{'CPU':>7}{'vs 1 worker x n':>17}{'vs nginx':>10}"
    )
    for name, m in med.items():
        eff, vs = fig["rows"][name]["vs_one_worker"], fig["rows"][name]["vs_nginx"]
        p50 = m.result.latency_ms.p50 if m.result.latency_ms else None
        out[name] = {
            "rps": m.result.rps,
            "p50_ms": p50,
            "server_cpu": m.cpu_util,
            "cpu_us_per_req": m.cpu_us_per_req,
            "vs_one_worker": eff,
            "vs_nginx": vs,
            "rounds": [r.result.rps for r in runs[name]],
        }
        cells = [
            f"{m.result.rps:>12,.0f}",
            f"{p50:>10.3f}" if p50 is not None else f"{'-':>10}",
            f"{m.cpu_util:>7.0%}" if m.cpu_util is not None else f"{'-':>7}",
            f"{eff:>17.2f}" if eff is not None else f"{'-':>17}",
            f"{vs:>10.2f}" if vs is not None else f"{'-':>10}",
        ]
        print(f"  {name:<14}{''.join(cells)}")
    for why in dict.fromkeys(w for w in (fig["vs_nginx_refused"], fig["refused"]) if w):
        print(f"  refused: {why}")
    for key in ("ratio", "vs_nginx", "refused", "vs_nginx_refused"):
        out[key] = fig[key]
    if out["ratio"] is not None:
        print(
            f"  req/s({workers}) / ({workers} x req/s(1)) = {out['ratio']:.2f} "
            f"(target >= {TARGET_SHARE})"
        )
    return out


def figures(rate: dict[str, float], workers: int) -> dict[str, Any]:
    """From each row's req/s (direct, nginx, fastgw-1w..fastgw-Nw): per row the
    rate over n x one worker's and over nginx's, each None when refused; the
    N-worker figures; and the reasons for refusing."""
    one = rate["fastgw-1w"]
    top = f"fastgw-{workers}w"
    refused_nginx = vs_nginx_refusal(rate["direct"], rate["nginx"])
    refused = vs_nginx_refusal(rate["direct"], rate[top], against=f"fastgw --workers {workers}")
    rows: dict[str, dict[str, float | None]] = {}
    for name, r in rate.items():
        n = int(name.removeprefix("fastgw-").removesuffix("w")) if name.startswith("fastgw") else 0
        rows[name] = {
            "vs_one_worker": r / (n * one) if n and one and not refused else None,
            "vs_nginx": r / rate["nginx"] if name != "direct" and not refused_nginx else None,
        }
    return {
        "rows": rows,
        "ratio": rows[top]["vs_one_worker"],
        "vs_nginx": rows[top]["vs_nginx"],
        "refused": refused,
        "vs_nginx_refused": refused_nginx,
    }
