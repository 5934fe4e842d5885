"""Chaos soak: mixed traffic through ``--workers 2`` while faults are injected, then
invariants checked on everything the run left behind.

    python benchmarks/chaos.py [--duration 60] [--concurrency 16] [--json out.json]

It starts a redis-server (limits backend, ``on_error: local``), the mock upstream
and ``fastgw serve --workers 2`` (key auth, limits in Redis, a response cache in
memory, the access log to a file), then for ``--duration`` seconds sends whole
chats, streamed chats and embeddings under four API keys, each request with an
upstream fault drawn at random (``x-mock-fault``: stalls, cuts, malformed
chunks, error events, 429, 500, slow answers) and some clients leaving early,
while it sends SIGHUP (reload) every few seconds, SIGKILLs a worker once and
kills and restarts Redis once.

Invariants (each a line of the report; the exit code is 1 if one fails):

- every request got a documented answer: a status of the README's table, and a
  200 stream ends with ``[DONE]`` or a typed error event; the only exceptions are
  requests cut by the worker SIGKILL (in flight on that worker);
- every answered request has exactly one access-log line (by its own
  ``x-request-id``), every line parses, and no line names a request never sent;
  lines of requests answered in the last moments of the killed worker may be
  lost with it (reported);
- after the traffic, the in-flight gauge is back to 0, each worker holds no more
  upstream connections than its pool allows, the workers' open file descriptors
  and RSS did not grow (RSS within 10 % of the figure after warm-up), and the
  gateway drains and exits 0 on SIGTERM, leaving the mock no open connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

KEYS = [f"sk-chaos-{i}" for i in range(4)]
# About a request in four meets a fault (more, and the health checks eject the target
# for most of the run: every request is then a quick 503).
FAULTS = [""] * 36 + ["stall:300", "cut:2", "cut:6", "malformed", "error-event",
                      "error-first", "429:0", "500", "502", "slow:20", "close", "stall:1500"]
DOCUMENTED = {200, 400, 401, 403, 404, 408, 413, 429, 431, 500, 502, 503, 504}
MAX_CONNECTIONS = 16  # per worker, to the mock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def config(mock_port: int, redis_port: int, log: Path) -> str:
    keys = "\n".join(
        f"    - {{name: key{i}, key_sha256: {sha256(k)}, "
        f"limits: {{rpm: {600 if i == 3 else 1_000_000}, tpm: 100000000}}}}"
        for i, k in enumerate(KEYS))
    return f"""
server: {{drain_timeout_s: 10}}
providers:
  - name: mock
    kind: openai-compatible
    base_url: "http://127.0.0.1:{mock_port}/v1"
    max_connections: {MAX_CONNECTIONS}
    timeouts: {{connect_s: 1, first_byte_s: 1, idle_s: 1, total_s: 5}}
models:
  - name: gpt-soak
    targets: [{{provider: mock, model: gpt-soak-dep}}]
    retry: {{attempts: 2, retry_on: [connect, timeout, 429, 5xx]}}
    price: {{input_per_mtok: 0.15, output_per_mtok: 0.6}}
  - name: embed-soak
    targets: [{{provider: mock, model: embed-soak-dep}}]
