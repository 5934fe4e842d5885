"""The fastgw benchmark driver: one command, one run, every row side by side.

    python benchmarks/run.py [--quick] [--json out.json] [--duration S]
                             [--rows direct,nginx,fastgw,fastgw-full] [--soak]
    python benchmarks/run.py --soak-only [--soak-requests N]   # gateway RSS under load
    python benchmarks/run.py --upstream-check     # is the mock fast enough to be the upstream?
    python benchmarks/run.py --scaling N --scaling-only   # --workers 1..N (needs 2N free CPUs)

It starts the upstream, nginx as a plain reverse proxy in front of it
(benchmarks/nginx.conf.tmpl) and fastgw (``python -m fastgw serve``) with a
generated config per row, pins nginx and the gateway to CPU 0 and the load
generator and the upstream to CPU 1, waits until each answers, then measures
every scenario on every row in turn (rows interleaved per scenario, so drift
hits them alike) and prints one table per scenario: rate, p50, p99, ratio to
nginx, latency added over direct, server CPU. The upstream is nginx serving
the mock's answers as static bodies (SPEC section 6's fast upstream: the
Python mock is not as fast), the JSON answer and the 50-event stream each
with its own set of rows; the paced stream runs against the mock itself
(``python -m fastgw.mock`` paces its events). ``--upstream mock`` puts every
scenario there.

Two load generators: wrk (benchmarks/wrk.py) for the closed-loop maximum
rate (``max_rps``), our own loadgen.py for the open-loop latency rows and the
streams (it schedules requests and times SSE events). A closed-loop "vs
nginx" ratio is reported only when the ``direct`` row reached at least
DIRECT_OVER_NGINX (1.2) times nginx's rate; otherwise the client side set the
pace and the driver says so instead.

Then the soak (``--soak``: the minimal row's RSS after 10,000 and after
1,000,000 requests) and one table checking every SPEC section 6 row the
driver can measure (ok / MISS).

Rows and scenarios are tables (TARGETS, SCENARIOS): a row is one Target with
its own config builder and request headers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import LoadResult, LoadSpec, run_load  # noqa: E402
from wrk import WRK, WrkError, WrkSpec, run_wrk  # noqa: E402

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MODEL = "mock-model"
PROMPT = "Say hello to the benchmark, in one short sentence please."
STREAM_CHUNKS = 48  # + role chunk + finish chunk = 50 SSE events (then [DONE])
PACED_INTERVAL_MS = 20
PACED_CHUNKS = 3
SOAK_FIRST = 10_000  # SPEC 6: RSS after 1,000,000 requests within 10 % of after 10,000
SOAK_CHECKPOINTS = 10  # RSS read this many times between the first and the last figure
# A closed-loop "vs nginx" ratio means something only when the load generator and
# the mock, without a proxy between them, go well beyond nginx's rate.
DIRECT_OVER_NGINX = 1.2
# nginx reads a configuration parameter of at most 4 KiB: a longer static body is
# served from a file.
NGINX_INLINE_MAX = 3500
# The interpreter the gateways run on (--python): how it was built moves every
# gateway row (an interpreter in a shared library built without profile-guided
# optimisation runs the same code markedly slower than a distribution's).
GATEWAY_PYTHON = sys.executable


# -- processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(cmd: list[str], cpu: int | str | None) -> list[str]:
    """cmd run on this CPU (or CPU list, as taskset reads it: "0-3")."""
    if cpu is None or not shutil.which("taskset"):
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s: {last}")


def post(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Processes:
    """The children of one run; all stopped (SIGTERM, then SIGKILL) at exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed with the run)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start_mock(procs: Processes, cpu: int | str | None) -> tuple[int, int]:
    """(port, pid) of a new mock upstream."""
    port = free_port()
    cmd = [sys.executable, "-m", "fastgw.mock", "--port", str(port)]
    proc = procs.start("mock", pinned(cmd, cpu))
    wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
    return port, proc.pid


def render_nginx(
    prefix: Path,
    listen: int,
    upstream: int,
    static_body: str | None = None,
    workers: int = 1,
    static_type: str = "application/json",
) -> Path:
    """Write prefix/nginx.conf from the template. With static_body, nginx answers
    every request with that body (of type static_type) itself instead of proxying."""
    prefix.mkdir(exist_ok=True)
    text = (HERE / "nginx.conf.tmpl").read_text()
    text = text.replace("worker_processes 1;", f"worker_processes {workers};")
    if static_body is not None:
        if len(static_body) < NGINX_INLINE_MAX and not any(c in static_body for c in "'\\$"):
            served = f"return 200 '{static_body}';"
        else:  # from a file: a POST is refused by the file module (405), then served
            (prefix / "body").mkdir(exist_ok=True)
            (prefix / "body" / "answer").write_text(static_body)
            served = (
                f"root {prefix / 'body'};\n            error_page 405 =200 /answer;\n"
                "            try_files /answer =404;"
            )
        text = text.replace(
            "proxy_pass http://upstream_mock;", f"default_type {static_type};\n            {served}"
        )
    for key, value in {
        "@PREFIX@": str(prefix),
        "@LISTEN@": f"127.0.0.1:{listen}",
        "@UPSTREAM@": f"127.0.0.1:{upstream}",
        "@USER@": "user root;" if os.geteuid() == 0 else "",
    }.items():
        text = text.replace(key, value)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


def start_nginx(
    procs: Processes, conf: Path, port: int, cpu: int | str | None, name: str = "nginx"
) -> int:
    cmd = [NGINX, "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;"]
    proc = procs.start(name, pinned(cmd, cpu))
    wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
    return proc.pid


# -- CPU accounting --------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
MIN_CPU_S = 0.2  # /proc counts CPU in 10 ms ticks: below this, no per-request figure


