"""A Redis Cluster master killed under load: three gateway processes never hold a
request much longer than ``redis.timeout_s``, follow ``redis.on_error`` (``local``:
this instance's own limits; ``deny``: 503) while it fails over, count every such
decision in ``fastgw_redis_fallbacks_total{mode}``, and share their limits through
the promoted replica again without a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from cluster_helpers import (
    Result,
    chat_body,
    gateway_yaml,
    gateways,
    load,
    mock_upstream,
    request,
    run_async,
)
from gwtest import metric
from redistest import RedisClusterNodes, redis_cluster

TIMEOUT_S = 0.25  # redis.timeout_s
MARGIN_S = 1.0  # a loaded 2-core machine's scheduling, on top of it
KILL_AT_S = 0.7  # into the load
LIMIT_S = 20.0  # the whole load, at most
SHARED_RPM = 6


@pytest.fixture
def ha_cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    """Three masters with a replica each; a master unreachable for a second
    (``cluster-node-timeout`` 1000 ms) is replaced by its replica."""
    with redis_cluster(tmp_path, masters=3, replicas=1, node_timeout_ms=1000) as c:
        yield c


@pytest.fixture
def mock_port() -> Iterator[int]:
    with mock_upstream() as port:
        yield port


def _stamp(value: bytes | None) -> float:
    """When a bucket was last written (``"level stamp"``, Redis's clock)."""
    return float(value.split()[1]) if value else 0.0


@pytest.mark.parametrize(("on_error", "fault"),
                         [("local", "kill"), ("deny", "kill"), ("local", "stall")])
def test_a_master_lost_under_load_fails_over_without_a_restart(
        ha_cluster: RedisClusterNodes, mock_port: int, tmp_path: Path, on_error: str,
        fault: str) -> None:
    """``kill``: SIGKILL, its connections refused at once; ``stall``: SIGSTOP, its
    connections open and silent (a hung host, a network partition), so only the
    gateway's own timeout bounds a request's wait."""
    cluster = ha_cluster
    slot_key = "{fastgw}"
    home = cluster.master_of(slot_key)  # every limit bucket lives in this slot
    # One key per instance (its bucket shows when that instance last wrote to Redis),
    # and one shared by all with a small limit.
    keys = [(f"i{i}", "rpm: 1000000") for i in range(3)] + [("shared", f"rpm: {SHARED_RPM}")]
    # The instances know the cluster by the node that dies: they must learn the others.
    yaml = gateway_yaml(mock_port, home.url, keys, on_error=on_error, timeout_s=TIMEOUT_S)
    body = chat_body("hello there", 8)
    with gateways([yaml] * 3, tmp_path) as ports:
        before = [metric(p, "fastgw_redis_fallbacks_total", mode=on_error) for p in ports]
        assert before == [0.0, 0.0, 0.0]
        timeline: dict[str, float] = {}
        back: dict[int, float] = {}  # instance -> first write to Redis after the kill (wall)

        def bucket(i: int) -> bytes | None:
            try:
                return cluster.get(f"{slot_key}:key:k:i{i}:rpm")
            except (redis.RedisError, AssertionError):  # no live master for the slot yet
                return None

        async def kill_and_watch(stop: asyncio.Event) -> None:
            await asyncio.sleep(KILL_AT_S)
            assert all(_stamp(bucket(i)) > 0 for i in range(3))  # all in Redis so far
            timeline["kill_wall"] = time.time()
            timeline["kill"] = time.monotonic()
            if fault == "kill":
                home.stop()  # SIGKILL
            else:
                home.pause()  # SIGSTOP; SIGKILLed with the cluster
            deadline = time.monotonic() + LIMIT_S - KILL_AT_S - 1
            while time.monotonic() < deadline:
                if "failover" not in timeline:
                    new = await asyncio.to_thread(_master_port, cluster, slot_key)
                    if new not in (None, home.port):
                        timeline["failover"] = time.monotonic()
                for i in range(3):
                    if i not in back:
                        stamp = _stamp(await asyncio.to_thread(bucket, i))
                        if stamp > timeline["kill_wall"]:
                            back[i] = stamp
                if len(back) == 3:
                    # a last stretch of load with everything shared again
                    timeline["back"] = time.monotonic()
                    await asyncio.sleep(0.5)
                    break
                await asyncio.sleep(0.05)
            stop.set()

        async def main() -> list[Result]:
            stop = asyncio.Event()
            watcher = asyncio.create_task(kill_and_watch(stop))
            # about 150 requests a second in all
            results = await load(ports, body, lambda i, n: f"i{i}", per_instance=1000,
                                 concurrency=5, stop=stop, limit_s=LIMIT_S, pause_s=0.1)
            await watcher
            return results

        results = run_async(main())
        after = [metric(p, "fastgw_redis_fallbacks_total", mode=on_error) for p in ports]
        others = [metric(p, "fastgw_redis_fallbacks_total", mode=other)
                  for p in ports for other in ("local", "allow", "deny") if other != on_error]

        # Limits are shared again: SHARED_RPM admitted in all, not SHARED_RPM per instance.
        shared = [run_async(request(p, body, "shared"))[0] for p in ports for _ in range(4)]
        assert shared.count(200) == SHARED_RPM, shared
        assert [metric(p, "fastgw_redis_fallbacks_total", mode=on_error)
                for p in ports] == after  # and nothing fell back any more

    assert len(back) == 3, f"not every instance used Redis again: {back} {timeline}"
    kill = timeline["kill"]
    recovered_s = max(back.values()) - timeline["kill_wall"]
    assert "failover" in timeline and recovered_s < 10.0
    during = [r for r in results if kill <= r.start <= timeline["back"]]
    worst = max(r.latency for r in results)
    statuses = sorted({r.status for r in results})
    fallbacks = sum(after) - sum(before)
    denied = [r for r in results if r.status == 503]
    assert 0 not in statuses  # every request was answered
    assert worst < TIMEOUT_S + MARGIN_S, worst
    assert fallbacks > 0
    # at most one decision per request that was not over when the master was lost
    assert fallbacks <= sum(r.start + r.latency >= kill for r in results)
    if on_error == "local":
        assert statuses == [200]
    else:
        assert statuses == [200, 503]
        assert len(denied) == fallbacks  # one counted decision per refusal
        assert {orjson.loads(r.body)["error"]["code"] for r in denied} == {"limits_unavailable"}
        assert all(r.start + r.latency >= kill and r.start <= timeline["back"] for r in denied)
    assert others == [0.0] * 6  # counted under the configured mode only
    print(f"\n{fault}, on_error={on_error}: {len(during)} requests from the fault until every "
          f"instance wrote to Redis again ({len(results)} in all), longest wait "
          f"{worst * 1000:.0f} ms "
          f"(during: {max(r.latency for r in during) * 1000:.0f} ms), {fallbacks:.0f} "
          f"fallbacks, {len(denied)} answered 503; failover after "
          f"{timeline['failover'] - kill:.2f} s, Redis used again by every instance "
          f"after {recovered_s:.2f} s")


def _master_port(cluster: RedisClusterNodes, key: str) -> int | None:
    try:
        return cluster.master_of(key).port
    except AssertionError:
        return None
