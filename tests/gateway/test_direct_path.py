"""The direct path: a whole answer from a pooled connection, with no task. What it
must share with the task path: the client leaving, a pooled connection the
upstream dropped, failures handed over to retries, and the accounting after each."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from typing import Any, cast

import orjson
import pytest
from gwtest import (
    LoopThread,
    Reader,
    chat,
    connect,
    http,
    http_json,
    minimal_yaml,
    running,
    wait_for,
)

from fastgw import metrics

KEY = "sk-direct-0001"
LIMITED = f"""
auth:
  keys:
    - {{name: solo, key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}",
       limits: {{max_inflight: 1}}}}
"""


def post(port: int, **headers: str) -> tuple[int, dict[str, str]]:
    r = http(port, "POST", "/v1/chat/completions", chat(),
             {"authorization": f"Bearer {KEY}", **headers})
    return r.status, r.headers


def test_client_leaving_a_whole_answer_aborts_the_upstream_and_frees_everything() -> None:
    with running(lambda p: minimal_yaml(p, LIMITED)) as gw:
        assert post(gw.port)[0] == 200  # a pooled connection: the next request goes direct
        closed_before = gw.mock_stats()["closed_by_peer"]
        gone_before = gw.metric(metrics.REQUESTS, "gpt-test", "mock", "499")
        s = connect(gw.port)
        data = orjson.dumps(chat())
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
                  + KEY.encode() + b"\r\nx-mock-latency-ms: 5000\r\ncontent-length: %d\r\n\r\n%s"
                  % (len(data), data))
        assert gw.app.gateway is not None
        recorder = gw.app.gateway.proxy.recorder
        assert wait_for(lambda: recorder.inflight == 1, timeout=2)
        assert post(gw.port)[0] == 429  # it holds the key's only slot
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        # Long before the upstream would have answered: the slot is free, the upstream
        # connection closed, the request counted as 499 and nothing is left in flight.
        assert wait_for(lambda: post(gw.port)[0] == 200, timeout=2)
        assert wait_for(lambda: gw.mock_stats()["closed_by_peer"] > closed_before, timeout=2)
        assert gw.metric(metrics.REQUESTS, "gpt-test", "mock", "499") - gone_before == 1
        assert recorder.inflight == 0
        for target in gw.app.gateway.state.snapshot.models["gpt-test"].targets:
            assert target.state.inflight == 0


class DropSecond(asyncio.Protocol):
    """An upstream that answers the first request of each connection, then closes the
    connection, without a byte, when a second request arrives on it."""

    connections = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass
        self.answered = False
        DropSecond.connections += 1

    def data_received(self, data: bytes) -> None:
        if not data.rstrip().endswith(b"}"):
            return  # the rest of the body is coming (the test's bodies are JSON)
        if self.answered:
            self.transport.close()
            return
        self.answered = True
        body = b'{"id":"x","object":"chat.completion","choices":[],"usage":' \
               b'{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}'
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))


def test_pooled_connection_the_upstream_drops_is_sent_again_on_a_fresh_one() -> None:
    lt = LoopThread()
    server = cast(asyncio.Server, lt.run(lt.loop.create_server(DropSecond, "127.0.0.1", 0)))
    try:
        port = server.sockets[0].getsockname()[1]
        DropSecond.connections = 0
        with running(lambda _p: minimal_yaml(port), lt=lt) as gw:
            before = gw.metric(metrics.TOKENS, "gpt-test", "output")
            answers = [http(gw.port, "POST", "/v1/chat/completions", chat()) for _ in range(4)]
            # Each request after the first found the pooled connection dropped: sent
            # again on a fresh connection, within the same attempt.
            assert [r.status for r in answers] == [200] * 4
            assert [r.headers["x-fastgw-attempts"] for r in answers] == ["1"] * 4
            assert DropSecond.connections == 4
            assert gw.metric(metrics.TOKENS, "gpt-test", "output") - before == 16
    finally:
        lt.call(server.close)
        lt.close()


def test_failed_direct_attempt_is_retried_by_the_task_and_accounted_once() -> None:
    with running(lambda p: minimal_yaml(p, LIMITED)) as gw:
        assert post(gw.port)[0] == 200
        failed_before = gw.metric(metrics.REQUESTS, "gpt-test", "mock", "502")
        status, headers = post(gw.port, **{"x-mock-fault": "500"})
        assert status == 502 and headers["x-fastgw-attempts"] == "2"
        assert gw.metric(metrics.REQUESTS, "gpt-test", "mock", "502") - failed_before == 1
        # The slot came back: the next request is admitted.
        assert post(gw.port)[0] == 200
        code, models = http_json(gw.port, "GET", "/v1/models", None,
                                 {"authorization": f"Bearer {KEY}"})
        assert code == 200 and models["data"]


def test_finished_requests_leave_no_reference_cycles_for_the_gc() -> None:
    # A cycle per request would leave every request's objects to the collector:
    # long pauses under load. Whole, streamed and failed requests alike are freed
    # by reference counting alone.
    import gc

    def request(doc: dict[str, object], extra: bytes = b"") -> bytes:
        data = orjson.dumps(doc)
        return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
                + KEY.encode() + b"\r\n" + extra + b"content-length: %d\r\n\r\n%s"
                % (len(data), data))

    with running(lambda p: minimal_yaml(p, LIMITED)) as gw:
        s = connect(gw.port)
        reader = Reader(s)
        for _ in range(20):  # warm up: caches, pools, lazily built objects
            s.sendall(request(chat()))
            assert reader.next().status == 200
        gc.collect()
        gc.disable()
        try:
            for _ in range(50):
                s.sendall(request(chat()))
                assert reader.next().status == 200
                s.sendall(request(chat(stream=True)))
                r = reader.next()
                assert r.status == 200 and r.body.endswith(b"data: [DONE]\n\n")
                s.sendall(request(chat(), b"x-mock-fault: 400\r\n"))
                assert reader.next().status == 400
                s.sendall(request(chat(), b"x-mock-fault: 500\r\n"))
                assert reader.next().status == 502
            for _ in range(50):  # one connection each: closed connections too
                assert post(gw.port)[0] == 200
            found = gc.collect()
        finally:
            gc.enable()
            s.close()
        assert found < 50, f"{found} objects in reference cycles after 250 requests"


def test_direct_path_looks_at_its_own_target_not_at_process_wide_health(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Targets of a configuration replaced by a reload may stay counted as
    # ejected process-wide; the direct path must not turn off for good then.
    from fastgw.pipeline.runner import Proxy
    from fastgw.routing.balancer import TargetState
    from fastgw.routing.health import Health

    tasks: list[str] = []
    proceed = Proxy._proceed

    def counted(self: Proxy, *args: Any) -> Any:
        tasks.append("task")
        return proceed(self, *args)

    monkeypatch.setattr(Proxy, "_proceed", counted)
    with running(lambda p: minimal_yaml(p, LIMITED)) as gw:
        assert post(gw.port)[0] == 200  # warms the pool
        monkeypatch.setattr(Health, "degraded", Health.degraded + 1)
        monkeypatch.setattr(TargetState, "cooling_until", 1e18)
        tasks.clear()
        assert [post(gw.port)[0] for _ in range(3)] == [200] * 3
        assert tasks == []
        # Its own target cooling down (after a 429): the task path picks.
        assert gw.app.gateway is not None
        target = gw.app.gateway.state.snapshot.models["gpt-test"].targets[0]
        monkeypatch.setattr(target.state, "not_before", 1e18)
        assert post(gw.port)[0] == 200  # the only target: tried anyway, by the task
        assert tasks == ["task"]