def tree_pids(root: int) -> list[int]:
    """root and all its descendants (nginx's worker, the gateway's workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by these processes."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


# -- rows ------------------------------------------------------------------------------


def minimal_config(mock_port: int, port: int, workdir: Path) -> dict[str, Any]:
    """Minimal policy: one provider, one model with one target, no access log."""
    return {
        "server": {"host": "127.0.0.1", "port": port, "workers": 1},
        "providers": [
            {
                "name": "mock",
                "kind": "openai-compatible",
                "base_url": f"http://127.0.0.1:{mock_port}/v1",
                "max_connections": 1024,
            }
        ],
        "models": [{"name": MODEL, "targets": [{"provider": "mock", "model": MODEL}]}],
        "observability": {"access_log": "off"},
    }


# The full-policy row's client key; the gateway knows only its SHA-256.
BENCH_KEY = "sk-fastgw-bench-full-policy-0001"
# Limits that apply but never refuse within a run: an rpm bucket holds a burst
# of rpm and refills at rpm/60 per second; tpm reserves ~300 tokens per request.
NEVER_REFUSE = {"rpm": 100_000_000, "tpm": 1_000_000_000_000}


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def full_config(mock_port: int, port: int, workdir: Path) -> dict[str, Any]:
    """Full policy (SPEC 6): key auth, 3 limit scopes on the benchmark key (its
    own limits, a model rule and a tier rule), consistent hashing on the key
    over 2 targets (two deployment names on the one mock), prices (cost in
    metrics and log), metrics, and the JSON access log written to a file."""
    cfg = minimal_config(mock_port, port, workdir)
    keys: list[dict[str, Any]] = [
        {
            "name": "bench",
            "key_sha256": sha256_hex(BENCH_KEY),
            "models": ["mock-*"],
            "tier": "bench",
            "limits": dict(NEVER_REFUSE),
        }
    ]
    # Other callers, so that the key table is not a table of one.
    keys += [
        {
            "name": f"team-{i}",
            "key_sha256": sha256_hex(f"sk-fastgw-bench-other-{i}"),
            "tier": "free",
            "limits": {"rpm": 600},
        }
        for i in range(15)
    ]
    cfg["auth"] = {"keys": keys}
    cfg["limits"] = [
        {"match": {"model": "mock-*"}, **NEVER_REFUSE},
        {"match": {"tier": "bench"}, **NEVER_REFUSE},
        {"match": {"tier": "free"}, "rpm": 20},  # does not match the benchmark key
    ]
    cfg["models"] = [
        {
            "name": MODEL,
            "targets": [
                {"provider": "mock", "model": f"{MODEL}-a"},
                {"provider": "mock", "model": f"{MODEL}-b"},
            ],
            "balance": "consistent-hash",
            "hash_key": "key",
            "price": {"input_per_mtok": 0.15, "output_per_mtok": 0.60},
        }
    ]
    cfg["observability"] = {"access_log": str(workdir / "fastgw-full.access.log")}
    return cfg


def cache_config(mock_port: int, port: int, workdir: Path) -> dict[str, Any]:
    """The minimal policy with the response cache (memory) taking every request:
    after the smoke request stored the answer, every request is a hit. The
    benchmark's body has no temperature, so ``only_deterministic`` is off."""
    cfg = minimal_config(mock_port, port, workdir)
    cfg["cache"] = {"enabled": True, "only_deterministic": False}
    return cfg


ConfigBuilder = Callable[[int, int, Path], dict[str, Any]]  # (mock port, port, work dir)


@dataclass
class Target:
    """A row of the tables: where the load generator sends its requests."""

    name: str
    kind: str  # direct | nginx | fastgw
    config: ConfigBuilder | None = None  # fastgw: its generated YAML
    headers: dict[str, str] = field(default_factory=dict)  # e.g. the client's API key
    description: str = ""
    scenarios: tuple[str, ...] | None = None  # measured only in these (None: every one)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("direct", "direct", description="load generator -> mock"),
        Target("nginx", "nginx", description="nginx reverse proxy, 1 worker, keep-alive"),
        Target(
            "static",
            "static",
            description=(
                "nginx answering the mock's answer itself (no upstream), 1 worker: the load "
                "generator's own pace, which a row answering without an upstream (cache hits) "
                "must stay well below"
            ),
            scenarios=("max_rps",),
        ),
        Target(
            "fastgw",
            "fastgw",
            minimal_config,
            description="fastgw, minimal policy (one provider, one target), 1 worker",
        ),
        Target(
            "fastgw-full",
            "fastgw",
            full_config,
            headers={"Authorization": f"Bearer {BENCH_KEY}"},
            description=(
                "fastgw, full policy (key auth, 3 limit scopes, consistent hash on the key "
                "over 2 targets, metrics, access log to a file), 1 worker"
            ),
        ),
        Target(
            "fastgw-cache",
            "fastgw",
            cache_config,
            description="fastgw, minimal policy with the response cache: every request a hit",
        ),
    )
}


def start_fastgw(
    procs: Processes,
    target: Target,
    workdir: Path,
    mock_port: int,
    cpu: int | str | None,
    workers: int = 1,
) -> tuple[int, int]:
    """(port, pid) of a new gateway (with N workers, the supervisor's pid)."""
    assert target.config is not None
    port = free_port()
    cfg = workdir / f"{target.name}.yaml"
    cfg.write_text(yaml.safe_dump(target.config(mock_port, port, workdir), sort_keys=False))
    cmd = [GATEWAY_PYTHON, "-m", "fastgw", "serve", "--config", str(cfg)]
    cmd += ["--port", str(port), "--workers", str(workers)]
    proc = procs.start(
        f"{target.name}-{workers}w" if workers > 1 else target.name, pinned(cmd, cpu)
    )
    wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
    return port, proc.pid


# -- scenarios -------------------------------------------------------------------------


@dataclass
class Settings:
    duration: float
    low_duration: float  # the 50 req/s and paced rows (few samples per second)
    warmup: float
    connections: int
    high_rate: float
    low_rate: float


def chat_body(stream: bool) -> bytes:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class Scenario:
    name: str
    title: str
    unit: str  # what the rate column counts
    make: Callable[[str, Target, Settings], LoadSpec]
    ttfe: bool = False  # report time to first event instead of last byte
    max_rate: bool = False  # closed-loop maximum rate: measured with wrk (--max-client)
    # Where its requests end (see UPSTREAMS): the mock for what only it can do (pacing).
    upstream: str = "static"


def _spec(url: str, target: Target, s: Settings, **kw: Any) -> LoadSpec:
    headers = {**target.headers, **kw.pop("headers", {})}
    # A row that stops answering costs at most 10 s per connection, then shows as timeouts.
    return LoadSpec(url=url, headers=headers, warmup=s.warmup, timeout=10.0, **kw)


SCENARIOS: list[Scenario] = [
    Scenario(
        "max_rps",
        "max requests/s, non-streaming, closed loop",
        "req/s",
        lambda url, t, s: _spec(
            url, t, s, body=chat_body(False), connections=s.connections, duration=s.duration
        ),
        max_rate=True,
    ),
    Scenario(
        "open_low",
        "open loop at the low rate, non-streaming",
        "req/s",
        lambda url, t, s: _spec(
            url,
            t,
            s,
            body=chat_body(False),
            rate=s.low_rate,
            connections=8,
            duration=s.low_duration,
        ),
    ),
    Scenario(
        "open_high",
        "open loop at the high rate, non-streaming",
        "req/s",
        lambda url, t, s: _spec(
            url,
            t,
            s,
            body=chat_body(False),
            rate=s.high_rate,
            connections=64,
            duration=s.duration,
        ),
    ),
    Scenario(
        "streams",
        f"streams/s, {STREAM_CHUNKS + 2} SSE events per stream, unpaced, closed loop",
        "streams/s",
        lambda url, t, s: _spec(
            url,
            t,
            s,
            body=chat_body(True),
            stream=True,
            connections=s.connections,
            duration=s.duration,
            headers={"x-mock-chunks": str(STREAM_CHUNKS)},
        ),
        upstream="static-sse",
    ),
    Scenario(
        "paced_ttfe",
        f"time to first event, paced stream ({PACED_INTERVAL_MS} ms per event), open loop",
        "streams/s",
        lambda url, t, s: _spec(
            url,
            t,
            s,
            body=chat_body(True),
            stream=True,
            rate=s.low_rate / 2,
            connections=8,
            duration=s.low_duration,
            headers={
                "x-mock-chunks": str(PACED_CHUNKS),
                "x-mock-chunk-interval-ms": str(PACED_INTERVAL_MS),
            },
        ),
        ttfe=True,
        upstream="mock",
    ),
]


