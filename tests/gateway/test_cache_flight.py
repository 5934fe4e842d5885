"""Identical misses at once through a running gateway: one upstream request
(the mock's count says so), its answer or its error shared by the waiters, the
leading client leaving without cancelling what the others wait for, and the
waiters bounded by the model's timeouts."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from cache_gw import KEY_A, PATHS, cache_yaml, doc, post, unique, upstream
from gwtest import Gateway, Response, connect, running, wait_for
from redistest import free_port

from fastgw.pipeline.cache import CacheStore

N = 20


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    with running(cache_yaml) as g:
        yield g


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(N) as p:
        yield p


def store(gw: Gateway) -> CacheStore:
    assert gw.app.gateway is not None
    s = gw.app.gateway.state.snapshot.cache
    assert s is not None
    return s


def waiting(gw: Gateway) -> int:
    """Requests waiting for another one's answer."""
    return gw.lt.call(lambda: store(gw).waiters())


def content(r: Response) -> Any:
    return orjson.loads(r.body)["choices"][0]["message"]["content"]


def streamed(r: Response) -> str:
    """The text of a chat stream."""
    docs = [orjson.loads(ln[6:]) for ln in r.body.split(b"\n")
            if ln.startswith(b"data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in docs if c["choices"])


def results(futures: list[Future[Response]]) -> list[Response]:
    return [f.result(timeout=30) for f in futures]


def start_leader(gw: Gateway, pool: ThreadPoolExecutor, send: Callable[[], Response]
                 ) -> Future[Response]:
    """Send the leading request and wait until it has reached the upstream."""
    before = upstream(gw)
    leader = pool.submit(send)
    assert wait_for(lambda: upstream(gw) > before, timeout=10), "the leader never went upstream"
    return leader


@pytest.mark.parametrize("stream", [False, True])
def test_identical_misses_at_once_go_upstream_once(gw: Gateway, pool: ThreadPoolExecutor,
                                                   stream: bool) -> None:
    d = doc(text=unique(), stream=stream)
    before = upstream(gw)
    futures = [pool.submit(post, gw, d, **{"x-mock-latency-ms": "400"}) for _ in range(N)]
    answers = results(futures)
    assert [r.status for r in answers] == [200] * N
    assert upstream(gw) - before == 1
    assert sorted(r.headers["x-fastgw-cache"] for r in answers) == ["hit"] * (N - 1) + ["miss"]
    if stream:
        texts = {streamed(r) for r in answers}
        assert all(r.body.endswith(b"data: [DONE]\n\n") for r in answers)
        whole = post(gw, doc(text=d["messages"][0]["content"]))
        assert whole.headers["x-fastgw-cache"] == "hit"
    else:
        texts = {content(r) for r in answers}
    assert len(texts) == 1
    assert len({r.headers["x-request-id"] for r in answers}) == N


def test_the_leaders_error_is_given_to_the_waiters_and_not_stored(
        gw: Gateway, pool: ThreadPoolExecutor) -> None:
    d = doc(text=unique())
    before = upstream(gw)
    leader = start_leader(gw, pool, lambda: post(
        gw, d, **{"x-mock-fault": "500", "x-mock-latency-ms": "500"}))
    waiters = [pool.submit(post, gw, d) for _ in range(N - 1)]  # these would succeed alone
    assert wait_for(lambda: waiting(gw) == N - 1 or leader.done(), timeout=10)
    answers = [leader.result(timeout=30), *results(waiters)]
    assert [r.status for r in answers] == [502] * N, [r.body for r in answers]
    assert all(orjson.loads(r.body)["error"]["type"] == "api_error" for r in answers)
    assert all(r.headers["x-fastgw-cache"] == "miss" for r in answers)
    tried = upstream(gw) - before
    assert tried == int(answers[0].headers["x-fastgw-attempts"])  # the leader's only
    r = post(gw, d)  # the error was not stored
    assert r.status == 200 and r.headers["x-fastgw-cache"] == "miss"
    assert upstream(gw) - before == tried + 1


@pytest.mark.parametrize("stream", [False, True])
def test_the_leaders_client_leaving_does_not_cancel_the_shared_request(
        gw: Gateway, pool: ThreadPoolExecutor, stream: bool) -> None:
    d = doc(text=unique(), stream=stream)
    assert post(gw, doc(text=unique())).status == 200  # a pooled upstream connection
    before = upstream(gw)
    stats = gw.mock_stats()
    body = orjson.dumps(d)
    s = connect(gw.port)
    s.sendall(b"POST " + PATHS["chat"].encode() + b" HTTP/1.1\r\nhost: x\r\n"
              b"authorization: Bearer " + KEY_A.encode() + b"\r\nx-mock-latency-ms: 600\r\n"
              b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    try:
        assert wait_for(lambda: upstream(gw) > before, timeout=10)
        waiters = [pool.submit(post, gw, d) for _ in range(N - 1)]
        assert wait_for(lambda: waiting(gw) == N - 1, timeout=10)
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # the leader's client leaves (a reset) while the others wait
    answers = results(waiters)
    assert [r.status for r in answers] == [200] * (N - 1)
    assert all(r.headers["x-fastgw-cache"] == "hit" for r in answers)
    assert upstream(gw) - before == 1
    after = gw.mock_stats()
    assert after["aborted_streams"] == stats["aborted_streams"]
    # the answer was stored too
    assert post(gw, doc(text=d["messages"][0]["content"])).headers["x-fastgw-cache"] == "hit"
    assert upstream(gw) - before == 1


def test_waiters_are_bounded_by_the_models_timeouts(pool: ThreadPoolExecutor) -> None:
    # total_s 1: a waiter goes upstream itself after a second; the leader, each of
    # its tries cut at first_byte_s, answers later.
    timeouts = "\n    timeouts: {first_byte_s: 0.9, total_s: 1.0}"
    with running(lambda p: cache_yaml(p, timeouts=timeouts)) as g:
        d = doc(text=unique())
        leader = start_leader(g, pool, lambda: post(g, d, **{"x-mock-fault": "stall:5000"}))
        t0 = time.monotonic()
        waiter = pool.submit(post, g, d)
        assert wait_for(lambda: waiting(g) == 1 or waiter.done(), timeout=10)
        r = waiter.result(timeout=30)
        waited = time.monotonic() - t0
        assert r.status == 200 and r.headers["x-fastgw-cache"] == "miss"
        assert not leader.done()  # the waiter did not wait for the leader's end
        assert waited >= 1.0
        lead = leader.result(timeout=30)
        assert lead.status == 504
        assert upstream(g) == int(lead.headers["x-fastgw-attempts"]) + 1


def _fallback_yaml(port: int) -> str:
    """``gpt`` (cached) on a provider nobody listens for, falling back to ``plain``
    (``cache: false``) on the mock; a waiter would wait 30 s for a lost leader."""
    down = free_port()
    return cache_yaml(port).replace(
        "  - {name: gpt, targets: [{provider: mock, model: g}],",
        "  - {name: gpt, fallbacks: [plain], targets: [{provider: down, model: g}],"
    ).replace("models:\n", "  - {name: down, kind: openai-compatible, "
              f"base_url: 'http://127.0.0.1:{down}/v1', api_key: k,\n"
              "     timeouts: {total_s: 30}}\nmodels:\n")


def test_a_leader_answered_by_a_fallback_without_the_cache_ends_its_flight() -> None:
    """The leading miss of a cached model answered by a fallback without the cache:
    nothing stored under the cached model's key, and its flight ends with it (an
    identical request later does not wait for a leader long gone)."""
    with running(_fallback_yaml) as g:
        d = doc(text=unique())
        for _ in range(2):
            t0 = time.monotonic()
            r = post(g, d)
            assert r.status == 200, r.body
            assert r.headers["x-fastgw-cache"] == "miss"  # (nothing stored by the first)
            assert r.headers["x-fastgw-provider"] == "mock"  # the fallback served
            assert time.monotonic() - t0 < 10
            assert g.lt.call(lambda: dict(store(g).flights)) == {}