health: {{base_ejection_s: 0.2, max_ejection_s: 0.5}}
auth:
  keys:
{keys}
limits_backend: redis
redis: {{url: "redis://127.0.0.1:{redis_port}/0", on_error: local, timeout_s: 0.2}}
cache: {{enabled: true, backend: memory, max_entries: 1000}}
observability: {{access_log: "{log}"}}
"""


@dataclass
class Outcome:
    rid: str
    kind: str
    fault: str
    start: float
    end: float = 0.0
    status: int = 0  # 0: no answer (connection cut)
    verdict: str = ""  # ok | left | cut | bad: <why>


@dataclass
class Run:
    port: int
    deadline: float
    rng: random.Random
    outcomes: list[Outcome] = field(default_factory=list)
    seq: int = 0


def _body(kind: str, rng: random.Random) -> bytes:
    if kind == "embeddings":
        return orjson.dumps({"model": "embed-soak", "input": f"text {rng.randrange(50)}"})
    doc: dict[str, Any] = {"model": "gpt-soak",
                           "messages": [{"role": "user", "content": f"hi {rng.randrange(10**9)}"}]}
    if rng.random() < 0.2:  # deterministic, often repeated: cache hits and single flights
        doc["temperature"] = 0
        doc["messages"][0]["content"] = f"repeat {rng.randrange(5)}"
    if kind == "stream":
        doc["stream"] = True
    return orjson.dumps(doc)


def _judge(o: Outcome, raw: bytes) -> None:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 "):
        o.verdict = "cut" if not raw else f"bad: malformed answer {raw[:80]!r}"
        return
    o.status = int(head[9:12])
    if o.status not in DOCUMENTED:
        o.verdict = f"bad: undocumented status {o.status}"
        return
    lower = head.lower()
    try:
        _check_stream(o, lower, body)
    except ValueError:
        o.verdict = "bad: broken chunked framing"


def _check_stream(o: Outcome, lower: bytes, body: bytes) -> None:
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        length = int(lower[at + 17:].split(b"\r\n", 1)[0])
        if len(body) != length:
            o.verdict = "cut" if len(body) < length else "bad: body longer than its length"
            return
    if o.status == 200 and b"text/event-stream" in lower:
        if b"transfer-encoding: chunked" in lower:
            whole = _unchunk(body)
            if whole is None:  # no last chunk: the connection closed mid-stream
                o.verdict = "cut"
                return
            body = whole
        tail = body.rstrip()
        if not (tail.endswith(b"data: [DONE]") or b'data: {"error"' in body):
            o.verdict = f"bad: stream ended without [DONE] or an error event: {tail[-120:]!r}"
            return
    o.verdict = "ok"


def _unchunk(data: bytes) -> bytes | None:
    """The body of a chunked answer; None when it ends before its last chunk.
    A chunk size that is not hex is a broken answer (ValueError)."""
    out = bytearray()
    while True:
        line, sep, rest = data.partition(b"\r\n")
        if not sep:
            return None
        n = int(line.split(b";")[0], 16)
        if n == 0:
            return bytes(out)
        if len(rest) < n + 2:
            return None
        out += rest[:n]
        data = rest[n + 2:]


async def _one(run: Run, kind: str) -> None:
    rng = run.rng
    run.seq += 1
    o = Outcome(f"chaos-{run.seq:07d}", kind, rng.choice(FAULTS), time.monotonic())
    run.outcomes.append(o)
    body = _body(kind, rng)
    path = b"/v1/embeddings" if kind == "embeddings" else b"/v1/chat/completions"
    head = [b"POST %s HTTP/1.1" % path, b"host: gw", b"connection: close",
            b"content-type: application/json", b"content-length: %d" % len(body),
            b"authorization: Bearer " + rng.choice(KEYS).encode(),
            b"x-request-id: " + o.rid.encode()]
    if o.fault:
        head.append(b"x-mock-fault: " + o.fault.encode())
    leave = rng.random() < 0.05
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", run.port)
    except OSError:
        o.end, o.verdict = time.monotonic(), "cut"
        return
    try:
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        if leave:
            await asyncio.wait_for(reader.read(1), 10)
            o.end, o.verdict = time.monotonic(), "left"
            return
        raw = await asyncio.wait_for(reader.read(), 30)
        o.end = time.monotonic()
        _judge(o, raw)
    except (ConnectionError, OSError):
        o.end, o.verdict = time.monotonic(), "cut"
    except TimeoutError:
        o.end, o.verdict = time.monotonic(), "bad: no answer within 30 s"
    finally:
        writer.transport.abort()


async def _client(run: Run) -> None:
    while time.monotonic() < run.deadline:
        kind = run.rng.choices(["whole", "stream", "embeddings"], [5, 4, 1])[0]
        await _one(run, kind)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        data: bytes = r.read()
        return data


def _wait(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def _metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


class Procs:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as log:
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        self.procs[name] = p
        return p

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait(10)


def _start_redis(procs: Procs, port: int) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    p = procs.start("redis", [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(procs.workdir)])

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    if not _wait(up, 10):
        raise RuntimeError("redis-server did not start")
    return p


def soak(duration: float, concurrency: int, seed: int, keep: bool = False) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="fastgw-chaos-"))
    procs = Procs(workdir)
    report: dict[str, Any] = {"duration_s": duration, "concurrency": concurrency,
                              "faults": Counter(), "events": []}
    checks: list[tuple[str, bool, str]] = []
    try:
        redis_port, mock_port, port = free_port(), free_port(), free_port()
        _start_redis(procs, redis_port)
        mock = procs.start("mock", [sys.executable, "-m", "fastgw", "mock-upstream",
                                    "--port", str(mock_port), "--chunks", "12"])
        log = workdir / "access.log"
        cfg = workdir / "gw.yaml"
        cfg.write_text(config(mock_port, redis_port, log))
        gw = procs.start("gateway", [sys.executable, "-m", "fastgw", "serve", "--config",
                                     str(cfg), "--port", str(port), "--workers", "2"])
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return _get(base + "/healthz") is not None
            except OSError:
                return False

        if not _wait(lambda: healthy() and len(_children(gw.pid)) == 2, 20):
            raise RuntimeError("the gateway did not start")
        _wait(lambda: _get(f"http://127.0.0.1:{mock_port}/mock/stats") is not None, 10)

        run = Run(port, time.monotonic() + duration, random.Random(seed))
        t0 = time.monotonic()
        samples: dict[int, dict[str, int]] = {}
        killed: dict[str, Any] = {}

        async def chaos() -> None:
            next_hup = t0 + 3
            kill_at, redis_at = t0 + duration * 0.4, t0 + duration * 0.6
            warm_at = t0 + duration * 0.25
            while time.monotonic() < run.deadline:
                await asyncio.sleep(0.1)
                now = time.monotonic()
                if now >= next_hup:
                    gw.send_signal(signal.SIGHUP)
                    report["events"].append(("sighup", round(now - t0, 2)))
                    next_hup = now + 3
                if now >= warm_at and not samples:
                    for pid in _children(gw.pid):
                        samples[pid] = {"rss_kib": _rss_kib(pid), "fds": _fds(pid)}
                if now >= kill_at and not killed:
                    victim = _children(gw.pid)[0]
                    os.kill(victim, signal.SIGKILL)
                    killed.update(pid=victim, at=now)
                    report["events"].append(("worker SIGKILL", round(now - t0, 2)))
                if now >= redis_at and "redis" not in killed:
                    procs.procs["redis"].kill()
                    procs.procs["redis"].wait(10)
                    killed["redis"] = now
                    report["events"].append(("redis killed", round(now - t0, 2)))
                    await asyncio.sleep(1.0)
                    _start_redis(procs, redis_port)
                    report["events"].append(("redis restarted", round(time.monotonic() - t0, 2)))

        async def main() -> None:
            await asyncio.gather(chaos(), *(_client(run) for _ in range(concurrency)))

        asyncio.run(main())
        outcomes = run.outcomes
        report["faults"] = dict(Counter(o.fault or "none" for o in outcomes))
        verdicts = Counter(o.verdict.split(":")[0] for o in outcomes)
        report["requests"] = len(outcomes)
        report["verdicts"] = dict(verdicts)
        report["statuses"] = dict(Counter(o.status for o in outcomes if o.verdict == "ok"))
        report["examples"] = {str(st): [(o.rid, o.kind, o.fault) for o in outcomes
                                        if o.status == st][:5]
                              for st in report["statuses"]}
        kill_at = float(killed.get("at", -1.0))

        def near_kill(o: Outcome) -> bool:
            return o.start <= kill_at + 0.5 and o.end >= kill_at - 0.5

        bad = [o for o in outcomes if o.verdict.startswith("bad")]
        cut = [o for o in outcomes if o.verdict == "cut"]
        cut_elsewhere = [o for o in cut if not near_kill(o)]
        checks.append(("every request got a documented answer", not bad and not cut_elsewhere,
                       f"{len(bad)} undocumented, {len(cut_elsewhere)} cut away from the kill "
                       f"({len(cut)} cut by the worker SIGKILL); e.g. "
                       f"{[(o.rid, o.fault, o.verdict) for o in (bad + cut_elsewhere)[:3]]}"))

        # After the traffic: the figures settle, then the gateway drains.
        mstats = f"http://127.0.0.1:{mock_port}/mock/stats"
        gauge_zero = _wait(lambda: _metric_sum(_get(base + "/metrics").decode(),
                                               "fastgw_inflight_requests") == 0, 10)
        checks.append(("in-flight gauge back to 0", gauge_zero,
                       str(_metric_sum(_get(base + "/metrics").decode(),
                                       "fastgw_inflight_requests"))))
        # (the mock counts the connection asking for its stats too)
        held = orjson.loads(_get(mstats))["open_connections"] - 1
        checks.append(("upstream connections within the pools", held <= 2 * MAX_CONNECTIONS,
                       f"{held} open to the mock (pools allow {2 * MAX_CONNECTIONS})"))
        for pid, before in samples.items():
            if pid == killed.get("pid") or not Path(f"/proc/{pid}").exists():
                continue
            rss, fds = _rss_kib(pid), _fds(pid)
            report.setdefault("workers", []).append(
                {"pid": pid, "rss_kib_warm": before["rss_kib"], "rss_kib_end": rss,
                 "fds_warm": before["fds"], "fds_end": fds})
            checks.append((f"worker {pid}: RSS within 10 %", rss <= before["rss_kib"] * 1.10,
                           f"{before['rss_kib']} -> {rss} KiB"))
            checks.append((f"worker {pid}: no leaked descriptors",
                           fds <= before["fds"] + MAX_CONNECTIONS,
                           f"{before['fds']} -> {fds}"))
        fallbacks = _metric_sum(_get(base + "/metrics").decode(), "fastgw_redis_fallbacks_total")
        checks.append(("Redis down: limits fell back to redis.on_error (counted)",
                       fallbacks > 0, f"{fallbacks:g} decisions"))
        with socket.create_connection(("127.0.0.1", redis_port), 2) as s:
            s.sendall(b"DBSIZE\r\n")
            reply = s.recv(64)
        # The restarted server began empty: keys mean the workers came back to it.
        checks.append(("Redis restarted: used again without a gateway restart",
                       reply.startswith(b":") and int(reply[1:].split(b"\r")[0]) > 0,
                       f"DBSIZE {reply.strip()!r}"))
        gw.send_signal(signal.SIGTERM)
        try:
            code = gw.wait(30)
        except subprocess.TimeoutExpired:
            code = None
        checks.append(("drained and exited 0 on SIGTERM", code == 0, str(code)))
        closed = _wait(lambda: orjson.loads(_get(mstats))["open_connections"] == 1, 10)
        checks.append(("no upstream connection left open", closed,
                       str(orjson.loads(_get(mstats))["open_connections"] - 1)))
        mock.terminate()

        # The access log: one line per answered request, by the client's own ids.
        lines = log.read_bytes().splitlines()
        try:
            recs = [orjson.loads(x) for x in lines]
            parsed = True
        except orjson.JSONDecodeError:
            recs, parsed = [], False
        checks.append(("every access-log line parses", parsed, f"{len(lines)} lines"))
        logged = Counter(r.get("request_id") for r in recs if "request_id" in r)
        sent = {o.rid for o in outcomes}
        answered = [o for o in outcomes if o.verdict in ("ok", "left")]
        missing = [o for o in answered if logged[o.rid] == 0]
        missing_elsewhere = [o for o in missing if not near_kill(o)]
        twice = [rid for rid, n in logged.items() if n > 1]
        strangers = [rid for rid in logged if rid not in sent]
        checks.append(("one access-log line per answered request",
                       not missing_elsewhere and not twice and not strangers,
                       f"{len(answered)} answered, {len(missing)} without a line "
                       f"({len(missing) - len(missing_elsewhere)} answered by the killed "
                       f"worker in its last moments), {len(twice)} twice, "
                       f"{len(strangers)} never sent"))
        report["access_log_lines"] = len(lines)
        report["lost"] = len(bad) + len(cut_elsewhere)
    finally:
        procs.stop_all()
        if keep:
            report["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report["checks"] = [{"what": w, "ok": ok, "detail": d} for w, ok, d in checks]
    report["ok"] = bool(checks) and all(ok for _, ok, _ in checks)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    report = soak(args.duration, args.concurrency, args.seed, args.keep)
    print(f"chaos soak: {report.get('requests', 0)} requests in {args.duration:g} s, "
          f"{args.concurrency} clients; verdicts {report.get('verdicts')}; "
          f"statuses {report.get('statuses')}")
    print(f"  faults injected: {report.get('faults')}")
    events = report.get("events", [])
    print(f"  events: {sum(1 for e in events if e[0] == 'sighup')} SIGHUP reloads; "
          + ", ".join(f"{what} at {t:g} s" for what, t in events if what != "sighup"))
    for c in report["checks"]:
        print(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['what']}: {c['detail']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
