"""What a flight's waiters get when its leading request ends: the upstream's
error is theirs too, but a refusal of the leader's own (its limits, checked
after the lookup, before anything went upstream) is not: they go upstream
themselves."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from fastgw.config import CacheConfig, RedisConfig
from fastgw.pipeline.cache import MISS, CacheFilter, CacheState, CacheStore, Flight, SharedFailure

KEY = b"k" * 16


def lead_and_end(status: int, attempts: int) -> Any:
    """A leader with a waiter ends with ``status`` after ``attempts`` upstream
    requests: what the waiter's future holds."""
    loop = asyncio.new_event_loop()
    try:
        store = CacheStore(CacheConfig(enabled=True), RedisConfig(), loop)
        cache = CacheFilter(store, SimpleNamespace(targets=()))  # type: ignore[arg-type]
        leader = CacheState(MISS, write=True)
        flight = leader.flight = Flight(loop)
        ctx = SimpleNamespace(cache=leader, cache_key=KEY, status=status, attempts=attempts,
                              error="what went wrong", route=None)
        store.flights[KEY] = ctx  # type: ignore[assignment]
        cache.logging(ctx)  # type: ignore[arg-type]
        assert KEY not in store.flights
        assert ctx.cache.flight is None and not ctx.cache.write
        assert flight.future.done()
        return flight.future.result()
    finally:
        loop.close()


@pytest.mark.parametrize("status", [502, 504, 400])
def test_the_upstreams_error_is_shared(status: int) -> None:
    outcome = lead_and_end(status, attempts=1)
    assert isinstance(outcome, SharedFailure)
    assert outcome.status == status and outcome.message == "what went wrong"


@pytest.mark.parametrize("status", [429, 403])
def test_the_leaders_own_refusal_is_not_shared(status: int) -> None:
    assert lead_and_end(status, attempts=0) is None


def test_a_leader_whose_client_left_shares_nothing() -> None:
    assert lead_and_end(499, attempts=1) is None


def follow_a_leader_gone(stored: bool) -> tuple[Any, Any]:
    """A request told to wait for a leader that has landed before it began waiting:
    (what _follow answered, the request's cache state afterwards)."""
    loop = asyncio.new_event_loop()
    try:
        store = CacheStore(CacheConfig(enabled=True), RedisConfig(), loop)
        assert store.memory is not None
        cache = CacheFilter(store, SimpleNamespace(targets=()))  # type: ignore[arg-type]
        if stored:
            store.memory.store(KEY, b'{"id":"chatcmpl-1","object":"chat.completion"}', 3, 4,
                               60)
        leader: Any = SimpleNamespace()  # landed: no longer in store.flights
        route = SimpleNamespace(input_per_token=0.0, output_per_token=0.0, name="m")
        ctx: Any = SimpleNamespace(cache=None, cache_key=KEY, endpoint="chat", stream=False,
                                   extra_headers=b"", route=route, doc={}, model="m")
        answer = loop.run_until_complete(
            asyncio.wait_for(cache._follow(ctx, leader), 5))
        assert (store.flights.get(KEY) is ctx) == (not stored)
        return answer, ctx.cache
    finally:
        loop.close()


def test_a_waiter_whose_leader_landed_already_does_not_wait_for_it() -> None:
    answer, state = follow_a_leader_gone(stored=True)  # its answer is there: a hit
    assert answer is not None and answer.status == 200 and state.hit
    answer, state = follow_a_leader_gone(stored=False)  # nothing stored: it leads itself
    assert answer is None and state.write and not state.hit
