"""The upstream client (pool, connection, exchange) against real sockets.

Each test runs its own uvloop loop. Peers are either the mock upstream or a
tiny scripted server written here, for behaviours the mock cannot show
precisely (a peer closing a kept-alive connection, a stalled body, two answers
in one write...).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
import pytest
import uvloop

from fastgw.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from fastgw.mock import MockOptions, start_mock
from fastgw.upstream.client import Endpoint, Timeouts, UpstreamClient, exchange
from fastgw.upstream.connection import UpstreamConnection
from fastgw.upstream.pool import PeerKey, Pool

T = TypeVar("T")

FAST = Timeouts(connect_s=2, first_byte_s=5, idle_s=5, total_s=8)


def run(fn: Callable[[], Awaitable[T]], timeout: float = 8.0) -> T:
    """Run one test coroutine on a fresh uvloop loop, bounded in time."""

    async def main() -> T:
        return await asyncio.wait_for(fn(), timeout)

    return uvloop.run(main())


def make_pool(port: int, *, max_connections: int = 4, idle_s: float = 30.0,
              connect_s: float = 2.0) -> Pool:
    return Pool(PeerKey("127.0.0.1", port, False), max_connections=max_connections,
                idle_s=idle_s, connect_s=connect_s, loop=asyncio.get_running_loop())


@asynccontextmanager
async def mock_upstream(opts: MockOptions | None = None) -> AsyncIterator[int]:
    server = await start_mock(opts or MockOptions(), "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def chat_request(headers: dict[str, str] | None = None, stream: bool = False) -> bytes:
    doc: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        doc["stream"] = True
    body = orjson.dumps(doc)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
            + extra.encode() + b"\r\n" + body)


def get(path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode()


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


# -- a scripted peer ---------------------------------------------------------------------

Answer = Callable[["PeerConn", int, bytes], None]


class PeerConn(asyncio.Protocol):
    """One connection of :class:`Scripted`."""

    def __init__(self, srv: Scripted) -> None:
        self.srv = srv
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.requests = 0
        self.timers: list[asyncio.TimerHandle] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        srv = self.srv
        srv.conns.append(self)
        srv.opened += 1
        srv.open += 1
        srv.max_open = max(srv.max_open, srv.open)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:  # requests to this peer have no body
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            self.requests += 1
            self.srv.requests += 1
            path = head.split(b" ")[1]
            self.srv.answer(self, self.requests, path)

    def connection_lost(self, exc: Exception | None) -> None:
        self.srv.open -= 1
        self.srv.closed += 1
        self.transport = None
        for t in self.timers:
            t.cancel()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        self.timers.append(asyncio.get_running_loop().call_later(delay, fn))


class Scripted:
    """A tiny HTTP/1.1 peer: ``answer(conn, n, path)`` handles the n-th request
    (1-based) of a connection; by default a 200 whose body is the path."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer: Answer = answer or (lambda c, n, path: c.write(ok(path)))
        self.conns: list[PeerConn] = []
        self.opened = self.open = self.max_open = self.requests = self.closed = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Scripted:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: PeerConn(self), "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for c in self.conns:
            if c.transport is not None:
                c.transport.abort()
        await asyncio.sleep(0)


