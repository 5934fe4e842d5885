"""Provider quota queue: fairness across tenants, bounds, timeouts (real event loop)."""

from __future__ import annotations

import asyncio

import pytest

from fastgw.config import ProviderLimitsConfig
from fastgw.routing.quota import ProviderQuota, QuotaExceeded


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_tenants_are_served_in_turn() -> None:
    async def main() -> list[str]:
        q = ProviderQuota(ProviderLimitsConfig(rpm=12000, burst=1), asyncio.get_running_loop())
        order: list[str] = []

        async def one(tenant: str) -> None:
            await q.acquire(tenant, 0)
            order.append(tenant)
            q.release()

        # A floods first; B arrives later with fewer requests.
        tasks = [asyncio.ensure_future(one("A")) for _ in range(30)]
        await asyncio.sleep(0)
        tasks += [asyncio.ensure_future(one("B")) for _ in range(10)]
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return order

    order = run(main())
    assert isinstance(order, list)
    # B's ten requests are all served within the first ~21 grants, alternating with A.
    last_b = max(i for i, t in enumerate(order) if t == "B")
    assert last_b <= 21, order
    assert order.count("A") == 30


def test_rate_is_respected() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        q = ProviderQuota(ProviderLimitsConfig(rpm=6000, burst=1), loop)  # 100/s
        t0 = loop.time()
        for _ in range(21):
            await q.acquire("t", 0)
            q.release()
        return loop.time() - t0

    elapsed = run(main())
    assert isinstance(elapsed, float)
    assert elapsed >= 0.18  # 20 refills at 10 ms each: never faster than the rate


def test_full_queue_and_timeout_raise_quota_exceeded() -> None:
    async def main() -> tuple[str, str]:
        q = ProviderQuota(ProviderLimitsConfig(max_inflight=1, max_queue=1, queue_timeout_s=0.1),
                          asyncio.get_running_loop())
        await q.acquire("t", 0)  # holds the only slot
        waiting = asyncio.ensure_future(q.acquire("t", 0))
        await asyncio.sleep(0)
        with pytest.raises(QuotaExceeded) as full:
            await q.acquire("u", 0)
        with pytest.raises(QuotaExceeded) as late:
            await waiting
        return full.value.reason, late.value.reason

    assert run(main()) == ("queue_full", "timeout")


def test_max_inflight_wakes_the_next_waiter_on_release() -> None:
    async def main() -> bool:
        q = ProviderQuota(ProviderLimitsConfig(max_inflight=1), asyncio.get_running_loop())
        await q.acquire("t", 0)
        nxt = asyncio.ensure_future(q.acquire("t", 0))
        await asyncio.sleep(0.01)
        assert not nxt.done()
        q.release()
        await asyncio.wait_for(nxt, 1)
        return q.inflight == 1

    assert run(main()) is True


def test_cancelled_waiter_leaves_no_trace() -> None:
    async def main() -> int:
        q = ProviderQuota(ProviderLimitsConfig(max_inflight=1), asyncio.get_running_loop())
        await q.acquire("t", 0)
        nxt = asyncio.ensure_future(q.acquire("t", 0))
        await asyncio.sleep(0)
        nxt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await nxt
        q.release()
        await asyncio.sleep(0.01)
        return q.inflight

    assert run(main()) == 0


def test_token_budget_waits_for_refill() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        q = ProviderQuota(ProviderLimitsConfig(tpm=60000), loop)  # 1000 tokens/s
        await q.acquire("t", 60000)  # the whole minute's worth
        t0 = loop.time()
        await q.acquire("t", 200)
        return loop.time() - t0

    waited = run(main())
    assert isinstance(waited, float)
    assert 0.15 <= waited <= 1.0
