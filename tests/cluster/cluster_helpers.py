"""Helpers for the Redis Cluster tests: gateway and mock-upstream processes
started side by side, their metrics, and a bounded load generator that records
every request's instance, status, latency and usage."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson
import uvloop
from gwtest import http, wait_for
from redistest import free_port

T = TypeVar("T")


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _answers(port: int, path: str) -> bool:
    try:
        return http(port, "GET", path, timeout=1).status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _log_tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-2000:]


@contextmanager
def mock_upstream(*args: str) -> Iterator[int]:
    """``fastgw mock-upstream`` in its own process; yields its port."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "fastgw", "mock-upstream", "--port",
                                 str(port), *args], stdout=subprocess.DEVNULL, stderr=log)
        try:
            ok = wait_for(lambda: proc.poll() is not None or _answers(port, "/healthz"),
                          timeout=20)
            assert ok and proc.poll() is None, f"mock did not start: {_log_tail(log)}"
            yield port
        finally:
            _stop(proc)


@contextmanager
def gateways(configs: Sequence[str], workdir: Path) -> Iterator[list[int]]:
    """One ``fastgw serve`` process per configuration, started side by side; yields
    their ports once every one answers ``/healthz``; all stopped (SIGTERM, then
    SIGKILL) at the end."""
    with ExitStack() as stack:
        procs: list[tuple[subprocess.Popen[bytes], int, IO[bytes]]] = []
        for i, text in enumerate(configs):
            path = workdir / f"gateway-{i}.yaml"
            path.write_text(text)
            port = free_port()
            # A file, not a pipe: a chatty gateway never blocks on a full pipe.
            log: IO[bytes] = stack.enter_context(tempfile.TemporaryFile())
            proc = subprocess.Popen([sys.executable, "-m", "fastgw", "serve", "--config",
                                     str(path), "--port", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=log)
            stack.callback(_stop, proc)
            procs.append((proc, port, log))
        for proc, port, log in procs:
            ok = wait_for(lambda p=proc, q=port: p.poll() is not None  # type: ignore[misc]
                          or _answers(q, "/healthz"), timeout=30)
            assert ok and proc.poll() is None, f"gateway did not start: {_log_tail(log)}"
        yield [port for _, port, _ in procs]


def gateway_yaml(mock_port: int, redis_url: str, keys: Sequence[tuple[str, str]], *,
                 on_error: str = "local", timeout_s: float = 0.25, extra: str = "") -> str:
    """One model (``gpt-test``, $1,000 per million tokens either way: $0.001 a token)
    and ``keys`` as (name, limits) pairs; key ``name`` is presented as ``sk-name``."""
    key_lines = "".join(
        f'    - {{name: {name}, key_sha256: "{sha("sk-" + name)}"'
        + (f", limits: {{{limits}}}" if limits else "") + "}\n"
        for name, limits in keys)
    return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - {{name: mock, kind: openai-compatible, base_url: "http://127.0.0.1:{mock_port}/v1"}}
models:
  - name: gpt-test
    targets: [{{provider: mock, model: mock-deployment}}]
    price: {{input_per_mtok: 1000, output_per_mtok: 1000}}
auth:
  keys:
{key_lines}limits_backend: redis
redis: {{url: "{redis_url}", cluster: true, on_error: {on_error}, timeout_s: {timeout_s}}}
observability: {{access_log: off}}
{extra}"""


@dataclass(frozen=True, slots=True)
class Result:
    instance: int  # index of the gateway that answered
    key: str
    start: float  # monotonic seconds
    latency: float
    status: int  # 0: no answer (connection failed or timed out)
    headers: dict[str, str]
    body: bytes

    def usage(self) -> tuple[int, int]:
        """(prompt, completion) tokens of a 200 answer."""
        u = orjson.loads(self.body)["usage"]
        return int(u["prompt_tokens"]), int(u["completion_tokens"])


async def request(port: int, body: bytes, key: str, limit_s: float = 10.0,
                  headers: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One POST /v1/chat/completions on a fresh connection: (status, headers, body);
    status 0 when it failed or took longer than ``limit_s``."""
    try:
        async with asyncio.timeout(limit_s):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            try:
                w.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                        b"connection: close\r\nauthorization: Bearer sk-%s\r\n%s"
                        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                        % (key.encode(), headers, len(body), body))
                raw = await r.read()
            finally:
                w.close()
    except (OSError, TimeoutError):
        return 0, {}, b""
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 "):
        return 0, {}, b""
    out: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        out[k.strip().lower().decode()] = v.strip().decode()
    return int(lines[0].split()[1]), out, payload


async def load(ports: Sequence[int], body: bytes, keys: Callable[[int, int], str], *,
               per_instance: int, concurrency: int, stop: asyncio.Event | None = None,
               limit_s: float = 30.0, request_limit_s: float = 10.0,
               pause_s: float = 0.0) -> list[Result]:
    """``per_instance`` requests to each gateway, ``concurrency`` at a time on each, all
    gateways at once; ``keys(instance, n)`` names the key of the n-th request sent to
    an instance. Each worker waits ``pause_s`` between its requests. Ends early when
    ``stop`` is set or after ``limit_s``."""
    results: list[Result] = []
    deadline = time.monotonic() + limit_s

    async def worker(i: int, port: int, counter: Iterator[int]) -> None:
        for n in counter:
            if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
                return
            key = keys(i, n)
            t0 = time.monotonic()
            status, headers, payload = await request(port, body, key, request_limit_s)
            results.append(Result(i, key, t0, time.monotonic() - t0, status, headers,
                                  payload))
            if pause_s:
                await asyncio.sleep(pause_s)

    tasks = []
    for i, port in enumerate(ports):
        counter = iter(range(per_instance))  # shared by the instance's workers
        tasks += [worker(i, port, counter) for _ in range(concurrency)]
    await asyncio.gather(*tasks)
    return results


def chat_body(content: str, max_tokens: int) -> bytes:
    return orjson.dumps({"model": "gpt-test", "max_tokens": max_tokens,
                         "messages": [{"role": "user", "content": content}]})


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh uvloop loop in this thread."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
