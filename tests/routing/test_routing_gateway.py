"""Routing and resilience through a real gateway and real upstreams."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from gwtest import LoopThread, Reader, Response, chat, connect, http, running, wait_for

from fastgw.mock import MockOptions, start_mock


class Scripted:
    """An upstream that answers every request with one fixed response, and counts."""

    def __init__(self, lt: LoopThread, status: int, body: bytes,
                 headers: bytes = b"", delay_s: float = 0.0) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.delay_s = delay_s
        self.requests = 0
        self.tenants: list[bytes] = []  # each request's x-tenant header, in arrival order
        self.server = lt.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port: int = self.server.sockets[0].getsockname()[1]
        lt.closers.append(self.server.close)  # closed with the loop, even after a failure

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                self.requests += 1
                self.tenants.extend(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                                    if line.lower().startswith(b"x-tenant:"))
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\n%s"
                             b"content-length: %d\r\n\r\n%s"
                             % (self.status, self.headers, len(self.body), self.body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()


@contextmanager
def side_loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def providers_yaml(ports: dict[str, int], timeouts: str = "") -> str:
    out = "providers:\n"
    for name, port in ports.items():
        out += (f"  - {{name: {name}, kind: openai-compatible, "
                f"base_url: 'http://127.0.0.1:{port}/v1', api_key: k-{name}"
                f"{', timeouts: ' + timeouts if timeouts else ''}}}\n")
    return out


OFF = "observability: {access_log: off}\n"


def keepalive_requests(port: int, bodies: list[dict[str, object]],
                       headers: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    """Send requests one after another on one connection; return response headers."""
    out = []
    with connect(port) as s:
        reader = Reader(s)
        for i, body in enumerate(bodies):
            data = orjson.dumps(body)
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers[i] if headers else {}).items())
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n%s"
                      b"content-length: %d\r\n\r\n%s" % (extra.encode(), len(data), data))
            r = reader.next()
            assert r.status == 200, r.body
            out.append(r.headers)
    return out


# -- balancing -------------------------------------------------------------------------


def test_weighted_split_is_within_three_percent_over_3000_requests() -> None:
    def yaml(port: int) -> str:
        return providers_yaml({"p": port}) + """
models:
  - name: m
    balance: weighted
    targets:
      - {provider: p, model: a, weight: 5}
      - {provider: p, model: b, weight: 3}
      - {provider: p, model: c, weight: 2}
""" + OFF

    with running(yaml) as gw:
        got = Counter(h["x-fastgw-model"] for h in keepalive_requests(gw.port,
                                                                     [chat("m")] * 3000))
    for name, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(got[name] / 3000 - share) <= 0.03, got


def test_round_robin_and_least_inflight_spread_evenly() -> None:
    for balance in ("round-robin", "least-inflight", "latency"):
        def yaml(port: int, balance: str = balance) -> str:
            return providers_yaml({"p": port}) + f"""
models:
  - name: m
    balance: {balance}
    targets: [{{provider: p, model: a}}, {{provider: p, model: b}}]
""" + OFF

        with running(yaml) as gw:
            got = Counter(h["x-fastgw-model"] for h in keepalive_requests(gw.port,
                                                                         [chat("m")] * 200))
        assert set(got) == {"a", "b"}, (balance, got)
        if balance != "latency":
            assert abs(got["a"] - got["b"]) <= 2, (balance, got)


def _hash_yaml(port: int, n: int) -> str:
    targets = "".join(f"      - {{provider: p, model: t{i}}}\n" for i in range(n))
    return providers_yaml({"p": port}) + f"""
