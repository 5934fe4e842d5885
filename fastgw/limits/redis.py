"""Limits shared by every gateway instance, in Redis.

The same buckets and arithmetic as the native table (``rust/src/limiter.rs``:
rate, concurrency and budget buckets, all-or-none admission, settle with
refund or extra debit), run by two Lua scripts: one ``EVALSHA`` per
admission, one per settle; nothing else goes to Redis on the request path.
Time is Redis's own clock (``TIME``), so instances with drifting clocks still
agree on refills; calendar-month windows come from the caller. A bucket is
one string, ``"level stamp"``, read for all scopes with one ``MGET`` and
written with ``SET ... EX``. Every bucket name carries the ``{prefix}`` hash
tag, so one admission's keys live in one slot and the script stays atomic on
Redis Cluster. Buckets expire once they
are back to their fresh state (rate: refilled; budget: after the window;
concurrency: an hour after their last use, which bounds what a crashed
instance can leak).

When Redis cannot be reached within ``redis.timeout_s`` the request never
waits longer: ``redis.on_error`` decides (``local``: this instance's own
buckets; ``allow``; ``deny``: 503), ``fastgw_redis_fallbacks_total{mode}``
counts it, and a log line says so (at most one per 10 s). Redis is tried again
after a second; when it answers, limits are shared again.
"""

from __future__ import annotations

import asyncio
import calendar
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from fastgw._native import Reservation
from fastgw.config import RedisConfig
from fastgw.errors import ServiceUnavailable
from fastgw.limits.local import LocalLimiter
from fastgw.limits.rules import MAX_SCOPES, Outcome, Plan, ScopeSpec
from fastgw.metrics import REDIS_FALLBACKS

log = logging.getLogger("fastgw.limits")

RETRY_S = 1.0  # after a failure, Redis is left alone this long (then one request probes it)
LOG_EVERY_S = 10.0

RESERVE_LUA = """
-- KEYS[i]: bucket i, a string "level stamp".
-- ARGV[1], ARGV[2]: the calendar month's start and end (for month budgets);
-- then per bucket: kind (1 rate, 2 concurrency, 3 budget), p1, p2, cost.
-- Answer: {admitted, retry_after, denied (0-based, -1 = none),
--          then per bucket: remaining, reset_after, stamp}.
-- Numbers go back as strings: Lua numbers would be truncated to integers.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local month_start, month_end = tonumber(ARGV[1]), tonumber(ARGV[2])
local function f(x) return string.format('%.17g', x) end
local n = #KEYS
local cur = redis.call('MGET', unpack(KEYS))
local admitted, retry, denied = true, 0, -1
local levels, stamps, ttls = {}, {}, {}
local out = {}
for i = 1, n do
  local a = 3 + (i - 1) * 4
  local kind, p1, p2 = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local cost = tonumber(ARGV[a + 3])
  local level, stamp
  if cur[i] then
    local l, s = string.match(cur[i], '^(%S+) (%S+)$')
    level, stamp = tonumber(l), tonumber(s)
  end
  local wait, took, remaining, reset, ttl = nil, nil, 0, 0, 3600
  if kind == 1 then
    if level == nil or stamp == nil then level, stamp = p1, now end
    if now > stamp then
      level = math.min(p1, level + (now - stamp) * p2)
      stamp = now
    end
    if cost <= level then took = level - cost
    elseif cost > p1 then wait = math.huge
    else wait = (cost - level) / p2 end
    local shown = took or level
    remaining = math.max(shown, 0)
    reset = (p1 - shown) / p2
    ttl = math.ceil(reset) + 1
  elseif kind == 2 then
    if level == nil then level = 0 end
    stamp = 0
    if level + cost <= p1 then took = level + cost
    elseif cost > p1 then wait = math.huge
    else wait = 1 end
    remaining = math.max(p1 - (took or level), 0)
  else
    local ws, wend
    if p2 > 0 then
      ws = math.floor(now / p2) * p2
      wend = ws + p2
    else
      ws, wend = month_start, month_end
    end
    if level == nil or stamp == nil or ws > stamp then level, stamp = 0, ws end
    if level + cost <= p1 then took = level + cost
    elseif cost > p1 then wait = math.huge
    else wait = wend - now end
    remaining = math.max(p1 - (took or level), 0)
    reset = wend - now
    ttl = math.ceil(reset) + 60
  end
  if wait ~= nil then
    if admitted or wait > retry then retry, denied = wait, i - 1 end
    admitted = false
  end
  levels[i], stamps[i], ttls[i] = took, stamp, ttl
  out[#out + 1] = f(remaining)
  out[#out + 1] = f(reset)
  out[#out + 1] = f(stamp)
end
if admitted then
  for i = 1, n do
    local ttl = ttls[i]
    if ttl < 1 then ttl = 1 end
    redis.call('SET', KEYS[i], f(levels[i]) .. ' ' .. f(stamps[i]), 'EX', ttl)
  end
end
local answer = {admitted and 1 or 0, f(retry), denied}
for i = 1, #out do answer[#answer + 1] = out[i] end
return answer
"""

