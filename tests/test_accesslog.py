"""The access log's writer: several writers appending to one file (``--workers N``)
never interleave or lose lines."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

import orjson
import pytest

from fastgw import accesslog
from fastgw.accesslog import AccessLog


def test_writers_sharing_one_file_keep_every_line_whole(tmp_path: Path) -> None:
    target = tmp_path / "access.log"
    target.write_bytes(b'{"before":true}\n')  # appended to, never truncated
    writers, lines, pad = 4, 3000, "x" * 300

    def run(w: int) -> None:
        loop = asyncio.new_event_loop()
        log = AccessLog(str(target), loop)
        for i in range(lines):
            log.write({"writer": w, "i": i, "pad": pad})
            if i % 500 == 499:  # batches of ~170 KB, each one write()
                log.flush()
        log.close()
        loop.close()

    threads = [threading.Thread(target=run, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    got = [orjson.loads(line) for line in target.read_bytes().splitlines()]
    assert got[0] == {"before": True}
    seen: dict[int, list[int]] = {w: [] for w in range(writers)}
    for rec in got[1:]:
        seen[rec["writer"]].append(rec["i"])
    assert all(seen[w] == list(range(lines)) for w in range(writers))


def test_a_writer_behind_drops_and_counts_lines_then_catches_up(tmp_path: Path) -> None:
    """Lines past ``max_pending`` unwritten are dropped and counted; once the writer
    has caught up (the flush timer looks again), lines are taken again and the drop
    is logged."""
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    loop = asyncio.new_event_loop()
    log = AccessLog(str(fifo), loop, max_pending=10)
    try:
        big = "x" * (1 << 17)  # 4 lines fill the pipe: the writer blocks
        for i in range(10):
            log.write({"i": i, "pad": big})
        log.flush()
        for i in range(10, 15):
            log.write({"i": i})  # dropped: 10 lines are still pending
        got = bytearray()

        async def drain() -> None:
            deadline = loop.time() + 10
            while loop.time() < deadline and got.count(b"\n") < 10:
                try:
                    got.extend(os.read(reader, 1 << 16))
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # the flush timer sees the writer caught up

        loop.run_until_complete(drain())
        log.write({"i": 99})
        log.close()
        while chunk := os.read(reader, 1 << 16):
            got.extend(chunk)
    finally:
        loop.close()
        os.close(reader)
    records = [orjson.loads(line) for line in bytes(got).splitlines()]
    assert [r.get("i") for r in records[:10]] == list(range(10))
    assert records[10:] == [{"i": 99}, {"event": "access_log_dropped", "lines": 5}]


def test_closing_with_the_writer_blocked_returns_and_keeps_its_descriptor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A pipe nobody reads must not hang the shutdown; the descriptor the blocked
    writer still uses is not closed under it (a reused number would get its bytes)."""
    monkeypatch.setattr(accesslog, "CLOSE_TIMEOUT_S", 0.1)
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    loop = asyncio.new_event_loop()
    log = AccessLog(str(fifo), loop)
    out = log._out
    try:
        for i in range(8):
            log.write({"i": i, "pad": "x" * (1 << 17)})  # 1 MiB: more than the pipe holds
        with caplog.at_level(logging.WARNING, logger="fastgw.accesslog"):
            log.close()
        assert "still blocked" in caplog.text
        assert out is not None
        os.fstat(out)  # still open
    finally:
        os.close(reader)  # the writer's next write fails: its thread ends
        loop.close()
        if out is not None:
            os.close(out)