models:
  - name: m
    balance: consistent-hash
    hash_key: header:x-user-id
    targets:
{targets}""" + OFF


def test_consistent_hash_sticks_and_adding_a_target_moves_few_keys() -> None:
    users = [f"user-{i}" for i in range(400)]

    def assign(gw_port: int) -> dict[str, str]:
        hs = keepalive_requests(gw_port, [chat("m")] * len(users),
                                [{"x-user-id": u} for u in users])
        return {u: h["x-fastgw-model"] for u, h in zip(users, hs, strict=True)}

    with running(lambda p: _hash_yaml(p, 4)) as gw:
        first = assign(gw.port)
        assert assign(gw.port) == first  # sticky
        assert len(set(first.values())) == 4
        gw.reconfigure(_hash_yaml(gw.mock.port, 5))
        after = assign(gw.port)
    moved = sum(1 for u in users if after[u] != first[u])
    # Ideal is 1/5 of the keys; every moved key must go to the new target.
    assert moved / len(users) <= 0.30, moved
    assert all(after[u] == "t4" for u in users if after[u] != first[u])


def test_prefix_hash_keeps_a_conversation_on_one_target() -> None:
    def yaml(port: int) -> str:
        return _hash_yaml(port, 4).replace("header:x-user-id", "prefix")

    with running(yaml) as gw:
        seen = set()
        convo = [{"role": "system", "content": "You are terse."},
                 {"role": "user", "content": "first question"}]
        for turn in range(5):
            msgs = convo + [{"role": "assistant", "content": f"a{turn}"},
                            {"role": "user", "content": f"q{turn}"}] * turn
            (h,) = keepalive_requests(gw.port, [{"model": "m", "messages": msgs}])
            seen.add(h["x-fastgw-model"])
        assert len(seen) == 1


# -- health ----------------------------------------------------------------------------


def test_failing_target_is_ejected_then_recovers_after_cooldown() -> None:
    dead = closed_port()

    def yaml(port: int) -> str:
        return providers_yaml({"good": port, "bad": dead}) + """
models:
  - name: m
    balance: round-robin
    retry: {attempts: 2}
    targets: [{provider: bad, model: x}, {provider: good, model: y}]
health: {consecutive_failures: 2, base_ejection_s: 0.6}
""" + OFF

    with side_loop() as lt, running(yaml, lt=lt) as gw:
        attempts = [int(h["x-fastgw-attempts"]) for h in keepalive_requests(gw.port,
                                                                           [chat("m")] * 8)]
        # Round robin sends every other request to 'bad' first (2 attempts) until it
        # has failed twice; after that it is out and every request takes 1 attempt.
        assert attempts[:4].count(2) == 2
        assert attempts[4:] == [1, 1, 1, 1]
        # Bring 'bad' to life; after the cooldown its half-open probe succeeds.
        srv = lt.run(start_mock(MockOptions(), "127.0.0.1", dead))
        try:
            time.sleep(0.7)
            providers = Counter(h["x-fastgw-provider"] for h in
                                keepalive_requests(gw.port, [chat("m")] * 10))
            assert providers["bad"] >= 4, providers
        finally:
            lt.call(srv.close)


# -- retries and fallbacks -----------------------------------------------------------------


def _fallback_yaml(good: int, bad: int, *, timeouts: str = "", retry: str = "{attempts: 1}",
                   extra: str = "") -> str:
    return providers_yaml({"good": good}) + providers_yaml({"bad": bad}, timeouts).replace(
        "providers:\n", "") + f"""
models:
  - name: primary
    retry: {retry}
    fallbacks: [backup]
    targets: [{{provider: bad, model: x}}]
  - name: backup
    targets: [{{provider: good, model: y}}]
{extra}""" + OFF


@pytest.mark.parametrize("kind", ["500", "429", "timeout", "refused"])
def test_fallback_chain_serves_from_backup(kind: str) -> None:
    with side_loop() as lt:
        scripted: Scripted | None = None
        timeouts = ""
        if kind == "500":
            scripted = Scripted(lt, 500, b'{"error": {"message": "boom"}}')
        elif kind == "429":
            scripted = Scripted(lt, 429, b'{"error": {"message": "slow down"}}',
                                b"retry-after: 30\r\n")
        elif kind == "timeout":
            scripted = Scripted(lt, 200, b"{}", delay_s=30.0)  # past the client's 10 s
            timeouts = "{first_byte_s: 0.3}"
        bad_port = scripted.port if scripted is not None else closed_port()
        with running(lambda p: _fallback_yaml(p, bad_port, timeouts=timeouts), lt=lt) as gw:
            from fastgw.metrics import FALLBACKS

            # The counter is process-wide (earlier runs add to it): the change counts.
            before = gw.metric(FALLBACKS, "primary", "backup")
            t0 = time.monotonic()
            r = http(gw.port, "POST", "/v1/chat/completions", chat("primary"))
            assert r.status == 200, r.body
            assert r.headers["x-fastgw-provider"] == "good"
            assert r.headers["x-fastgw-model"] == "y"
            assert r.headers["x-fastgw-attempts"] == "2"
            assert time.monotonic() - t0 < 10
            assert gw.metric(FALLBACKS, "primary", "backup") - before == 1
        if scripted is not None:
            assert scripted.requests == 1
            lt.call(scripted.server.close)


def test_retries_on_same_target_then_fallback_counts_every_attempt() -> None:
    with side_loop() as lt:
        bad = Scripted(lt, 503, b'{"error": {"message": "down"}}')
        with running(lambda p: _fallback_yaml(p, bad.port, retry="{attempts: 3, backoff_ms: 1}"),
                     lt=lt) as gw:
            r = http(gw.port, "POST", "/v1/chat/completions", chat("primary"))
        assert r.status == 200
        assert r.headers["x-fastgw-attempts"] == "4"
        assert bad.requests == 3
        lt.call(bad.server.close)


def test_all_failing_ends_as_502_and_timeouts_as_504() -> None:
    with side_loop() as lt:
        bad = Scripted(lt, 500, b'{"error": {"message": "boom sk-secret"}}')
        slow = Scripted(lt, 200, b"{}", delay_s=3.0)

        def yaml(_p: int) -> str:
            return providers_yaml({"bad": bad.port}) + providers_yaml(
                {"slow": slow.port}, "{first_byte_s: 0.2}").replace("providers:\n", "") + """
