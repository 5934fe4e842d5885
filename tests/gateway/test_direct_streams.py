"""Streams on the direct path: relayed from a pooled connection by callbacks, with
no task. Each case first warms the pool (so the stream under test goes direct,
which the test checks) and then exercises what the task path also handles: error
statuses, failures before the first content (failover), failures after it,
the no-content timer, the client leaving (with and without drain_for_usage),
a slow reader, a pooled connection the upstream dropped, and the accounting
after each (the key's only in-flight slot must come back every time)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Iterator
from typing import Any, cast

import orjson
import pytest
from gwtest import (
    Gateway,
    LoopThread,
    Reader,
    chat,
    connect,
    http,
    minimal_yaml,
    running,
    wait_for,
)

from fastgw import metrics
from fastgw.mock import MockOptions
from fastgw.pipeline.runner import Proxy

KEY = "sk-direct-stream-0001"
LIMITED = f"""
auth:
  keys:
    - {{name: solo, key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}",
       limits: {{max_inflight: 1}}}}
"""


class Paths:
    """How many streams began on the direct path, and how many tasks ran."""

    def __init__(self) -> None:
        self.direct = 0
        self.tasks = 0

    def clear(self) -> None:
        self.direct = self.tasks = 0


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[Paths]:
    seen = Paths()
    head, proceed = Proxy._direct_head, Proxy._proceed

    def counted_head(self: Proxy, ctx: Any) -> None:
        seen.direct += 1
        head(self, ctx)

    def counted_proceed(self: Proxy, *args: Any) -> Any:
        seen.tasks += 1
        return proceed(self, *args)

    # Patched before the gateway starts: the proxy binds its callbacks once.
    monkeypatch.setattr(Proxy, "_direct_head", counted_head)
    monkeypatch.setattr(Proxy, "_proceed", counted_proceed)
    yield seen


def raw_stream(faults: str = "", **headers: str) -> bytes:
    data = orjson.dumps(chat(stream=True))
    extra = b"".join(b"%s: %s\r\n" % (k.replace("_", "-").encode(), v.encode())
                     for k, v in headers.items())
    if faults:
        extra += b"x-mock-fault: " + faults.encode() + b"\r\n"
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
            + KEY.encode() + b"\r\n" + extra + b"content-length: %d\r\n\r\n%s"
            % (len(data), data))


def stream(gw: Gateway, faults: str = "", **headers: str) -> Any:
    with connect(gw.port) as s:
        s.sendall(raw_stream(faults, **headers))
        return Reader(s, limit_s=20).next()


def slot_free(gw: Gateway) -> bool:
    """The key's only in-flight slot is free (a whole request is admitted)."""
    r = http(gw.port, "POST", "/v1/chat/completions", chat(),
             {"authorization": f"Bearer {KEY}"})
    return r.status == 200


def settled(gw: Gateway) -> bool:
    assert gw.app.gateway is not None
    if gw.app.gateway.proxy.recorder.inflight:
        return False
    return all(t.state.inflight == 0
               for t in gw.app.gateway.state.snapshot.models["gpt-test"].targets)


def warm(gw: Gateway, paths: Paths) -> None:
    r = stream(gw)
    assert r.status == 200 and r.body.endswith(b"data: [DONE]\n\n")
    paths.clear()


def test_streams_from_a_pooled_connection_go_direct_intact_and_counted(paths: Paths) -> None:
    with running(lambda p: minimal_yaml(p, LIMITED)) as gw:
        warm(gw, paths)
        before = gw.metric(metrics.TOKENS, "gpt-test", "output")
        answers = [stream(gw) for _ in range(3)]
        for r in answers:
            assert r.status == 200 and r.headers["x-fastgw-attempts"] == "1"
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.body.count(b'"role":"assistant"') == 1
            assert r.body.endswith(b"data: [DONE]\n\n")
            assert b'"prompt_tokens"' not in r.body  # asked for by the gateway, cut out
        assert (paths.direct, paths.tasks) == (3, 0)
        assert gw.metric(metrics.TOKENS, "gpt-test", "output") - before > 0
        assert settled(gw) and slot_free(gw)


def test_error_status_on_a_direct_stream_is_retried_by_a_task(paths: Paths) -> None:
    with running(lambda p: minimal_yaml(p, LIMITED)) as gw:
        warm(gw, paths)
        before = gw.metric(metrics.REQUESTS, "gpt-test", "mock", "502")
        r = stream(gw, "500")
        assert r.status == 502 and r.headers["x-fastgw-attempts"] == "2"
        assert orjson.loads(r.body)["error"]["type"] == "api_error"
        assert paths.direct == 1 and paths.tasks == 1
        assert gw.metric(metrics.REQUESTS, "gpt-test", "mock", "502") - before == 1
        assert settled(gw) and slot_free(gw)
        r = stream(gw, "400")  # the upstream's own 4xx: passed on, not retried
        assert r.status == 400 and r.headers["x-fastgw-attempts"] == "1"
        assert settled(gw) and slot_free(gw)