async def eventually(pred: Callable[[], bool], within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# -- response framing -----------------------------------------------------------------------


def test_content_length_body_is_read_whole_and_connection_kept() -> None:
    async def go() -> None:
        async with mock_upstream() as port:
            pool = make_pool(port)
            conn = await exchange(pool, chat_request(), FAST, whole=True)
            assert conn.status == 200
            assert dict(conn.headers)[b"content-length"] == b"%d" % len(conn.body())
            assert orjson.loads(conn.body())["object"] == "chat.completion"
            assert conn.reusable()
            pool.release(conn, reuse=True)
            assert pool.idle_count == 1 and pool.total == 1
            pool.close()

    run(go)


def test_chunked_body_is_read_whole_and_connection_kept() -> None:
    async def go() -> None:
        async with mock_upstream() as port:
            pool = make_pool(port)
            conn = await exchange(pool, chat_request({"x-mock-fault": "chunked"}), FAST,
                                  whole=True)
            assert dict(conn.headers)[b"transfer-encoding"] == b"chunked"
            doc = orjson.loads(conn.body())
            assert doc["object"] == "chat.completion"
            assert doc["usage"]["completion_tokens"] == 8
            assert conn.reusable()
            pool.release(conn, reuse=True)
            again = await exchange(pool, chat_request(), FAST, whole=True)
            assert pool.opened == 1
            pool.release(again, reuse=True)
            pool.close()

    run(go)


def test_close_delimited_body_is_read_until_close_and_not_reused() -> None:
    async def go() -> None:
        async with mock_upstream() as port:
            pool = make_pool(port)
            conn = await exchange(pool, chat_request({"x-mock-fault": "close-delimited"}), FAST,
                                  whole=True)
            headers = dict(conn.headers)
            assert b"content-length" not in headers and b"transfer-encoding" not in headers
            assert orjson.loads(conn.body())["object"] == "chat.completion"
            assert not conn.reusable()
            pool.release(conn, reuse=True)
            assert pool.total == 0 and pool.idle_count == 0
            again = await exchange(pool, chat_request(), FAST, whole=True)
            assert again.status == 200 and pool.opened == 2
            pool.release(again, reuse=True)
            pool.close()

    run(go)


def test_stream_body_reaches_the_sink_as_it_arrives() -> None:
    async def go() -> None:
        async with mock_upstream() as port:
            pool = make_pool(port)
            req = chat_request({"x-mock-chunks": "5", "x-mock-chunk-interval-ms": "40"},
                               stream=True)
            conn = await exchange(pool, req, FAST, whole=False)
            assert conn.status == 200
            got: list[tuple[float, bytes]] = []
            conn.set_sink(lambda b: got.append((time.monotonic(), b)))
            await conn.wait_done()
            data = b"".join(b for _, b in got)
            assert data.count(b'"delta":{"content":') == 5
            assert data.endswith(b"data: [DONE]\n\n")
            # Delivered piece by piece over the stream's life, not at its end.
            assert got[-1][0] - got[0][0] > 0.1
            pool.release(conn, reuse=True)
            assert pool.idle_count == 1
            pool.close()

    run(go)


def test_chunks_of_one_read_reach_the_sink_in_one_call_unless_asked_one_by_one() -> None:
    chunks = [b"data: %d\n\n" % i for i in range(6)]
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"

    def answer(c: PeerConn, n: int, path: bytes) -> None:
        c.write(head)
        c.later(0.05, lambda: c.write(body))  # all six chunks in one write
        c.later(0.10, lambda: c.write(b"0\r\n\r\n"))

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port)
            for each in (False, True):
                conn = await exchange(pool, get(), FAST, whole=False)
                got: list[bytes] = []

                def sink(b: bytes, conn: UpstreamConnection = conn,
                         got: list[bytes] = got) -> None:
                    got.append(b)
                    if len(got) == 2:
                        conn.sink_per_read()  # the rest of this read: gathered

                conn.set_sink(sink if each else got.append, each_chunk=each)
                await conn.wait_done()
                assert b"".join(got) == b"".join(chunks)
                assert got == ([chunks[0], chunks[1], b"".join(chunks[2:])] if each
                               else [b"".join(chunks)])
                pool.release(conn, reuse=True)
            pool.close()

    run(go)


def test_interim_100_continue_is_skipped() -> None:
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        c.write(b"HTTP/1.1 100 Continue\r\nx-interim: 1\r\n\r\n"
                b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\nx-final: 1\r\n\r\nok")

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port)
            conn = await exchange(pool, get(), FAST, whole=True)
            assert conn.status == 201
            assert conn.headers == [(b"content-length", b"2"), (b"x-final", b"1")]
            assert conn.body() == b"ok"
            pool.release(conn, reuse=True)
            pool.close()

    run(go)



def test_connection_close_answer_is_not_reused() -> None:
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        c.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port)
            conn = await exchange(pool, get(), FAST, whole=True)
            assert conn.body() == b"ok" and not conn.reusable()
            pool.release(conn, reuse=True)
            assert pool.total == 0 and pool.idle_count == 0
            assert await eventually(lambda: peer.open == 0)
            pool.close()

    run(go)


