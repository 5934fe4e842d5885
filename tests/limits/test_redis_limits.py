"""Limits in Redis: one Lua call per admission and per settle, one count shared by
gateway processes, hash-tagged keys (Redis Cluster), and every redis.on_error mode
when Redis dies, hangs or comes back."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from gwtest import LoopThread, Response, chat, http, running, wait_for
from limits_helpers import (
    KEY_A,
    KEY_B,
    RedisServer,
    bearer,
    free_port,
    gateway_process,
    gw_yaml,
    keys_yaml,
    metric,
    redis_server,
)

from fastgw.mock import MockOptions, start_mock


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    """A real redis-server on a free port, stopped after the test."""
    with redis_server() as server:
        yield server


def redis_extra(url: str, on_error: str = "local", cluster: bool = False,
                timeout_s: float = 0.2) -> str:
    return (f"limits_backend: redis\nredis: {{url: \"{url}\", on_error: {on_error}, "
            f"timeout_s: {timeout_s}, cluster: {str(cluster).lower()}}}\n")


def post(port: int, key: str | None = KEY_A, model: str = "gpt-test",
         headers: dict[str, str] | None = None, **body: Any) -> Response:
    h = dict(bearer(key)) if key else {}
    h.update(headers or {})
    return http(port, "POST", "/v1/chat/completions", chat(model, **body), h, timeout=20)


def test_one_script_call_per_admission_and_per_settle(redis_srv: RedisServer) -> None:
    extra = keys_yaml(a_limits="rpm: 4, tpm: 100000, max_inflight: 5") + redis_extra(
        redis_srv.url)
    with running(lambda p: gw_yaml(p, extra)) as gw:
        assert post(gw.port).status == 200
        # The first request's admission and its settle (sent just after the answer).
        assert wait_for(lambda: redis_srv.evalsha_calls() == 2)
        base = redis_srv.evalsha_calls()
        stats = redis_srv.client().info("commandstats")
        loads = stats.get("cmdstat_script|load", stats.get("cmdstat_script", {})).get("calls")
        assert loads == 2  # both scripts loaded at start, never again
        r = [post(gw.port) for _ in range(4)]
        assert [x.status for x in r] == [200, 200, 200, 429]
        assert [x.headers["x-ratelimit-remaining-requests"] for x in r] == ["2", "1", "0", "0"]
        # 4 admissions + 3 settles (a refused admission has nothing to settle)
        assert wait_for(lambda: redis_srv.evalsha_calls() - base == 7)
        time.sleep(0.2)
        assert redis_srv.evalsha_calls() - base == 7
        # Key B has no limit: no Redis call at all.
        assert post(gw.port, KEY_B).status == 200
        time.sleep(0.1)
        assert redis_srv.evalsha_calls() - base == 7
        keys = redis_srv.stored_keys()
        assert keys == ["{fastgw}:key:k:key-a:rpm", "{fastgw}:key:k:key-a:tpm"]
        for k in keys:
            assert 0 < redis_srv.client().ttl(k) <= 62  # back to fresh -> gone


def test_tokens_inflight_and_budget_settle_in_redis(redis_srv: RedisServer) -> None:
    extra = keys_yaml(a_limits="tpm: 2000, max_inflight: 2, budget_usd: {amount: 300, "
                               "period: month}") + redis_extra(redis_srv.url)
    with running(lambda p: gw_yaml(p, extra)) as gw, \
            concurrent.futures.ThreadPoolExecutor(3) as pool:
        before = gw.mock_stats()["requests"]
        slow = [pool.submit(post, gw.port, headers={"x-mock-latency-ms": "2000"})
                for _ in range(2)]
        assert wait_for(lambda: gw.mock_stats()["requests"] - before == 2)  # both in flight
        assert post(gw.port).status == 429  # max_inflight
        assert [f.result().status for f in slow] == [200, 200]
        time.sleep(0.2)  # a settle goes to Redis just after its answer went out
        r = post(gw.port, max_tokens=1500)
        assert r.status == 200
        remaining = int(r.headers["x-ratelimit-remaining-tokens"])
        assert 2000 - 1500 - 200 < remaining < 2000 - 1500  # earlier usage settled small
        spent = 0.0
        for _ in range(100):
            r = post(gw.port, KEY_A, "pricey", max_tokens=8)
            if r.status != 200:
                break
            spent += sum(orjson.loads(r.body)["usage"][k]
                         for k in ("prompt_tokens", "completion_tokens"))
        assert r.status == 429 and b"budget" in r.body
        reservation = len(orjson.dumps(chat("pricey", max_tokens=8))) // 4 + 1 + 8
        assert 300 - reservation <= spent <= 300 + reservation

        def level() -> float:
            raw = redis_srv.client().get("{fastgw}:key:k:key-a:budget:month")
            return float(raw.split()[0]) if isinstance(raw, bytes) else 0.0

        # Redis holds what was really spent (settled), not the reservations.
        assert wait_for(lambda: abs(level() - spent) < 0.01)


@pytest.fixture
def mock_port() -> Any:
    lt = LoopThread()
    srv = lt.run(start_mock(MockOptions(), "127.0.0.1", 0))
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        lt.call(srv.close)
        lt.close()


def test_two_gateway_processes_share_one_count(redis_srv: RedisServer, mock_port: int,
                                               tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(gw_yaml(mock_port, keys_yaml(a_limits="rpm: 100")
                           + redis_extra(redis_srv.url, on_error="deny", timeout_s=1.0)))
    p1, p2 = free_port(), free_port()
    with gateway_process(cfg, p1), gateway_process(cfg, p2):
        def one(i: int) -> int:
            return post(p1 if i % 2 else p2).status

        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(one, range(400)))
    admitted = statuses.count(200)
    assert statuses.count(200) + statuses.count(429) == 400, set(statuses)
    # rpm 100 holds a burst of 100 and refills 1.7/s: exact within a few percent.
    assert 95 <= admitted <= 105, admitted


@pytest.mark.parametrize("mode", ["local", "allow", "deny"])
def test_redis_outage_follows_on_error_and_recovers(redis_srv: RedisServer,
                                                    mode: str) -> None:
    extra = keys_yaml(a_limits="rpm: 5") + redis_extra(redis_srv.url, on_error=mode)
    with running(lambda p: gw_yaml(p, extra)) as gw:
        r = post(gw.port)
        assert r.status == 200 and r.headers["x-ratelimit-remaining-requests"] == "4"
        before = metric(gw.port, "fastgw_redis_fallbacks_total", mode=mode)
        redis_srv.stop()
        results = []
        for _ in range(7):
            t0 = time.monotonic()
            results.append(post(gw.port))
            assert time.monotonic() - t0 < 5.0  # bounded by redis.timeout_s, never a hang
        statuses = [x.status for x in results]
        if mode == "local":
            # this instance's own buckets (fresh): 5 pass, then 429
            assert statuses == [200] * 5 + [429] * 2
            assert results[0].headers["x-ratelimit-remaining-requests"] == "4"
        elif mode == "allow":
            assert statuses == [200] * 7
            assert "x-ratelimit-remaining-requests" not in results[0].headers
        else:
            assert statuses == [503] * 7
            err = orjson.loads(results[0].body)["error"]
            assert err["code"] == "limits_unavailable"
            assert results[0].headers["retry-after"] == "1"
        assert metric(gw.port, "fastgw_redis_fallbacks_total", mode=mode) == before + 7
        assert gw.mock_stats()["requests"] == 1 + statuses.count(200)
        redis_srv.start()  # empty, on the same port

        def shared_again() -> bool:
            x = post(gw.port)
            return x.status == 200 and x.headers.get("x-ratelimit-remaining-requests") == "4"

        assert wait_for(shared_again, timeout=5, interval=0.2)
        assert redis_srv.client().exists("{fastgw}:key:k:key-a:rpm")


def test_a_hung_redis_never_hangs_a_request(redis_srv: RedisServer) -> None:
    extra = keys_yaml(a_limits="rpm: 50, max_inflight: 4") + redis_extra(
        redis_srv.url, on_error="allow", timeout_s=0.3)
    with running(lambda p: gw_yaml(p, extra)) as gw:
        assert post(gw.port).status == 200
        assert redis_srv.proc is not None
        os.kill(redis_srv.proc.pid, signal.SIGSTOP)  # accepts nothing, answers nothing
        try:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                def timed(_: int) -> tuple[int, float]:
                    t0 = time.monotonic()
                    return post(gw.port).status, time.monotonic() - t0

                results = list(pool.map(timed, range(16)))
            assert all(status == 200 for status, _ in results)
            assert max(elapsed for _, elapsed in results) < 8.0  # redis is stopped for good
        finally:
            os.kill(redis_srv.proc.pid, signal.SIGCONT)

        def shared_again() -> bool:
            x = post(gw.port)
            return "x-ratelimit-remaining-requests" in x.headers

        assert wait_for(shared_again, timeout=5, interval=0.2)
        # The calls that timed out ran when Redis resumed; what they reserved was given back.
        inflight = "{fastgw}:key:k:key-a:inflight"
        assert wait_for(lambda: redis_srv.client().get(inflight) is None, timeout=5)
        r = post(gw.port)
        assert int(r.headers["x-ratelimit-remaining-requests"]) >= 45


def test_gateway_starts_and_serves_while_redis_is_down() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    extra = keys_yaml(a_limits="rpm: 2") + redis_extra(url, on_error="local")
    with running(lambda p: gw_yaml(p, extra)) as gw:
        assert [post(gw.port).status for _ in range(3)] == [200, 200, 429]


def test_redis_cluster_client_and_hash_tags(tmp_path: Path) -> None:
    with redis_server(cluster=True, workdir=tmp_path) as srv:
        extra = keys_yaml(a_limits="rpm: 2, tpm: 10000") + """limits:
  - {match: {model: gpt-test}, per: rule, rpm: 100, max_inflight: 10}
