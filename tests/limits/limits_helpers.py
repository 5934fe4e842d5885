"""Helpers for limit tests: a real redis-server on a free port (stoppable and
restartable on the same port), gateway processes, and a configuration with a
cheap model, a pricey model and a second provider."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from gwtest import http, wait_for

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

KEY_A = "sk-limits-a-0001"
KEY_B = "sk-limits-b-0002"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gw_yaml(mock_port: int, extra: str = "", server: str = "") -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0{server}}}
providers:
  - {{name: mock, kind: openai-compatible, base_url: "http://127.0.0.1:{mock_port}/v1",
     api_key: sk-provider-secret}}
  - {{name: other, kind: openai-compatible, base_url: "http://127.0.0.1:{mock_port}/v1"}}
models:
  - name: gpt-test
    targets: [{{provider: mock, model: mock-deployment}}]
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
  - name: pricey
    targets: [{{provider: mock, model: pricey-dep}}]
    price: {{input_per_mtok: 1000000, output_per_mtok: 1000000}}
  - name: elsewhere
    targets: [{{provider: other, model: elsewhere-dep}}]
observability: {{access_log: off}}
{extra}"""


def keys_yaml(a_limits: str = "", b_limits: str = "", a_extra: str = "",
              b_extra: str = "") -> str:
    def limits(spec: str) -> str:
        return f", limits: {{{spec}}}" if spec else ""

    return f"""auth:
  keys:
    - {{name: key-a, key_sha256: "{sha(KEY_A)}"{limits(a_limits)}{a_extra}}}
    - {{name: key-b, key_sha256: "{sha(KEY_B)}"{limits(b_limits)}{b_extra}}}
"""


def metric(port: int, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    body = http(port, "GET", "/metrics").body.decode()
    total = 0.0
    for line in body.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", 0))
                port = int(a.getsockname()[1])
                if port + 10000 > 65535:
                    continue
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    """``redis-server --port P --save '' --appendonly no``; ``stop()`` then ``start()``
    brings it back on the same port (empty, as after a crash without persistence)."""

    def __init__(self, port: int | None = None, cluster: bool = False,
                 workdir: Path | None = None) -> None:
        self.port = port or (_cluster_port() if cluster else free_port())
        self.cluster = cluster
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no"]
        if self.cluster:
            assert self.workdir is not None
            args += ["--cluster-enabled", "yes", "--cluster-config-file",
                     str(self.workdir / f"nodes-{self.port}.conf"), "--dir", str(self.workdir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ok = wait_for(self._ping, timeout=10, interval=0.02)
        assert ok, "redis-server did not start"
        if self.cluster:
            c = self.client()
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
            assert wait_for(lambda: b"cluster_state:ok" in c.execute_command(  # type: ignore[no-untyped-call]
                "CLUSTER", "INFO"), timeout=10)

    def _ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stored_keys(self) -> list[str]:
        return sorted(k.decode() if isinstance(k, bytes) else str(k)
                      for k in self.client().keys("*"))

    def evalsha_calls(self) -> int:
        stats = self.client().info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@contextmanager
def redis_server(**kwargs: object) -> Iterator[RedisServer]:
    server = RedisServer(**kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def gateway_process(config: Path, port: int, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    # A file, not a pipe: a chatty gateway never blocks on a full pipe.
    with tempfile.TemporaryFile() as log:
        yield from _run_gateway(config, port, args, log)


def _run_gateway(config: Path, port: int, args: tuple[str, ...],
                 log: Any) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "fastgw", "serve", "--config", str(config),
                             "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        ok = wait_for(lambda: _healthy(port) or proc.poll() is not None, timeout=20)
        if not ok or proc.poll() is not None:
            proc.kill()
            proc.wait(timeout=5)
            log.seek(0)
            raise AssertionError(f"gateway did not start: {log.read().decode()[-2000:]}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _healthy(port: int) -> bool:
    try:
        return http(port, "GET", "/healthz", timeout=1).status == 200
    except OSError:
        return False