models:
  - name: broken
    retry: {attempts: 2, backoff_ms: 1}
    targets: [{provider: bad, model: x}]
  - name: stuck
    retry: {attempts: 1}
    targets: [{provider: slow, model: x}]
""" + OFF

        with running(yaml, lt=lt) as gw:
            r = http(gw.port, "POST", "/v1/chat/completions", chat("broken"))
            assert r.status == 502
            assert r.headers["x-fastgw-attempts"] == "2"
            assert b"boom" in r.body
            r = http(gw.port, "POST", "/v1/chat/completions", chat("stuck"))
            assert r.status == 504
        lt.call(bad.server.close)
        lt.call(slow.server.close)


def test_client_errors_are_not_retried() -> None:
    with side_loop() as lt:
        bad = Scripted(lt, 422, b'{"error": {"message": "bad field", "code": "invalid"}}')
        with running(lambda p: _fallback_yaml(p, bad.port, retry="{attempts: 3}"), lt=lt) as gw:
            r = http(gw.port, "POST", "/v1/chat/completions", chat("primary"))
        assert r.status == 422
        assert b"bad field" in r.body
        assert bad.requests == 1
        lt.call(bad.server.close)


def test_context_length_error_falls_back_to_context_fallbacks_only() -> None:
    with side_loop() as lt:
        small = Scripted(lt, 400, b'{"error": {"message": "too long", "type": '
                                  b'"invalid_request_error", "code": "context_length_exceeded"}}')

        def yaml(port: int) -> str:
            return providers_yaml({"good": port, "small": small.port}) + """
models:
  - name: short
    fallbacks: [other]
    context_fallbacks: [long]
    targets: [{provider: small, model: s}]
  - name: other
    targets: [{provider: good, model: o}]
  - name: long
    targets: [{provider: good, model: l}]
""" + OFF

        with running(yaml, lt=lt) as gw:
            r = http(gw.port, "POST", "/v1/chat/completions", chat("short"))
        assert r.status == 200
        assert r.headers["x-fastgw-model"] == "l"
        lt.call(small.server.close)


def test_429_retry_after_is_honoured_by_cooling_the_target() -> None:
    with side_loop() as lt:
        throttled = Scripted(lt, 429, b'{"error": {"message": "rate"}}', b"retry-after: 5\r\n")

        def yaml(port: int) -> str:
            return providers_yaml({"good": port, "hot": throttled.port}) + """
models:
  - name: m
    balance: round-robin
    targets: [{provider: hot, model: h}, {provider: good, model: g}]
""" + OFF

        with running(yaml, lt=lt) as gw:
            hs = keepalive_requests(gw.port, [chat("m")] * 6)
        # The first request found 'hot' throttled and moved on; for the next 5 s no
        # request is sent there again.
        assert throttled.requests == 1
        assert all(h["x-fastgw-provider"] == "good" for h in hs)
        lt.call(throttled.server.close)


def test_no_retry_after_the_stream_commit_point() -> None:
    with running() as gw:
        r = http(gw.port, "POST", "/v1/chat/completions", chat(stream=True),
                 headers={"x-mock-fault": "cut:4"})
        assert r.status == 200
        assert r.headers["x-fastgw-attempts"] == "1"
        assert b"event: error" in r.body
        assert gw.mock_stats()["requests"] == 1


def test_in_band_error_before_content_fails_over() -> None:
    def yaml(ports: list[int]) -> str:
        return providers_yaml({"a": ports[0], "b": ports[1]}) + """
