"""Streams: byte-for-byte relay, timing, disconnects and upstream failures."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import openai
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

from fastgw.mock import MockOptions

ROLE = (b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,'
        b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n')
CONTENT = [b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,'
           b'"delta":{"content":"w%d "},"finish_reason":null}]}\n\n' % i for i in range(20)]
FINISH = (b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,'
          b'"delta":{},"finish_reason":"stop"}]}\n\n')
USAGE = (b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],'
         b'"usage":{"prompt_tokens":11,"completion_tokens":20,"total_tokens":31}}\n\n')
DONE = b"data: [DONE]\n\n"
STREAM = ROLE + b"".join(CONTENT) + FINISH + USAGE + DONE


class FixedSSE:
    """An upstream that streams STREAM in awkward TCP pieces (events split anywhere)."""

    def __init__(self, lt: LoopThread, piece: int = 7) -> None:
        self.lt = lt
        self.piece = piece
        self.bodies: list[bytes] = []
        self.server = lt.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.bodies.append(await reader.readexactly(length))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                for i in range(0, len(STREAM), self.piece):
                    part = STREAM[i:i + self.piece]
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
def fixed() -> Iterator[tuple[Gateway, FixedSSE]]:
    """A gateway whose provider is a FixedSSE upstream (on its own loop thread)."""
    lt = LoopThread()
    sse = FixedSSE(lt)
    try:
        with running(lambda _mock_port: minimal_yaml(sse.port)) as gw:
            yield gw, sse
    finally:
        lt.call(sse.server.close)
        lt.close()


def _stream(gw: Gateway, body: dict[str, object]) -> tuple[bytes, dict[str, str]]:
    with connect(gw.port) as s:
        data = orjson.dumps(body)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
                  % (len(data), data))
        r = Reader(s).next()
    return r.body, r.headers


def test_stream_bytes_are_identical_to_upstream_when_client_asks_usage(
        fixed: tuple[Gateway, FixedSSE]) -> None:
    gw, _ = fixed
    body, headers = _stream(gw, chat(stream=True, stream_options={"include_usage": True}))
    assert body == STREAM
    assert headers["content-type"] == "text/event-stream"
    assert headers["transfer-encoding"] == "chunked"


def test_stream_drops_only_the_usage_chunk_it_asked_for(
        fixed: tuple[Gateway, FixedSSE]) -> None:
    gw, sse = fixed
    body, _ = _stream(gw, chat(stream=True))
    assert body == STREAM.replace(USAGE, b"")
    sent = orjson.loads(sse.bodies[-1])
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "mock-deployment"


@pytest.mark.parametrize("options", [{"include_usage": False}, {}, None,
                                     {"include_usage": False, "other": 1}])
def test_stream_options_without_usage_keep_the_deployment_s_model(
        fixed: tuple[Gateway, FixedSSE], options: dict[str, object] | None) -> None:
    """A stream whose stream_options do not ask for usage: the gateway asks for it
    by re-encoding the body, and the upstream still gets the deployment's model
    (not the name the client asked for), with the client's other options."""
    gw, sse = fixed
    body, _ = _stream(gw, chat(stream=True, stream_options=options))
    assert body == STREAM.replace(USAGE, b"")
    sent = orjson.loads(sse.bodies[-1])
    assert sent["model"] == "mock-deployment"
    assert sent["stream_options"] == {**(options or {}), "include_usage": True}


def test_stream_usage_is_recorded_even_when_dropped(fixed: tuple[Gateway, FixedSSE]) -> None:
    gw, _ = fixed
    from fastgw import metrics

    before = gw.metric(metrics.TOKENS, "gpt-test", "output")
    _stream(gw, chat(stream=True))
    after = gw.metric(metrics.TOKENS, "gpt-test", "output")
    assert after - before == 20


