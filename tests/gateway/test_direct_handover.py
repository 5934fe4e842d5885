"""The hand-over from the direct path to a task, driven step by step on in-memory
transports: a client that leaves after the direct exchange failed but before the
task that takes over has run must still be accounted for (and nothing leaks)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import orjson
import uvloop

from fastgw.app import App
from fastgw.config import parse_config
from fastgw.pipeline import headers as hdr
from fastgw.server.protocol import HttpProtocol, ServerSettings
from fastgw.upstream.connection import UpstreamConnection

KEY = "sk-handover-0001"
CONFIG = f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - {{name: mock, kind: openai-compatible, base_url: "http://127.0.0.1:1/v1"}}
models:
  - name: gpt-test
    targets: [{{provider: mock, model: dep}}]
auth:
  keys:
    - {{name: solo, key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}",
       limits: {{max_inflight: 1}}}}
observability: {{access_log: "off"}}
"""


class Transport:
    """In memory: writes are kept; closing is recorded."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True


REQUEST = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
RAW = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + KEY.encode()
       + b"\r\ncontent-length: %d\r\n\r\n%s" % (len(REQUEST), REQUEST))
ERROR_500 = (b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
             b'content-length: 27\r\n\r\n{"error":{"message":"bad"}}')


def run_case(fail: str) -> dict[str, Any]:
    """One request on the direct path whose exchange fails (``fail``), then the
    client leaves before the loop runs the task that took over."""

    async def go() -> dict[str, Any]:
        app = App(parse_config(CONFIG))
        await app.start()
        try:
            assert app.gateway is not None
            loop = asyncio.get_running_loop()
            proxy = app.gateway.proxy
            snapshot = app.gateway.state.snapshot
            target = snapshot.models["gpt-test"].targets[0]
            pool = target.provider.pool
            upstream = Transport()
            conn = UpstreamConnection(loop, pool.name, pool.generation)
            conn.connection_made(upstream)  # type: ignore[arg-type]
            conn.exchanges = 1  # a pooled connection: a failure before any byte is stale
            pool.total += 1
            pool._keep(conn)
            client = Transport()
            settings = ServerSettings(request_id=hdr.request_id_for)
            proto = HttpProtocol(app.gateway, settings, app.server_state, loop)
            proto.connection_made(client)  # type: ignore[arg-type]

            proto.data_received(RAW)  # the direct path: sent upstream, no task
            assert upstream.out and proxy.recorder.inflight == 1
            assert target.state.inflight == 1
            if fail == "status":
                conn.data_received(ERROR_500)  # answered 500: handed to a task
            else:
                conn.connection_lost(None)  # dropped before answering: handed to a task
            assert proxy.recorder.inflight == 1  # the task has not run yet
            proto.connection_lost(None)  # ...and the client leaves now
            for _ in range(5):
                await asyncio.sleep(0)
            out = {
                "inflight": proxy.recorder.inflight,
                "budget": snapshot.retry_budget.requests,
                "target_inflight": target.state.inflight,
                "pool_total": pool.total,
                "client_out": b"".join(client.out),
                "upstream_requests": len(upstream.out),
            }
            # The key's only in-flight slot is free again: a new request is admitted.
            conn2 = UpstreamConnection(loop, pool.name, pool.generation)
            up2 = Transport()
            conn2.connection_made(up2)  # type: ignore[arg-type]
            pool.total += 1
            pool._keep(conn2)
            client2 = Transport()
            proto2 = HttpProtocol(app.gateway, settings, app.server_state, loop)
            proto2.connection_made(client2)  # type: ignore[arg-type]
            proto2.data_received(RAW)
            out["second_sent"] = bool(up2.out)
            out["second_answer"] = b"".join(client2.out)
            proto2.connection_lost(None)
            for p in (proto, proto2):
                app.server_state.connections.discard(p)
            return out
        finally:
            await app.stop(drain_timeout_s=0.1)

    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(go())
    finally:
        loop.close()


def test_client_leaving_before_the_task_runs_after_an_error_status() -> None:
    out = run_case("status")
    assert out["client_out"] == b""  # nobody to answer
    assert out["inflight"] == 0 and out["budget"] == 0 and out["target_inflight"] == 0
    assert out["second_sent"], out["second_answer"][:200]  # the in-flight slot came back


def test_client_leaving_before_the_task_runs_after_a_dropped_connection() -> None:
    out = run_case("dropped")
    assert out["client_out"] == b""
    assert out["inflight"] == 0 and out["budget"] == 0 and out["target_inflight"] == 0
    assert out["upstream_requests"] == 1  # never sent again for a client that left
    assert out["second_sent"], out["second_answer"][:200]
