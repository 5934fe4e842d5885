"""Plans (which buckets a request reserves) and the Redis scripts against the native
table: same admissions, same remaining counts, same refunds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from limits_helpers import RedisServer, redis_server

from fastgw._native import Limit, LimiterTable, SharedLimiterTable
from fastgw.config import BudgetConfig, LimitMatch, LimitRule, LimitSpec, RedisConfig
from fastgw.limits import LocalLimiter, Rules
from fastgw.limits.redis import RedisLimiter, RedisReservation
from fastgw.limits.rules import (
    DEFAULT_COMPLETION_TOKENS,
    INFLIGHT,
    KIND_BUDGET,
    KIND_CONCURRENCY,
    KIND_RATE,
    REQUESTS,
    TOKENS,
    USD,
    Plan,
    ScopeSpec,
    duration,
    estimate,
)


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    """A real redis-server on a free port, stopped after the test."""
    with redis_server() as server:
        yield server


def test_reset_durations_use_openai_format() -> None:
    assert duration(0.0) == b"0s"
    assert duration(0.0123) == b"13ms"
    assert duration(1.5) == b"1.5s"
    assert duration(20.0) == b"20s"
    assert duration(59.9996) == b"60s"
    assert duration(360.0) == b"6m0s"
    assert duration(3725.2) == b"1h2m6s"


def test_estimate_uses_max_tokens_or_a_default() -> None:
    assert estimate(400, {"max_tokens": 50}, "chat") == (101, 50)
    assert estimate(400, {"max_completion_tokens": 70, "max_tokens": 50}, "chat") == (101, 70)
    assert estimate(400, {"max_output_tokens": 90}, "responses") == (101, 90)
    assert estimate(400, {}, "chat") == (101, DEFAULT_COMPLETION_TOKENS)
    assert estimate(400, {"max_tokens": "lots"}, "chat") == (101, DEFAULT_COMPLETION_TOKENS)
    assert estimate(400, {"max_tokens": 50}, "embeddings") == (101, 0)


def rule(rpm: int | None = None, **match: str) -> LimitRule:
    return LimitRule(match=LimitMatch(**match), rpm=rpm)


def test_plans_collect_key_limits_and_matching_rules() -> None:
    rules = Rules([rule(100, model="gpt-4o*"), rule(20, tier="free"),
                   rule(5, provider="azure-*"), rule(7, key="team-?"),
                   LimitRule(match=LimitMatch(model="gpt-4o"), tpm=1000, per="rule")])
    key = LimitSpec(rpm=600, max_inflight=3, budget_usd=BudgetConfig(50.0, "day"))
    plan = rules.plan("k:team-a", "team-a", "free", key, "gpt-4o", ["openai", "azure-eu"])
    assert plan is not None
    # A rule's bucket is named by a digest of its match and ``per`` (so counts in Redis
    # survive restarts and reloads that keep the match): written out, not recomputed.
    assert plan.keys == (
        "{fastgw}:key:k:team-a:rpm",
        "{fastgw}:key:k:team-a:inflight",
        "{fastgw}:key:k:team-a:budget:day",
        "{fastgw}:rule:2b9164799ad7:k:team-a:rpm",  # model: gpt-4o*
        "{fastgw}:rule:47d58bb77747:k:team-a:rpm",  # tier: free
        "{fastgw}:rule:366ca65d4821:k:team-a:rpm",  # provider: azure-*
        "{fastgw}:rule:3ebba4b2cc05:k:team-a:rpm",  # key: team-?
        "{fastgw}:rule:9339416fb1bb:*:tpm",  # per: rule -> one count for everybody
    )
    assert plan.labels == ("key", "key", "key", "model", "tier", "provider", "key", "model")
    other = rules.plan("k:team-b", "team-b", None, None, "gpt-4o-mini", ["openai"])
    assert other is not None and other.labels == ("model", "key")
    assert other.keys == ("{fastgw}:rule:2b9164799ad7:k:team-b:rpm",
                          "{fastgw}:rule:3ebba4b2cc05:k:team-b:rpm")
    prefixed = Rules([rule(100, model="gpt-4o*")], key_prefix="gw2").plan(
        "k:team-a", "team-a", None, None, "gpt-4o", [])
    assert prefixed is not None
    assert prefixed.keys == ("{gw2}:rule:2b9164799ad7:k:team-a:rpm",)
    assert rules.plan("-", None, None, None, "llama", []) is None


def test_bucket_names_follow_the_match_not_the_numbers() -> None:
    a = Rules([rule(100, model="m")]).plan("k:x", "x", None, None, "m", [])
    b = Rules([rule(999, model="m")]).plan("k:x", "x", None, None, "m", [])
    c = Rules([rule(100, model="m"), rule(5, model="m")]).plan("k:x", "x", None, None, "m", [])
    assert a is not None and b is not None and c is not None
    assert a.keys == b.keys
    assert len(set(c.keys)) == 2  # two identical matches still get two buckets


def test_costs_are_capped_at_each_limit_and_fixed_plans_share_one_tuple() -> None:
    spec = LimitSpec(rpm=10, tpm=1000, budget_usd=BudgetConfig(2.0))
    plan = Rules([]).plan("k:x", "x", None, spec, "m", [])
    assert plan is not None and plan.uses_usage
    assert plan.costs(5000.0, 0.5) == [1.0, 1000.0, 0.5]
    assert list(plan.actual(1.0, 4000.0, 3.0)) == [1.0, 4000.0, 3.0]
    fixed = Rules([]).plan("k:x", "x", None, LimitSpec(rpm=10, max_inflight=2), "m", [])
    assert fixed is not None and not fixed.uses_usage
    assert fixed.costs(1.0, 1.0) is fixed.costs(9.0, 9.0) == (1.0, 1.0)
    assert tuple(fixed.actual(1.0, 5.0, 2.0)) == (1.0, 0.0)  # in-flight always given back
    single = Rules([]).plan("k:x", "x", None, LimitSpec(tpm=100), "m", [])
    assert single is not None and tuple(single.actual(1.0, 5.0, 2.0)) == (5.0,)


def test_too_many_scopes_for_one_request_is_an_error() -> None:
    rules = Rules([LimitRule(match=LimitMatch(model=g), rpm=1, tpm=1, max_inflight=1)
                   for g in ("m", "m*", "*", "?", "[m]", "m**")])
    with pytest.raises(ValueError, match="at most 16"):
        rules.plan("k:x", "x", None, None, "m", [])


def test_headers_count_the_current_request() -> None:
    plan = Rules([]).plan("k:x", "x", None, LimitSpec(rpm=3, tpm=100), "m", [])
    assert plan is not None
    lim = LocalLimiter(LimiterTable())
    seen = [lim.reserve(plan, plan.costs(10.0, 0.0)) for _ in range(4)]
    heads = [plan.headers(res) for res in seen]
    assert [res.admitted for res in seen] == [True, True, True, False]
    assert [h.split(b"x-ratelimit-remaining-requests: ")[1][:1] for h in heads] == [
        b"2", b"1", b"0", b"0"]
    assert b"x-ratelimit-limit-tokens: 100\r\nx-ratelimit-remaining-tokens: 70\r\n" in heads[2]
    message, retry_after = plan.refusal(seen[3])
    assert retry_after == b"20" and "requests per minute (3)" in message


def test_redis_scripts_agree_with_the_native_table(redis_srv: RedisServer) -> None:
    spec = LimitSpec(rpm=5, tpm=1000, max_inflight=2, budget_usd=BudgetConfig(3.0, "month"))
    plan = Rules([]).plan("k:x", "x", None, spec, "m", [])
    assert plan is not None
    local = LocalLimiter(LimiterTable())

    async def scenario() -> list[tuple[bool, tuple[float, ...]]]:
        remote = RedisLimiter(RedisConfig(url=redis_srv.url, on_error="deny"), local)
        out = []
        try:
            # (costs, settle with) per step: tokens and USD vary, settle refunds or charges
            steps = [((1, 300, 1, 1.0), (1, 100, 0, 0.5)), ((1, 500, 1, 1.0), None),
                     ((1, 100, 1, 1.0), (1, 50, 0, 2.0)), ((1, 10, 1, 0.5), (1, 10, 0, 0.1)),
                     ((1, 10, 1, 0.2), (1, 10, 0, 0.2)), ((1, 10, 1, 0.1), None)]
            native = LocalLimiter(LimiterTable())
            held = []
            for costs, settle in steps:
                a = native.reserve(plan, costs)
                b = await remote.reserve(plan, costs)
                assert isinstance(b, RedisReservation)
                # Two clocks (ours, Redis's TIME) a few ms apart: refills differ a little.
                assert a.admitted == b.admitted, (costs, a.remaining, b.remaining)
                assert b.remaining == pytest.approx(a.remaining, abs=0.5)
                assert a.denied_index == b.denied_index
                out.append((a.admitted, a.remaining))
                if a.admitted and settle is not None:
                    native.settle(a, settle)
                    remote.settle(b, settle)
                    await asyncio.sleep(0.05)
                elif a.admitted:
                    held.append((a, b))
            for a, b in held:  # in flight until now: release both
                native.release(a)
                remote.settle(b, [0.0] * 4)
            await asyncio.sleep(0.05)
            a = native.reserve(plan, (1, 1, 1, 0.0))
            b = await remote.reserve(plan, (1, 1, 1, 0.0))
            assert a.admitted and b.admitted
            assert b.remaining == pytest.approx(a.remaining, abs=0.5)
        finally:
            await remote.close()
        return out

    t0 = time.monotonic()
    out = asyncio.run(scenario())
    assert time.monotonic() - t0 < 5
    # admitted, admitted and held, admitted then over-charged, refused by the budget...
    assert [a for a, _ in out] == [True, True, True, False, False, False]


@settings(max_examples=600, deadline=None)
@given(
    scopes=st.lists(st.tuples(st.sampled_from([REQUESTS, TOKENS]),
                              st.floats(1.0, 1e9, allow_nan=False),
                              st.floats(0.01, 1e6, allow_nan=False),
                              st.floats(0.0, 2e9, allow_nan=False)),
                    min_size=1, max_size=6),
    now=st.floats(1e6, 2e9),
)
def test_native_rate_limit_headers_match_the_python_rendering(
        scopes: list[tuple[int, float, float, float]], now: float) -> None:
    """The headers of a native reservation are rendered natively; Plan.render (the
    Python rendering the Redis backend uses) is the reference."""
    specs = [ScopeSpec(f"k{i}", dim, "x", KIND_RATE, amount, amount / period,
                       Limit.rate(amount, period))
             for i, (dim, amount, period, _) in enumerate(scopes)]
    plan = Plan(specs)
    table = LimiterTable()
    # A first reservation leaves the buckets part-used: remaining and reset vary.
    table.reserve(plan.scopes, [min(c, a) for _, a, _, c in scopes], now)
    res = table.reserve(plan.scopes, [1.0] * len(scopes), now + 0.5)
    native = res.rate_headers(plan.req, plan.tok, plan.lines)
    assert native is not None
    assert native == plan.render(res)
    assert plan.headers(res) == native


def test_rate_limit_headers_of_a_refusal_and_without_scopes() -> None:
    plan = Plan([ScopeSpec("k", REQUESTS, "key", KIND_RATE, 3.0, 3 / 60, Limit.rate(3))])
    table = LimiterTable()
    heads = [plan.headers(table.reserve(plan.scopes, [1.0], 1000.0)) for _ in range(4)]
    assert [h.split(b"x-ratelimit-remaining-requests: ")[1][:1] for h in heads] == \
        [b"2", b"1", b"0", b"0"]
    assert b"x-ratelimit-reset-requests: 1m0s\r\n" in heads[2]
    assert heads[3] == plan.render(table.reserve(plan.scopes, [1.0], 1000.0))


def _spec(i: int, dim: int, amount: float) -> ScopeSpec:
    if dim == INFLIGHT:
        return ScopeSpec(f"k{i}", dim, "x", KIND_CONCURRENCY, amount, 0.0,
                         Limit.concurrency(amount))
    if dim == USD:
        return ScopeSpec(f"k{i}", dim, "x", KIND_BUDGET, amount, 3600.0,
                         Limit.budget(amount, 3600.0))
    return ScopeSpec(f"k{i}", dim, "x", KIND_RATE, amount, amount / 60.0, Limit.rate(amount))


@settings(max_examples=300, deadline=None)
@given(
    scopes=st.lists(st.tuples(st.sampled_from([REQUESTS, TOKENS, INFLIGHT, USD]),
                              st.floats(1.0, 1e6, allow_nan=False)),
                    min_size=1, max_size=6),
    requests=st.lists(st.tuples(st.floats(0.0, 2e6), st.floats(0.0, 50.0),
                                st.sampled_from([0.0, 1.0]), st.floats(0.0, 2e6),
                                st.floats(0.0, 50.0)), min_size=1, max_size=5),
    shared=st.booleans(),
)
def test_one_call_admission_matches_costs_reserve_headers_and_settle(
        scopes: list[tuple[int, float]], requests: list[tuple[float, ...]],
        shared: bool) -> None:
    """``admit`` / ``settle_admitted`` do in one native call each what Plan.costs,
    reserve, Plan.headers, Plan.actual and settle do in several (the reference):
    the same reservations, headers and buckets, request after request."""
    plan = Plan([_spec(i, dim, amount) for i, (dim, amount) in enumerate(scopes)])
    one = SharedLimiterTable() if shared else LimiterTable()
    ref = SharedLimiterTable() if shared else LimiterTable()
    now = 1e6
    for tokens, usd, tried, used_tokens, used_usd in requests:
        assert plan.admission.costs(tokens, usd) == list(plan.costs(tokens, usd))
        res, head = one.admit(plan.admission, tokens, usd, now)
        want = ref.reserve(plan.scopes, plan.costs(tokens, usd), now)
        assert (res.admitted, res.remaining, res.reset_after, res.costs) == \
            (want.admitted, want.remaining, want.reset_after, want.costs)
        assert head == want.rate_headers(plan.req, plan.tok, plan.lines)
        assert plan.admission.actual(tried, used_tokens, used_usd) == \
            list(plan.actual(tried, used_tokens, used_usd))
        assert one.settle_admitted(res, plan.admission, tried, used_tokens, used_usd,
                                   now + 0.25) == \
            ref.settle(want, plan.actual(tried, used_tokens, used_usd), now + 0.25)
        now += 0.5


def test_an_admission_needs_one_dimension_cap_and_line_per_scope() -> None:
    from fastgw._native import Admission, Scope

    scope = Scope("k", Limit.rate(5))
    with pytest.raises(ValueError, match="one entry per scope"):
        Admission([scope], [REQUESTS], [5.0], [])
    with pytest.raises(ValueError, match="dimension"):
        Admission([scope], [7], [5.0], [b"x"])
    with pytest.raises(TypeError):
        Admission(["not a scope"], [REQUESTS], [5.0], [b"x"])  # type: ignore[list-item]