models:
  - name: m
    balance: round-robin
    targets: [{provider: a, model: x}, {provider: b, model: y}]
""" + OFF

    with running(yaml_for_ports=yaml, mocks=2) as gw:
        # error-first makes every upstream fail before content: both are tried, the
        # client never sees their error events, and the stream ends with the
        # gateway's own typed error event.
        r = http(gw.port, "POST", "/v1/chat/completions", chat("m", stream=True),
                 headers={"x-mock-fault": "error-first"})
        assert r.status == 200
        assert gw.mock_stats(0)["requests"] == 1 and gw.mock_stats(1)["requests"] == 1
        assert r.body.count(b"event: error") == 1
        assert b"before any content" in r.body and b"[DONE]" not in r.body


def test_retry_budget_stops_retry_storms() -> None:
    with side_loop() as lt:
        bad = Scripted(lt, 500, b'{"error": {"message": "boom"}}', delay_s=0.2)

        def yaml(_p: int) -> str:
            return providers_yaml({"bad": bad.port}) + """
models:
  - name: m
    retry: {attempts: 3, backoff_ms: 1}
    targets: [{provider: bad, model: x}]
retry_budget: {percent: 0, min_concurrent: 2}
""" + OFF

        with running(yaml, lt=lt) as gw:
            async def fire() -> list[int]:
                async def one() -> int:
                    r, w = await asyncio.open_connection("127.0.0.1", gw.port)
                    data = orjson.dumps(chat("m"))
                    w.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                            b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
                            % (len(data), data))
                    raw = await r.read()
                    w.close()
                    return int(raw.split(b"x-fastgw-attempts: ")[1].split(b"\r\n")[0])
                return list(await asyncio.gather(*(one() for _ in range(10))))

            attempts = asyncio.run(fire())
        # 10 concurrent requests, at most 2 retries in flight at once: far fewer than
        # the 20 retries that attempts: 3 would otherwise send.
        assert sum(a - 1 for a in attempts) <= 8, attempts
        assert bad.requests == sum(attempts)
        lt.call(bad.server.close)


# -- variants ------------------------------------------------------------------------------


def _variants_yaml(port: int, sticky: str = "") -> str:
    return providers_yaml({"p": port}) + f"""
models:
  - name: bot
    {sticky}
    variants:
      - {{model: m1, weight: 90, name: v1}}
      - {{model: m2, weight: 10, name: v2}}
  - name: m1
    targets: [{{provider: p, model: d1}}]
  - name: m2
    targets: [{{provider: p, model: d2}}]
""" + OFF


def test_variants_split_by_weight() -> None:
    with running(lambda p: _variants_yaml(p)) as gw:
        hs = keepalive_requests(gw.port, [chat("bot")] * 1000)
    got = Counter(h["x-fastgw-variant"] for h in hs)
    assert abs(got["v2"] / 1000 - 0.10) <= 0.03, got
    assert all(h["x-fastgw-model"] == ("d1" if h["x-fastgw-variant"] == "v1" else "d2")
               for h in hs)


def test_variants_are_sticky_per_header() -> None:
    with running(lambda p: _variants_yaml(p, "sticky: header:x-user")) as gw:
        users = [f"u{i}" for i in range(100)]
        first = keepalive_requests(gw.port, [chat("bot")] * 100, [{"x-user": u} for u in users])
        again = keepalive_requests(gw.port, [chat("bot")] * 100, [{"x-user": u} for u in users])
    assert [h["x-fastgw-variant"] for h in first] == [h["x-fastgw-variant"] for h in again]
    assert {h["x-fastgw-variant"] for h in first} == {"v1", "v2"}


# -- request controls ------------------------------------------------------------------------


def test_request_controls_order_only_ignore_and_no_fallbacks() -> None:
    def yaml(ports: list[int]) -> str:
        return providers_yaml({"a": ports[0], "b": ports[1]}) + """
