"""The provider's key never reaches a client nor the access log, even when the
upstream echoes it back: in an error body, in response headers, in an in-band
stream error event, translated or not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from gwtest import LoopThread, chat, connect, read_response, running

PROVIDER_KEY = "sk-live-9f8e7d6c5b4a39281706"


class Echoing:
    """An upstream that answers every request with ``status`` and puts the credential
    it received into the body and into several response headers."""

    def __init__(self, lt: LoopThread, status: int, stream_error: bool = False,
                 anthropic: bool = False) -> None:
        self.status = status
        self.stream_error = stream_error
        self.anthropic = anthropic
        self.keys: list[str] = []
        self.server = lt.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port: int = self.server.sockets[0].getsockname()[1]

    def _answer(self, key: str) -> bytes:
        headers = (f"x-request-id: {key}\r\nopenai-version: {key}\r\n"
                   f"openai-organization: {key}\r\nset-cookie: k={key}\r\n").encode()
        if self.status == 200 and not self.stream_error:
            body = orjson.dumps({"id": "c1", "object": "chat.completion", "model": "dep",
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant",
                                                          "content": "hi"}}]})
            return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n%s"
                    b"content-length: %d\r\n\r\n%s" % (headers, len(body), body))
        if self.stream_error:
            event = orjson.dumps({"error": {"message": f"invalid key {key}",
                                            "type": "server_error", "code": key}})
            body = b"data: " + event + b"\n\n"
            return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n%s"
                    b"content-length: %d\r\n\r\n%s" % (headers, len(body), body))
        if self.anthropic:
            doc = {"type": "error", "error": {"type": "invalid_request_error",
                                              "message": f"bad x-api-key {key}"}}
        else:
            doc = {"error": {"message": f"Incorrect API key provided: {key}.",
                             "type": "invalid_request_error", "param": key, "code": key}}
        body = orjson.dumps(doc)
        return (b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\n%sretry-after: 1\r\n"
                b"content-length: %d\r\n\r\n%s" % (self.status, headers, len(body), body))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                key = ""
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"authorization":
                        key = value.strip().decode().removeprefix("Bearer ")
                    elif name == b"x-api-key":
                        key = value.strip().decode()
                await reader.readexactly(length)
                self.keys.append(key)
                writer.write(self._answer(key))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()


@contextmanager
def echo_gateway(tmp_path: Path, status: int, *, stream_error: bool = False,
                 anthropic: bool = False) -> Iterator[tuple[int, Echoing, Path]]:
    lt = LoopThread()
    log = tmp_path / "access.log"
    up = Echoing(lt, status, stream_error=stream_error, anthropic=anthropic)
    kind = "anthropic" if anthropic else "openai-compatible"
    base = f"http://127.0.0.1:{up.port}" + ("" if anthropic else "/v1")

    def yaml(_: int) -> str:
        return f"""
providers:
  - {{name: echo, kind: {kind}, base_url: "{base}", api_key: {PROVIDER_KEY}}}
models:
  - name: gpt-test
    targets: [{{provider: echo, model: dep}}]
    retry: {{attempts: 1}}
observability: {{access_log: {log}}}
"""

    try:
        with running(yaml, lt=lt) as gw:
            yield gw.port, up, log
    finally:
        lt.call(up.server.close)
        lt.close()


def exchange(port: int, stream: bool) -> tuple[bytes, bytes]:
    """One chat request on a raw socket: the response head and body as sent."""
    data = orjson.dumps(chat(stream=stream))
    with connect(port) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                  b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                  % (len(data), data))
        r = read_response(s, 10)
    return r.raw_head, r.body


def log_text(log: Path) -> str:
    """The access log once its line is written (the writer is a background thread)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().strip():
            return log.read_text()
        time.sleep(0.01)
    raise AssertionError("no access-log line written")


@pytest.mark.parametrize(("status", "client_status"), [(400, 400), (401, 401), (429, 429),
                                                       (500, 502), (503, 502)])
@pytest.mark.parametrize("stream", [False, True])
def test_key_echoed_in_an_error_answer_is_scrubbed(tmp_path: Path, status: int,
                                                   client_status: int, stream: bool) -> None:
    with echo_gateway(tmp_path, status) as (port, up, log):
        head, body = exchange(port, stream)
        assert up.keys == [PROVIDER_KEY]  # the upstream did get (and echo) the key
        assert head.startswith(b"HTTP/1.1 %d" % client_status), head
        text = log_text(log)
    assert PROVIDER_KEY.encode() not in head
    assert PROVIDER_KEY.encode() not in body, body
    assert PROVIDER_KEY not in text, text
    line = orjson.loads(text.splitlines()[-1])
    assert line["status"] == client_status
    if status < 500:
        # The upstream's own 4xx is passed on with its body, the key replaced.
        assert b"Incorrect API key provided" in body
    assert line["error"]


def test_key_echoed_in_an_anthropic_error_is_scrubbed_before_translation(
        tmp_path: Path) -> None:
    with echo_gateway(tmp_path, 400, anthropic=True) as (port, up, log):
        head, body = exchange(port, False)
        assert up.keys == [PROVIDER_KEY]
        assert head.startswith(b"HTTP/1.1 400")
        doc = orjson.loads(body)
        assert "bad x-api-key" in doc["error"]["message"]  # translated to OpenAI's envelope
        text = log_text(log)
    assert PROVIDER_KEY.encode() not in head + body
    assert PROVIDER_KEY not in text


def test_key_echoed_in_an_in_band_stream_error_is_scrubbed(tmp_path: Path) -> None:
    with echo_gateway(tmp_path, 200, stream_error=True) as (port, up, log):
        head, body = exchange(port, True)
        assert up.keys == [PROVIDER_KEY]
        assert head.startswith(b"HTTP/1.1 200")
        assert b"event: error" in body or b'"error"' in body, body
        text = log_text(log)
    assert PROVIDER_KEY.encode() not in head
    assert PROVIDER_KEY.encode() not in body, body
    assert PROVIDER_KEY not in text, text


def test_key_echoed_in_the_headers_of_a_good_answer_is_scrubbed(tmp_path: Path) -> None:
    with echo_gateway(tmp_path, 200) as (port, up, log):
        head, body = exchange(port, False)
        assert up.keys == [PROVIDER_KEY]
        assert head.startswith(b"HTTP/1.1 200")
        assert orjson.loads(body)["choices"][0]["message"]["content"] == "hi"
        text = log_text(log)
    # The allow-listed upstream headers still pass, their value scrubbed.
    assert b"x-upstream-request-id: [redacted]" in head
    assert PROVIDER_KEY.encode() not in head
    assert b"openai-organization" not in head and b"set-cookie" not in head
    assert PROVIDER_KEY not in text