SETTLE_LUA = """
-- KEYS[i]: bucket i. ARGV[1], ARGV[2]: the calendar month's start and end;
-- then per bucket: kind, p1, p2, reserved, actual, window (the stamp reserve answered).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local month_start, month_end = tonumber(ARGV[1]), tonumber(ARGV[2])
local function f(x) return string.format('%.17g', x) end
local cur = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS do
  local a = 3 + (i - 1) * 6
  local kind, p1, p2 = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local reserved, actual = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local window = tonumber(ARGV[a + 5])
  local level, stamp
  if cur[i] then
    local l, s = string.match(cur[i], '^(%S+) (%S+)$')
    level, stamp = tonumber(l), tonumber(s)
  end
  if kind == 1 then
    local delta = actual - reserved
    if level == nil or stamp == nil then
      -- a missing bucket is full: a refund changes nothing
      if delta > 0 then level, stamp = p1, now else level = nil end
    end
    if level ~= nil then
      if now > stamp then
        level = math.min(p1, level + (now - stamp) * p2)
        stamp = now
      end
      level = math.min(p1, level - delta)
      local ttl = math.ceil((p1 - level) / p2) + 1
      if ttl < 1 then ttl = 1 end
      redis.call('SET', KEYS[i], f(level) .. ' ' .. f(stamp), 'EX', ttl)
    end
  elseif kind == 2 then
    if level ~= nil then
      level = math.max(level - reserved, 0)
      if level <= 0 then redis.call('DEL', KEYS[i])
      else redis.call('SET', KEYS[i], f(level) .. ' 0', 'EX', 3600) end
    end
  else
    local delta = actual - reserved
    local ws, wend
    if p2 > 0 then
      ws = math.floor(now / p2) * p2
      wend = ws + p2
    else
      ws, wend = month_start, month_end
    end
    if level == nil or stamp == nil then
      if delta > 0 then level, stamp = 0, ws else level = nil end
    elseif ws > stamp then
      level, stamp = 0, ws
    end
    -- a correction to a window that has ended is dropped
    if level ~= nil and math.abs(stamp - window) < 0.5 then
      level = math.max(level + delta, 0)
      local ttl = math.ceil(wend - now) + 60
      if ttl < 1 then ttl = 1 end
      redis.call('SET', KEYS[i], f(level) .. ' ' .. f(stamp), 'EX', ttl)
    end
  end
end
return 1
"""


class RedisReservation:
    """What one admission reserved in Redis (the shape of the native ``Reservation``)."""

    __slots__ = ("admitted", "costs", "denied_index", "plan", "remaining", "reset_after",
                 "retry_after", "windows")

    def __init__(self, raw: Sequence[Any], plan: Plan, costs: Sequence[float]) -> None:
        self.admitted = int(raw[0]) == 1
        self.retry_after = float(raw[1])
        denied = int(raw[2])
        self.denied_index = denied if denied >= 0 else None
        vals = raw[3:]
        self.remaining = tuple(float(vals[i]) for i in range(0, len(vals), 3))
        self.reset_after = tuple(float(vals[i]) for i in range(1, len(vals), 3))
        self.windows = tuple(float(vals[i]) for i in range(2, len(vals), 3))
        self.plan = plan
        self.costs = tuple(costs)


class _Allowed:
    """Admitted without any count (``on_error: allow``): no headers, nothing to settle."""

    __slots__ = ()
    admitted = True
    retry_after = 0.0
    denied_index = None
    remaining: tuple[float, ...] = ()
    reset_after: tuple[float, ...] = ()


ALLOWED = _Allowed()