models:
  - name: m
    balance: round-robin
    targets: [{provider: a, model: x}, {provider: b, model: y}]
    price: {input_per_mtok: 5, output_per_mtok: 15}
""" + OFF

    with running(yaml_for_ports=yaml, mocks=2) as gw:
        body = chat("m", fastgw={"order": ["b", "a"]})
        assert all(h["x-fastgw-provider"] == "b"
                   for h in keepalive_requests(gw.port, [body] * 4))
        body = chat("m", fastgw={"ignore": ["b"]})
        assert all(h["x-fastgw-provider"] == "a"
                   for h in keepalive_requests(gw.port, [body] * 4))
        hs = keepalive_requests(gw.port, [chat("m")] * 4, [{"x-fastgw-only": "b"}] * 4)
        assert all(h["x-fastgw-provider"] == "b" for h in hs)
        r = http(gw.port, "POST", "/v1/chat/completions",
                 chat("m", fastgw={"max_price": {"input_per_mtok": 1}}))
        assert r.status == 400 and b"max_price" in r.body
        r = http(gw.port, "POST", "/v1/chat/completions", chat("m", fastgw={"sort": "x"}))
        assert r.status == 400 and b"unknown routing control" in r.body
        # The control object never reaches the upstream.
        r = http(gw.port, "POST", "/v1/chat/completions", chat("m", fastgw={"only": ["a"]}),
                 headers={"x-mock-echo": "1"})
        assert "fastgw" not in orjson.loads(r.body)["echo"]["body"]


# -- provider quotas -------------------------------------------------------------------------


def test_provider_quota_answers_every_request_fairly_without_429() -> None:
    """10,000 requests through a provider quota of 600 rpm, time-scaled x200 (2000/s):
    all answered, none 429, and two tenants share the provider fairly."""

    def yaml(port: int) -> str:
        return f"""
providers:
  - name: p
    kind: openai-compatible
    base_url: http://127.0.0.1:{port}/v1
    limits: {{rpm: 120000, burst: 20, max_queue: 20000, queue_timeout_s: 60}}
models:
  - {{name: m, targets: [{{provider: p, model: x}}]}}
""" + OFF

    with running(yaml) as gw:
        done: dict[str, list[float]] = {"127.0.0.1": [], "127.0.0.2": []}
        statuses: Counter[int] = Counter()

        async def client(src: str, n: int) -> None:
            r, w = await asyncio.open_connection("127.0.0.1", gw.port, local_addr=(src, 0))
            data = orjson.dumps(chat("m"))
            req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                   b"content-length: %d\r\n\r\n%s" % (len(data), data))
            for _ in range(n):
                w.write(req)
                head = await r.readuntil(b"\r\n\r\n")
                statuses[int(head.split()[1])] += 1
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await r.readexactly(length)
                done[src].append(time.monotonic())
            w.close()

        async def main() -> None:
            # Tenant A: 150 connections x 50 requests; tenant B: 50 x 50.
            await asyncio.gather(*(client("127.0.0.1", 50) for _ in range(150)),
                                 *(client("127.0.0.2", 50) for _ in range(50)))

        t0 = time.monotonic()
        asyncio.run(asyncio.wait_for(main(), 90))
        elapsed = time.monotonic() - t0
    assert statuses == {200: 10000}
    assert {k: len(v) for k, v in done.items()} == {"127.0.0.1": 7500, "127.0.0.2": 2500}
    ideal = 10000 / 2000
    assert elapsed >= ideal * 0.9  # the quota did shape the traffic


def test_provider_quota_shares_the_provider_fairly_between_tenants() -> None:
    """A quota slow enough (100 requests/s) that both tenants always have requests
    waiting: the order in which requests reach the upstream alternates between them,
    although B has a quarter of the connections (FIFO would give it a quarter)."""
    with side_loop() as lt:
        up = Scripted(lt, 200, orjson.dumps({"id": "x", "object": "chat.completion",
                                             "choices": []}))

        def yaml(_: int) -> str:
            return f"""
providers:
  - name: p
    kind: openai-compatible
    base_url: http://127.0.0.1:{up.port}/v1
    limits: {{rpm: 6000, burst: 1, max_queue: 1000, queue_timeout_s: 60}}
models:
  - {{name: m, targets: [{{provider: p, model: x}}]}}
