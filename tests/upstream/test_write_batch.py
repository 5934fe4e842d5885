"""Requests to upstreams leave at the end of the loop's turn, together
(``fastgw.upstream.writes``): in order, never to a transport closed meanwhile,
one failing write not dropping the others; on real sockets, a turn's requests
over several pooled connections reach the upstream and are answered."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import uvloop

from fastgw.mock import MockOptions, start_mock
from fastgw.upstream.client import Timeouts, exchange
from fastgw.upstream.pool import PeerKey, Pool
from fastgw.upstream.writes import WriteBatch, batch_for

FAST = Timeouts(connect_s=2, first_byte_s=5, idle_s=5, total_s=8)


class Recorder:
    def __init__(self, log: list[tuple[str, bytes]], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("this transport cannot write")
        self.log.append((self.name, data))

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = True


def test_writes_leave_at_the_end_of_the_turn_in_order() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        batch = WriteBatch(loop)
        log: list[tuple[str, bytes]] = []
        a, b = Recorder(log, "a"), Recorder(log, "b")
        batch.write(a, b"1")  # type: ignore[arg-type]
        batch.write(b, b"2")  # type: ignore[arg-type]
        batch.write(a, b"3")  # type: ignore[arg-type]
        assert log == [] and len(batch) == 3  # nothing before the turn ends
        await asyncio.sleep(0)
        assert log == [("a", b"1"), ("b", b"2"), ("a", b"3")]
        assert len(batch) == 0
        batch.write(b, b"4")  # type: ignore[arg-type]  # a later turn: flushed again
        await asyncio.sleep(0)
        assert log[-1] == ("b", b"4")

    uvloop.run(main())


def test_a_closed_transport_gets_nothing_and_a_failing_one_stops_no_other() -> None:
    async def main() -> None:
        batch = WriteBatch(asyncio.get_running_loop())
        log: list[tuple[str, bytes]] = []
        closed, bad, good = Recorder(log, "closed"), Recorder(log, "bad", fail=True), \
            Recorder(log, "good")
        batch.write(closed, b"x")  # type: ignore[arg-type]
        batch.write(bad, b"y")  # type: ignore[arg-type]
        batch.write(good, b"z")  # type: ignore[arg-type]
        closed.closing = True  # closed after its request was queued
        await asyncio.sleep(0)
        assert log == [("good", b"z")]
        assert bad.aborted and not good.aborted  # the failed exchange ends by its loss

    uvloop.run(main())


def test_one_batch_per_loop() -> None:
    async def main() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        assert batch_for(loop) is batch_for(loop)
        return batch_for(loop), loop

    first, _ = uvloop.run(main())
    second, _ = uvloop.run(main())
    assert first is not second


def test_a_turns_requests_on_many_connections_are_all_answered() -> None:
    """Eight exchanges begun in one turn: each request waits for the turn's end,
    none is lost or crossed (each answer names its own request's model)."""

    def request(model: str) -> bytes:
        body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
                + body)

    async def main() -> None:
        server = await start_mock(MockOptions(), "127.0.0.1", 0)
        port = int(server.sockets[0].getsockname()[1])
        pool = Pool(PeerKey("127.0.0.1", port, False), max_connections=8, idle_s=30,
                    connect_s=2, loop=asyncio.get_running_loop())

        async def one(i: int) -> bytes:
            conn = await exchange(pool, request(f"m{i}"), FAST, whole=True)
            assert conn.status == 200
            body = conn.body()
            pool.release(conn, reuse=True)
            return body

        try:
            for _ in range(3):  # the first round connects; the next ones reuse
                bodies = await asyncio.gather(*(one(i) for i in range(8)))
                for i, body in enumerate(bodies):
                    assert orjson.loads(body)["model"] == f"m{i}"
            assert pool.opened == 8
        finally:
            pool.close()
            server.close()

    uvloop.run(asyncio.wait_for(main(), 10))


def test_a_pooled_connection_sends_through_its_loops_batch() -> None:
    async def main() -> None:
        server = await start_mock(MockOptions(), "127.0.0.1", 0)
        port = int(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        pool = Pool(PeerKey("127.0.0.1", port, False), max_connections=2, idle_s=30,
                    connect_s=2, loop=loop)
        try:
            conn = await pool.acquire()
            body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
            conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                      b"application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body,
                      5, 5, 5)
            assert pool.batch is batch_for(loop) and len(pool.batch) == 1  # not yet written
            waiter = conn.waiter(True)
            assert waiter is not None
            await waiter
            assert conn.status == 200 and len(pool.batch) == 0
            pool.release(conn, reuse=True)
        finally:
            pool.close()
            server.close()

    uvloop.run(asyncio.wait_for(main(), 10))


def polling(batch: WriteBatch) -> bool:
    """Whether a poll callback is scheduled (read anew each time)."""
    return batch._polling


def test_after_the_writes_the_loop_polls_for_the_window_then_sleeps() -> None:
    """With a poll window the loop keeps turning (no sleep) for that long after a
    turn's writes, one poll callback a turn, then stops; a later write opens a new
    window; without one nothing is scheduled."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for window in (0.05, 0.0):
            batch = WriteBatch(loop, poll_s=window)
            turns = 0

            def counted(poll: Any = batch._poll) -> None:
                nonlocal turns
                turns += 1
                poll()

            batch._poll = counted
            log: list[tuple[str, bytes]] = []
            start = loop.time()
            batch.write(Recorder(log, "a"), b"1")  # type: ignore[arg-type]
            await asyncio.sleep(0.02)  # the loop would sleep here without the window
            mid = turns
            await asyncio.sleep(0.08)
            assert log == [("a", b"1")]
            if window:
                assert mid > 20, f"only {mid} turns in the window: the loop slept"
                assert not polling(batch)  # the window is over: the loop sleeps again
                done = turns
                await asyncio.sleep(0.03)
                assert turns == done
                assert loop.time() - start >= window
                batch.write(Recorder(log, "b"), b"2")  # type: ignore[arg-type]
                await asyncio.sleep(0.01)
                assert turns > done and polling(batch)  # a new window
                await asyncio.sleep(0.06)
                assert not polling(batch)
            else:
                assert turns == 0 and not batch._polling

    uvloop.run(main())


def test_the_server_setting_sets_the_window_of_the_loops_batch() -> None:
    from fastgw.app import App
    from fastgw.config import parse_config

    async def main(poll_us: int | None) -> float:
        server = "{host: 127.0.0.1, port: 0" + ("" if poll_us is None
                                               else f", busy_poll_us: {poll_us}") + "}"
        app = App(parse_config(
            f"server: {server}\nproviders: [{{name: m, kind: openai-compatible, base_url: "
            "http://127.0.0.1:9/v1}]\nmodels: [{name: a, targets: [{provider: m, model: a}]}]"))
        await app.start()
        try:
            return batch_for(asyncio.get_running_loop()).poll_s
        finally:
            await app.stop(drain_timeout_s=0.1)

    assert uvloop.run(main(None)) == 250e-6  # the default
    assert uvloop.run(main(0)) == 0.0
    assert uvloop.run(main(1000)) == 1e-3