def test_no_content_answer_without_length_is_complete_and_reusable() -> None:
    async def go() -> None:
        async with Scripted(lambda c, n, path: c.write(b"HTTP/1.1 204 No Content\r\n\r\n")) \
                as peer:
            pool = make_pool(peer.port)
            for _ in range(2):
                conn = await exchange(pool, get(), FAST, whole=True)
                assert conn.status == 204 and conn.body() == b""
                pool.release(conn, reuse=True)
            assert pool.opened == 1
            pool.close()

    run(go)

# -- reuse and limits ---------------------------------------------------------------------


def test_sequential_exchanges_reuse_one_connection() -> None:
    async def go() -> None:
        async with mock_upstream() as port:
            pool = make_pool(port)
            for i in range(10):
                fault = {"x-mock-fault": "chunked"} if i % 2 else {}
                conn = await exchange(pool, chat_request(fault), FAST, whole=True)
                assert conn.status == 200
                pool.release(conn, reuse=True)
            assert pool.opened == 1
            assert pool.total == 1
            pool.close()

    run(go)


def test_concurrent_exchanges_never_exceed_max_connections() -> None:
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        c.later(0.03, lambda: c.write(ok(path)))

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port, max_connections=3)

            async def one(i: int) -> bytes:
                conn = await exchange(pool, get(f"/r{i}"), FAST, whole=True)
                assert pool.total <= 3
                body = conn.body()
                pool.release(conn, reuse=True)
                return body

            bodies = await asyncio.gather(*(one(i) for i in range(20)))
            assert bodies == [b"/r%d" % i for i in range(20)]  # each got its own answer
            assert peer.max_open == 3
            assert pool.opened == 3
            assert pool.total == 3 and pool.idle_count == 3
            pool.close()

    run(go)


def test_waiters_are_served_in_arrival_order() -> None:
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        c.later(0.01, lambda: c.write(ok(path)))

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port, max_connections=1)
            done: list[int] = []

            async def one(i: int) -> None:
                conn = await exchange(pool, get(f"/w{i}"), FAST, whole=True)
                assert conn.body() == b"/w%d" % i
                done.append(i)
                pool.release(conn, reuse=True)

            tasks = []
            for i in range(8):
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(0.001)  # arrive one after the other
            await asyncio.gather(*tasks)
            assert done == list(range(8))
            assert pool.opened == 1
            pool.close()

    run(go)


def test_idle_connection_expires_after_pool_idle_s() -> None:
    async def go() -> None:
        async with Scripted() as peer:
            pool = make_pool(peer.port, idle_s=0.2)
            pool.release(await exchange(pool, get(), FAST, whole=True), reuse=True)
            pool.release(await exchange(pool, get(), FAST, whole=True), reuse=True)
            assert pool.opened == 1  # reused while fresh
            await asyncio.sleep(0.3)
            conn = await exchange(pool, get(), FAST, whole=True)
            assert conn.status == 200
            assert pool.opened == 2  # the expired one was not used
            pool.release(conn, reuse=True)
            assert await eventually(lambda: peer.closed == 1)
            pool.close()

    run(go)


def test_idle_connections_are_closed_without_new_traffic() -> None:
    async def go() -> None:
        async with Scripted() as peer:
            pool = make_pool(peer.port, idle_s=0.2)
            pool.release(await exchange(pool, get(), FAST, whole=True), reuse=True)
            assert peer.open == 1
            assert await eventually(lambda: peer.open == 0, within=2)
            assert pool.idle_count == 0 and pool.total == 0
            pool.close()

    run(go)


def test_expired_pool_generation_retires_idle_and_busy_connections() -> None:
    async def go() -> None:
        async with Scripted() as peer:
            pool = make_pool(peer.port)
            busy = await exchange(pool, get(), FAST, whole=True)
            idle = await exchange(pool, get(), FAST, whole=True)
            pool.release(idle, reuse=True)
            pool.expire()
            assert idle.closed and pool.idle_count == 0
            pool.release(busy, reuse=True)  # finished after the expiry: not pooled
            assert busy.closed and pool.idle_count == 0 and pool.total == 0
            pool.close()

    run(go)