def make_client(cfg: RedisConfig) -> Redis | RedisCluster:
    """A redis-py asyncio client with bounded timeouts and one quick reconnect.

    Requests wait at most ``timeout_s`` (``asyncio.timeout`` around each call);
    the socket itself waits longer, so that a reply arriving late (a stalled
    Redis that resumes) is still read and the reservation it made given back,
    instead of being lost on a closed connection. A timed-out call is never
    retried: the script may have run.
    """
    opts: dict[str, Any] = {
        "socket_timeout": max(2.0, 10.0 * cfg.timeout_s),
        "socket_connect_timeout": cfg.timeout_s,
        # one immediate retry on a dead pooled connection (Redis restarted); never a backoff
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError],
    }
    if cfg.cluster:
        return RedisCluster.from_url(cfg.url, **opts)
    return Redis.from_url(cfg.url, **opts)


class _Month:
    """The current UTC calendar month as (start, end) epoch seconds, cached."""

    __slots__ = ("end", "start")

    def __init__(self) -> None:
        self.start = 0.0
        self.end = 0.0

    def window(self) -> tuple[float, float]:
        now = time.time()
        if not self.start <= now < self.end:
            t = time.gmtime(now)
            self.start = float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))
            y, m = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
            self.end = float(calendar.timegm((y, m, 1, 0, 0, 0)))
        return self.start, self.end


