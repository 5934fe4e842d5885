"""``Admission``, ``admit``, ``settle_admitted`` and ``Reservation.rate_headers``:
the native ones give the same answers, byte for byte, as the reference."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import limiter as ref
from fastgw.limits.rules import estimate

from .test_native_limiter import T0, _view, dt

pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
)

# (key, limit, dimension): 0 requests, 1 tokens, 2 in-flight, 3 USD.
SPECS: list[tuple[str, Any, int]] = [
    ("a:rpm", lambda m: m.Limit.rate(3), 0),
    ("a:rps", lambda m: m.Limit.rate(10, 1.0, burst=5), 0),
    ("a:tpm", lambda m: m.Limit.rate(1000), 1),
    ("a:tph", lambda m: m.Limit.rate(50, 3600.0), 1),
    ("a:inflight", lambda m: m.Limit.concurrency(2), 2),
    ("a:usd-day", lambda m: m.Limit.budget(1.5, "day"), 3),
    ("a:usd-month", lambda m: m.Limit.budget(10.0, "month"), 3),
    ("a:huge", lambda m: m.Limit.rate(9e15), 1),  # remaining past 1e15: not renderable
]


def admission(mod: Any, picks: list[int]) -> Any:
    scopes, dims, caps, lines = [], [], [], []
    for i in picks:
        key, limit, dim = SPECS[i]
        lim = limit(mod)
        scopes.append(mod.Scope(key, lim))
        dims.append(dim)
        caps.append(lim.value)
        what = b"requests" if dim == 0 else b"tokens"
        lines.append(b"x-ratelimit-limit-%s: %d\r\n" % (what, min(lim.value, 1e18)))
    return mod.Admission(scopes, dims, caps, lines)


def outcome(fn: Any, *args: Any) -> Any:
    """What a call returns, or the type of what it raises."""
    try:
        return fn(*args)
    except (ValueError, TypeError) as e:
        return type(e)


amount = st.sampled_from([0.0, 0.01, 0.5, 1.0, 3.0, 17.0, 250.0, 999.0, 5000.0, 1e17])
picks = st.lists(st.integers(0, len(SPECS) - 1), min_size=1, max_size=5, unique=True)
op: st.SearchStrategy[Any] = st.one_of(
    st.tuples(st.just("admit"), st.integers(0, 3), amount, amount, dt),
    st.tuples(st.just("admit"), st.integers(0, 3), amount, amount, st.just(0.0)),
    st.tuples(st.just("settle"), st.integers(0, 50), amount, amount, dt),
    st.tuples(st.just("release"), st.integers(0, 50), amount, amount, dt),
    st.tuples(st.just("evict"), st.just(0), amount, amount, dt),
)


@settings(max_examples=300, deadline=None)
@given(plans=st.lists(picks, min_size=4, max_size=4), ops=st.lists(op, max_size=60),
       max_keys=st.integers(1, 10))
def test_admit_and_settle_admitted_match_the_reference(plans: list[list[int]], ops: list[Any],
                                                       max_keys: int) -> None:
    tables: tuple[Any, Any] = (native.LimiterTable(max_keys=max_keys),
                               ref.LimiterTable(max_keys=max_keys))
    adms = [(admission(native, p), admission(ref, p)) for p in plans]
    made: list[tuple[int, Any, Any]] = []
    now = T0
    for kind, arg, x, y, step in ops:
        now += step
        if kind == "admit":
            a, b = (t.admit(adm, x, y, now) for t, adm in zip(tables, adms[arg], strict=True))
            assert _view(a[0]) == _view(b[0])
            assert a[0].costs == b[0].costs
            assert a[1] == b[1]
            made.append((arg, a[0], b[0]))
        elif kind in ("settle", "release") and made:
            which, ra, rb = made[arg % len(made)]
            if kind == "settle":
                got = [outcome(t.settle_admitted, r, adm, 1.0, x, y, now)
                       for t, r, adm in zip(tables, (ra, rb), adms[which], strict=True)]
            else:
                got = [t.release(r, now) for t, r in zip(tables, (ra, rb), strict=True)]
            assert got[0] == got[1]
        elif kind == "evict":
            assert tables[0].evict_idle(now) == tables[1].evict_idle(now)
        for key, _, _ in SPECS:
            assert tables[0].peek(key) == tables[1].peek(key)


@settings(max_examples=300, deadline=None)
@given(plan=picks, tokens=amount, usd=amount, step=dt, repeat=st.integers(1, 6),
       requests=st.lists(st.integers(0, 4), max_size=4),
       tokens_at=st.lists(st.integers(0, 4), max_size=4))
def test_rate_headers_match_the_reference(plan: list[int], tokens: float, usd: float,
                                          step: float, repeat: int, requests: list[int],
                                          tokens_at: list[int]) -> None:
    tables: tuple[Any, Any] = (native.LimiterTable(), ref.LimiterTable())
    adm = (admission(native, plan), admission(ref, plan))
    n = len(plan)
    lines = tuple(b"x-ratelimit-limit-x%d: %d\r\n" % (i, i) for i in range(n))
    req = tuple(i for i in requests if i < n)
    tok = tuple(i for i in tokens_at if i < n)
    for k in range(repeat):  # drains buckets: remaining and reset move, refusals come
        a = tables[0].admit(adm[0], tokens, usd, T0 + k * step)[0]
        b = tables[1].admit(adm[1], tokens, usd, T0 + k * step)[0]
        assert _view(a) == _view(b)
        assert a.rate_headers(req, tok, lines) == b.rate_headers(req, tok, lines)


@given(plan=picks, x=st.floats(allow_nan=True, allow_infinity=True),
       y=st.floats(allow_nan=True, allow_infinity=True), r=st.floats(0, 10))
def test_admission_costs_and_actual_match_the_reference(plan: list[int], x: float, y: float,
                                                        r: float) -> None:
    a, b = admission(native, plan), admission(ref, plan)
    assert [repr(v) for v in a.costs(x, y)] == [repr(v) for v in b.costs(x, y)]
    assert [repr(v) for v in a.actual(r, x, y)] == [repr(v) for v in b.actual(r, x, y)]


@pytest.mark.parametrize("mod", [native, ref], ids=["native", "reference"])
def test_admission_examples(mod: Any) -> None:
    # rpm 3 and tpm 1000: the estimate reserved, capped at the limit.
    adm = admission(mod, [0, 2, 4])
    assert adm.costs(400.0, 0.0) == [1.0, 400.0, 1.0]
    assert adm.costs(5000.0, 0.0) == [1.0, 1000.0, 1.0]
    assert adm.actual(1.0, 30.0, 0.2) == [1.0, 30.0, 0.0]
    table = mod.LimiterTable()
    res, head = table.admit(adm, 400.0, 0.0, T0)
    assert res.admitted
    assert head == (b"x-ratelimit-limit-requests: 3\r\nx-ratelimit-remaining-requests: 2\r\n"
                    b"x-ratelimit-reset-requests: 20s\r\n"
                    b"x-ratelimit-limit-tokens: 1000\r\nx-ratelimit-remaining-tokens: 600\r\n"
                    b"x-ratelimit-reset-tokens: 24s\r\n")
    assert table.settle_admitted(res, adm, 1.0, 100.0, 0.0, T0)
    assert not table.settle_admitted(res, adm, 1.0, 100.0, 0.0, T0)  # once
    assert table.peek("a:tpm") == (900.0, T0)  # 1000 less the 100 used
    assert table.peek("a:inflight")[0] == 0.0  # the slot given back
    with pytest.raises(ValueError):
        mod.Admission([mod.Scope("x", mod.Limit.rate(1))], [4], [1.0], [b""])
    with pytest.raises(ValueError):
        mod.Admission([mod.Scope("x", mod.Limit.rate(1))], [0, 1], [1.0], [b""])
    with pytest.raises(ValueError):
        res.rate_headers((5,), (), (b"",) * 3)
    big = admission(mod, [7])
    assert table.admit(big, 1.0, 0.0, T0)[1] is None  # 9e15 left: not exactly renderable


# -- the estimate computed in the admission call --------------------------------------------

_MAX = st.none() | st.integers(-5, 10**6) | st.sampled_from(
    [0, True, False, 2.5, "100", [], {}, 2**40, 2**60, 2**80, -(2**80)])


@settings(max_examples=400, deadline=None)
@given(body_len=st.integers(0, 10**7), embeddings=st.booleans(),
       maxes=st.tuples(_MAX, _MAX, _MAX), present=st.tuples(st.booleans(), st.booleans(),
                                                             st.booleans()),
       prices=st.tuples(st.sampled_from([0.0, 1.5e-7, 3e-6]),
                        st.sampled_from([0.0, 6e-7, 1.2e-5])))
def test_the_native_estimate_is_the_reference_one(body_len: int, embeddings: bool,
                                                  maxes: tuple[Any, ...],
                                                  present: tuple[bool, ...],
                                                  prices: tuple[float, float]) -> None:
    names = ("max_completion_tokens", "max_tokens", "max_output_tokens")
    doc = {n: v for n, v, here in zip(names, maxes, present, strict=True) if here}
    picks = [2, 6]  # tokens per minute and a USD budget: the plan counts both
    table, twin = native.LimiterTable(), native.LimiterTable()
    adm = admission(native, picks)
    got = table.admit_estimated(adm, body_len, doc, embeddings, *prices, now=T0)
    prompt, completion = estimate(body_len, doc, "embeddings" if embeddings else "chat")
    # A body peek_request read instead of parsed: the completion tokens it read
    # (the rule of estimate; never above 2**64 - 1, orjson's largest int) stand for
    # the document, for the same answer.
    peeked = estimate(body_len, doc, "chat")[1]
    if peeked < 2**64:
        for third in (native.LimiterTable(), native.SharedLimiterTable(slots=64)):
            again = third.admit_peeked(adm, body_len, peeked, embeddings, *prices, now=T0)
            assert (again is None) == (got is None)
            if again is not None and got is not None:
                assert (again[0].admitted, again[0].remaining, *again[2:]) == (
                    got[0].admitted, got[0].remaining, *got[2:])
                if type(third) is native.LimiterTable:
                    assert again[1] == got[1]
    if got is None:  # only when the sum is not exact as a float: Python estimates
        assert prompt + completion > 2**53
        return
    res, head, tokens, usd = got
    assert tokens == float(prompt + completion)
    assert usd == prompt * prices[0] + completion * prices[1]
    want, want_head = twin.admit(adm, tokens, usd, now=T0)  # the same reservation
    assert (res.admitted, res.remaining, res.reset_after, head) == (
        want.admitted, want.remaining, want.reset_after, want_head)