# -- report ----------------------------------------------------------------------------


def vs_nginx_refusal(
    direct: float | None, nginx: float | None, unit: str = "req/s", against: str = "nginx"
) -> str | None:
    """Why a closed-loop rate cannot be reported as a ratio to nginx's (or to
    the ``against`` row's), or None.

    A proxy row can go no faster than the load generator and the upstream serving
    it; the ``direct`` row (no proxy between them) shows that pace. Unless it is
    at least DIRECT_OVER_NGINX times the rate compared with, the ratio would
    measure the client side, not the proxies."""
    if nginx is None:
        return None  # no ratio to report
    if direct is None:
        return (
            f"no direct row: nothing shows that the load generator and the upstream outrun "
            f"{against} (add the direct row)"
        )
    if direct < DIRECT_OVER_NGINX * nginx:
        share = f"{direct / nginx:.2f}x" if nginx else "-"
        return (
            f"direct reached {direct:,.0f} {unit}, {share} {against}'s {nginx:,.0f} (needs >= "
            f"{DIRECT_OVER_NGINX:g}x): the load generator or the upstream is the bottleneck, so "
            "a ratio would compare them, not the proxies"
        )
    return None


def cache_refusal(static: float | None, hits: float) -> str | None:
    """Why the cache-hit row's rate cannot be compared, or None: it answers without
    an upstream, so only the load generator bounds it, as the ``static`` row (nginx
    answering by itself) shows; that must be DIRECT_OVER_NGINX times the hits' rate."""
    if static is None:
        return "no static row: nothing shows that the load generator outruns the cache hits"
    if static < DIRECT_OVER_NGINX * hits:
        return (
            f"static reached {static:,.0f} req/s, {static / hits:.2f}x the cache hits' "
            f"{hits:,.0f} (needs >= {DIRECT_OVER_NGINX:g}x): the load generator is the "
            "bottleneck"
        )
    return None


def ratio_refusal(measured: dict[str, Measured], unit: str) -> str | None:
    """vs_nginx_refusal for one closed-loop scenario's rows (None for open loop)."""
    if not any(m.result.mode == "closed" for m in measured.values()):
        return None
    direct, nginx = measured.get("direct"), measured.get("nginx")
    return vs_nginx_refusal(
        direct.result.rps if direct is not None else None,
        nginx.result.rps if nginx is not None else None,
        unit,
    )


def derive(
    scenario: Scenario, measured: dict[str, Measured], refused: str | None = None
) -> dict[str, dict[str, Any]]:
    """Per row: rate, p50, p99, ratio to nginx (none when ``refused``), added
    p50/p99 over direct, server CPU."""
    results = {k: m.result for k, m in measured.items()}
    out: dict[str, dict[str, Any]] = {}

    def lat(r: LoadResult) -> tuple[float, float] | None:
        p = r.ttfb_ms if scenario.ttfe else r.latency_ms
        return (p.p50, p.p99) if p is not None else None

    nginx = results.get("nginx")
    direct = results.get("direct")
    for name, r in results.items():
        row: dict[str, Any] = {"rate": r.rps, "p50_ms": None, "p99_ms": None}
        mine = lat(r)
        if mine is not None:
            row["p50_ms"], row["p99_ms"] = mine
        closed = r.mode == "closed"  # an open-loop rate is the schedule's, not the row's
        judged = closed and not refused and nginx is not None and nginx.rps > 0
        row["vs_nginx"] = r.rps / nginx.rps if judged and nginx is not None else None
        d = lat(direct) if direct is not None else None
        if d is not None and mine is not None:
            row["added_p50_ms"] = mine[0] - d[0]
            row["added_p99_ms"] = mine[1] - d[1]
        else:
            row["added_p50_ms"] = row["added_p99_ms"] = None
        if scenario.ttfe:
            # Time to the first event carrying content, beside the first event: a
            # gateway holds the role-only first event until its commit point.
            c = (r.ttfc_ms.p50, r.ttfc_ms.p99) if r.ttfc_ms is not None else None
            dc = direct.ttfc_ms if direct is not None else None
            row["ttfc_p50_ms"], row["ttfc_p99_ms"] = c if c is not None else (None, None)
            if c is not None and dc is not None:
                row["added_ttfc_p50_ms"] = c[0] - dc.p50
                row["added_ttfc_p99_ms"] = c[1] - dc.p99
            else:
                row["added_ttfc_p50_ms"] = row["added_ttfc_p99_ms"] = None
        row["errors"] = sum(r.errors.values()) + sum(r.non_2xx.values())
        row["error_kinds"] = {**r.errors, **{str(k): v for k, v in r.non_2xx.items()}}
        m = measured[name]
        row["server_cpu"] = m.cpu_util
        row["cpu_us_per_req"] = m.cpu_us_per_req
        row["cpu_us_per_event"] = m.cpu_us_per_event
        row["steal"] = m.steal
        out[name] = row
    # Capacity per core relative to nginx: nginx's CPU per request / the row's.
    # Unlike the rate ratio it holds when the client core, not the proxy, is
    # the limit (a 2-core machine hosts the load generator and the mock on one).
    base = out.get("nginx", {}).get("cpu_us_per_req")
    for row in out.values():
        mine_cpu = row["cpu_us_per_req"]
        row["cpu_vs_nginx"] = base / mine_cpu if base and mine_cpu else None
    return out


def key_figure(scenario: Scenario, m: Measured) -> float:
    """What a round is judged by: req/s (or streams/s) in a closed loop, the p50
    latency (to the first event for the paced stream) in an open loop."""
    r = m.result
    if r.mode == "closed":
        return r.rps
    p = r.ttfb_ms if scenario.ttfe else r.latency_ms
    return p.p50 if p is not None else float("inf")