def test_closed_pool_fails_its_waiters_and_new_callers() -> None:
    async def go() -> None:
        async with Scripted() as peer:
            pool = make_pool(peer.port, max_connections=1)
            held = await exchange(pool, get(), FAST, whole=True)
            waiter = asyncio.create_task(exchange(pool, get(), FAST, whole=True))
            await asyncio.sleep(0.02)
            pool.close()
            with pytest.raises(UpstreamConnectError):
                await waiter
            with pytest.raises(UpstreamConnectError):
                await pool.acquire()
            pool.release(held, reuse=True)
            assert held.closed

    run(go)


# -- the one transparent retry ----------------------------------------------------------------


def test_pooled_connection_closed_by_peer_is_retried_once_on_a_fresh_one() -> None:
    # The peer takes the next request on a kept-alive connection and closes it
    # without a byte (the keep-alive race): that request never started.
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        if n == 1:
            c.write(ok(path))
        else:
            c.close()

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port)
            pool.release(await exchange(pool, get("/one"), FAST, whole=True), reuse=True)
            conn = await exchange(pool, get("/two"), FAST, whole=True)
            assert conn.status == 200 and conn.body() == b"/two"
            assert pool.opened == 2
            assert peer.requests == 3  # the lost one, then the retry
            pool.release(conn, reuse=True)
            assert pool.total == 1
            pool.close()

    run(go)


def test_pooled_connection_the_peer_closed_while_idle_is_skipped() -> None:
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        c.write(ok(path))
        c.later(0.02, c.close)

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port)
            pool.release(await exchange(pool, get(), FAST, whole=True), reuse=True)
            assert await eventually(lambda: peer.closed == 1)
            conn = await exchange(pool, get("/next"), FAST, whole=True)
            assert conn.body() == b"/next"
            assert pool.opened == 2 and peer.requests == 2  # no failed attempt, no retry
            pool.release(conn, reuse=True)
            pool.close()

    run(go)


def test_fresh_connection_closed_before_answering_is_not_retried() -> None:
    async def go() -> None:
        async with Scripted(lambda c, n, path: c.close()) as peer:
            pool = make_pool(peer.port)
            with pytest.raises(UpstreamProtocolError, match="before answering"):
                await exchange(pool, get(), FAST, whole=True)
            assert peer.requests == 1 and pool.opened == 1
            assert pool.total == 0
            pool.close()

    run(go)


def test_connection_closed_before_the_request_is_written_fails_the_exchange() -> None:
    # Closed by the peer between connect and send: an upstream error for the
    # waiter and for the callback form alike (called at once), never an assertion.
    async def go() -> None:
        async with Scripted() as peer:
            pool = make_pool(peer.port)
            conn = await pool.connect()
            assert await eventually(lambda: len(peer.conns) == 1)
            peer.conns[0].close()
            assert await eventually(lambda: conn.closed)
            conn.send(get(), 1.0, 1.0, 1.0)
            with pytest.raises(UpstreamProtocolError, match="before the request was sent"):
                conn.waiter(True)
            seen: list[object] = []
            conn.on_done(seen.append, "called")
            assert seen == ["called"] and isinstance(conn.error, UpstreamProtocolError)
            pool.release(conn, reuse=True)
            assert pool.total == 0 and peer.requests == 0
            pool.close()

    run(go)


def test_callback_form_reports_the_whole_answer_once() -> None:
    async def go() -> None:
        async with Scripted() as peer:
            pool = make_pool(peer.port)
            conn = await pool.connect()
            done = asyncio.get_running_loop().create_future()
            calls: list[object] = []

            def on_done(arg: object) -> None:
                calls.append(arg)
                done.set_result(None)

            conn.send(get("/cb"), 1.0, 1.0, 1.0)
            conn.on_done(on_done, "arg")
            await asyncio.wait_for(done, 2.0)
            await asyncio.sleep(0.01)
            assert calls == ["arg"] and conn.error is None
            assert conn.status == 200 and conn.body() == b"/cb"
            pool.release(conn, reuse=True)
            assert pool.idle_count == 1
            pool.close()

    run(go)


def test_failure_after_response_bytes_is_not_retried() -> None:
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        if n == 1:
            c.write(ok(path))
        else:
            c.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            c.close()

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port)
            pool.release(await exchange(pool, get(), FAST, whole=True), reuse=True)
            with pytest.raises(UpstreamProtocolError, match="middle of the response"):
                await exchange(pool, get(), FAST, whole=True)
            assert peer.requests == 2 and pool.opened == 1
            assert pool.total == 0
            pool.close()

    run(go)