class RedisLimiter:
    """Reserve and settle in Redis; ``local`` is the fallback (and settles its own
    reservations made while Redis was down)."""

    __slots__ = ("_answered_at", "_down", "_down_until", "_fallback_counter", "_logged_at",
                 "_month",
                 "_pending", "_probing", "_reserve", "_settle", "_unlogged", "calls", "cfg",
                 "client", "fallbacks", "local", "mode")

    is_local = False

    def __init__(self, cfg: RedisConfig, local: LocalLimiter,
                 client: Redis | RedisCluster | None = None) -> None:
        self.cfg = cfg
        self.mode = cfg.on_error
        self.local = local
        self.client = client if client is not None else make_client(cfg)
        self._reserve = self.client.register_script(RESERVE_LUA)
        self._settle = self.client.register_script(SETTLE_LUA)
        self._month = _Month()
        self._down = False
        self._down_until = 0.0
        self._answered_at = 0.0  # monotonic time of Redis's last answer
        self._probing = False
        self._pending: set[asyncio.Task[None]] = set()
        self._fallback_counter = REDIS_FALLBACKS.labels(cfg.on_error)
        self._logged_at = 0.0
        self._unlogged = 0
        self.calls = 0  # scripts sent to Redis (one per admission, one per settle)
        self.fallbacks = 0

    @property
    def healthy(self) -> bool:
        return not self._down

    async def start(self, timeout_s: float = 5.0) -> None:
        """Connect (a cluster client learns the slots) and load both scripts, so the first
        requests pay no set-up; a failure is logged and left to ``on_error``."""
        try:
            async with asyncio.timeout(timeout_s):
                if isinstance(self.client, RedisCluster):
                    await self.client.initialize()
                await self.client.script_load(RESERVE_LUA)
                await self.client.script_load(SETTLE_LUA)
        except Exception as exc:  # Redis down at start: requests follow redis.on_error
            self._failed(exc)

    # -- admission ---------------------------------------------------------------------

    async def reserve(self, plan: Plan, costs: Sequence[float]) -> Outcome:
        if self._down:
            if self._probing or time.monotonic() < self._down_until:
                return self._fall_back(plan, costs)
            self._probing = True  # this request probes; the others keep falling back
            try:
                return await self._reserve_redis(plan, costs)
            finally:
                self._probing = False
        return await self._reserve_redis(plan, costs)

    async def _reserve_redis(self, plan: Plan, costs: Sequence[float]) -> Outcome:
        ms, me = self._month.window() if plan.month else (0.0, 0.0)
        args: list[float] = [ms, me]
        for s, c in zip(plan.specs, costs, strict=True):
            args += (s.kind, s.p1, s.p2, c)
        self.calls += 1
        task = asyncio.ensure_future(self._reserve(keys=plan.keys, args=args))
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                # shield: on timeout or cancel the call may still land; _undo gives back
                # whatever it reserved, so nothing leaks.
                raw = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(functools.partial(self._undo, plan, costs))
            raise
        except Exception as exc:  # redis-py errors, OSError, TimeoutError: Redis is down
            task.add_done_callback(functools.partial(self._undo, plan, costs))
            self._failed(exc)
            return self._fall_back(plan, costs)
        self._answered_at = time.monotonic()
        if self._down:
            self._recovered()
        return RedisReservation(raw, plan, costs)

    def _undo(self, plan: Plan, costs: Sequence[float], task: asyncio.Future[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        res = RedisReservation(task.result(), plan, costs)
        if res.admitted:
            self.settle(res, [0.0] * len(costs))

    def _fall_back(self, plan: Plan, costs: Sequence[float]) -> Outcome:
        self.fallbacks += 1
        self._fallback_counter.inc()
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            log.warning("redis unreachable: %d limit decision(s) used redis.on_error=%s since "
                        "the last report", self._unlogged, self.mode)
            self._logged_at = now
            self._unlogged = 0
        if self.mode == "local":
            return self.local.reserve(plan, costs)
        if self.mode == "allow":
            return ALLOWED
        raise ServiceUnavailable(
            "limits cannot be checked: the shared limit store (Redis) is unreachable and "
            "redis.on_error is 'deny'; try again shortly", code="limits_unavailable",
            headers=[(b"retry-after", b"1")])

    def _failed(self, exc: BaseException) -> None:
        if not self._down:
            log.warning("redis at %s failed (%s); limits use redis.on_error=%s until it "
                        "answers again", self.cfg.url.rpartition("@")[2],
                        str(exc) or exc.__class__.__name__, self.mode)
        self._down = True
        self._down_until = time.monotonic() + RETRY_S

    def _recovered(self) -> None:
        self._down = False
        log.info("redis at %s answers again; limits are shared again",
                    self.cfg.url.rpartition("@")[2])

    # -- settle --------------------------------------------------------------------------

    async def peek(self, specs: Sequence[ScopeSpec]) -> list[tuple[float, float]]:
        """(remaining, seconds until reset) of each bucket now, as counted in Redis (in
        this process's table while Redis is down): a reservation of nothing."""
        out: list[tuple[float, float]] = []
        for i in range(0, len(specs), MAX_SCOPES):
            plan = Plan(specs[i:i + MAX_SCOPES])
            res = await self.reserve(plan, [0.0] * len(plan.specs))
            if len(res.remaining) != len(plan.specs):  # on_error: allow counts nothing
                out.extend((float("nan"), 0.0) for _ in plan.specs)
                continue
            if isinstance(res, Reservation):
                self.local.table.release(res)
            out.extend(zip(res.remaining, res.reset_after, strict=True))
        return out

    def settle(self, res: object, actual: Sequence[float]) -> None:
        """Correct a reservation (in the background: nobody waits for it)."""
        if isinstance(res, RedisReservation):
            if res.admitted:
                task = asyncio.get_running_loop().create_task(self._settle_redis(res, actual))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        else:
            self.local.settle(res, actual)

    async def _settle_redis(self, res: RedisReservation, actual: Sequence[float]) -> None:
        # Tried even while Redis looks down: only reservations made in Redis get here
        # (a bounded number), nobody waits for it, and a late reply to a timed-out
        # admission must still be given back once Redis answers again.
        plan = res.plan
        ms, me = self._month.window() if plan.month else (0.0, 0.0)
        args: list[float] = [ms, me]
        for s, r, a, w in zip(plan.specs, res.costs, actual, res.windows, strict=True):
            args += (s.kind, s.p1, s.p2, r, a, w)
        self.calls += 1
        sent = time.monotonic()
        try:
            # No asyncio timeout here: cancelling would close the connection with the
            # script maybe unread; the socket timeout bounds it and nobody waits.
            await self._settle(keys=plan.keys, args=args)
        except Exception as exc:  # Redis down: the correction is lost (bucket TTLs bound it)
            # Only news if Redis has not answered since: a settle stuck on a node that
            # hung (a master since failed over) fails when its socket gives up, seconds
            # after the promoted replica answered; marking Redis down then would send
            # requests to redis.on_error for a second while limits could be shared.
            if self._answered_at < sent:
                self._failed(exc)
        else:
            self._answered_at = time.monotonic()

    async def close(self) -> None:
        """Let pending settles finish (briefly), then close the connections."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=max(1.0, self.cfg.timeout_s * 4))
        try:
            await self.client.aclose()
        except Exception:  # closing a broken connection pool must not fail shutdown
            pass