def test_first_event_arrives_before_upstream_finishes() -> None:
    with running(mock=MockOptions(chunks=10, chunk_interval_ms=150)) as gw, \
            connect(gw.port) as s:
        data = orjson.dumps(chat(stream=True))
        t0 = time.monotonic()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(data), data))
        s.settimeout(5)
        got = b""
        while b"data: " not in got:
            got += s.recv(65536)
        first = time.monotonic() - t0
        rest = Reader(s)
        rest.buf = got.split(b"\r\n\r\n", 1)[1]
        # The stream takes ~1.5 s upstream; the first event must not wait for it.
        assert first < 0.6
        while b"0\r\n\r\n" not in rest.buf:
            rest.buf += s.recv(65536)
        assert time.monotonic() - t0 > 1.0


def test_client_disconnect_closes_upstream_before_the_stream_ends() -> None:
    # A 30 s stream: its upstream request is aborted long before it would end.
    with running(mock=MockOptions(chunks=600, chunk_interval_ms=50)) as gw:
        s = connect(gw.port)
        data = orjson.dumps(chat(stream=True))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(data), data))
        s.settimeout(5)
        got = b""
        while got.count(b"data: ") < 3:
            got += s.recv(65536)
        assert gw.mock_stats()["aborted_streams"] == 0
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        assert wait_for(lambda: gw.mock_stats()["aborted_streams"] == 1, timeout=15)


def test_upstream_dying_mid_stream_ends_with_error_event() -> None:
    with running() as gw:
        with openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0,
                           timeout=10) as client:
            stream = client.chat.completions.create(
                model="gpt-test", stream=True, messages=[{"role": "user", "content": "hi"}],
                extra_headers={"x-mock-fault": "cut:3"})
            got: list[object] = []
            with pytest.raises(openai.APIError) as info:
                got.extend(stream)
        assert got  # some content went through before the cut
        assert "closed the connection" in info.value.message


def test_mid_stream_error_event_is_raw_sse_error_without_done() -> None:
    with running() as gw:
        with connect(gw.port) as s:
            data = orjson.dumps(chat(stream=True))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                      b"x-mock-fault: cut:2\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data))
            r = Reader(s).next()
        assert r.status == 200
        assert b"[DONE]" not in r.body
        tail = r.body.rsplit(b"\n\n", 2)[-2]
        assert tail.startswith(b"event: error\ndata: ")
        err = orjson.loads(tail.split(b"data: ", 1)[1])["error"]
        assert err["type"] == "api_error"


class StallAfterContent:
    """An upstream that streams the role and two content events, then goes silent."""

    def __init__(self, lt: LoopThread) -> None:
        self.server = lt.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            for event in (ROLE, CONTENT[0], CONTENT[1]):
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(30)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()


def test_stream_idle_after_content_ends_with_error_event() -> None:
    lt = LoopThread()
    up = StallAfterContent(lt)
    yaml = lambda _p: minimal_yaml(  # noqa: E731
        up.port, provider_extra="\n    timeouts: {idle_s: 0.3}")
    try:
        with running(yaml) as gw, connect(gw.port) as s:
            data = orjson.dumps(chat(stream=True))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                      b"content-length: %d\r\n\r\n%s" % (len(data), data))
            t0 = time.monotonic()
            r = Reader(s, limit_s=20).next()
            assert time.monotonic() - t0 < 20  # idle_s fired, long before the 30 s stall ends
            assert r.status == 200
            assert r.body.startswith(ROLE + CONTENT[0] + CONTENT[1])
            assert r.body.endswith(b"\n\n") and b"event: error" in r.body
            assert b"idle_s" in r.body
            assert b"[DONE]" not in r.body
    finally:
        lt.call(up.server.close)
        lt.close()


def test_stream_stalling_before_first_content_fails_over_then_ends_with_error() -> None:
    yaml = lambda p: minimal_yaml(p, provider_extra="\n    timeouts: {idle_s: 0.3}")  # noqa: E731
    with running(yaml) as gw:
        r = http(gw.port, "POST", "/v1/chat/completions", chat(stream=True),
                 headers={"x-mock-fault": "slow:2000"})
        # The head and the role event went out at once; no content came within
        # idle_s, so the retry ran (before the commit point), and when it stalled
        # too the stream ended with a typed timeout event and no [DONE].
        assert r.status == 200
        assert gw.mock_stats()["requests"] == 2
        assert r.body.count(b'"role":"assistant"') == 1
        last = r.body.rsplit(b"\n\n", 2)[-2]
        assert last.startswith(b"event: error\ndata: ")
        assert b"idle_s" in last and b"timeout_error" in last
        assert b"[DONE]" not in r.body


