"""Many concurrent requests with random upstream faults: every one is answered,
nothing hangs, and no pool slot, connection or in-flight count leaks."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import orjson
from gwtest import chat, minimal_yaml, running, wait_for

FAULTS = ["", "500", "429:0", "cut:2", "stall:30", "close", "malformed", "error-first",
          "error-event", "chunked", "close-delimited", "slow:5"]
# What a client may see for each fault (streams commit before cut/error-event, so 200).
# 503: the target was ejected for a moment after a run of failures; 0: the client left.
ALLOWED = {0, 200, 429, 502, 503, 504}


def test_random_faults_under_concurrency_leave_nothing_behind() -> None:
    yaml = lambda p: minimal_yaml(  # noqa: E731
        p, extra="health: {base_ejection_s: 0.1, max_ejection_s: 0.2}\n",
        provider_extra="\n    max_connections: 8\n    timeouts: {first_byte_s: 2, idle_s: 1}")
    rng = random.Random(7)
    plan = [(rng.choice(FAULTS), rng.random() < 0.5, rng.random() < 0.1) for _ in range(400)]
    with running(yaml) as gw:
        statuses: Counter[int] = Counter()

        async def one(fault: str, stream: bool, leave: bool) -> None:
            r, w = await asyncio.open_connection("127.0.0.1", gw.port)
            data = orjson.dumps(chat(stream=stream))
            extra = b"x-mock-fault: %s\r\n" % fault.encode() if fault else b""
            w.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                    b"%scontent-length: %d\r\n\r\n%s" % (extra, len(data), data))
            if leave:  # a client that goes away early
                await r.read(64)
                w.transport.abort()
                statuses[0] += 1
                return
            raw = await r.read()
            w.close()
            statuses[int(raw.split()[1])] += 1

        async def main() -> None:
            sem = asyncio.Semaphore(50)

            async def bounded(fault: str, stream: bool, leave: bool) -> None:
                async with sem:
                    await one(fault, stream, leave)

            await asyncio.wait_for(asyncio.gather(*(bounded(*p) for p in plan)), 60)

        asyncio.run(main())
        assert sum(statuses.values()) == len(plan)
        assert set(statuses) <= ALLOWED, statuses
        assert statuses[200] > 100

        def settled() -> bool:
            def look() -> tuple[int, int, int, int]:
                app = gw.app
                assert app.gateway is not None
                snap = app.gateway.state.snapshot
                pool = snap.providers["mock"].pool
                target = snap.models["gpt-test"].targets[0]
                return (pool.total, pool.idle_count, target.state.inflight,
                        app.gateway.proxy.recorder.inflight)
            total, idle, inflight, gauge = gw.lt.call(look)
            # Every open upstream connection is idle in the pool; nothing in flight.
            return total == idle and inflight == 0 and gauge == 0 and total <= 8

        assert wait_for(settled, timeout=5)
        # The gateway still answers normally afterwards.
        from gwtest import http

        assert wait_for(lambda: http(gw.port, "POST", "/v1/chat/completions",
                                     chat()).status == 200, timeout=3)
