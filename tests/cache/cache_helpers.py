"""Helpers for the cache tests: a real redis-server on a free port (killable,
stallable with SIGSTOP, restartable on the same port; optionally a one-node
cluster), an event loop per test, and the fallback counter."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import redis
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


def _free_port(cluster: bool) -> int:
    """A free port (whose cluster bus port, +10000, is free too for a cluster node)."""
    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", 0))
                port = int(a.getsockname()[1])
                if cluster:
                    if port + 10000 > 65535:
                        continue
                    b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class RedisServer:
    """``redis-server`` without persistence; ``kill`` then ``start`` brings it back
    empty on the same port, ``pause``/``resume`` stall it (SIGSTOP/SIGCONT)."""

    def __init__(self, workdir: Path, cluster: bool = False) -> None:
        self.workdir = workdir
        self.cluster = cluster
        self.port = _free_port(cluster)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir)]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file",
                     str(self.workdir / f"nodes-{self.port}.conf")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(self._ping), "redis-server did not start"
        if self.cluster:
            c = self.client()
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
            assert wait_for(lambda: b"cluster_state:ok" in c.execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER", "INFO"))

    def _ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a stalled one too
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
