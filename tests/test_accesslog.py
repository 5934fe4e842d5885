"""The access log's writer: several writers appending to one file (``--workers N``)
never interleave or lose lines."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import orjson

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
