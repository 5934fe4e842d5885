"""Where a proxy's added latency goes at a fixed open-loop rate: each request's
system calls on the proxy, timed by the kernel.

Run: ``python benchmarks/phases.py [--rows nginx,fastgw,fastgw-full] [--rate 50]
[--duration 4]``, at low rates (at most 1,000 requests/s). It needs ``perf``
(Debian's ``linux-perf``) and the right to trace other processes: root, or
``kernel.perf_event_paranoid`` <= 1.

It starts the mock (on ``--client-cpu`` with the load generator) and one row at a
time (on ``--proxy-cpu``), drives the row with ``loadgen.py`` at ``--rate``
requests/s, and records the row's system calls with ``perf trace`` (kernel
tracepoints: about a microsecond each, no stop of the traced process). A proxied
request is, on the proxy, four calls in this order: the client's request read on
connection A, the request written upstream on connection B, the answer read on
B, the answer written on A. Per request it reports (medians, microseconds):

- ``wake``: from the proxy's wake-up (its epoll wait returning) to the read of
  the request: the event loop's own work before any request code runs;
- ``request``: from that read to the upstream write: the proxy's work on the
  request (parsing, policy, the upstream request);
- ``up write``: the upstream write system call itself: on loopback it carries
  the packet into the upstream's socket and wakes the upstream's process;
- ``upstream``: from the end of that write to the read of the answer: the
  upstream's time and the proxy's wake-up for the answer;
- ``response``: from the answer's read to the client write: the proxy's work on
  the answer;
- ``client write``: the client write system call.

``request`` and ``response`` are the proxy's user code on the request path;
nginx beside the gateway in the same run shows what the machine makes of the
same steps in C (both run cold at a low rate: the CPU sleeps between requests).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402
from loadgen import LoadSpec, run_load  # noqa: E402

READS = frozenset({"read", "recvfrom", "readv", "recvmsg"})
WRITES = frozenset({"write", "writev", "sendto", "sendmsg"})
WAITS = frozenset({"epoll_wait", "epoll_pwait", "epoll_pwait2"})
EVENTS = ",".join(
    f"syscalls:sys_{edge}_{name}"
    for name in sorted(READS | WRITES | WAITS)
    for edge in ("enter", "exit")
)
_LINE = re.compile(r"\s*([\d.]+)\s+\S*?syscalls:sys_(enter|exit)_(\w+)\((.*)\)\s*$")
_FD = re.compile(r"\bfd: (\d+)")
MAX_RATE = 1000.0
PHASES = ("wake", "request", "up write", "upstream", "response", "client write")


@dataclass
class Call:
    name: str
    fd: int | None
    enter: float  # ms, perf trace's clock
    exit: float = -1.0


@dataclass
class Phases:
    row: str
    requests: int = 0
    p50_ms: float = 0.0
    samples: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})

    def median(self, phase: str) -> float | None:
        values = self.samples[phase]
        return statistics.median(values) if values else None


def parse(text: str) -> list[Call]:
    """``perf trace``'s lines as calls, each with its enter and exit time (one
    traced thread: an exit closes the call entered last)."""
    calls: list[Call] = []
    open_call: Call | None = None
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        t, edge, name, args = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        if edge == "enter":
            fd = _FD.search(args)
            open_call = Call(name, int(fd.group(1)) if fd else None, t)
            calls.append(open_call)
        elif open_call is not None and open_call.name == name:
            open_call.exit = t
            open_call = None
    return calls


def phases(row: str, calls: list[Call], upstream_fds: set[int]) -> Phases:
    """Match read(A), write(B), read(B), write(A), four calls in a row with B a
    connection to the upstream and A not, and time the phases of every match."""
    out = Phases(row)
    io = [(i, c) for i, c in enumerate(calls) if c.name in READS or c.name in WRITES]
    for k in range(len(io) - 3):
        (i0, r1), (_, w1), (_, r2), (_, w2) = io[k:k + 4]
        if not (r1.name in READS and w1.name in WRITES and r2.name in READS
                and w2.name in WRITES):
            continue
        a, b = r1.fd, w1.fd
        if (a is None or b not in upstream_fds or a in upstream_fds or r2.fd != b
                or w2.fd != a):
            continue
        if min(w1.exit, r2.exit, w2.exit, r1.exit) < 0:
            continue
        wait = next((c for c in reversed(calls[:i0]) if c.name in WAITS), None)
        if wait is not None and wait.exit >= 0:
            out.samples["wake"].append(r1.enter - wait.exit)
        out.samples["request"].append(w1.enter - r1.exit)
        out.samples["up write"].append(w1.exit - w1.enter)
        out.samples["upstream"].append(r2.exit - w1.exit)
        out.samples["response"].append(w2.enter - r2.exit)
        out.samples["client write"].append(w2.exit - w2.enter)
        out.requests += 1
    for values in out.samples.values():
        values[:] = [v * 1000.0 for v in values]  # ms -> us
    return out


def upstream_fds(pid: int, upstream_port: int) -> set[int]:
    """The process's descriptors that are TCP connections to ``upstream_port``
    (from /proc: each socket's inode, then its remote port in /proc/net/tcp)."""
    inodes: dict[int, int] = {}
    for link in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(link)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes[int(target[8:-1])] = int(link.name)
    fds = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in rows:
            cols = line.split()
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            inode = int(cols[9])
            if remote_port == upstream_port and inode in inodes:
                fds.add(inodes[inode])
    return fds


def _traced_pid(procs: run.Processes, row: str, workdir: Path, up_port: int,
                cpu: int | None) -> tuple[int, int]:
    """(port, pid of the process that serves) of a new row."""
    if row == "nginx":
        port = run.free_port()
        conf = run.render_nginx(workdir / "nginx", port, up_port)
        master = run.start_nginx(procs, conf, port, cpu)
        workers = [p for p in run.tree_pids(master) if p != master]
        return port, workers[0] if workers else master
    return run.start_fastgw(procs, run.TARGETS[row], workdir, up_port, cpu)


def measure(args: argparse.Namespace) -> list[Phases]:
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="fastgw-phases-"))
    procs = run.Processes(workdir)
    try:
        # The upstream of run.py's open-loop rows (nginx serving the mock's answer), or
        # the mock itself (--upstream mock).
        up_port, _, _ = run.start_upstream(procs, args.upstream, workdir, args.client_cpu)
        run.pin_self(args.client_cpu)
        body = run.chat_body(False)
        for row in args.rows.split(","):
            port, pid = _traced_pid(procs, row, workdir, up_port, args.proxy_cpu)
            headers = run.TARGETS[row].headers
            spec = LoadSpec(url=f"http://127.0.0.1:{port}/v1/chat/completions", body=body,
                            headers=headers, rate=args.rate, connections=32,
                            duration=args.duration)
            asyncio.run(run_load(LoadSpec(**{**spec.__dict__, "duration": 1.0})))  # warm
            out = workdir / f"{row}.trace"
            # The serving thread alone (the gateway's log writer has its own).
            tracer = subprocess.Popen(["perf", "trace", "--no-syscalls", "--tid", str(pid),
                                       "-o", str(out), "-e", EVENTS],
                                      stderr=subprocess.PIPE)
            time.sleep(1.0)  # perf attaches
            if tracer.poll() is not None:
                err = tracer.stderr.read().decode(errors="replace") if tracer.stderr else ""
                raise SystemExit(f"perf trace failed: {err.strip()}")
            result = asyncio.run(run_load(spec))
            tracer.terminate()
            tracer.wait(timeout=10)
            fds = upstream_fds(pid, up_port)
            got = phases(row, parse(out.read_text(errors="replace")), fds)
            got.p50_ms = result.latency_ms.p50 if result.latency_ms else 0.0
            results.append(got)
    finally:
        procs.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def report(results: list[Phases], rate: float) -> str:
    lines = [f"per request at {rate:g} req/s, medians in microseconds (perf trace)",
             f"  {'row':<14}{'requests':>9}{'p50 ms':>9}"
             + "".join(f"{p:>14}" for p in PHASES)]
    for r in results:
        cells = "".join(f"{m:>14.1f}" if (m := r.median(p)) is not None else f"{'-':>14}"
                        for p in PHASES)
        lines.append(f"  {r.row:<14}{r.requests:>9}{r.p50_ms:>9.3f}{cells}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="nginx,fastgw,fastgw-full",
                    help="comma-separated, from: nginx, fastgw, fastgw-full, fastgw-cache")
    ap.add_argument("--rate", type=float, default=50.0,
                    help=f"requests/s, at most {MAX_RATE:g} (the tracing's own cost "
                    "distorts a busier proxy)")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds traced per row")
    ap.add_argument("--proxy-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--upstream", choices=("static", "mock"), default="static",
                    help="nginx serving the mock's answer (as run.py's rows), or the mock")
    ap.add_argument("--keep", action="store_true", help="keep the traces")
    args = ap.parse_args()
    if not 0 < args.rate <= MAX_RATE:
        raise SystemExit(f"--rate must be in (0, {MAX_RATE:g}]: each request is about ten "
                         "traced calls, and perf trace's own cost distorts a busier proxy")
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed (Debian: apt-get install linux-perf)")
    if os.cpu_count() and os.cpu_count() < 2:  # type: ignore[operator]
        raise SystemExit("needs 2 CPUs: one for the proxy, one for the mock and the client")
    for row in args.rows.split(","):
        if row not in run.TARGETS or run.TARGETS[row].kind not in ("nginx", "fastgw"):
            raise SystemExit(f"unknown row {row!r}")
    print(report(measure(args), args.rate))


if __name__ == "__main__":
    main()
