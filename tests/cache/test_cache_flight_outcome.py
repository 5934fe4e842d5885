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
