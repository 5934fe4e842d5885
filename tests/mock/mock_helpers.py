"""Raw-socket HTTP helpers and the in-thread mock server used by the mock's tests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import uvloop

from fastgw.mock import MockOptions, start_mock


class MockThread:
    """A mock server on its own event loop thread."""

    def __init__(self, opts: MockOptions) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(start_mock(opts, "127.0.0.1", 0), self.loop)
        self.server = fut.result(timeout=10)
        self.port: int = self.server.sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def call(self, fn: Callable[[], object]) -> object:
        """Run fn on the server's loop thread and return its result."""

        async def run() -> object:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    def stats(self) -> dict[str, int]:
        return http_json(self.port, b"GET", b"/mock/stats")

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


# -- raw HTTP helpers ----------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes  # de-chunked
    chunks: list[bytes] = field(default_factory=list)  # HTTP chunks, when chunked
    complete: bool = True  # framing ended properly (not cut by EOF)
    raw: bytes = b""


def request_bytes(
    method: bytes,
    path: bytes,
    body: object = None,
    headers: dict[str, str] | None = None,
    close: bool = True,
) -> bytes:
    data = b"" if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
    lines = [b"%s %s HTTP/1.1" % (method, path), b"Host: 127.0.0.1"]
    if data or method == b"POST":
        lines.append(b"Content-Type: application/json")
        lines.append(b"Content-Length: %d" % len(data))
    if close:
        lines.append(b"Connection: close")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + data


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read until the peer closes the connection."""
    sock.settimeout(timeout)
    out = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        out += data
    return bytes(out)


def parse_response(raw: bytes) -> tuple[RawResponse, bytes]:
    """Parse one response from raw bytes; return it and the bytes left over."""
    end = raw.index(b"\r\n\r\n")
    head = raw[:end].decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in head[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    rest = raw[end + 4 :]
    if "content-length" in headers:
        n = int(headers["content-length"])
        return RawResponse(status, headers, rest[:n], complete=len(rest) >= n, raw=raw), rest[n:]
    if headers.get("transfer-encoding") == "chunked":
        chunks: list[bytes] = []
        pos = 0
        while True:
            eol = rest.find(b"\r\n", pos)
            if eol < 0:
                return RawResponse(
                    status, headers, b"".join(chunks), chunks, complete=False, raw=raw
                ), b""
            size = int(rest[pos:eol], 16)
            if size == 0:
                return RawResponse(status, headers, b"".join(chunks), chunks, raw=raw), rest[
                    eol + 4 :
                ]
            data = rest[eol + 2 : eol + 2 + size]
            if len(data) < size or rest[eol + 2 + size : eol + 4 + size] != b"\r\n":
                chunks.append(data)
                return RawResponse(
                    status, headers, b"".join(chunks), chunks, complete=False, raw=raw
                ), b""
            chunks.append(data)
            pos = eol + 4 + size
    # close-delimited
    return RawResponse(status, headers, rest, raw=raw), b""


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def http(
    port: int,
    method: bytes,
    path: bytes,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> RawResponse:
    with connect(port) as sock:
        sock.sendall(request_bytes(method, path, body, headers))
        resp, _ = parse_response(read_all(sock))
        return resp


def http_json(port: int, method: bytes, path: bytes, body: object = None) -> dict[str, int]:
    resp = http(port, method, path, body)
    assert resp.status == 200, resp
    result: dict[str, int] = orjson.loads(resp.body)
    return result


def sse_data(chunks: list[bytes]) -> list[bytes]:
    """The data: payload of each SSE event, one per HTTP chunk."""
    for chunk in chunks:
        assert chunk.endswith(b"\n\n"), chunk
    return [
        line[6:] for chunk in chunks for line in chunk.split(b"\n") if line.startswith(b"data: ")
    ]


def wait_for(pred: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hello, mock!"}]}