def test_malformed_answer_on_a_pooled_connection_is_not_retried() -> None:
    # The peer did answer (badly): it may have acted on the request, so it is not
    # sent again.
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        c.write(ok(path) if n == 1 else b"HTTP/1.1 two hundred\r\n\r\n")

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port)
            pool.release(await exchange(pool, get(), FAST, whole=True), reuse=True)
            with pytest.raises(UpstreamProtocolError, match="malformed"):
                await exchange(pool, get(), FAST, whole=True)
            assert peer.requests == 2 and pool.opened == 1
            assert pool.total == 0
            pool.close()

    run(go)


def test_retry_that_fails_too_raises_and_frees_the_slot() -> None:
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        if c is c.srv.conns[0] and n == 1:
            c.write(ok(path))
        else:
            c.close()

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port)
            pool.release(await exchange(pool, get(), FAST, whole=True), reuse=True)
            with pytest.raises(UpstreamProtocolError):
                await exchange(pool, get(), FAST, whole=True)
            assert pool.opened == 2 and peer.requests == 3  # one retry, no more
            assert pool.total == 0
            pool.close()

    run(go)


# -- timeouts and connect errors --------------------------------------------------------------


def test_first_byte_timeout_raises_upstream_timeout_quickly() -> None:
    async def go() -> None:
        async with mock_upstream() as port:
            pool = make_pool(port)
            timeouts = Timeouts(connect_s=2, first_byte_s=0.2, idle_s=5, total_s=8)
            t0 = time.monotonic()
            with pytest.raises(UpstreamTimeout, match="first_byte_s"):
                await exchange(pool, chat_request({"x-mock-fault": "stall:5000"}), timeouts,
                               whole=True)
            # Under the stall (5 s) and total_s (8 s): first_byte_s is what ended it.
            assert 0.15 <= time.monotonic() - t0 < 4.0
            assert pool.total == 0 and pool.idle_count == 0
            pool.close()

    run(go)


def test_body_that_stalls_midway_raises_idle_timeout() -> None:
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        c.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nthe first part")

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port)
            timeouts = Timeouts(connect_s=2, first_byte_s=5, idle_s=0.3, total_s=8)
            t0 = time.monotonic()
            with pytest.raises(UpstreamTimeout, match="idle_s"):
                await exchange(pool, get(), timeouts, whole=True)
            assert 0.25 <= time.monotonic() - t0 < 4.0  # under first_byte_s and total_s
            # Streamed the same way: the head comes back, then the body times out.
            conn = await exchange(pool, get(), timeouts, whole=False)
            assert conn.status == 200
            with pytest.raises(UpstreamTimeout, match="idle_s"):
                await conn.wait_done()
            pool.release(conn, reuse=True)
            assert pool.total == 0
            assert await eventually(lambda: peer.open == 0)
            pool.close()

    run(go)


def test_steady_trickle_is_not_idle_but_total_s_ends_it() -> None:
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        c.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")

        def drip() -> None:
            c.write(b".")
            c.later(0.05, drip)

        drip()

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port)
            timeouts = Timeouts(connect_s=2, first_byte_s=5, idle_s=0.3, total_s=0.8)
            t0 = time.monotonic()
            with pytest.raises(UpstreamTimeout, match="total_s"):
                await exchange(pool, get(), timeouts, whole=True)
            assert 0.7 <= time.monotonic() - t0 < 6.0  # long before the 50 s body ends
            assert pool.total == 0
            pool.close()

    run(go)


def test_reading_paused_by_a_slow_client_is_not_upstream_idleness() -> None:
    async def go() -> None:
        async with mock_upstream() as port:
            pool = make_pool(port)
            timeouts = Timeouts(connect_s=2, first_byte_s=5, idle_s=0.3, total_s=8)
            req = chat_request({"x-mock-chunks": "20", "x-mock-chunk-interval-ms": "20"},
                               stream=True)
            conn = await exchange(pool, req, timeouts, whole=False)
            got: list[bytes] = []
            conn.set_sink(got.append)
            conn.pause_reading()
            await asyncio.sleep(0.8)  # well past idle_s
            conn.resume_reading()
            await conn.wait_done()
            data = b"".join(got)
            assert data.count(b'"delta":{"content":') == 20
            assert data.endswith(b"data: [DONE]\n\n")
            pool.release(conn, reuse=True)
            pool.close()

    run(go)


