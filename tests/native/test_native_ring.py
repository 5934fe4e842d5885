"""The native hash ring sends every key where the reference does, and moves
few keys when membership changes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import ring as ref

# Sockets leaked by other tests' servers can be collected while these run;
# pytest would blame the test that happens to trigger the collection.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
)

keys = st.one_of(st.text(max_size=40), st.binary(max_size=300))
memberships = st.dictionaries(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=12),
    st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]), st.floats(0.0, 4.0)),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=1200), st.text(max_size=300)))
def test_hash64_matches_the_reference(data: str | bytes) -> None:
    assert native.hash64(data) == ref.hash64(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000))
def test_hash64_is_xxh3_64(data: bytes) -> None:
    xxhash = pytest.importorskip("xxhash")
    assert native.hash64(data) == xxhash.xxh3_64_intdigest(data)


@settings(max_examples=200, deadline=None)
@given(
    targets=memberships,
    replicas=st.integers(1, 40),
    probe=st.lists(keys, min_size=1, max_size=10),
    n=st.integers(0, 10),
    c=st.sampled_from([1.0, 1.25, 2.0]),
    data=st.data(),
)
def test_random_memberships_match_the_reference(
    targets: dict[str, float], replicas: int, probe: list[Any], n: int, c: float, data: Any
) -> None:
    a = native.HashRing(targets, replicas=replicas)
    b = ref.HashRing(targets, replicas=replicas)
    assert a.targets == b.targets and a.weights == b.weights and a.points == b.points
    # In-flight counts are ints; a load may be any number (read as a float either way).
    loads = data.draw(st.lists(st.one_of(st.integers(0, 20), st.floats(0, 20), st.just(2**60)),
                               min_size=len(targets), max_size=len(targets)))
    for key in probe:
        assert a.candidates(key) == b.candidates(key)
        assert a.candidates(key, n) == b.candidates(key, n)
        assert a.candidates(key, n, loads, c) == b.candidates(key, n, loads, c)
        if a.points == 0:
            for ring in (a, b):
                with pytest.raises(LookupError):
                    ring.lookup(key)
            continue
        assert a.lookup(key) == b.lookup(key) == a.candidates(key, 1)[0]
        assert a.lookup(key, loads, c) == b.lookup(key, loads, c)
        assert a.lookup_index(key, loads, c) == b.lookup_index(key, loads, c)
        # A balancer's order in one call: every target, the bounded-load pick first.
        states = [SimpleNamespace(inflight=x) for x in loads]
        order = a.order(key, states, c)
        assert order == b.order(key, states, c)
        names = list(a.targets)
        # (the targets on the ring: one without points, weight 0, is never picked)
        assert sorted(order) == sorted(names.index(t) for t in a.candidates(key))
        assert order[0] == (a.lookup_index(key, loads, c) if any(loads)
                            else names.index(a.lookup(key)))
        assert [i for i in order[1:]] == [names.index(t) for t in a.candidates(key)
                                          if names.index(t) != order[0]]


def test_adding_a_target_moves_about_one_key_in_n_plus_one() -> None:
    names = [f"deploy-{i}" for i in range(7)]
    before = native.HashRing({n: 1.0 for n in names})
    after = before.with_target("deploy-new", 1.0)
    moved = 0
    total = 40_000
    for i in range(total):
        key = f"user-{i}"
        old, new = before.lookup(key), after.lookup(key)
        if old != new:
            assert new == "deploy-new"  # keys only move to the new target
            moved += 1
    assert 0.9 / 8 < moved / total < 1.1 / 8 + 0.02
    assert after.without_target("deploy-new").candidates("user-1") == before.candidates("user-1")


def test_weights_set_the_share() -> None:
    ring = native.HashRing([("big", 3.0), ("small", 1.0)])
    big = sum(ring.lookup(f"k{i}") == "big" for i in range(40_000))
    assert 0.70 < big / 40_000 < 0.80


def test_bounded_load_skips_an_overloaded_target_and_keeps_the_order() -> None:
    ring = native.HashRing({"a": 1, "b": 1, "c": 1, "d": 1})
    order = ring.candidates("conversation-42")
    assert sorted(order) == ["a", "b", "c", "d"]
    loads = [0.0] * 4
    loads[ring.targets.index(order[0])] = 50.0
    assert ring.lookup("conversation-42", loads) == order[1]
    assert ring.candidates("conversation-42", None, loads) == [*order[1:], order[0]]
    # Within ceil(c x its share), the first choice stays: with every target at 1,
    # 1 + 1 <= ceil(1.25 * 5 / 4) = 2.
    assert ring.lookup("conversation-42", [1.0] * 4, 1.25) == order[0]
    # Alone at 1 of 1 in flight it already holds more than its share of 4.
    loads[ring.targets.index(order[0])] = 1.0
    assert ring.lookup("conversation-42", loads, 1.25) == order[1]


def test_bad_rings_and_arguments_raise() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        native.HashRing([("a", 1.0), ("a", 2.0)])
    with pytest.raises(ValueError):
        native.HashRing({"a": -1.0})
    with pytest.raises(ValueError):
        native.HashRing({"a": float("nan")})
    with pytest.raises(TypeError):
        native.HashRing("ab")  # type: ignore[arg-type]
    ring = native.HashRing({"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError):
        ring.lookup("k", [1.0])
    with pytest.raises(ValueError):
        ring.lookup("k", [1.0, 1.0], 0.5)
    with pytest.raises(TypeError):
        ring.lookup(12)  # type: ignore[arg-type]
    with pytest.raises(LookupError):
        native.HashRing({}).lookup("k")
    assert native.HashRing({}).candidates("k") == []


@pytest.mark.parametrize("impl", [native.HashRing, ref.HashRing], ids=["native", "reference"])
def test_bounded_load_rounds_its_bound_up_so_keys_stay_put_at_low_concurrency(
        impl: Any) -> None:
    ring = impl({"a": 1.0, "b": 1.0})
    key = next(k for k in (f"user-{i}" for i in range(1000)) if ring.lookup(k) == "a")
    # One request in flight on 'a': 1 + 1 <= ceil(1.25 * 2 * 0.5) = 2, the key stays.
    assert ring.lookup(key, [1.0, 0.0]) == "a"
    # Two: 2 + 1 > ceil(1.25 * 3 * 0.5) = 2, it moves on.
    assert ring.lookup(key, [2.0, 0.0]) == "b"
    # Balanced load keeps it at any level.
    assert ring.lookup(key, [7.0, 7.0]) == "a"


def _same_ring(a: Any, b: Any, probe: list[Any]) -> None:
    assert (a.targets, a.weights, a.replicas, a.points, len(a)) == (
        b.targets, b.weights, b.replicas, b.points, len(b))
    for key in probe:
        assert a.candidates(key) == b.candidates(key)
        if a.points:
            assert a.lookup(key) == b.lookup(key)


def _outcome(fn: Any, *args: Any) -> Any:
    """What a call returns, or the type of what it raises."""
    try:
        return fn(*args)
    except (ValueError, TypeError, LookupError) as e:
        return type(e)


@settings(max_examples=200, deadline=None)
@given(
    targets=memberships,
    replicas=st.integers(1, 40),
    changes=st.lists(
        st.one_of(
            st.tuples(st.just("with"), st.text(st.characters(codec="utf-8"), min_size=1,
                                               max_size=12),
                      st.one_of(st.sampled_from([0.0, 0.5, 1.0, 3.0]), st.floats(-1.0, 4.0),
                                st.just(float("nan")))),
            st.tuples(st.just("without"), st.text(st.characters(codec="utf-8"), max_size=12),
                      st.just(0.0)),
            # Changes to names the ring already has (reweighting, removal).
            st.tuples(st.sampled_from(["with", "without"]), st.integers(0, 7),
                      st.sampled_from([0.0, 0.5, 2.0])),
        ),
        max_size=8,
    ),
    probe=st.lists(keys, min_size=1, max_size=6),
)
def test_with_and_without_target_match_the_reference(
    targets: dict[str, float], replicas: int, changes: list[Any], probe: list[Any]
) -> None:
    a: Any = native.HashRing(targets, replicas=replicas)
    b: Any = ref.HashRing(targets, replicas=replicas)
    for kind, name, weight in changes:
        if isinstance(name, int):
            if not a.targets:
                continue
            name = a.targets[name % len(a.targets)]
        if kind == "with":
            na, nb = _outcome(a.with_target, name, weight), _outcome(b.with_target, name, weight)
        else:
            na, nb = _outcome(a.without_target, name), _outcome(b.without_target, name)
        if isinstance(na, type) or isinstance(nb, type):
            assert na == nb  # refused alike (a bad weight), the ring unchanged
            continue
        _same_ring(na, nb, probe)
        # The change gives the ring built from the same membership directly.
        _same_ring(na, native.HashRing(dict(zip(na.targets, na.weights, strict=True)),
                                       replicas=replicas), probe)
        a, b = na, nb