def median_run(scenario: Scenario, runs: list[Measured]) -> Measured:
    """The round with the median key figure (of an even count, the worse of the
    two middle ones); its figures are reported together, so they stay consistent."""
    closed = runs[0].result.mode == "closed"
    ranked = sorted(
        runs, key=lambda m: -key_figure(scenario, m) if closed else key_figure(scenario, m)
    )
    return ranked[len(ranked) // 2]


def print_spread(scenario: Scenario, spread: dict[str, list[float]]) -> None:
    closed = scenario.name in ("max_rps", "streams")
    what = scenario.unit if closed else "p50 ms"
    print(f"  rounds ({what}, the median round shown above):")
    for name, values in spread.items():
        text = "  ".join(f"{v:,.0f}" if closed else f"{v:.3f}" for v in values)
        print(f"    {name:<14}{text}")


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(
    scenario: Scenario,
    rows: dict[str, dict[str, Any]],
    s: Settings,
    client: str = "loadgen",
    refused: str | None = None,
    upstream: str | None = None,
) -> None:
    title = f"{scenario.title}, {client}"
    if upstream is not None:
        title += f", upstream {upstream}"
    if scenario.name == "open_low":
        title += f" ({s.low_rate:g}/s)"
    elif scenario.name == "open_high":
        title += f" ({s.high_rate:g}/s)"
    elif scenario.name == "paced_ttfe":
        title += f" ({s.low_rate / 2:g}/s)"
    what = "first event" if scenario.ttfe else "last byte"
    print(f"\n{title}  [latency to the {what}]")
    print(
        f"  {'row':<14}{scenario.unit:>12}{'p50 ms':>10}{'p99 ms':>10}"
        f"{'vs nginx':>10}{'+p50 ms':>10}{'+p99 ms':>10}{'errors':>8}"
        f"{'CPU':>7}{'us/req':>8}{'cpu vs nginx':>14}{'steal':>7}"
    )
    for name, r in rows.items():
        ratio = fmt(r["vs_nginx"], ".2f")
        print(
            f"  {name:<14}{fmt(r['rate'], ',.0f'):>12}{fmt(r['p50_ms'], '.3f'):>10}"
            f"{fmt(r['p99_ms'], '.3f'):>10}{ratio:>10}{fmt(r['added_p50_ms'], '+.3f'):>10}"
            f"{fmt(r['added_p99_ms'], '+.3f'):>10}{r['errors']:>8}"
            f"{fmt(r['server_cpu'], '.0%'):>7}{fmt(r['cpu_us_per_req'], '.1f'):>8}"
            f"{fmt(r['cpu_vs_nginx'], '.2f'):>14}{fmt(r['steal'], '.0%'):>7}"
        )
    if refused:
        print(f"  no 'vs nginx' ratio: {refused} ('cpu vs nginx' still compares CPU per request)")
    if scenario.ttfe:
        print("  time to the first content event (the first token):")
        print(
            f"  {'row':<14}{'':>12}{'p50 ms':>10}{'p99 ms':>10}{'':>10}"
            f"{'+p50 ms':>10}{'+p99 ms':>10}"
        )
        for name, r in rows.items():
            print(
                f"  {name:<14}{'':>12}{fmt(r['ttfc_p50_ms'], '.3f'):>10}"
                f"{fmt(r['ttfc_p99_ms'], '.3f'):>10}{'':>10}"
                f"{fmt(r['added_ttfc_p50_ms'], '+.3f'):>10}"
                f"{fmt(r['added_ttfc_p99_ms'], '+.3f'):>10}"
            )


def machine_info() -> dict[str, Any]:
    nginx_version = ""
    try:
        out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=False)
        nginx_version = out.stderr.strip()
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "gateway_python": interpreter_facts(GATEWAY_PYTHON),
        "platform": platform.platform(),
        "nginx": nginx_version,
    }


_FACTS = """
import json, platform, sys, sysconfig
args = sysconfig.get_config_var("CONFIG_ARGS") or ""
print(json.dumps({
    "executable": sys.executable,
    "version": platform.python_version(),
    "implementation": platform.python_implementation(),
    "compiler": platform.python_compiler(),
    "shared_libpython": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
    "configured_pgo": "--enable-optimizations" in args,
    "configured_lto": "--with-lto" in args,
}))
import fastgw._native
"""