def test_refused_connection_raises_connect_error() -> None:
    async def go() -> None:
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        pool = make_pool(port)
        with pytest.raises(UpstreamConnectError, match="could not connect"):
            await exchange(pool, get(), FAST, whole=True)
        assert pool.total == 0 and pool.opened == 0
        pool.close()

    run(go)


def test_connect_that_hangs_raises_timeout_after_connect_s() -> None:
    async def go() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            # Fill the accept queue: further SYNs go unanswered, connects hang.
            fillers = []
            for _ in range(3):
                f = socket.socket()
                f.setblocking(False)
                try:
                    f.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                fillers.append(f)
            await asyncio.sleep(0.05)
            pool = make_pool(port, connect_s=0.3)
            t0 = time.monotonic()
            try:
                slow_connect = Timeouts(connect_s=20, first_byte_s=5, idle_s=5, total_s=30)
                with pytest.raises(UpstreamTimeout, match="connect_s"):
                    await exchange(pool, get(), slow_connect, whole=True)
                # The pool's connect_s (0.3 s), not the exchange's (20 s).
                assert 0.25 <= time.monotonic() - t0 < 10
                assert pool.total == 0
                # Cancelled while connecting: the booked slot is given back too.
                task = asyncio.create_task(exchange(pool, get(), FAST, whole=True))
                await asyncio.sleep(0.05)
                assert pool.total == 1
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert pool.total == 0 and pool.opened == 0
            finally:
                pool.close()
                for f in fillers:
                    f.close()

    run(go)


# -- cancellation -----------------------------------------------------------------------------


def test_cancelled_exchange_closes_its_connection_and_frees_the_slot() -> None:
    async def go() -> None:
        async with Scripted(lambda c, n, path: None) as peer:  # never answers
            pool = make_pool(peer.port, max_connections=1)
            task = asyncio.create_task(exchange(pool, get(), FAST, whole=True))
            assert await eventually(lambda: peer.requests == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.total == 0 and pool.idle_count == 0
            assert await eventually(lambda: peer.open == 0)  # closed, not kept
            peer.answer = lambda c, n, path: c.write(ok(path))
            conn = await exchange(pool, get("/next"), FAST, whole=True)
            assert conn.body() == b"/next" and pool.opened == 2
            pool.release(conn, reuse=True)
            pool.close()

    run(go)


def test_cancelled_waiter_leaves_the_queue_without_leaking_a_slot() -> None:
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        c.later(0.1, lambda: c.write(ok(path)))

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port, max_connections=1)
            first = asyncio.create_task(exchange(pool, get("/1"), FAST, whole=True))
            await asyncio.sleep(0.01)
            waiting = asyncio.create_task(exchange(pool, get("/2"), FAST, whole=True))
            await asyncio.sleep(0.01)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            pool.release(await first, reuse=True)
            assert pool.total == 1 and pool.idle_count == 1
            conn = await exchange(pool, get("/3"), FAST, whole=True)
            assert conn.body() == b"/3" and pool.opened == 1
            assert peer.requests == 2  # the cancelled one never went out
            pool.release(conn, reuse=True)
            pool.close()

    run(go)


def test_connection_handed_to_a_waiter_being_cancelled_is_passed_on() -> None:
    async def go() -> None:
        async with Scripted() as peer:
            pool = make_pool(peer.port, max_connections=1)
            held = await exchange(pool, get(), FAST, whole=True)
            waiting = asyncio.create_task(exchange(pool, get(), FAST, whole=True))
            await asyncio.sleep(0.01)
            # In one step: the connection goes to the waiter, whose task is cancelled
            # before it can run.
            pool.release(held, reuse=True)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert pool.total == 1 and pool.idle_count == 1
            conn = await exchange(pool, get("/after"), FAST, whole=True)
            assert conn.body() == b"/after" and pool.opened == 1
            pool.release(conn, reuse=True)
            pool.close()

    run(go)