""" + OFF

        with running(yaml, lt=lt) as gw:
            statuses: Counter[int] = Counter()

            async def client(src: str, n: int) -> None:
                r, w = await asyncio.open_connection("127.0.0.1", gw.port, local_addr=(src, 0))
                data = orjson.dumps(chat("m"))
                req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-tenant: %s\r\n"
                       b"content-length: %d\r\n\r\n%s" % (src[-1:].encode(), len(data), data))
                for _ in range(n):
                    w.write(req)
                    head = await r.readuntil(b"\r\n\r\n")
                    statuses[int(head.split()[1])] += 1
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    await r.readexactly(length)
                w.close()

            async def main() -> None:
                # Tenant A (127.0.0.1): 30 connections x 6; tenant B (127.0.0.2): 10 x 10.
                await asyncio.gather(*(client("127.0.0.1", 6) for _ in range(30)),
                                     *(client("127.0.0.2", 10) for _ in range(10)))

            asyncio.run(asyncio.wait_for(main(), 60))
        assert statuses == {200: 280}
        order = up.tenants
        assert sorted(order) == [b"1"] * 180 + [b"2"] * 100
        # Up to B's last request, B had about every other slot.
        last_b = max(i for i, t in enumerate(order) if t == b"2")
        share = 100 / (last_b + 1)
        assert 0.4 <= share <= 0.6, (share, b"".join(order))


def test_provider_quota_full_queue_answers_429() -> None:
    def yaml(port: int) -> str:
        return f"""
providers:
  - name: p
    kind: openai-compatible
    base_url: http://127.0.0.1:{port}/v1
    limits: {{max_inflight: 1, max_queue: 1, queue_timeout_s: 0.3}}
models:
  - {{name: m, targets: [{{provider: p, model: x}}]}}
""" + OFF

    with running(yaml, mock=MockOptions(latency_ms=500)) as gw:
        async def fire() -> list[tuple[int, bytes]]:
            async def one() -> tuple[int, bytes]:
                r, w = await asyncio.open_connection("127.0.0.1", gw.port)
                data = orjson.dumps(chat("m"))
                w.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data))
                raw = await r.read()
                w.close()
                return int(raw.split()[1]), raw
            return list(await asyncio.gather(*(one() for _ in range(4))))

        results = asyncio.run(fire())
    codes = Counter(c for c, _ in results)
    assert codes[200] == 1 and codes[429] == 3, codes
    assert all(b"retry-after: " in raw for c, raw in results if c == 429)
    assert any(b"queue is full" in raw for _, raw in results)
    assert any(b"did not free up" in raw for _, raw in results)


def test_streams_count_against_inflight_until_they_end() -> None:
    with running(mock=MockOptions(chunks=5, chunk_interval_ms=100)) as gw:
        s = connect(gw.port)
        data = orjson.dumps(chat(stream=True))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s"
                  % (len(data), data))
        s.settimeout(5)
        s.recv(100)

        def inflight() -> int:
            snap = gw.app.gateway.state.snapshot  # type: ignore[union-attr]
            return snap.models["gpt-test"].targets[0].state.inflight

        assert gw.lt.call(inflight) == 1
        Reader(s).buf = b""
        s.close()
        assert wait_for(lambda: gw.lt.call(inflight) == 0, timeout=2)


def test_active_probes_eject_and_restore_without_client_traffic() -> None:
    port = closed_port()

    def yaml(good: int) -> str:
        return f"""
providers:
  - {{name: flaky, kind: openai-compatible, base_url: 'http://127.0.0.1:{port}/v1', probe: true}}
models:
  - {{name: m, targets: [{{provider: flaky, model: x}}]}}
health: {{probe_interval_s: 0.1, consecutive_failures: 2, base_ejection_s: 30}}
""" + OFF

    from fastgw.metrics import TARGET_HEALTHY

    gauge = TARGET_HEALTHY.labels("flaky", "x")
    with side_loop() as lt, running(yaml, lt=lt) as gw:
        assert wait_for(lambda: gauge._value.get() == 0, timeout=3)
        r = http(gw.port, "POST", "/v1/chat/completions", chat("m"))
        assert r.status == 503  # ejected, and its cooldown is long
        srv = lt.run(start_mock(MockOptions(), "127.0.0.1", port))
        # A good probe brings it back long before the 30 s cooldown.
        assert wait_for(lambda: gauge._value.get() == 1, timeout=3)
        assert http(gw.port, "POST", "/v1/chat/completions", chat("m")).status == 200
        lt.call(srv.close)


def test_while_another_request_holds_the_half_open_probe_the_answer_is_503() -> None:
    """One request at a time probes an ejected target after its cooldown; meanwhile
    others get 503 (no healthy target), not a second probe."""
    dead = closed_port()

    def yaml(port: int) -> str:
        return providers_yaml({"bad": dead}) + """
