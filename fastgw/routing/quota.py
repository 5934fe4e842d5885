"""Provider quotas: shape outgoing traffic to a provider's own limits.

Requests to a provider with ``limits`` (rpm, tpm, max_inflight) wait in a
bounded queue instead of being sent into the provider's 429s. The queue is
fair across tenants (callers): each tenant has its own FIFO and tenants are
served in turn, so one eval harness firing 10,000 requests does not starve a
person sending one. A full queue or a wait longer than ``queue_timeout_s`` is
answered 429 by the caller.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque

from fastgw.config import ProviderLimitsConfig


class QuotaExceeded(Exception):
    """The request could not get a slot: ``reason`` is 'queue_full' or 'timeout'."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Bucket:
    """A continuous token bucket holding at most ``capacity`` (a minute's worth)."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, per_minute: float, now: float, capacity: float | None = None) -> None:
        self.capacity = capacity if capacity is not None else per_minute
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, cost: float) -> float:
        """Seconds until ``cost`` tokens are there (0 when they are)."""
        missing = min(cost, self.capacity) - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate


class _Waiter:
    __slots__ = ("cost", "future")

    def __init__(self, future: asyncio.Future[None], cost: float) -> None:
        self.future = future
        self.cost = cost


class ProviderQuota:
    __slots__ = ("_loop", "_queued", "_requests", "_tenants", "_timer", "_tokens", "cfg",
                 "inflight")

    def __init__(self, cfg: ProviderLimitsConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self._loop = loop
        now = loop.time()
        self._requests = _Bucket(cfg.rpm, now, cfg.burst) if cfg.rpm else None
        self._tokens = _Bucket(cfg.tpm, now) if cfg.tpm else None
        self.inflight = 0
        self._tenants: OrderedDict[str, deque[_Waiter]] = OrderedDict()
        self._queued = 0
        self._timer: asyncio.TimerHandle | None = None

    async def acquire(self, tenant: str, tokens: float) -> None:
        """Wait (fairly, bounded) until the provider may take one more request."""
        if not self._queued and self._try_take(tokens, self._loop.time()):
            return
        if self._queued >= self.cfg.max_queue:
            raise QuotaExceeded("queue_full", self._eta())
        fut: asyncio.Future[None] = self._loop.create_future()
        waiter = _Waiter(fut, tokens)
        q = self._tenants.get(tenant)
        if q is None:
            q = self._tenants[tenant] = deque()
        q.append(waiter)
        self._queued += 1
        self._schedule(0.0)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.cfg.queue_timeout_s)
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                return  # granted at the last moment: keep the slot
            self._forget(tenant, waiter)
            raise QuotaExceeded("timeout", self._eta()) from None
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, but the caller is gone: give it back
            else:
                self._forget(tenant, waiter)
            raise

    def release(self) -> None:
        """A request that got a slot has finished (success or not)."""
        self.inflight -= 1
        if self._queued:
            self._schedule(0.0)

    def settle_tokens(self, reserved: float, actual: float) -> None:
        """Correct the token bucket with the real usage."""
        if self._tokens is not None:
            self._tokens.tokens += reserved - actual

    # -- internals --------------------------------------------------------------------

    def _try_take(self, tokens: float, now: float) -> bool:
        cfg = self.cfg
        if cfg.max_inflight is not None and self.inflight >= cfg.max_inflight:
            return False
        r, t = self._requests, self._tokens
        if r is not None:
            r.refill(now)
            if r.tokens < 1.0:
                return False
        if t is not None:
            t.refill(now)
            if t.tokens < min(tokens, t.capacity):
                return False
        if r is not None:
            r.tokens -= 1.0
        if t is not None:
            t.tokens -= tokens
        self.inflight += 1
        return True

    def _eta(self) -> float:
        """Rough seconds until a queued request would be served (for Retry-After)."""
        waits = [0.0]
        if self._requests is not None:
            waits.append((self._queued + 1) / self._requests.rate)
        return max(waits)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            if delay > 0:
                return
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._pump)

    def _pump(self) -> None:
        """Grant slots to waiting tenants in turn while capacity lasts."""
        self._timer = None
        now = self._loop.time()
        tenants = self._tenants
        while tenants:
            tenant, q = next(iter(tenants.items()))
            waiter = q[0]
            if waiter.future.done():  # cancelled or timed out
                q.popleft()
                self._queued -= 1
                if not q:
                    del tenants[tenant]
                continue
            if not self._try_take(waiter.cost, now):
                self._schedule_refill(waiter.cost)
                return
            q.popleft()
            self._queued -= 1
            waiter.future.set_result(None)
            # This tenant goes to the back of the line.
            if q:
                tenants.move_to_end(tenant)
            else:
                del tenants[tenant]

    def _schedule_refill(self, cost: float) -> None:
        waits = []
        if self._requests is not None:
            waits.append(self._requests.wait_for(1.0))
        if self._tokens is not None:
            waits.append(self._tokens.wait_for(cost))
        delay = max(waits) if waits else 0.0
        if delay > 0:
            self._schedule(max(delay, 0.001))
        # Otherwise only max_inflight blocks: release() will pump.

    def _forget(self, tenant: str, waiter: _Waiter) -> None:
        q = self._tenants.get(tenant)
        if q is not None:
            try:
                q.remove(waiter)
            except ValueError:
                return
            self._queued -= 1
            if not q:
                del self._tenants[tenant]
