"""Output held to the end of the event loop's turn (HttpProtocol.hold and
ServerState.write_held), on transports that record what they are asked to do:
the order of writes and closes, and one connection's failure not costing the
others their output."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from fastgw.server.protocol import HttpProtocol, ServerSettings, ServerState


class Transport:
    def __init__(self, log: list[tuple[str, Any]], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail
        self.closing = False

    def get_extra_info(self, _name: str) -> Any:
        return ("127.0.0.1", 1)

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("the handle is closed")
        self.log.append((self.name, data))

    def close(self) -> None:
        self.closing = True
        self.log.append((self.name, "close"))

    def abort(self) -> None:
        self.log.append((self.name, "abort"))

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def connection(loop: asyncio.AbstractEventLoop, state: ServerState, transport: Transport
               ) -> HttpProtocol:
    proto = HttpProtocol(lambda _c: None, ServerSettings(), state, loop)
    proto.connection_made(transport)  # type: ignore[arg-type]
    return proto


def turn(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


def test_held_pieces_leave_in_one_write_at_the_end_of_the_turn_then_the_close(
        loop: asyncio.AbstractEventLoop) -> None:
    log: list[tuple[str, Any]] = []
    state = ServerState()
    a = connection(loop, state, Transport(log, "a"))
    a.hold(b"one", b"two")
    a._write(b"three")  # behind the held output, not before it
    a._close()
    a.hold(b"after the close")  # written nowhere
    assert log == []
    turn(loop)
    assert log == [("a", b"onetwothree"), ("a", "close")]


def test_a_connection_whose_write_fails_is_aborted_and_the_others_still_written(
        loop: asyncio.AbstractEventLoop) -> None:
    log: list[tuple[str, Any]] = []
    state = ServerState()
    bad = connection(loop, state, Transport(log, "bad", fail=True))
    good = connection(loop, state, Transport(log, "good"))
    bad.hold(b"x")
    good.hold(b"y")
    turn(loop)
    assert log == [("bad", "abort"), ("good", b"y")]
    assert state.held == []


def test_without_held_output_writes_and_closes_are_immediate(
        loop: asyncio.AbstractEventLoop) -> None:
    log: list[tuple[str, Any]] = []
    a = connection(loop, ServerState(), Transport(log, "a"))
    a._write(b"now")
    a._close()
    assert log == [("a", b"now"), ("a", "close")]