models:
  - name: m
    retry: {attempts: 1}
    targets: [{provider: bad, model: x}]
health: {consecutive_failures: 1, base_ejection_s: 0.2}
""" + OFF

    with side_loop() as lt, running(yaml, lt=lt) as gw:
        assert http(gw.port, "POST", "/v1/chat/completions", chat("m")).status == 502
        time.sleep(0.25)  # the cooldown is over: the next request is the probe

        def take_probe() -> bool:
            snap = gw.app.gateway.state.snapshot  # type: ignore[union-attr]
            health = snap.models["m"].targets[0].state.health
            return health.available(gw.app.loop.time())

        assert gw.lt.call(take_probe)  # this "request" holds the probe now
        r = http(gw.port, "POST", "/v1/chat/completions", chat("m"))
        assert r.status == 503, r.body


def _max_price_yaml(ports: list[int]) -> str:
    return providers_yaml({"a": ports[0], "b": ports[1]}) + """
models:
  - name: m
    targets: [{provider: a, model: x}]
    price: {input_per_mtok: 5, output_per_mtok: 15}
    fallbacks: [cheap]
  - name: cheap
    targets: [{provider: b, model: y}]
    price: {input_per_mtok: 1, output_per_mtok: 2}
""" + OFF


@pytest.mark.parametrize("via", ["header", "body"])
def test_max_price_header_and_body_number_bound_both_prices(via: str) -> None:
    """``x-fastgw-max-price: N`` and ``"fastgw": {"max_price": N}`` are the same control:
    a model whose input or output price is above N is skipped (its fallbacks still
    serve), and a request that nothing affordable can serve is refused with 400."""

    def send(price: str, **extra: Any) -> Response:
        if via == "header":
            return http(gw.port, "POST", "/v1/chat/completions", chat("m"),
                        headers={"x-fastgw-max-price": price, **extra})
        controls: dict[str, Any] = {"max_price": float(price)}
        if extra.get("x-fastgw-allow-fallbacks") == "false":
            controls["allow_fallbacks"] = False
        return http(gw.port, "POST", "/v1/chat/completions", chat("m", fastgw=controls))

    with running(yaml_for_ports=_max_price_yaml, mocks=2) as gw:
        for price in ["15", "20", "1e3"]:  # at or above both prices: the model itself
            r = send(price)
            assert r.status == 200 and r.headers["x-fastgw-provider"] == "a", (price, r.body)
        for price in ["14.99", "10", "5", "2"]:  # output (or both) too dear: the fallback
            r = send(price)
            assert r.status == 200 and r.headers["x-fastgw-provider"] == "b", (price, r.body)
        r = send("10", **{"x-fastgw-allow-fallbacks": "false"})
        assert r.status == 400 and b"max_price" in r.body, r.body
        for price in ["1.99", "0.5", "0"]:  # nothing is that cheap
            r = send(price)
            assert r.status == 400, (price, r.body)
            err = orjson.loads(r.body)["error"]
            assert err["param"] == "fastgw.max_price" and "max_price" in err["message"]
        assert gw.mock_stats(0)["requests"] == 3 and gw.mock_stats(1)["requests"] == 4


def test_max_price_header_that_is_not_a_number_is_refused() -> None:
    with running(yaml_for_ports=_max_price_yaml, mocks=2) as gw:
        for value in ["cheap", "", "1,2", "true"]:
            r = http(gw.port, "POST", "/v1/chat/completions", chat("m"),
                     headers={"x-fastgw-max-price": value})
            assert r.status == 400, (value, r.body)
            err = orjson.loads(r.body)["error"]
            assert err["param"] == "x-fastgw-max-price", err
        # The body's dict form bounds each price on its own; the header has no such form.
        r = http(gw.port, "POST", "/v1/chat/completions",
                 chat("m", fastgw={"max_price": {"input_per_mtok": 5}}))
        assert r.status == 200 and r.headers["x-fastgw-provider"] == "a"
        assert gw.mock_stats(1).get("requests", 0) == 0