def test_error_event_before_content_fails_over_then_ends_the_stream(paths: Paths) -> None:
    with running(lambda p: minimal_yaml(p, LIMITED)) as gw:
        warm(gw, paths)
        requests = gw.mock_stats()["requests"]
        r = stream(gw, "error-first")
        # The head went out; both attempts sent only an error event: no content was
        # passed on, the retry ran, and the stream ended with one typed error event.
        assert r.status == 200
        assert gw.mock_stats()["requests"] - requests == 2
        assert paths.direct == 1 and paths.tasks == 1
        assert r.body.count(b"event: error") == 1 and b"[DONE]" not in r.body
        assert settled(gw) and slot_free(gw)


@pytest.mark.parametrize("pooled", [True, False], ids=["direct", "task"])
def test_no_content_within_first_byte_s_fails_over(paths: Paths, pooled: bool) -> None:
    def yaml(port: int) -> str:
        return minimal_yaml(port, LIMITED, provider_extra="\n    timeouts: {first_byte_s: 0.3}")

    with running(yaml) as gw:
        if pooled:
            warm(gw, paths)
        requests = gw.mock_stats()["requests"]
        t0 = time.monotonic()
        r = stream(gw, "stall-token:30000")
        assert time.monotonic() - t0 < 20  # first_byte_s fired, long before the stall ends
        assert r.status == 200
        assert gw.mock_stats()["requests"] - requests == 2
        assert (paths.direct, paths.tasks) == ((1, 1) if pooled else (0, 1))
        last = r.body.rsplit(b"\n\n", 2)[-2]
        assert last.startswith(b"event: error\ndata: ") and b"first_byte_s" in last
        assert r.body.count(b'"role":"assistant"') == 1
        assert settled(gw) and slot_free(gw)


def test_upstream_dying_after_content_ends_a_direct_stream_with_an_error_event(
        paths: Paths) -> None:
    with running(lambda p: minimal_yaml(p, LIMITED)) as gw:
        warm(gw, paths)
        before = gw.metric(metrics.REQUESTS, "gpt-test", "mock", "502")
        r = stream(gw, "cut:3")
        assert r.status == 200
        assert b'"content":' in r.body and b"[DONE]" not in r.body
        tail = r.body.rsplit(b"\n\n", 2)[-2]
        assert tail.startswith(b"event: error\ndata: ") and b"closed the connection" in tail
        assert (paths.direct, paths.tasks) == (1, 0)
        assert gw.metric(metrics.REQUESTS, "gpt-test", "mock", "502") - before == 1
        assert settled(gw) and slot_free(gw)


def _leave_mid_stream(gw: Gateway) -> None:
    s = connect(gw.port)
    s.sendall(raw_stream(x_mock_chunks="30", x_mock_chunk_interval_ms="20"))
    s.settimeout(5)
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(65536)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


def test_client_leaving_a_direct_stream_aborts_the_upstream(paths: Paths) -> None:
    with running(lambda p: minimal_yaml(p, LIMITED)) as gw:
        warm(gw, paths)
        gone = gw.metric(metrics.REQUESTS, "gpt-test", "mock", "499")
        _leave_mid_stream(gw)
        assert wait_for(lambda: gw.mock_stats()["aborted_streams"] == 1, timeout=1.0)
        assert wait_for(lambda: settled(gw), timeout=2)
        assert (paths.direct, paths.tasks) == (1, 0)
        assert gw.metric(metrics.REQUESTS, "gpt-test", "mock", "499") - gone == 1
        assert slot_free(gw)


def test_client_leaving_a_direct_stream_with_drain_for_usage_counts_its_tokens(
        paths: Paths) -> None:
    def yaml(port: int) -> str:
        return minimal_yaml(port, LIMITED).replace(
            "  - name: same-name", "    on_disconnect: drain_for_usage\n  - name: same-name")

    with running(yaml, mock=MockOptions(chunks=30)) as gw:
        warm(gw, paths)
        before = gw.metric(metrics.TOKENS, "gpt-test", "output")
        gone = gw.metric(metrics.REQUESTS, "gpt-test", "mock", "499")
        _leave_mid_stream(gw)
        # The upstream stream runs to its end; its 30 completion tokens are counted,
        # the request is a 499, and the slot is held until the drain ends.
        assert wait_for(lambda: gw.metric(metrics.TOKENS, "gpt-test", "output") - before == 30,
                        timeout=3)
        assert wait_for(lambda: settled(gw), timeout=2)
        assert gw.mock_stats()["aborted_streams"] == 0
        assert (paths.direct, paths.tasks) == (1, 0)
        assert gw.metric(metrics.REQUESTS, "gpt-test", "mock", "499") - gone == 1
        assert slot_free(gw)


