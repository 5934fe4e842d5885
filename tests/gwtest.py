"""Shared test harness: a real gateway and a real mock upstream on 127.0.0.1.

Both run on one uvloop event loop in a background thread, so tests stay plain
sync functions and use real clients (the OpenAI SDK, raw sockets, curl-like
helpers) against real sockets on free ports.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import uvloop

from fastgw.app import App
from fastgw.config import parse_config
from fastgw.mock import MockOptions, start_mock

T = TypeVar("T")


class LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.closers: list[Callable[[], object]] = []  # run on the loop first by close()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        async def wrap() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrap() -> T:
            return fn()

        return self.run(wrap())

    def close(self) -> None:
        async def cancel_all() -> None:
            for close in self.closers:
                close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Mock:
    server: asyncio.base_events.Server | Any
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@dataclass
class Gateway:
    app: App
    port: int
    lt: LoopThread
    mocks: list[Mock] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mock(self) -> Mock:
        return self.mocks[0]

    def reconfigure(self, text: str) -> None:
        """Swap in a new configuration, as a reload does (state of unchanged targets kept)."""
        from fastgw.pipeline.snapshot import build_snapshot

        cfg = parse_config(text)
        app = self.app

        def swap() -> None:
            assert app.gateway is not None
            state = app.gateway.state
            state.snapshot = build_snapshot(cfg, app.client, 0, app.loop,
                                            previous=state.snapshot)

        self.lt.call(swap)

    def metric(self, metric: Any, *labels: str) -> float:
        """A metric's value in this process, after the recorder flushed."""
        app = self.app

        def read() -> float:
            assert app.gateway is not None
            app.gateway.proxy.recorder.flush()
            child = metric.labels(*labels) if labels else metric
            return float(child._value.get())

        return self.lt.call(read)

    def mock_stats(self, i: int = 0) -> dict[str, int]:
        stats: dict[str, int] = http_json(self.mocks[i].port, "GET", "/mock/stats")[1]
        return stats


def minimal_yaml(mock_port: int, extra: str = "", provider_extra: str = "",
                 server: str = "") -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0{server}}}
providers:
  - name: mock
    kind: openai-compatible
    base_url: http://127.0.0.1:{mock_port}/v1
    api_key: sk-provider-secret{provider_extra}
models:
  - name: gpt-test
    targets: [{{provider: mock, model: mock-deployment}}]
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
  - name: same-name
    targets: [{{provider: mock, model: same-name}}]
observability: {{access_log: off}}
{extra}"""


@contextmanager
def running(yaml_for: Callable[[int], str] | None = None, *,
            mock: MockOptions | None = None, mocks: int = 1,
            yaml_for_ports: Callable[[list[int]], str] | None = None,
            lt: LoopThread | None = None) -> Iterator[Gateway]:
    """Start ``mocks`` mock upstreams and a gateway configured by ``yaml_for(mock_port)``
    (or ``yaml_for_ports([port, ...])`` when there are several). With ``lt`` they run on
    that loop thread (which the caller closes), so the test's own servers share it."""
    own_loop = lt is None
    lt = lt or LoopThread()
    started: list[Mock] = []
    app: App | None = None
    try:
        for _ in range(mocks):
            srv = lt.run(start_mock(mock or MockOptions(), "127.0.0.1", 0))
            started.append(Mock(srv, srv.sockets[0].getsockname()[1]))
        if yaml_for_ports is not None:
            text = yaml_for_ports([m.port for m in started])
        else:
            text = (yaml_for or minimal_yaml)(started[0].port)
        cfg = parse_config(text)

        async def boot() -> App:
            a = App(cfg)
            await a.start()
            return a

        app = lt.run(boot())
        yield Gateway(app, app.port, lt, started)
    finally:
        if app is not None:
            a = app

            async def stop() -> None:
                a.server_state.draining = True
                await a.stop(drain_timeout_s=2.0)

            lt.run(stop(), timeout=20)
        for m in started:
            lt.call(m.server.close)
        if own_loop:
            lt.close()


# -- raw HTTP helpers ------------------------------------------------------------------


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_until_closed(s: socket.socket, limit_s: float = 5.0) -> bytes:
    """Read until the peer closes (bounded by ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    out = b""
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        out += data
    return out


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes = b""


class Reader:
    """Reads successive HTTP/1.1 responses from one socket (pipelining, keep-alive)."""

    def __init__(self, s: socket.socket, limit_s: float = 5.0) -> None:
        self.s = s
        self.limit_s = limit_s
        self.buf = b""

    def _more(self, deadline: float) -> None:
        self.s.settimeout(max(0.01, deadline - time.monotonic()))
        data = self.s.recv(65536)
        if not data:
            raise ConnectionError("closed before the response was complete")
        self.buf += data

    def next(self) -> Response:
        deadline = time.monotonic() + self.limit_s
        while b"\r\n\r\n" not in self.buf:
            self._more(deadline)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower().decode()] = v.strip().decode()
        if status < 200:
            return Response(status, headers, b"", head)
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                self._more(deadline)
            body, self.buf = self.buf[:n], self.buf[n:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    self._more(deadline)
                size_line, _, self.buf = self.buf.partition(b"\r\n")
                size = int(size_line, 16)
                while len(self.buf) < size + 2:
                    self._more(deadline)
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
                if size == 0:
                    break
        else:
            body = self.buf + recv_until_closed(self.s, max(0.01, deadline - time.monotonic()))
            self.buf = b""
        return Response(status, headers, body, head)


def read_response(s: socket.socket, limit_s: float = 5.0) -> Response:
    return Reader(s, limit_s).next()


def metric(port: int, name: str, **labels: str) -> float:
    """Sum of a metric's samples, scraped from the gateway at ``port``, whose labels
    include ``labels``."""
    body = http(port, "GET", "/metrics").body.decode()
    total = 0.0
    for line in body.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def http(port: int, method: str, path: str, body: bytes | dict[str, Any] | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10.0) -> Response:
    """One request on a fresh connection."""
    data = orjson.dumps(body) if isinstance(body, dict) else (body or b"")
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", "connection: close"]
    if data or method == "POST":
        lines.append(f"content-length: {len(data)}")
        lines.append("content-type: application/json")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    with connect(port, timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        return read_response(s, timeout)


def http_json(port: int, method: str, path: str, body: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    r = http(port, method, path, body, headers)
    return r.status, orjson.loads(r.body) if r.body else None


def chat(model: str = "gpt-test", stream: bool = False, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": model,
                           "messages": [{"role": "user", "content": "hello there"}]}
    if stream:
        doc["stream"] = True
    doc.update(extra)
    return doc


def wait_for(pred: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()