def test_slot_handed_to_a_waiter_being_cancelled_is_passed_on() -> None:
    async def go() -> None:
        async with Scripted() as peer:
            pool = make_pool(peer.port, max_connections=1)
            held = await exchange(pool, get(), FAST, whole=True)
            waiting = asyncio.create_task(exchange(pool, get(), FAST, whole=True))
            await asyncio.sleep(0.01)
            pool.release(held, reuse=False)  # closed: the waiter gets its slot
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert pool.total == 0
            conn = await exchange(pool, get("/after"), FAST, whole=True)
            assert conn.body() == b"/after"
            pool.release(conn, reuse=True)
            pool.close()

    run(go)


# -- broken peers ------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 two hundred OK\r\n\r\n",
    b"this is not http at all\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
], ids=["bad-status", "not-http", "two-lengths", "bad-chunk"])
def test_malformed_response_raises_protocol_error(raw: bytes) -> None:
    async def go() -> None:
        async with Scripted(lambda c, n, path: c.write(raw)) as peer:
            pool = make_pool(peer.port)
            with pytest.raises(UpstreamProtocolError, match="malformed"):
                await exchange(pool, get(), FAST, whole=True)
            assert pool.total == 0
            assert await eventually(lambda: peer.open == 0)
            pool.close()

    run(go)


def test_second_response_in_the_same_write_is_not_read_as_body() -> None:
    # Bytes nobody asked for: never appended to the answer, and the connection
    # is not trusted again.
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        c.write(ok(path) + ok(b"SMUGGLED"))

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port)
            conn = await exchange(pool, get("/a"), FAST, whole=True)
            assert conn.status == 200
            assert conn.body() == b"/a"
            assert conn.headers == [(b"content-length", b"2")]
            assert not conn.reusable()
            pool.release(conn, reuse=True)
            conn = await exchange(pool, get("/b"), FAST, whole=True)
            assert conn.body() == b"/b"
            assert pool.opened == 2
            pool.release(conn, reuse=True)
            pool.close()

    run(go)


def test_bytes_arriving_on_an_idle_connection_discard_it() -> None:
    def answer(c: PeerConn, n: int, path: bytes) -> None:
        c.write(ok(path))
        c.later(0.05, lambda: c.write(b"unsolicited"))

    async def go() -> None:
        async with Scripted(answer) as peer:
            pool = make_pool(peer.port)
            pool.release(await exchange(pool, get(), FAST, whole=True), reuse=True)
            assert await eventually(lambda: peer.closed == 1)
            conn = await exchange(pool, get("/next"), FAST, whole=True)
            assert conn.body() == b"/next" and pool.opened == 2
            pool.release(conn, reuse=True)
            pool.close()

    run(go)


# -- endpoints ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "key", "host", "prefix"), [
    ("https://api.openai.com/v1", PeerKey("api.openai.com", 443, True), b"api.openai.com",
     b"/v1"),
    ("http://127.0.0.1:8000/", PeerKey("127.0.0.1", 8000, False), b"127.0.0.1:8000", b""),
    ("http://[::1]:9000/v1/", PeerKey("::1", 9000, False), b"[::1]:9000", b"/v1"),
    ("http://example.com:80/openai/v1", PeerKey("example.com", 80, False), b"example.com",
     b"/openai/v1"),
])
def test_endpoint_parses_where_to_connect_and_what_to_send(url: str, key: PeerKey, host: bytes,
                                                           prefix: bytes) -> None:
    ep = Endpoint.parse(url)
    assert ep.key == key
    assert ep.host_header == host
    assert ep.path_prefix == prefix


def test_client_shares_one_pool_per_peer_and_settings() -> None:
    async def go() -> None:
        client = UpstreamClient(asyncio.get_running_loop())
        ep = Endpoint.parse("http://127.0.0.1:1/v1")
        a = client.pool(ep, max_connections=4, idle_s=30, connect_s=1)
        assert client.pool(Endpoint.parse("http://127.0.0.1:1/other"), max_connections=4,
                           idle_s=30, connect_s=1) is a
        b = client.pool(ep, max_connections=8, idle_s=30, connect_s=1)
        assert b is not a
        client.retire_unused({b})
        assert a.closed and not b.closed
        client.close()
        assert b.closed

    run(go)