def test_slow_reader_of_a_direct_stream_pauses_the_upstream(paths: Paths) -> None:
    chunks = 10000  # about 2.5 MB of SSE
    with running(lambda p: minimal_yaml(p, LIMITED)) as gw:
        warm(gw, paths)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", gw.port))
        with s:
            def shrink_and_measure() -> tuple[int, bool]:
                total, paused = 0, False
                for conn in gw.app.server_state.connections:
                    assert conn.transport is not None and conn.flow is not None
                    sock = conn.transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
                    total += conn.transport.get_write_buffer_size()
                    paused = paused or conn.flow.write_paused
                return total, paused

            assert wait_for(lambda: len(gw.app.server_state.connections) == 1)
            gw.lt.call(shrink_and_measure)
            s.sendall(raw_stream(x_mock_chunks=str(chunks)))
            assert wait_for(lambda: gw.lt.call(shrink_and_measure)[1], timeout=5)
            peak = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.5:
                peak = max(peak, gw.lt.call(shrink_and_measure)[0])
                time.sleep(0.02)
            assert peak < 512 * 1024, peak
            r = Reader(s, limit_s=20).next()
        assert r.status == 200 and r.body.endswith(b"data: [DONE]\n\n")
        assert r.body.count(b'"delta":{"content":') == chunks
        assert (paths.direct, paths.tasks) == (1, 0)
        assert settled(gw) and slot_free(gw)


class DropSecondStream(asyncio.Protocol):
    """An upstream that streams one answer per connection, then closes the
    connection, without a byte, when a second request arrives on it."""

    connections = 0
    EVENTS = (b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
              b'"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}\n\n'
              b'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":'
              b'{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n'
              b"data: [DONE]\n\n")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.answered = False
        DropSecondStream.connections += 1

    def data_received(self, data: bytes) -> None:
        if not data.rstrip().endswith(b"}"):
            return  # the rest of the body is coming
        if self.answered:
            self.transport.close()
            return
        self.answered = True
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                             % (len(self.EVENTS), self.EVENTS))


def test_pooled_connection_dropped_under_a_direct_stream_is_sent_again(paths: Paths) -> None:
    lt = LoopThread()
    server = cast(asyncio.Server, lt.run(lt.loop.create_server(DropSecondStream, "127.0.0.1",
                                                               0)))
    try:
        port = server.sockets[0].getsockname()[1]
        DropSecondStream.connections = 0
        with running(lambda _p: minimal_yaml(port, LIMITED), lt=lt) as gw:
            before = gw.metric(metrics.TOKENS, "gpt-test", "output")
            answers = [stream(gw) for _ in range(4)]
            assert [r.status for r in answers] == [200] * 4
            assert [r.headers["x-fastgw-attempts"] for r in answers] == ["1"] * 4
            assert all(r.body.endswith(b"data: [DONE]\n\n") for r in answers)
            assert DropSecondStream.connections == 4
            # Streams 2-4 began direct; each found its connection dropped and a
            # task sent it again on a fresh one, within the same attempt.
            assert (paths.direct, paths.tasks) == (3, 4)
            assert gw.metric(metrics.TOKENS, "gpt-test", "output") - before == 16
            assert settled(gw)
    finally:
        lt.call(server.close)
        lt.close()


def test_client_leaving_a_direct_stream_before_its_head_aborts_the_upstream(
        paths: Paths) -> None:
    with running(lambda p: minimal_yaml(p, LIMITED)) as gw:
        warm(gw, paths)
        closed_before = gw.mock_stats()["closed_by_peer"]
        gone = gw.metric(metrics.REQUESTS, "gpt-test", "mock", "499")
        s = connect(gw.port)
        s.sendall(raw_stream("stall:5000"))
        assert gw.app.gateway is not None
        recorder = gw.app.gateway.proxy.recorder
        assert wait_for(lambda: recorder.inflight == 1, timeout=2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        # Long before the upstream would have answered: its connection closed, the
        # request counted as 499, nothing left in flight, the slot free.
        assert wait_for(lambda: gw.mock_stats()["closed_by_peer"] > closed_before, timeout=2)
        assert wait_for(lambda: settled(gw), timeout=2)
        # Begun direct (no task ran), ended by _on_lost: no head ever came.
        assert (paths.direct, paths.tasks) == (0, 0)
        assert gw.metric(metrics.REQUESTS, "gpt-test", "mock", "499") - gone == 1
        assert slot_free(gw)