class RoleThenError:
    """An upstream that sends the role event, then an in-band error: no content."""

    def __init__(self, lt: LoopThread) -> None:
        self.requests = 0
        self.server = lt.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                self.requests += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                writer.write(b"%x\r\n%s\r\n" % (len(ROLE), ROLE))
                await writer.drain()
                await asyncio.sleep(0.05)
                err = b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n'
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(err), err))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()


def test_failover_before_first_content_resumes_the_stream_seamlessly() -> None:
    lt = LoopThread()
    bad = RoleThenError(lt)

    def yaml(mock_port: int) -> str:
        return f"""
providers:
  - {{name: bad, kind: openai-compatible, base_url: 'http://127.0.0.1:{bad.port}/v1'}}
  - {{name: good, kind: openai-compatible, base_url: 'http://127.0.0.1:{mock_port}/v1'}}
models:
  - name: m
    balance: round-robin
    targets: [{{provider: bad, model: x}}, {{provider: good, model: y}}]
observability: {{access_log: off}}
"""

    try:
        with running(yaml, lt=lt) as gw:
            bodies = [http(gw.port, "POST", "/v1/chat/completions", chat("m", stream=True))
                      for _ in range(2)]
            for r in bodies:
                assert r.status == 200
                assert r.body.endswith(b"data: [DONE]\n\n")
                assert b"overloaded" not in r.body and b"event: error" not in r.body
                # One role event, then the content of the target that answered.
                assert r.body.count(b'"role":"assistant"') == 1
                assert b'"content":"This"' in r.body
            assert bad.requests == 1  # round robin: one of the two went there first
    finally:
        lt.call(bad.server.close)
        lt.close()


def test_drain_for_usage_reads_the_rest_only_to_count_tokens() -> None:
    def yaml(port: int) -> str:
        return minimal_yaml(port).replace(
            "  - name: same-name", "    on_disconnect: drain_for_usage\n  - name: same-name")

    from fastgw import metrics

    with running(yaml, mock=MockOptions(chunks=30, chunk_interval_ms=20)) as gw:
        before = gw.metric(metrics.TOKENS, "gpt-test", "output")
        s = connect(gw.port)
        data = orjson.dumps(chat(stream=True))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(data), data))
        s.settimeout(5)
        got = b""
        while got.count(b"data: ") < 3:
            got += s.recv(65536)
        s.close()
        # The upstream stream runs to its end; its 30 completion tokens are counted.
        assert wait_for(lambda: gw.metric(metrics.TOKENS, "gpt-test", "output") - before == 30,
                        timeout=3)
        assert gw.mock_stats()["aborted_streams"] == 0


@pytest.mark.parametrize("pooled", [False, True], ids=["task", "direct"])
def test_a_client_closing_normally_mid_stream_aborts_the_upstream_at_once(pooled: bool) -> None:
    # close() sends a FIN, as every HTTP client library does on cancel: the
    # upstream stream (an event every 20 s) is aborted at once, not at the next
    # failed write.
    with running(mock=MockOptions(chunks=20, chunk_interval_ms=20000)) as gw:
        if pooled:  # an idle pooled connection: the stream goes the direct way
            assert http(gw.port, "POST", "/v1/chat/completions", chat()).status == 200
        s = connect(gw.port)
        data = orjson.dumps(chat(stream=True))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"content-length: %d\r\n\r\n%s" % (len(data), data))
        s.settimeout(5)
        got = b""
        while b"data: " not in got:
            got += s.recv(65536)
        s.close()
        # The next event would come 20 s later; the abort does not wait for it.
        assert wait_for(lambda: gw.mock_stats()["aborted_streams"] == 1, timeout=15)
