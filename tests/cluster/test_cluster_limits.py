"""Three gateway processes sharing limits and the response cache through a Redis
Cluster of three masters: rpm, tpm and a USD budget hold across the instances
under concurrent load, and a cache entry made by one instance is a hit on another."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cluster_helpers import (
    chat_body,
    gateway_yaml,
    gateways,
    load,
    mock_upstream,
    request,
    run_async,
)
from gwtest import wait_for
from redistest import RedisClusterNodes, redis_cluster

from fastgw.limits.rules import estimate

RPM = 100
REQUESTS = 100  # what the tpm and the budget allow, in requests of the test's body
OFFERED = 200  # requests per key, twice what each limit admits
USD_PER_TOKEN = 0.001  # gateway_yaml's price, input and output alike
CONTENT = "lorem ipsum " * 34  # a long prompt: the body's JSON is a small part of it
MAX_TOKENS = 100


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterNodes]:
    """Three masters, no replicas."""
    with redis_cluster(tmp_path, masters=3) as c:
        yield c


@pytest.fixture
def mock_port() -> Iterator[int]:
    """``fastgw mock-upstream`` in its own process (answers of up to 100 tokens)."""
    with mock_upstream("--chunks", "100") as port:
        yield port


def test_rpm_tpm_and_budget_hold_across_three_instances(
        cluster: RedisClusterNodes, mock_port: int, tmp_path: Path) -> None:
    body = chat_body(CONTENT, MAX_TOKENS)
    prompt, completion = estimate(len(body), orjson.loads(body), "chat")
    reserved = prompt + completion  # what admission reserves per request
    used = 103 + MAX_TOKENS  # the mock's usage: the prompt's characters / 4, the answer
    assert 0.9 * reserved <= used <= reserved  # reservations close to the real usage
    tpm = REQUESTS * used
    budget = REQUESTS * used * USD_PER_TOKEN
    keys = [("rpm", f"rpm: {RPM}"), ("tpm", f"tpm: {tpm}"),
            ("usd", f"budget_usd: {{amount: {budget}, period: day}}")]
    yaml = gateway_yaml(mock_port, cluster.url, keys, on_error="deny", timeout_s=1.0)
    with gateways([yaml] * 3, tmp_path) as ports:
        names = [k for k, _ in keys]
        t0 = time.monotonic()
        results = run_async(load(ports, body, lambda i, n: names[(n + i) % 3],
                                 per_instance=OFFERED, concurrency=10))
        elapsed = time.monotonic() - t0
    assert len(results) == 3 * OFFERED
    by_key = {k: [r for r in results if r.key == k] for k in names}
    assert {r.status for r in results} <= {200, 429}, {r.status for r in results}
    assert {sum(r.usage()) for r in results if r.status == 200} == {used}
    # Every instance admitted some of every key: the limits are shared, not split.
    for k in names:
        assert {r.instance for r in by_key[k] if r.status == 200} == {0, 1, 2}

    # rpm: a burst of RPM, refilled at RPM/60 a second while the load ran.
    admitted = sum(r.status == 200 for r in by_key["rpm"])
    expected = RPM * (1 + elapsed / 60)
    assert abs(admitted - expected) <= 0.05 * expected, (admitted, expected, elapsed)

    # tpm: the tokens of admitted requests, as settled with the real usage.
    tokens = sum(sum(r.usage()) for r in by_key["tpm"] if r.status == 200)
    expected = tpm * (1 + elapsed / 60)
    assert abs(tokens - expected) <= 0.05 * expected, (tokens, expected, elapsed)

    # budget: spent once per day, never refilled.
    spent = sum(sum(r.usage()) for r in by_key["usd"] if r.status == 200) * USD_PER_TOKEN
    assert abs(spent - budget) <= 0.05 * budget, (spent, budget)
    assert spent <= budget + reserved * USD_PER_TOKEN  # overspent by one reservation at most

    # Every limit bucket lives on the one master of the {fastgw} slot.
    home = cluster.master_of("{fastgw}")
    stored = cluster.keys("{fastgw}:*")
    assert any(k.endswith(":rpm") for k in stored) and any(":budget:" in k for k in stored)
    assert home.stored_keys() == stored
    print(f"\nlimits across 3 instances, {len(results)} requests in {elapsed:.2f} s: "
          f"rpm {RPM} -> {admitted} admitted; tpm {tpm} -> {tokens} tokens; "
          f"budget ${budget:.2f} -> ${spent:.3f}")


def test_a_cache_entry_made_on_one_instance_is_a_hit_on_another(
        cluster: RedisClusterNodes, mock_port: int, tmp_path: Path) -> None:
    yaml = gateway_yaml(mock_port, cluster.url, [("c", "")], timeout_s=1.0,
                        extra="cache: {enabled: true, backend: redis, scope: global}\n")
    with gateways([yaml] * 3, tmp_path) as ports:
        bodies = [orjson.dumps({"model": "gpt-test", "temperature": 0,
                                "messages": [{"role": "user", "content": f"question {n}"}]})
                  for n in range(12)]

        async def ask(port: int, body: bytes) -> tuple[int, dict[str, str], bytes]:
            return await request(port, body, "c")

        for body in bodies:  # made on instance A
            status, h, _ = run_async(ask(ports[0], body))
            assert (status, h["x-fastgw-cache"]) == (200, "miss")
        assert wait_for(lambda: len(cluster.keys("fastgw:cache:*")) == len(bodies), timeout=5)
        entries = cluster.keys("fastgw:cache:*")
        # spread over the masters, not all in one slot
        homes = {cluster.master_of(k).port for k in entries}
        assert len(homes) >= 2, homes
        for body in bodies:  # found on instance C
            status, h, payload = run_async(ask(ports[2], body))
            assert (status, h["x-fastgw-cache"]) == (200, "hit"), h
            assert orjson.loads(payload)["choices"]
