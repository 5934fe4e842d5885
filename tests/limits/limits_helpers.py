"""Helpers for limit tests: a real redis-server on a free port (``redistest``:
stoppable and restartable on the same port), gateway processes, and a
configuration with a cheap model, a pricey model and a second provider."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gwtest import http, metric, wait_for
from redistest import RedisServer, free_port, redis_server

__all__ = ["KEY_A", "KEY_B", "RedisServer", "bearer", "free_port", "gateway_process",
           "gw_yaml", "keys_yaml", "metric", "redis_server", "sha"]

KEY_A = "sk-limits-a-0001"
KEY_B = "sk-limits-b-0002"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


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

