"""Helpers for the cache tests: a real redis-server on a free port (killable,
stallable with SIGSTOP, restartable on the same port; optionally a one-node
cluster), an event loop per test, and the fallback counter."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop
from prometheus_client import REGISTRY

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh uvloop loop (the gateway's loop)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def wait_for(pred: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def fallbacks() -> float:
    """``fastgw_redis_fallbacks_total{mode="cache"}`` now."""
    return REGISTRY.get_sample_value("fastgw_redis_fallbacks_total", {"mode": "cache"}) or 0.0