""" + redis_extra(srv.url, on_error="deny", cluster=True, timeout_s=1.0)
        with running(lambda p: gw_yaml(p, extra)) as gw:
            # four keys in one script: they must share a slot, or Redis answers CROSSSLOT
            assert [post(gw.port).status for _ in range(3)] == [200, 200, 429]
        assert srv.stored_keys() and all(k.startswith("{fastgw}:") for k in srv.stored_keys())


class _Script:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def __call__(self, keys: Any, args: Any) -> Any:
        return await self.answer()


class _Client:
    """A stand-in for redis-py's client: scripts answer as the test says."""

    def __init__(self) -> None:
        self.reserve: Any = None
        self.settle: Any = None

    def register_script(self, source: str) -> _Script:
        from fastgw.limits.redis import RESERVE_LUA

        return _Script(lambda: (self.reserve if source == RESERVE_LUA else self.settle)())


def test_a_late_settle_failure_does_not_mark_a_recovered_redis_down() -> None:
    """A settle sent to a node that then hung (a failed-over master) fails only when its
    socket gives up, after the limiter already found Redis again: it says nothing about
    Redis now, so limits stay shared."""
    import asyncio

    from fastgw.config import LimitSpec, RedisConfig
    from fastgw.limits import LocalLimiter, Rules
    from fastgw.limits.redis import RedisLimiter

    async def main() -> None:
        client = _Client()
        limiter = RedisLimiter(RedisConfig(url="redis://127.0.0.1:1/0", timeout_s=0.05),
                               LocalLimiter(), client=client)  # type: ignore[arg-type]
        plan = Rules([]).plan("k:a", "a", None, LimitSpec(rpm=100), "m", ["p"])
        assert plan is not None
        hang = asyncio.Event()

        def up() -> bool:
            return limiter.healthy

        async def answer() -> list[str]:
            return ["1", "0", "-1", "99", "0.6", "1"]

        async def stalled() -> list[str]:
            await hang.wait()
            raise ConnectionError("the node's socket gave up")

        client.reserve, client.settle = answer, stalled
        res = await limiter.reserve(plan, [1.0])
        limiter.settle(res, [1.0])  # goes to the node that is about to hang
        await asyncio.sleep(0)
        client.reserve = stalled
        await limiter.reserve(plan, [1.0])  # times out: Redis is down
        assert not up()
        await asyncio.sleep(1.1)  # RETRY_S later, one request probes the promoted node
        client.reserve = answer
        assert type(await limiter.reserve(plan, [1.0])).__name__ == "RedisReservation"
        assert up()
        hang.set()  # now the old settle fails
        await asyncio.sleep(0.01)
        assert up()
        assert type(await limiter.reserve(plan, [1.0])).__name__ == "RedisReservation"

    asyncio.run(main())
