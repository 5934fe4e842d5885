"""What access control costs per request: API-key auth plus 3 limit scopes.

Run: ``python benchmarks/bench_policy.py [--requests N] [--redis-url URL] [--e2e]``.

1. **CPU per request** (the target: <= 10 us): ``Access.authenticate`` +
   ``admit`` + ``settle`` on real ``RequestCtx`` objects in a loop, with the
   full policy (one of 1,000 keys, its rpm and tpm, and a model rule: 3
   local scopes) against the open pass-through in the same run; the
   difference is the policy's cost. Coroutines are driven by hand (nothing
   awaits on the local backend), so no event loop noise is counted.
2. **Redis backend**: the same policy with ``limits_backend: redis`` on a real
   redis-server (started here when ``--redis-url`` is not given), 32
   concurrent callers on one event loop; Redis's own command counters give
   the round trips per admission and per settle; throughput as a ratio to the
   local backend under the same harness.
3. ``--e2e``: gateway requests/s (mock upstream, loadgen, 32 connections)
   with the open configuration and with the full policy, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import redis

from fastgw.config import parse_config
from fastgw.pipeline.access import Access, AccessState
from fastgw.pipeline.ctx import RequestCtx
from fastgw.upstream.client import UpstreamClient

N_KEYS = 1000
KEY = "sk-bench-0500"
BODY = orjson.dumps({"model": "gpt-test", "max_tokens": 64,
                     "messages": [{"role": "user", "content": "Say hello in five words."}]})


def config_text(mock_port: int, policy: bool, backend: str = "local",
                redis_url: str = "redis://127.0.0.1:6379/0") -> str:
    text = f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - {{name: mock, kind: openai-compatible, base_url: "http://127.0.0.1:{mock_port}/v1"}}
models:
  - name: gpt-test
    targets: [{{provider: mock, model: mock-small}}]
    price: {{input_per_mtok: 0.15, output_per_mtok: 0.6}}
observability: {{access_log: off}}
"""
    if not policy:
        return text
    keys = "\n".join(
        f'    - {{name: key-{i:04d}, key_sha256: "{hashlib.sha256(f"sk-bench-{i:04d}".encode()).hexdigest()}", '  # noqa: E501
        f'models: ["gpt-*"], limits: {{rpm: 100000000, tpm: 100000000000}}}}'
        for i in range(N_KEYS))
    return text + f"""auth:
  keys:
{keys}
limits:
  - {{match: {{model: "gpt-*"}}, rpm: 1000000000}}
limits_backend: {backend}
redis: {{url: "{redis_url}", timeout_s: 1.0}}
"""


class FakeCycle:
    """What RequestCtx and Access read from a server Cycle."""

    __slots__ = ("body", "client_addr", "headers", "method", "path", "received_at")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.body = BODY
        self.client_addr = ("127.0.0.1", 50000)
        self.received_at = time.perf_counter()
        self.method = b"POST"
        self.path = b"/v1/chat/completions"

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


HEADERS = [(b"host", b"127.0.0.1:8080"), (b"content-type", b"application/json"),
           (b"content-length", b"%d" % len(BODY)), (b"user-agent", b"OpenAI/Python 1.57"),
           (b"authorization", b"Bearer " + KEY.encode()), (b"accept", b"application/json")]


