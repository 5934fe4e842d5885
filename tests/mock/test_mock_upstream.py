"""The mock upstream, over real sockets: official SDKs as clients, raw sockets for faults."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import anthropic
import openai
import orjson
import pytest
from mock_helpers import (
    CHAT,
    MockThread,
    RawResponse,
    connect,
    http,
    parse_response,
    read_all,
    request_bytes,
    sse_data,
    wait_for,
)

from fastgw.mock import MockOptions, add_arguments, options_from_args
from fastgw.mock.upstream import MockProtocol

TEXT8 = "This is a mock response from fastgw mock-upstream."


def oai(m: MockThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=m.base + "/v1", api_key="sk-test", max_retries=0, timeout=10)


def claude(m: MockThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=m.base, api_key="sk-ant", max_retries=0, timeout=10)


# -- OpenAI SDK ------------------------------------------------------------------------


def test_chat_completion_echoes_model_and_counts_usage(mock: MockThread) -> None:
    with oai(mock) as client:
        r = client.chat.completions.create(
            model="gpt-x", messages=[{"role": "user", "content": "Hello, mock!"}]
        )
    assert r.model == "gpt-x"
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.choices[0].message.content == TEXT8
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_chat_ids_differ_between_requests(mock: MockThread) -> None:
    with oai(mock) as client:
        ids = {
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}]
            ).id
            for _ in range(3)
        }
    assert len(ids) == 3


def test_chat_stream_with_usage_matches_non_stream(mock: MockThread) -> None:
    messages: Any = [{"role": "user", "content": "Tell me something " * 10}]
    with oai(mock) as client:
        plain = client.chat.completions.create(model="gpt-x", messages=messages)
        chunks = list(
            client.chat.completions.create(
                model="gpt-x",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 8
    assert "".join(c.choices[0].delta.content or "" for c in content) == TEXT8
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and plain.usage is not None
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.model == "gpt-x" for c in chunks)


def test_chat_stream_without_include_usage_has_no_usage_chunk(mock: MockThread) -> None:
    resp = http(mock.port, b"POST", b"/v1/chat/completions", {**CHAT, "stream": True})
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["transfer-encoding"] == "chunked"
    data = sse_data(resp.chunks)
    # role + 8 content + finish + [DONE], one HTTP chunk per SSE event
    assert len(resp.chunks) == 11
    assert data[-1] == b"[DONE]"
    events = [orjson.loads(d) for d in data[:-1]]
    assert all(e["choices"] for e in events)
    assert all("usage" not in e for e in events)


def test_chunks_option_and_header_set_the_stream_length(mock_factory: Any) -> None:
    m = mock_factory(chunks=3)
    with oai(m) as client:
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
        assert sum(1 for c in stream if c.choices and c.choices[0].delta.content) == 3
    resp = http(
        m.port, b"POST", b"/chat/completions", {**CHAT, "stream": True}, {"x-mock-chunks": "5"}
    )
    assert len(resp.chunks) == 5 + 3  # role, finish, [DONE]


def test_max_tokens_truncates_with_finish_reason_length(mock: MockThread) -> None:
    with oai(mock) as client:
        r = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], max_tokens=3
        )
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content == "This is a"
    assert r.usage is not None and r.usage.completion_tokens == 3


def test_legacy_completions(mock: MockThread) -> None:
    with oai(mock) as client:
        r = client.completions.create(model="davinci-x", prompt="Say this is a test")
        chunks = list(
            client.completions.create(
                model="davinci-x",
                prompt="Say this is a test",
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert r.choices[0].text == TEXT8
    assert r.model == "davinci-x"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == TEXT8
    assert chunks[-1].usage is not None and r.usage is not None
    assert chunks[-1].usage.total_tokens == r.usage.total_tokens


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_one_vector_per_input(mock: MockThread, encoding: str) -> None:
    with oai(mock) as client:
        kwargs: Any = {} if encoding == "base64" else {"encoding_format": "float"}
        one = client.embeddings.create(model="emb", input="hello", **kwargs)
        many = client.embeddings.create(model="emb", input=["a", "b", "c"], **kwargs)
    assert len(one.data) == 1
    assert len(one.data[0].embedding) == 8
    assert [d.index for d in many.data] == [0, 1, 2]
    assert all(len(d.embedding) == 8 for d in many.data)
    assert many.data[0].embedding != many.data[1].embedding
    assert many.usage.prompt_tokens >= 1
    assert many.model == "emb"


def test_embeddings_dimensions(mock: MockThread) -> None:
    with oai(mock) as client:
        r = client.embeddings.create(model="emb", input="x", dimensions=32, encoding_format="float")
    assert len(r.data[0].embedding) == 32


def test_models_list_and_retrieve(mock: MockThread) -> None:
    with oai(mock) as client:
        ids = [m.id for m in client.models.list()]
        one = client.models.retrieve("my-model")
    assert "gpt-4o-mini" in ids
    assert one.id == "my-model"
    assert http(mock.port, b"GET", b"/models").status == 200


def test_responses_api(mock: MockThread) -> None:
    with oai(mock) as client:
        r = client.responses.create(model="gpt-r", input="Hi there")
        events = list(client.responses.create(model="gpt-r", input="Hi there", stream=True))
    assert r.output_text == TEXT8
    assert r.usage is not None and r.usage.output_tokens == 8
    types = [e.type for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 8
    final: Any = events[-1]
    assert final.response.output_text == TEXT8


def test_healthz(mock: MockThread) -> None:
    for path in (b"/healthz", b"/health"):
        resp = http(mock.port, b"GET", path)
        assert resp.status == 200
        assert orjson.loads(resp.body) == {"status": "ok"}


def test_unknown_path_is_404_and_wrong_method_405(mock: MockThread) -> None:
    resp = http(mock.port, b"GET", b"/v1/nope")
    assert resp.status == 404
    assert "error" in orjson.loads(resp.body)
    assert http(mock.port, b"GET", b"/v1/chat/completions").status == 405


def test_invalid_json_is_400(mock: MockThread) -> None:
    resp = http(mock.port, b"POST", b"/v1/chat/completions", b"{not json")
    assert resp.status == 400
    assert orjson.loads(resp.body)["error"]["type"] == "invalid_request_error"


# -- Anthropic SDK ---------------------------------------------------------------------


def test_anthropic_messages(mock: MockThread) -> None:
    with claude(mock) as client:
        r = client.messages.create(
            model="claude-x",
            max_tokens=100,
            system="Be brief.",
            messages=[{"role": "user", "content": "Hello"}],
        )
    assert r.model == "claude-x"
    assert r.content[0].type == "text"
    assert r.content[0].text == TEXT8
    assert r.stop_reason == "end_turn"
    assert r.usage.output_tokens == 8
    assert r.usage.input_tokens >= 1


def test_anthropic_stream_event_sequence(mock: MockThread) -> None:
    with claude(mock) as client:
        plain = client.messages.create(
            model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "Hello"}]
        )
        with client.messages.stream(
            model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "Hello"}]
        ) as stream:
            events = list(stream)
            final = stream.get_final_message()
    types = [e.type for e in events if not e.type.startswith(("text", "content_block_stop"))]
    raw = [e.type for e in events]
    assert raw[0] == "message_start"
    assert raw[-1] == "message_stop"
    assert types.count("content_block_delta") == 5
    assert "message_delta" in raw
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 5
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert "".join(b.text for b in final.content if b.type == "text") == "This is a mock response"


def test_anthropic_raw_event_names(mock: MockThread) -> None:
    body = {"model": "c", "max_tokens": 9, "stream": True, "messages": CHAT["messages"]}
    resp = http(mock.port, b"POST", b"/v1/messages", body)
    names = [c.split(b"\n", 1)[0] for c in resp.chunks]
    assert names == [
        b"event: message_start",
        b"event: content_block_start",
        *[b"event: content_block_delta"] * 8,
        b"event: content_block_stop",
        b"event: message_delta",
        b"event: message_stop",
    ]


def test_anthropic_errors_use_anthropic_envelope(mock: MockThread) -> None:
    with claude(mock) as client, pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(
            model="c",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-mock-fault": "429:3"},
        )
    assert info.value.response.headers["retry-after"] == "3"
    body: Any = info.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"


# -- keep-alive and pipelining ---------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(mock: MockThread) -> None:
    reqs = b"".join(
        request_bytes(
            b"POST",
            b"/v1/chat/completions",
            {**CHAT, "model": f"m{i}"},
            {"x-mock-latency-ms": "30"} if i == 1 else None,
            close=(i == 3),
        )
        for i in range(4)
    )
    with connect(mock.port) as sock:
        sock.sendall(reqs)
        raw = read_all(sock)
    models = []
    while raw:
        resp, raw = parse_response(raw)
        models.append(orjson.loads(resp.body)["model"])
    assert models == ["m0", "m1", "m2", "m3"]


def test_keep_alive_serves_many_requests_on_one_connection(mock: MockThread) -> None:
    with connect(mock.port) as sock:
        for i in range(5):
            sock.sendall(request_bytes(b"POST", b"/v1/chat/completions", CHAT, close=i == 4))
            buf = b""
            while True:
                buf += sock.recv(65536)
                try:
                    resp, _ = parse_response(buf)
                except ValueError:
                    continue
                if resp.complete:
                    break
            assert resp.status == 200
            assert ("connection" in resp.headers) == (i == 4)
    assert wait_for(lambda: mock.stats()["requests"] == 5)


def test_http10_without_keep_alive_is_closed(mock: MockThread) -> None:
    with connect(mock.port) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.0\r\n\r\n")
        resp, _ = parse_response(read_all(sock, timeout=5))
    assert resp.status == 200
    assert resp.headers["connection"] == "close"


def test_large_request_body_and_chunked_request(mock: MockThread) -> None:
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 400_000}]}
    resp = http(mock.port, b"POST", b"/v1/chat/completions", big)
    assert orjson.loads(resp.body)["usage"]["prompt_tokens"] >= 100_000
    data = orjson.dumps(CHAT)
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
    )
    with connect(mock.port) as sock:
        sock.sendall(req)
        resp, _ = parse_response(read_all(sock))
    assert orjson.loads(resp.body)["model"] == "gpt-test"


# -- options ---------------------------------------------------------------------------


def test_api_key_is_required_when_set(mock_factory: Any) -> None:
    m = mock_factory(api_key="provider-key")
    assert http(m.port, b"POST", b"/v1/chat/completions", CHAT).status == 401
    bad = {"Authorization": "Bearer client-key"}
    assert http(m.port, b"POST", b"/v1/chat/completions", CHAT, bad).status == 401
    ok = {"Authorization": "Bearer provider-key"}
    assert http(m.port, b"POST", b"/v1/chat/completions", CHAT, ok).status == 200
    assert http(m.port, b"GET", b"/v1/models", None, {"x-api-key": "provider-key"}).status == 200
    assert http(m.port, b"GET", b"/healthz").status == 200
    with (
        openai.OpenAI(base_url=m.base + "/v1", api_key="wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.models.list()


def test_status_option_answers_every_api_request(mock_factory: Any) -> None:
    m = mock_factory(status=503)
    resp = http(m.port, b"POST", b"/v1/chat/completions", CHAT)
    assert resp.status == 503
    assert set(orjson.loads(resp.body)["error"]) == {"message", "type", "param", "code"}
    assert http(m.port, b"GET", b"/v1/models").status == 503
    assert http(m.port, b"GET", b"/healthz").status == 200


def test_fail_rate(mock_factory: Any) -> None:
    always = mock_factory(fail_rate=1.0)
    assert http(always.port, b"POST", b"/v1/chat/completions", CHAT).status == 500
    half = mock_factory(fail_rate=0.5)
    statuses = [http(half.port, b"POST", b"/v1/chat/completions", CHAT).status for _ in range(60)]
    assert 5 < statuses.count(500) < 55
    assert statuses.count(500) + statuses.count(200) == 60


def test_latency_option_delays_the_head(mock_factory: Any) -> None:
    m = mock_factory(latency_ms=4000)
    t = time.perf_counter()
    assert http(m.port, b"POST", b"/v1/chat/completions", CHAT).status == 200
    assert time.perf_counter() - t >= 3.95
    t = time.perf_counter()
    http(m.port, b"POST", b"/v1/chat/completions", CHAT, {"x-mock-latency-ms": "0"})
    assert time.perf_counter() - t < 3.0  # the header's 0 replaced the option's 4 s


def test_chunk_interval_paces_events(mock_factory: Any) -> None:
    m = mock_factory(chunk_interval_ms=20, chunks=4)
    with connect(m.port) as sock:
        sock.sendall(request_bytes(b"POST", b"/v1/chat/completions", {**CHAT, "stream": True}))
        first = sock.recv(65536)
        t0 = time.perf_counter()
        rest = read_all(sock)
        elapsed = time.perf_counter() - t0
    resp, _ = parse_response(first + rest)
    assert first.count(b"data: ") == 1  # head and the first event only
    assert len(resp.chunks) == 7
    assert elapsed >= 5 * 0.02 * 0.9  # 6 more events, 5 of them after a pause


def test_add_arguments_and_options_from_args() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args([])
    assert (ns.host, ns.port) == ("127.0.0.1", 9000)
    assert options_from_args(ns) == MockOptions()
    ns = parser.parse_args(
        [
            "--latency-ms",
            "5",
            "--chunks",
            "3",
            "--chunk-interval-ms",
            "2",
            "--fail-rate",
            "0.1",
            "--status",
            "502",
            "--api-key",
            "k",
        ]
    )
    assert options_from_args(ns) == MockOptions(5.0, 3, 2.0, 0.1, 502, "k")
    with pytest.raises(SystemExit):
        options_from_args(parser.parse_args(["--fail-rate", "2"]))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_python_m_fastgw_mock_serves_and_exits_0_on_signal(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastgw.mock", "--port", "0", "--chunks", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(line.rsplit(":", 1)[1])
        resp = http(port, b"POST", b"/v1/chat/completions", CHAT)
        assert orjson.loads(resp.body)["usage"]["completion_tokens"] == 2
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- echo ------------------------------------------------------------------------------


def test_echo_shows_what_the_client_sent(mock: MockThread) -> None:
    body = {**CHAT, "temperature": 0.5}
    headers = {"x-mock-echo": "1", "Authorization": "Bearer abc", "X-Custom": "v"}
    resp = http(mock.port, b"POST", b"/v1/chat/completions?x=1", body, headers)
    echo = orjson.loads(resp.body)["echo"]
    assert echo["method"] == "POST"
    assert echo["path"] == "/v1/chat/completions?x=1"
    assert echo["headers"]["authorization"] == "Bearer abc"
    assert echo["headers"]["x-custom"] == "v"
    assert echo["body"] == body


def test_echo_in_the_first_event_of_a_stream(mock: MockThread) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    resp = http(mock.port, b"POST", b"/v1/chat/completions", body, {"x-mock-echo": "1"})
    first = orjson.loads(sse_data(resp.chunks)[0])
    assert first["echo"]["body"]["stream_options"] == {"include_usage": True}
    assert "echo" not in orjson.loads(sse_data(resp.chunks)[1])


# -- stats -----------------------------------------------------------------------------


def test_stats_count_requests_and_reset(mock: MockThread) -> None:
    for _ in range(2):
        http(mock.port, b"POST", b"/v1/chat/completions", CHAT)  # the mock closes
    with connect(mock.port) as sock:  # keep-alive: the client closes
        sock.sendall(request_bytes(b"POST", b"/v1/chat/completions", CHAT, close=False))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert wait_for(lambda: mock.stats()["closed_by_peer"] >= 1)
    stats = mock.stats()
    assert stats["requests"] == 3
    assert stats["closed_by_peer"] == 1
    assert stats["open_connections"] == 1  # the stats request's own
    assert stats["aborted_streams"] == 0
    assert http(mock.port, b"POST", b"/mock/reset").status == 200
    assert mock.stats()["requests"] == 0


def test_client_leaving_mid_stream_counts_an_aborted_stream(mock: MockThread) -> None:
    body = {**CHAT, "stream": True}
    headers = {"x-mock-fault": "slow:50", "x-mock-chunks": "100"}
    with connect(mock.port) as sock:
        sock.sendall(request_bytes(b"POST", b"/v1/chat/completions", body, headers))
        assert b"data: " in sock.recv(65536)
    # closed right after the first event: the mock must notice within 1 s
    assert wait_for(lambda: mock.stats()["aborted_streams"] == 1, timeout=1.0)
    assert mock.stats()["open_connections"] == 1


def test_finished_stream_is_not_aborted(mock: MockThread) -> None:
    headers = {"x-mock-fault": "slow:1"}
    body = {**CHAT, "stream": True}
    with connect(mock.port) as sock:  # keep-alive: the client closes after the end
        sock.sendall(request_bytes(b"POST", b"/v1/chat/completions", body, headers, close=False))
        raw = b""
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            raw += sock.recv(65536)
    assert wait_for(lambda: mock.stats()["closed_by_peer"] >= 1)
    assert mock.stats()["aborted_streams"] == 0


def test_slow_reader_gets_backpressure_not_buffering(mock: MockThread) -> None:
    """A long unpaced stream to a client that stops reading stays bounded in memory."""
    chunks = 60_000  # about 15 MB of events
    body = {**CHAT, "stream": True}
    with connect(mock.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(
            request_bytes(b"POST", b"/v1/chat/completions", body, {"x-mock-chunks": str(chunks)})
        )
        first = sock.recv(1024)
        time.sleep(0.5)  # not reading: the mock must pause, not queue 15 MB

        def buffered() -> int:
            protos = [o for o in gc.get_objects() if isinstance(o, MockProtocol)]
            return max(p._transport.get_write_buffer_size() for p in protos if p._transport)

        assert int(mock.call(buffered)) < 1_000_000  # type: ignore[call-overload]
        raw = first + read_all(sock)
    assert raw.count(b"data: ") == chunks + 3
    assert raw.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


# -- fault injection (raw sockets) -----------------------------------------------------


def fault(
    m: MockThread, value: str, stream: bool = True, path: bytes = b"/v1/chat/completions"
) -> RawResponse:
    body = {**CHAT, "stream": stream, "max_tokens": 50}
    return http(m.port, b"POST", path, body, {"x-mock-fault": value})


def test_fault_stall_delays_first_byte(mock: MockThread) -> None:
    for stream in (True, False):
        t = time.perf_counter()
        resp = fault(mock, "stall:200", stream)
        assert time.perf_counter() - t >= 0.19
        assert resp.status == 200 and resp.complete


def test_fault_stall_default_is_long(mock: MockThread) -> None:
    with connect(mock.port) as sock:
        sock.sendall(
            request_bytes(b"POST", b"/v1/chat/completions", CHAT, {"x-mock-fault": "stall"})
        )
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)


def test_fault_stall_token_sends_head_then_waits(mock: MockThread) -> None:
    with connect(mock.port) as sock:
        sock.sendall(
            request_bytes(
                b"POST",
                b"/v1/chat/completions",
                {**CHAT, "stream": True},
                {"x-mock-fault": "stall-token:300"},
            )
        )
        first = sock.recv(65536)
        t = time.perf_counter()
        rest = read_all(sock)
    assert first.startswith(b"HTTP/1.1 200") and first.count(b"data: ") == 1
    assert b'"role":"assistant"' in first
    assert time.perf_counter() - t >= 0.25
    assert parse_response(first + rest)[0].complete


def test_fault_cut_stream_after_n_events(mock: MockThread) -> None:
    resp = fault(mock, "cut:3")
    assert not resp.complete
    assert len(resp.chunks) == 3
    assert b"[DONE]" not in resp.raw
    assert not resp.raw.endswith(b"0\r\n\r\n")


def test_fault_cut_non_stream_sends_half_the_body(mock: MockThread) -> None:
    resp = fault(mock, "cut", stream=False)
    assert resp.status == 200
    assert not resp.complete
    assert 0 < len(resp.body) < int(resp.headers["content-length"])


def test_fault_malformed_event(mock: MockThread) -> None:
    resp = fault(mock, "malformed")
    bad = []
    for d in sse_data(resp.chunks):
        if d == b"[DONE]":
            continue
        try:
            orjson.loads(d)
        except orjson.JSONDecodeError:
            bad.append(d)
    assert len(bad) == 1
    assert resp.complete


def test_fault_error_event_after_first_content(mock: MockThread) -> None:
    resp = fault(mock, "error-event")
    data = sse_data(resp.chunks)
    assert len(data) == 3  # role, first content, error
    assert orjson.loads(data[1])["choices"][0]["delta"]["content"] == "This"
    err = orjson.loads(data[2])["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert b"[DONE]" not in resp.raw
    assert resp.complete


def test_fault_error_first(mock: MockThread) -> None:
    resp = fault(mock, "error-first")
    data = sse_data(resp.chunks)
    assert len(data) == 1
    assert "error" in orjson.loads(data[0])


def test_fault_error_event_on_anthropic_stream(mock: MockThread) -> None:
    resp = fault(mock, "error-event", path=b"/v1/messages")
    assert resp.chunks[-1].startswith(b"event: error\n")
    assert orjson.loads(sse_data(resp.chunks)[-1])["type"] == "error"
    assert b"message_stop" not in resp.raw


def test_fault_429_with_retry_after(mock: MockThread) -> None:
    resp = fault(mock, "429:2", stream=False)
    assert resp.status == 429
    assert resp.headers["retry-after"] == "2"
    assert resp.headers["retry-after-ms"] == "2000"
    assert orjson.loads(resp.body)["error"]["code"] == "rate_limit_exceeded"
    assert fault(mock, "429").headers["retry-after"] == "1"


@pytest.mark.parametrize("status", [500, 502, 503, 400])
def test_fault_status(mock: MockThread, status: int) -> None:
    resp = fault(mock, str(status))
    assert resp.status == status
    assert "error" in orjson.loads(resp.body)


def test_fault_400_context_length_exceeded(mock: MockThread) -> None:
    with oai(mock) as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-mock-fault": "400:context_length_exceeded"},
        )
    assert info.value.code == "context_length_exceeded"


def test_fault_slow_paces_stream_events(mock: MockThread) -> None:
    t = time.perf_counter()
    resp = fault(mock, "slow:30")
    assert len(resp.chunks) == 11
    assert time.perf_counter() - t >= 9 * 0.03


def test_fault_close_sends_nothing(mock: MockThread) -> None:
    with connect(mock.port) as sock:
        sock.sendall(
            request_bytes(b"POST", b"/v1/chat/completions", CHAT, {"x-mock-fault": "close"})
        )
        assert read_all(sock) == b""


@pytest.mark.parametrize("stream", [False, True])
def test_fault_close_delimited(mock: MockThread, stream: bool) -> None:
    resp = fault(mock, "close-delimited", stream)
    assert "content-length" not in resp.headers
    assert "transfer-encoding" not in resp.headers
    assert resp.headers["connection"] == "close"
    if stream:
        assert resp.body.endswith(b"data: [DONE]\n\n")
    else:
        assert orjson.loads(resp.body)["object"] == "chat.completion"


def test_fault_chunked_non_stream(mock: MockThread) -> None:
    resp = fault(mock, "chunked", stream=False)
    assert resp.headers["transfer-encoding"] == "chunked"
    assert len(resp.chunks) >= 3
    assert orjson.loads(resp.body)["object"] == "chat.completion"


def test_faults_combine(mock: MockThread) -> None:
    t = time.perf_counter()
    resp = fault(mock, "stall:100,cut:2")
    assert time.perf_counter() - t >= 0.09
    assert len(resp.chunks) == 2 and not resp.complete


def test_mock_answers_fast_path_requests_from_cache_correctly(mock: MockThread) -> None:
    """The same request twice (cached answer) differs only by id."""
    a = orjson.loads(http(mock.port, b"POST", b"/v1/chat/completions", CHAT).body)
    b = orjson.loads(http(mock.port, b"POST", b"/v1/chat/completions", CHAT).body)
    assert a["id"] != b["id"]
    a.pop("id"), b.pop("id")
    assert a == b
    c = orjson.loads(
        http(mock.port, b"POST", b"/v1/chat/completions", {**CHAT, "model": "other"}).body
    )
    assert c["model"] == "other"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_many_concurrent_connections(mock: MockThread) -> None:
    socks = [connect(mock.port) for _ in range(50)]
    try:
        for s in socks:
            s.sendall(request_bytes(b"POST", b"/v1/chat/completions", CHAT))
        for s in socks:
            assert parse_response(read_all(s))[0].status == 200
    finally:
        for s in socks:
            s.close()


def test_cached_answers_respect_the_chunks_header(mock: MockThread) -> None:
    body = {**CHAT, "stream": True}
    lengths = [
        len(http(mock.port, b"POST", b"/v1/chat/completions", body, headers).chunks)
        for headers in (
            {"x-mock-chunks": "2"},
            {"x-mock-chunks": "4"},
            None,
            {"x-mock-chunks": "2"},
        )
    ]
    assert lengths == [5, 7, 11, 5]


def test_expect_100_continue_is_answered(mock: MockThread) -> None:
    data = orjson.dumps(CHAT)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n" % len(data)
    )
    with connect(mock.port) as sock:
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(data)
        resp, _ = parse_response(read_all(sock))
    assert resp.status == 200