def interpreter_facts(python: str) -> dict[str, Any]:
    """What the gateways' interpreter is and how it was built, as far as it says
    (a distribution may optimise with profiles without saying so in CONFIG_ARGS).
    Raises RuntimeError when it cannot run fastgw (not installed for it)."""
    out = subprocess.run([python, "-c", _FACTS], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        why = lines[-1] if lines else f"exit status {out.returncode}"
        raise RuntimeError(
            f"{python} cannot run fastgw ({why}); install fastgw into that interpreter's "
            "environment (pip install .)"
        )
    facts: dict[str, Any] = json.loads(out.stdout)
    return facts


def describe_interpreter(facts: dict[str, Any]) -> str:
    build = "libpython shared" if facts["shared_libpython"] else "libpython static"
    flags = [
        f for f, on in (("PGO", facts["configured_pgo"]), ("LTO", facts["configured_lto"])) if on
    ]
    return (
        f"{facts['executable']} ({facts['implementation']} {facts['version']}, {build}"
        + (", configured with " + "+".join(flags) if flags else "")
        + ")"
    )


# -- main ------------------------------------------------------------------------------


def pin_self(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


@dataclass
class Measured:
    result: LoadResult
    cpu_util: float | None  # the server's CPU use, in cores, after warmup
    cpu_us_per_req: float | None
    cpu_us_per_event: float | None
    steal: float | None = None  # the largest share of time the host took from our CPUs


def steal_ticks() -> dict[str, int]:
    """Per CPU ("cpu0", ...): clock ticks the hypervisor ran something else while
    this guest wanted the CPU (the 8th field of /proc/stat)."""
    out: dict[str, int] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        if line.startswith("cpu") and line[3:4].isdigit():
            fields = line.split()
            if len(fields) > 8:
                out[fields[0]] = int(fields[8])
    return out


def steal_share(before: dict[str, int], after: dict[str, int], seconds: float) -> float | None:
    """The largest share of ``seconds`` stolen from any one CPU."""
    if not before or seconds <= 0:
        return None
    return max((after.get(c, v) - v) / CLK_TCK / seconds for c, v in before.items())


async def _measure(spec: LoadSpec, pids: list[int]) -> Measured:
    task = asyncio.ensure_future(run_load(spec))
    await asyncio.sleep(spec.warmup)
    c0, t0, st0 = cpu_seconds(pids), time.perf_counter(), steal_ticks()
    r = await task
    c1, t1, st1 = cpu_seconds(pids), time.perf_counter(), steal_ticks()
    steal = steal_share(st0, st1, t1 - t0)
    if not pids or not r.requests:
        return Measured(r, None, None, None, steal)
    used = c1 - c0
    if used < MIN_CPU_S:  # too few clock ticks for a per-request figure
        return Measured(r, used / (t1 - t0), None, None, steal)
    per_event = used / r.events * 1e6 if r.events else None
    return Measured(r, used / (t1 - t0), used / r.requests * 1e6, per_event, steal)


def wrk_spec(spec: LoadSpec, threads: int) -> WrkSpec:
    """The closed-loop LoadSpec as wrk runs it (the same request and connections)."""
    assert spec.duration is not None and spec.rate is None and not spec.stream
    return WrkSpec(
        url=spec.url,
        body=spec.body,
        headers=spec.headers,
        connections=spec.connections,
        threads=threads,
        duration=spec.duration,
        timeout=spec.timeout,
    )


def measure_wrk(
    spec: WrkSpec, warmup: float, pids: list[int], workdir: Path, cpus: int | str | None
) -> Measured:
    """A warm-up run of wrk (its result dropped, but checked), then the measured
    run, with the server's CPU read around it. Raises WrkError on any error or
    non-2xx answer."""
    if warmup > 0:
        run_wrk(dataclasses.replace(spec, duration=warmup), workdir, cpus)
    c0, t0, st0 = cpu_seconds(pids), time.perf_counter(), steal_ticks()
    r = run_wrk(spec, workdir, cpus)
    c1, t1, st1 = cpu_seconds(pids), time.perf_counter(), steal_ticks()
    steal = steal_share(st0, st1, t1 - t0)
    used, seconds = c1 - c0, max(r.elapsed, 1e-9)
    if not pids or used < MIN_CPU_S:
        return Measured(r, used / seconds if pids else None, None, None, steal)
    return Measured(r, used / seconds, used / r.requests * 1e6, None, steal)


def measure(spec: LoadSpec, pids: list[int] | None = None) -> Measured:
    import uvloop

    gc.collect()
    gc.disable()  # no collector pauses inside a measurement
    try:
        return uvloop.run(_measure(spec, pids or []))
    finally:
        gc.enable()


# Where a scenario's requests end. SPEC section 6's fast upstream is nginx serving
# static bodies, or the mock when it is as fast; it is not (``--upstream-check``:
# the mock serves about a quarter of nginx's rate), and sharing its CPU with the
# load generator it would set every closed-loop row's pace (``direct`` below 1.2x
# nginx: no ratio). So the scenarios run against nginx serving the mock's own
# answers as static bodies, but for the paced stream (the mock paces its events).
UPSTREAMS = {
    "static": "nginx serving the mock's answer as a static body",
    "static-sse": "nginx serving the mock's 50-event stream (with its usage chunk) as a "
    "static body",
    "mock": "the mock (python -m fastgw.mock)",
}


def upstream_for(scenario: Scenario, choice: str) -> str:
    """The upstream a scenario runs against: its own, or the mock for every one
    (``--upstream mock``)."""
    return "mock" if choice == "mock" else scenario.upstream


def start_upstream(
    procs: Processes, kind: str, workdir: Path, cpu: int | str | None
) -> tuple[int, int, int]:
    """(upstream port, upstream pid, mock port) for one group of scenarios. The mock
    runs in each: the static bodies are its answers."""
    mock_port, mock_pid = start_mock(procs, cpu)
    if kind == "mock":
        return mock_port, mock_pid, mock_port
    stream = kind == "static-sse"
    answer = mock_answer(mock_port, stream).decode()
    port = free_port()
    ctype = "text/event-stream" if stream else "application/json"
    conf = render_nginx(workdir / "upstream", port, mock_port, answer, static_type=ctype)
    return port, start_nginx(procs, conf, port, cpu, name="upstream"), mock_port


def start_rows(
    procs: Processes,
    names: list[str],
    workdir: Path,
    upstream: tuple[int, int, int],
    gw_cpu: int | None,
    failed: dict[str, str],
) -> tuple[dict[str, str], dict[str, int]]:
    """Every row in front of ``upstream``, each checked with one request: (urls,
    pid whose CPU each row measures). A row that does not start is left out and
    said why in ``failed``."""
    up_port, up_pid, mock_port = upstream
    urls: dict[str, str] = {}
    server_pid: dict[str, int] = {}
    for name in names:
        target = TARGETS[name]
        try:
            if target.kind == "direct":
                urls[name] = f"http://127.0.0.1:{up_port}"
                server_pid[name] = up_pid
            elif target.kind == "nginx":
                port = free_port()
                conf = render_nginx(workdir / "nginx", port, up_port)
                server_pid[name] = start_nginx(procs, conf, port, gw_cpu)
                urls[name] = f"http://127.0.0.1:{port}"
            elif target.kind == "static":
                port = free_port()
                answer = mock_answer(mock_port).decode()
                conf = render_nginx(workdir / "static", port, mock_port, static_body=answer)
                server_pid[name] = start_nginx(procs, conf, port, gw_cpu, name="static")
                urls[name] = f"http://127.0.0.1:{port}"
            else:
                port, pid = start_fastgw(procs, target, workdir, up_port, gw_cpu)
                server_pid[name] = pid
                urls[name] = f"http://127.0.0.1:{port}"
            status, body = post(
                urls[name] + "/v1/chat/completions",
                json.loads(chat_body(False)),
                target.headers,
            )
            if status != 200:
                raise RuntimeError(f"smoke request answered {status}: {body[:300]!r}")
        except (RuntimeError, OSError) as e:
            failed[name] = str(e)
            urls.pop(name, None)
            print(f"row {name} skipped: {e}", file=sys.stderr)
    return urls, server_pid


def run_rows(args: argparse.Namespace, s: Settings, workdir: Path) -> dict[str, Any]:
    """Every chosen scenario on every row, grouped by upstream: each group starts
    its upstream and its rows, measures its scenarios and stops them all."""
    gw_cpu, client_cpu = cpus(args)
    failed: dict[str, str] = {}
    results: dict[str, Any] = {}
    logs: dict[str, dict[str, int]] = {}
    groups: dict[str, list[Scenario]] = {}
    for scenario in SCENARIOS:
        if not args.scenarios or scenario.name in args.scenarios:
            groups.setdefault(upstream_for(scenario, args.upstream), []).append(scenario)
    for kind, scenarios in groups.items():
        where = workdir / kind
        where.mkdir()
        procs = Processes(where)
        try:
            upstream = start_upstream(procs, kind, where, client_cpu)
            urls, server_pid = start_rows(procs, args.rows, where, upstream, gw_cpu, failed)
            pin_self(client_cpu)
            for scenario in scenarios:
                results[scenario.name] = run_scenario(
                    args, s, scenario, urls, server_pid, where, kind
                )
        finally:
            procs.stop()
        logs.update(access_logs(where))
    return {"results": results, "skipped_rows": failed, "access_logs": logs}


def run_scenario(
    args: argparse.Namespace,
    s: Settings,
    scenario: Scenario,
    urls: dict[str, str],
    server_pid: dict[str, int],
    workdir: Path,
    upstream: str,
) -> dict[str, Any]:
    """One scenario on every row, ``args.rounds`` times (rows interleaved: a noisy
    spell hits one round), its table printed; its results."""
    _, client_cpu = cpus(args)
    runs: dict[str, list[Measured]] = {
        name: [] for name in urls if scenario.name in (TARGETS[name].scenarios or (scenario.name,))
    }
    client = args.max_client if scenario.max_rate else "loadgen"
    for _ in range(args.rounds):
        for name in runs:
            spec = scenario.make(urls[name] + "/v1/chat/completions", TARGETS[name], s)
            pids = tree_pids(server_pid[name])
            if client == "wrk":
                ws = wrk_spec(spec, args.wrk_threads)
                try:
                    m = measure_wrk(ws, spec.warmup, pids, workdir, client_cpu)
                except WrkError as e:
                    raise SystemExit(f"{scenario.name}, row {name}: {e}") from None
            else:
                m = measure(spec, pids)
            runs[name].append(m)
            if args.verbose:
                print(f"  {scenario.name:<11} {name:<12} {m.result.summary()}")
    by_row = {name: median_run(scenario, ms) for name, ms in runs.items()}
    refused = ratio_refusal(by_row, scenario.unit)
    rows = derive(scenario, by_row, refused)
    print_table(scenario, rows, s, client, refused, upstream)
    spread = {name: [round(key_figure(scenario, m), 4) for m in ms] for name, ms in runs.items()}
    if args.rounds > 1:
        print_spread(scenario, spread)
    return {
        "title": scenario.title,
        "load_generator": client,
        "upstream": upstream,
        "upstream_is": UPSTREAMS[upstream],
        "vs_nginx_refused": refused,
        "rows": rows,
        "raw": {k: v.result.as_dict() for k, v in by_row.items()},
        "rounds": spread,
    }


def access_logs(workdir: Path) -> dict[str, dict[str, int]]:
    """Lines written by each row's file access log (read after the gateways
    stopped, so every line is flushed), and lines the logger dropped."""
    out: dict[str, dict[str, int]] = {}
    for path in sorted(workdir.glob("*.access.log")):
        name = path.name.removesuffix(".access.log")
        lines = dropped = 0
        with path.open("rb") as f:
            for line in f:
                lines += 1
                if b'"access_log_dropped"' in line:
                    dropped += json.loads(line).get("lines", 0)
        size = path.stat().st_size
        out[name] = {"lines": lines, "dropped": dropped, "bytes": size}
        print(
            f"\naccess log of {name}: {lines:,} lines ({size / 2**20:,.0f} MiB), "
            f"{dropped:,} dropped"
        )
    return out


# -- soak ------------------------------------------------------------------------------


def rss_kib(pids: list[int]) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB, summed over these processes."""
    rss = hwm = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm += int(line.split()[1])
    return rss, hwm


async def _soak(
    url: str, headers: dict[str, str], pids: list[int], total: int, connections: int
) -> dict[str, Any]:
    """Closed-loop load in legs: the RSS read after each leg, and sampled during it."""
    first = min(SOAK_FIRST, total)
    rest = total - first
    stops = sorted(
        {first, *(first + rest * i // SOAK_CHECKPOINTS for i in range(1, SOAK_CHECKPOINTS + 1))}
    )
    points: list[dict[str, float]] = []
    peak_kib = 0
    done = 0
    errors: dict[str, int] = {}
    t0 = time.perf_counter()
    for stop in stops:
        spec = LoadSpec(
            url=url,
            body=chat_body(False),
            headers=headers,
            connections=connections,
            duration=None,
            requests=stop - done,
            timeout=10.0,
        )
        task = asyncio.ensure_future(run_load(spec))
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            peak_kib = max(peak_kib, rss_kib(pids)[0])
        r = task.result()
        for k, v in [*r.errors.items(), *((str(k), v) for k, v in r.non_2xx.items())]:
            errors[k] = errors.get(k, 0) + v
        done = stop
        rss = rss_kib(pids)[0]
        peak_kib = max(peak_kib, rss)
        points.append({"requests": done, "rss_mib": rss / 1024, "rps": r.rps})
        print(f"  {done:>12,} requests   RSS {rss / 1024:6.1f} MiB   {r.rps:>9,.0f} req/s")
    return {
        "requests": done,
        "connections": connections,
        "seconds": time.perf_counter() - t0,
        "points": points,
        "rss_first_requests": points[0]["requests"],
        "rss_first_mib": points[0]["rss_mib"],
        "rss_last_mib": points[-1]["rss_mib"],
        "ratio": points[-1]["rss_mib"] / points[0]["rss_mib"],
        "peak_under_load_mib": peak_kib / 1024,  # the largest RSS sampled every 0.5 s
        "vm_hwm_mib": rss_kib(pids)[1] / 1024,  # the kernel's high-water mark, start-up included
        "errors": errors,
    }


def run_soak(args: argparse.Namespace, s: Settings, workdir: Path) -> dict[str, Any]:
    """A fresh mock and minimal-policy gateway; RSS after 10,000 requests and
    after --soak-requests (SPEC 6: <= 60 MiB under load; growth <= 10 %)."""
    import uvloop

    gw_cpu, client_cpu = cpus(args)
    soakdir = workdir / "soak"
    soakdir.mkdir(exist_ok=True)
    procs = Processes(soakdir)
    target = TARGETS["fastgw"]
    try:
        mock_port, _ = start_mock(procs, client_cpu)
        port, pid = start_fastgw(procs, target, soakdir, mock_port, gw_cpu)
        pin_self(client_cpu)
        total = args.soak_requests
        print(
            f"\nsoak: {target.name} ({target.description}); closed loop, "
            f"{s.connections} connections, {total:,} requests"
        )
        gc.collect()
        gc.disable()  # the load generator's own pauses stay out of the gateway's figures
        try:
            out = uvloop.run(
                _soak(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    target.headers,
                    tree_pids(pid),
                    total,
                    s.connections,
                )
            )
        finally:
            gc.enable()
    finally:
        procs.stop()
    out["row"] = target.name
    print(
        f"  RSS after {out['rss_first_requests']:,} requests {out['rss_first_mib']:.1f} MiB, "
        f"after {out['requests']:,} {out['rss_last_mib']:.1f} MiB (x{out['ratio']:.3f}); "
        f"peak under load {out['peak_under_load_mib']:.1f} MiB; "
        f"errors {out['errors'] or 0}; {out['seconds']:.0f} s"
    )
    return out


# -- SPEC section 6 --------------------------------------------------------------------


def spec_checks(
    results: dict[str, Any], soak: dict[str, Any] | None, scaling: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Every SPEC 6 row the driver can measure: the figure, its target, ok or MISS."""
    checks: list[dict[str, Any]] = []

    def row(scenario: str, name: str) -> dict[str, Any] | None:
        rows: dict[str, dict[str, Any]] | None = results.get(scenario, {}).get("rows")
        return rows.get(name) if rows else None

    def get(r: dict[str, Any] | None, key: str) -> float | None:
        return None if r is None else r.get(key)

    def plus(v: float | None, k: float = 1.0, d: float = 0.0) -> float | None:
        return None if v is None else v * k + d

    def twice(v: float | None) -> float | None:
        # "at most 2x nginx's added p99": when nginx's p99 came out below direct's
        # (noise: negative), twice it would be a stricter bound than nginx's own.
        return None if v is None else max(v, 2.0 * v)

    def add(
        what: str,
        name: str,
        value: float | None,
        op: str,
        target: float | None,
        unit: str,
        note: str | None = None,
    ) -> None:
        ok = None
        if value is not None and target is not None and note is None:
            ok = value >= target if op == ">=" else value <= target
        checks.append(
            {
                "what": what,
                "row": name,
                "value": value,
                "op": op,
                "target": target,
                "unit": unit,
                "ok": ok,
                "note": note,
            }
        )

    def refused(scenario: str) -> str | None:
        why: str | None = results.get(scenario, {}).get("vs_nginx_refused")
        return why

    for name, policy, share in (("fastgw-full", "full policy", 0.50), ("fastgw", "minimal", 0.65)):
        r = row("max_rps", name)
        if r is not None:
            add(
                f"max req/s, {policy}, vs nginx",
                name,
                r["vs_nginx"],
                ">=",
                share,
                "x",
                refused("max_rps"),
            )
            add("  the same per core (CPU/request)", name, r["cpu_vs_nginx"], ">=", share, "x")
    r, m = row("max_rps", "fastgw-cache"), row("max_rps", "fastgw")
    if r is not None and m is not None and m["rate"]:
        # Each row well below the pace of what serves it: the minimal row below the
        # load generator with the mock (direct), the hits (no upstream) below the load
        # generator alone (static).
        add(
            "max req/s, cache hits, vs minimal",
            "fastgw-cache",
            r["rate"] / m["rate"],
            ">=",
            1.3,
            "x",
            vs_nginx_refusal(get(row("max_rps", "direct"), "rate"), m["rate"], against="fastgw")
            or cache_refusal(get(row("max_rps", "static"), "rate"), r["rate"]),
        )
    for name in ("fastgw", "fastgw-full"):
        for scenario in ("open_low", "open_high"):
            r, n = row(scenario, name), row(scenario, "nginx")
            if r is None:
                continue
            rate = results[scenario]["raw"][name]["target_rate"]
            add(
                f"added p50 at {rate:g} req/s",
                name,
                r["added_p50_ms"],
                "<=",
                get(n, "added_p50_ms"),
                "ms",
            )
            add(
                f"added p99 at {rate:g} req/s",
                name,
                r["added_p99_ms"],
                "<=",
                twice(get(n, "added_p99_ms")),
                "ms",
            )
        r = row("streams", name)
        if r is not None:
            add("streams/s vs nginx", name, r["vs_nginx"], ">=", 0.50, "x", refused("streams"))
            add("  the same per core (CPU/stream)", name, r["cpu_vs_nginx"], ">=", 0.50, "x")
            per_event = plus(r["cpu_us_per_req"], 1 / (STREAM_CHUNKS + 2))
            add("CPU per relayed SSE event", name, per_event, "<=", 3.0, "us")
        r, n = row("paced_ttfe", name), row("paced_ttfe", "nginx")
        if r is not None:
            add(
                "added time to first event, paced, p50",
                name,
                r["added_p50_ms"],
                "<=",
                plus(get(n, "added_p50_ms"), d=0.1),
                "ms",
            )
            add(
                "  to the first content event, p50",
                name,
                r["added_ttfc_p50_ms"],
                "<=",
                plus(get(n, "added_ttfc_p50_ms"), d=0.1),
                "ms",
            )
    if soak is not None:
        name = soak["row"]
        add("RSS under load (peak sampled)", name, soak["peak_under_load_mib"], "<=", 60.0, "MiB")
        add(
            f"RSS after {soak['requests']:,} / after {soak['rss_first_requests']:,}",
            name,
            soak["ratio"],
            "<=",
            1.10,
            "x",
        )
    if scaling is not None:
        n = scaling["workers"]
        add(
            f"--workers {n} vs {n} x one worker" + ("" if scaling["pinned"] else " (unpinned)"),
            "fastgw",
            scaling["ratio"],
            ">=",
            0.85 if scaling["pinned"] else None,
            "x",
            scaling.get("refused"),
        )
    return checks


def print_checks(checks: list[dict[str, Any]]) -> None:
    print("\nSPEC section 6 (one worker, one core)")
    print(f"  {'what':<42}{'row':<13}{'measured':>12}{'target':>15}  result")
    for c in checks:
        unit = "" if c["unit"] == "x" else f" {c['unit']}"
        spec = ".1f" if c["unit"] == "MiB" else ".2f" if c["unit"] in ("x", "us") else "+.3f"
        value = "-" if c["value"] is None else format(c["value"], spec) + unit
        target = "-" if c["target"] is None else f"{c['op']} {format(c['target'], spec)}{unit}"
        verdict = "n/a" if c["ok"] is None else "ok" if c["ok"] else "MISS"
        if c.get("note"):
            verdict = "refused (below)"
        print(f"  {c['what']:<42}{c['row']:<13}{value:>12}{target:>15}  {verdict}")
    for note in dict.fromkeys(c["note"] for c in checks if c.get("note")):
        print(f"  refused: {note}")
    if not any(c["what"].startswith("--workers") for c in checks):
        print(
            f"  {'--workers N on N free cores':<42}{'':<13}{'-':>12}{'>= 0.85 x N':>15}"
            "  not measured (--scaling N: needs 2N free CPUs)"
        )


def mock_answer(mock_port: int, stream: bool = False) -> bytes:
    """The mock's answer to the benchmark's chat request (what a static upstream
    serves); streamed: the streams scenario's events, with the usage chunk the
    gateway asks for (nginx relays it, the gateway drops it for the client)."""
    body = json.loads(chat_body(stream))
    headers = {}
    if stream:
        body["stream_options"] = {"include_usage": True}
        headers["x-mock-chunks"] = str(STREAM_CHUNKS)
    status, answer = post(f"http://127.0.0.1:{mock_port}/v1/chat/completions", body, headers)
    if status != 200:
        raise RuntimeError(f"mock answered {status}")
    return answer


def run_upstream_check(args: argparse.Namespace, s: Settings, workdir: Path) -> dict[str, Any]:
    """The mock alone vs nginx serving the same JSON as a static answer, each on
    the gateway's CPU with the load generator on the other (wrk, unless
    --max-client loadgen or wrk is missing; streams: loadgen.py): the mock must
    not be the bottleneck of a proxy row."""
    gw_cpu, client_cpu = cpus(args)
    procs = Processes(workdir)
    try:
        mock_port, mock_pid = start_mock(procs, gw_cpu)
        body = mock_answer(mock_port)
        port = free_port()
        conf = render_nginx(workdir / "nginx-static", port, mock_port, static_body=body.decode())
        nginx_pid = start_nginx(procs, conf, port, gw_cpu)
        pin_self(client_cpu)
        out: dict[str, Any] = {"body_bytes": len(body)}
        runs = (
            ("mock", mock_port, mock_pid, False),
            ("nginx-static", port, nginx_pid, False),
            ("mock-streams", mock_port, mock_pid, True),
        )
        for name, server_port, pid, stream in runs:
            spec = LoadSpec(
                url=f"http://127.0.0.1:{server_port}/v1/chat/completions",
                body=chat_body(stream),
                headers={"x-mock-chunks": str(STREAM_CHUNKS)} if stream else {},
                stream=stream,
                connections=s.connections,
                duration=s.duration,
                warmup=s.warmup,
            )
            if not stream and args.max_client == "wrk" and WRK is not None:
                ws = wrk_spec(spec, args.wrk_threads)
                m = measure_wrk(ws, spec.warmup, tree_pids(pid), workdir, client_cpu)
            else:
                m = measure(spec, tree_pids(pid))
            out[name] = {
                **m.result.as_dict(),
                "server_cpu": m.cpu_util,
                "cpu_us_per_req": m.cpu_us_per_req,
            }
            cpu = f"server CPU {fmt(m.cpu_util, '.0%')}, {fmt(m.cpu_us_per_req, '.1f')} us/req"
            print(f"  {name:<13} {m.result.summary()} | {cpu}")
        ratio = out["mock"]["rps"] / out["nginx-static"]["rps"]
        print(f"  mock / nginx-static = {ratio:.2f}")
        out["mock_vs_nginx_static"] = ratio
        return {"upstream_check": out}
    finally:
        procs.stop()


def cpus(args: argparse.Namespace) -> tuple[int | None, int | None]:
    if args.no_pin or (os.cpu_count() or 1) < 2:
        return None, None
    return args.gateway_cpu, args.client_cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fastgw benchmarks: direct vs nginx vs fastgw")
    p.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    p.add_argument("--duration", type=float, default=None, help="seconds per measurement")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument(
        "--rows",
        default=",".join(TARGETS),
        help=f"comma-separated rows, from: {', '.join(TARGETS)} (default: all)",
    )
    p.add_argument(
        "--scenarios",
        default="",
        help=f"comma-separated subset of: {', '.join(s.name for s in SCENARIOS)}",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every row this many times, interleaved, and report the median round "
        "(3 on a shared machine)",
    )
    p.add_argument(
        "--max-client",
        choices=("wrk", "loadgen"),
        default="wrk",
        help="load generator of the closed-loop maximum-rate rows (max_rps): wrk (default; "
        "Debian's wrk package) or loadgen.py; open loop and streams always use loadgen.py",
    )
    p.add_argument(
        "--wrk-threads", type=int, default=1, help="wrk threads (one per load-generator CPU)"
    )
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--high-rate", type=float, default=5000.0)
    p.add_argument("--low-rate", type=float, default=50.0)
    p.add_argument("--gateway-cpu", type=int, default=0, help="CPU of nginx and fastgw")
    p.add_argument("--client-cpu", type=int, default=1, help="CPU of the load generator and mock")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--upstream-check", action="store_true", help="mock vs nginx static only")
    p.add_argument(
        "--upstream",
        choices=("static", "mock"),
        default="static",
        help="static (default): every scenario but the paced stream against nginx serving "
        "the mock's answers as static bodies, on the load generator's CPU; mock: every "
        "scenario against the mock",
    )
    p.add_argument(
        "--soak",
        action="store_true",
        help="after the scenarios, the memory soak: minimal row's RSS after 10,000 and N requests",
    )
    p.add_argument("--soak-only", action="store_true", help="the memory soak alone")
    p.add_argument(
        "--soak-requests",
        type=int,
        default=1_000_000,
        help="requests in the soak (default 1,000,000; at least 10,000 for the SPEC ratio)",
    )
    p.add_argument(
        "--scaling",
        type=int,
        default=0,
        metavar="N",
        help="after the rest, --workers N on N cores vs one worker (needs 2N CPUs)",
    )
    p.add_argument("--scaling-only", action="store_true", help="the --scaling measurement alone")
    p.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter of the gateways (default: this one); fastgw must be installed for it",
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every measurement")
    args = p.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r]
    args.scenarios = [x for x in args.scenarios.split(",") if x]
    unknown = [r for r in args.rows if r not in TARGETS]
    unknown += [x for x in args.scenarios if x not in {s.name for s in SCENARIOS}]
    if unknown:
        p.error(f"unknown rows or scenarios: {unknown}")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    global GATEWAY_PYTHON
    GATEWAY_PYTHON = args.python
    try:
        gateway_python = interpreter_facts(args.python)
    except (RuntimeError, OSError) as e:
        p.error(f"--python: {e}")
    if args.scaling_only and not args.scaling:
        p.error("--scaling-only needs --scaling N")
    wants_max = not (args.scenarios and "max_rps" not in args.scenarios)
    alone = args.soak_only or args.scaling_only or args.upstream_check
    if args.max_client == "wrk" and WRK is None and wants_max and not alone:
        p.error(
            "wrk not found: the max_rps rows need it (Debian: apt-get install wrk); "
            "--max-client loadgen measures them with loadgen.py instead"
        )
    if args.wrk_threads < 1 or args.wrk_threads > args.connections:
        p.error("--wrk-threads must be between 1 and --connections")
    if args.scaling:
        from scaling import refusal  # imports this module: only when asked

        why = refusal(args.scaling, not args.no_pin)
        if why is not None:
            p.error(why)  # before any row runs, not after

    duration = args.duration or (3.0 if args.quick else 10.0)
    s = Settings(
        duration=duration,
        low_duration=max(duration, 6.0 if args.quick else 20.0),
        warmup=0.5 if args.quick else 1.0,
        connections=args.connections,
        high_rate=args.high_rate,
        low_rate=args.low_rate,
    )
    workdir = Path(tempfile.mkdtemp(prefix="fastgw-bench-"))
    started = time.time()
    try:
        rows = (
            "none (soak only)"
            if args.soak_only
            else "none (scaling only)"
            if args.scaling_only
            else ", ".join(args.rows)
        )
        print(
            f"fastgw benchmarks: rows {rows}; {duration:g}s per measurement, "
            f"{args.rounds} round(s); max_rps by {args.max_client}, the rest by loadgen.py; "
            f"gateway CPU {cpus(args)[0]}, load generator + upstream CPU {cpus(args)[1]}\n"
            f"gateway interpreter: {describe_interpreter(gateway_python)}"
        )
        if args.upstream_check:
            report = run_upstream_check(args, s, workdir)
        else:
            alone = args.soak_only or args.scaling_only
            report = {} if alone else run_rows(args, s, workdir)
            soak = None
            if args.soak_only or (args.soak and not alone):
                soak = report["soak"] = run_soak(args, s, workdir)
            scaling = None
            if args.scaling and not args.soak_only:
                from scaling import run_scaling  # imports this module: only when asked

                scaling = report["scaling"] = run_scaling(
                    args.scaling, not args.no_pin, s, workdir, args.rounds
                )
            report["spec"] = spec_checks(report.get("results", {}), soak, scaling)
            print_checks(report["spec"])
    finally:
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report["settings"] = dataclasses.asdict(s)
    report["machine"] = machine_info()
    report["started"] = started
    report["rows"] = {n: TARGETS[n].description for n in args.rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