def drive(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends (the local backend never awaits)."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("the policy awaited: not a local-only path")


def make_ctx(snapshot: Any, cycle: FakeCycle) -> RequestCtx:
    ctx = RequestCtx(cycle, snapshot, "chat", b"req_bench", b"")  # type: ignore[arg-type]
    ctx.doc = {"model": "gpt-test", "max_tokens": 64}
    ctx.model = "gpt-test"
    route = snapshot.models["gpt-test"]
    ctx.asked = ctx.route = route
    return ctx


def one_request(access: Access, snapshot: Any, cycle: FakeCycle) -> RequestCtx:
    ctx = make_ctx(snapshot, cycle)
    drive(access.authenticate(ctx))
    drive(access.admit(ctx))
    ctx.attempts = 1
    ctx.status = 200
    ctx.prompt_tokens, ctx.completion_tokens, ctx.usage_known = 14, 9, True
    access.settle(ctx)
    return ctx


async def build(text: str) -> tuple[Access, Any, AccessState]:
    from fastgw.pipeline.snapshot import build_snapshot

    cfg = parse_config(text)
    state = AccessState(UpstreamClient(asyncio.get_running_loop()))
    access = await state.build(cfg)
    snapshot = build_snapshot(cfg, state.client, int(time.time()))
    return access, snapshot, state


def cpu_per_request(n: int) -> dict[str, float]:
    async def setup() -> tuple[Access, Access, Any]:
        open_access, snapshot, _ = await build(config_text(1, policy=False))
        policy, _, _ = await build(config_text(1, policy=True))
        return open_access, policy, snapshot

    open_access, policy, snapshot = asyncio.run(setup())
    cycle = FakeCycle(HEADERS)
    check = one_request(policy, snapshot, cycle)
    assert check.key_name == "key-0500", check.key_name
    assert check.extra_headers.count(b"x-ratelimit-") == 6, check.extra_headers
    plan = check.grant.plan
    assert plan is not None and len(plan.scopes) == 3

    def timed(access: Access) -> float:
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(n):
                one_request(access, snapshot, cycle)
            best = min(best, time.process_time() - t0)
        return best / n * 1e6

    def phase(name: str) -> float:
        ctxs = [make_ctx(snapshot, cycle) for _ in range(n)]
        t0 = time.process_time()
        if name == "authenticate":
            for ctx in ctxs:
                drive(policy.authenticate(ctx))
        else:
            for ctx in ctxs:
                drive(policy.authenticate(ctx))
            t0 = time.process_time()
            if name == "admit":
                for ctx in ctxs:
                    drive(policy.admit(ctx))
            else:
                for ctx in ctxs:
                    drive(policy.admit(ctx))
                    ctx.attempts, ctx.status, ctx.usage_known = 1, 200, True
                    ctx.prompt_tokens, ctx.completion_tokens = 14, 9
                t0 = time.process_time()
                for ctx in ctxs:
                    policy.settle(ctx)
        return (time.process_time() - t0) / n * 1e6

    base = timed(open_access)
    full = timed(policy)
    return {"open_us": base, "policy_us": full, "policy_cost_us": full - base,
            "authenticate_us": phase("authenticate"), "admit_us": phase("admit"),
            "settle_us": phase("settle")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: pass --redis-url")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


def backend_throughput(n: int, url: str, concurrency: int = 32) -> dict[str, float]:
    async def run(backend: str) -> dict[str, float]:
        access, snapshot, state = await build(config_text(1, policy=True, backend=backend,
                                                          redis_url=url))
        cycle = FakeCycle(HEADERS)

        async def worker(count: int) -> None:
            for _ in range(count):
                ctx = make_ctx(snapshot, cycle)
                await access.authenticate(ctx)
                await access.admit(ctx)
                ctx.attempts, ctx.status, ctx.usage_known = 1, 200, True
                ctx.prompt_tokens, ctx.completion_tokens = 14, 9
                access.settle(ctx)
                await asyncio.sleep(0)

        await asyncio.gather(*(worker(20) for _ in range(concurrency)))  # warm up
        await asyncio.sleep(0.2)
        info = redis.Redis.from_url(url)
        before = info.info("commandstats")
        per = n // concurrency
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(per) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        await state.close()  # waits for the settles still in flight
        after = info.info("commandstats")
        done = per * concurrency

        def calls(name: str) -> int:
            return int(after.get(name, {}).get("calls", 0)) - int(
                before.get(name, {}).get("calls", 0))

        # Commands clients sent (the scripts' own MGET/SET/TIME are counted apart).
        sent = sum(calls(k) for k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_script|load",
                                      "cmdstat_get", "cmdstat_mget", "cmdstat_set"))
        limiter = access.backend
        scripts = getattr(limiter, "calls", 0)
        return {"rps": done / elapsed, "requests": done,
                "evalsha_per_request": calls("cmdstat_evalsha") / done,
                "round_trips_per_request": (sent - calls("cmdstat_mget") - calls("cmdstat_set")
                                            if backend == "redis" else sent) / done,
                "script_calls": scripts}

    local = asyncio.run(run("local"))
    remote = asyncio.run(run("redis"))
    return {"local_rps": local["rps"], "redis_rps": remote["rps"],
            "redis_to_local": remote["rps"] / local["rps"],
            "round_trips_per_request": remote["round_trips_per_request"],
            "evalsha_per_request": remote["evalsha_per_request"],
            "local_round_trips_per_request": local["round_trips_per_request"]}


def e2e(duration: float, redis_url: str | None) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).parent))
    from loadgen import LoadSpec, run_load_sync

    mock_port = free_port()
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    mock = subprocess.Popen([*pin, sys.executable, "-m", "fastgw", "mock-upstream", "--port",
                             str(mock_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    out: dict[str, float] = {}
    try:
        time.sleep(1.0)
        variants = [("open", False, "local"), ("policy", True, "local")]
        if redis_url:
            variants.append(("policy_redis", True, "redis"))
        for name, policy, backend in variants:
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
                f.write(config_text(mock_port, policy, backend,
                                    redis_url or "redis://127.0.0.1:6379/0"))
            port = free_port()
            gw_pin = ["taskset", "-c", "0"] if pin else []
            gw = subprocess.Popen([*gw_pin, sys.executable, "-m", "fastgw", "serve", "--config",
                                   f.name, "--port", str(port)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
            try:
                time.sleep(1.5)
                spec = LoadSpec(url=f"http://127.0.0.1:{port}/v1/chat/completions", body=BODY,
                                headers={"authorization": f"Bearer {KEY}"}, connections=32,
                                duration=duration, warmup=1.0)
                result = run_load_sync(spec)
                if not result.ok or result.non_2xx or gw.poll() is not None:
                    raise SystemExit(f"e2e {name}: the gateway did not answer 200 "
                                     f"({result.summary()})")
                out[f"{name}_rps"] = result.rps
                out[f"{name}_ok"] = result.ok
            finally:
                gw.terminate()
                gw.wait(10)
                os.unlink(f.name)
    finally:
        mock.terminate()
        mock.wait(10)
    out["policy_to_open"] = out["policy_rps"] / out["open_rps"]
    if "policy_redis_rps" in out:
        out["redis_to_local"] = out["policy_redis_rps"] / out["policy_rps"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100_000, help="loop size per variant")
    ap.add_argument("--redis-url", help="use this Redis instead of starting redis-server")
    ap.add_argument("--no-redis", action="store_true", help="skip the Redis part")
    ap.add_argument("--e2e", action="store_true", help="also measure gateway requests/s")
    ap.add_argument("--duration", type=float, default=5.0, help="--e2e seconds per variant")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    report: dict[str, Any] = {"cpu": cpu_per_request(args.requests)}
    if not args.no_redis:
        with redis_server(args.redis_url) as url:
            report["backends"] = backend_throughput(min(args.requests, 20_000), url)
            if args.e2e:
                report["e2e"] = e2e(args.duration, url)
    elif args.e2e:
        report["e2e"] = e2e(args.duration, None)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        c = report["cpu"]
        print(f"policy CPU per request: {c['policy_cost_us']:.2f} us "
              f"(open pass-through {c['open_us']:.2f} us, full policy {c['policy_us']:.2f} us;"
              f" authenticate {c['authenticate_us']:.2f}, admit {c['admit_us']:.2f}, "
              f"settle {c['settle_us']:.2f})  target <= 10 us: "
              f"{'OK' if c['policy_cost_us'] <= 10 else 'MISSED'}")
        if "backends" in report:
            b = report["backends"]
            print(f"redis backend: {b['redis_rps']:.0f} req/s vs local {b['local_rps']:.0f} "
                  f"req/s (ratio {b['redis_to_local']:.3f}); Redis round trips per request "
                  f"{b['round_trips_per_request']:.2f} (EVALSHA {b['evalsha_per_request']:.2f}"
                  f": one admission + one settle); local backend: "
                  f"{b['local_round_trips_per_request']:.2f}")
        if "e2e" in report:
            e = report["e2e"]
            print(f"gateway (32 connections): open {e['open_rps']:.0f} req/s, full policy "
                  f"{e['policy_rps']:.0f} req/s (ratio {e['policy_to_open']:.3f})"
                  + (f", full policy on redis {e['policy_redis_rps']:.0f} req/s (ratio to "
                     f"local {e['redis_to_local']:.3f})" if "redis_to_local" in e else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
