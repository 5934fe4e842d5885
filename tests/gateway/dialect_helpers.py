"""Shared by the dialect tests (``test_dialects*.py``): a gateway with an OpenAI and
an Anthropic provider in front of one real mock upstream, the official SDKs
pointed at it, and a :class:`Recorder` that keeps every request the gateway sends
upstream.

The mock's ``x-mock-echo: 1`` shows what it received only in answers that reach
the client as the mock wrote them (same dialect: bytes pass through); a translated
answer is rebuilt in the client's dialect and leaves the echo out. So the
providers are reached through the recorder, a plain TCP relay that parses the
requests going by (the gateway always frames its bodies with Content-Length):
what the upstream received is read there, whatever the dialects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import orjson
from gwtest import Gateway, LoopThread, running

from fastgw.mock import MockOptions

CLIENT_KEY = "sk-client-key-0001"  # what the SDKs send (no auth.keys: not checked)
OA_KEY = "sk-oa-provider-secret"
AN_KEY = "sk-an-provider-secret"

TEXT = "This is a mock response from fastgw mock-upstream."  # the mock's answer (8 chunks)

# A tool whose mock arguments are known: {"city": "mock", "unit": "c"}.
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"],
}
WEATHER_ARGS = {"city": "mock", "unit": "c"}
OPENAI_WEATHER: Any = {  # Any: the SDKs type their params as TypedDicts
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather in a city",
                 "parameters": WEATHER_SCHEMA}}
ANTHROPIC_WEATHER: Any = {
    "name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER_SCHEMA}


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes

    @property
    def body(self) -> Any:
        return orjson.loads(self.raw_body)


class Recorder:
    """A TCP relay to the mock that parses and keeps the requests going through.

    One upstream connection per downstream one, bytes passed both ways as they
    come: keep-alive, streams, a client closing (the mock sees the close) all
    behave as without it."""

    def __init__(self, lt: LoopThread, target_port: int) -> None:
        self.lt = lt
        self.target_port = target_port
        self.seen: list[Seen] = []
        self.server = lt.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port: int = self.server.sockets[0].getsockname()[1]

    def since(self, n: int) -> list[Seen]:
        """The requests after the first ``n`` (``n = len(rec.seen)`` taken before)."""
        return self.seen[n:]

    def last(self) -> Seen:
        assert self.seen, "no request went upstream"
        return self.seen[-1]

    def close(self) -> None:
        self.lt.call(self.server.close)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer, record=True),
                             self._pump(up_reader, writer, record=False))

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    record: bool) -> None:
        buf = b""
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if record:
                    buf = self._parse(buf + data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    def _parse(self, buf: bytes) -> bytes:
        """Record every complete request at the start of ``buf``; return the rest."""
        while True:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if not sep:
                return buf
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(rest) < length:
                return buf
            self.seen.append(Seen(method, path, headers, rest[:length]))
            buf = rest[length:]


@dataclass
class Setup:
    gw: Gateway
    rec: Recorder

    @property
    def mock_port(self) -> int:
        return self.gw.mock.port

    def openai(self, key: str = CLIENT_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gw.url + "/v1", api_key=key, max_retries=0,
                             timeout=10)

    def anthropic(self, key: str | None = CLIENT_KEY,
                  auth_token: str | None = None) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gw.url, api_key=key, auth_token=auth_token,
                                   max_retries=0, timeout=10)


def dialect_yaml(rec_port: int, models: str = "", extra: str = "", providers: str = "") -> str:
    """``oa`` (OpenAI-compatible) and ``an`` (Anthropic) through the recorder; models
    ``gpt`` and ``claude`` (priced) and whatever ``models`` adds. Health ejection
    is out of the way: faults asked per request must not eject a shared target."""
    return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - {{name: oa, kind: openai-compatible, base_url: "http://127.0.0.1:{rec_port}/v1",
     api_key: {OA_KEY}}}
  - {{name: an, kind: anthropic, base_url: "http://127.0.0.1:{rec_port}", api_key: {AN_KEY}}}
{providers}
models:
  - name: gpt
    targets: [{{provider: oa, model: gpt-dep}}]
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
  - name: claude
    targets: [{{provider: an, model: claude-dep}}]
    price: {{input_per_mtok: 3.0, output_per_mtok: 15.0}}
{models}
health: {{consecutive_failures: 1000, min_requests: 100000}}
observability: {{access_log: off}}
{extra}"""


@contextmanager
def dialect_gateway(models: str = "", extra: str = "", providers: str = "",
                    mock: MockOptions | None = None) -> Iterator[Setup]:
    """A mock, the recorder in front of it, and a gateway configured by
    :func:`dialect_yaml`; in ``providers``, ``{rec}`` is the recorder's port and
    ``{mock}`` the mock's own (for a provider that bypasses the recorder)."""
    lt = LoopThread()
    recorders: list[Recorder] = []

    def yaml_for(mock_port: int) -> str:
        rec = Recorder(lt, mock_port)
        recorders.append(rec)
        more = providers.replace("{mock}", str(mock_port)).replace("{rec}", str(rec.port))
        return dialect_yaml(rec.port, models, extra, more)

    try:
        with running(yaml_for, lt=lt, mock=mock) as gw:
            yield Setup(gw, recorders[0])
    finally:
        for rec in recorders:
            rec.close()
        lt.close()


# -- SSE ------------------------------------------------------------------------------------


def sse_events(raw: bytes) -> list[tuple[str | None, bytes]]:
    """(event name or None, data) of each event of an SSE body, in order."""
    out: list[tuple[str | None, bytes]] = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block.strip():
            continue
        name: str | None = None
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].lstrip())
        out.append((name, b"\n".join(data)))
    return out


def sse_json(raw: bytes) -> list[tuple[str | None, Any]]:
    """:func:`sse_events` with each data parsed (``[DONE]`` kept as the string)."""
    return [(name, data.decode() if data == b"[DONE]" else orjson.loads(data))
            for name, data in sse_events(raw)]
