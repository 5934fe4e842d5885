"""The response cache through a running gateway: what makes the key, what is
stored, how a hit is answered (whole or replayed as a stream, with a new id),
the Cache-Control controls, the x-fastgw-cache header, the metrics and the
access log's cache field. The mock upstream's request count says whether a
request went upstream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from cache_gw import (
    KEY_A,
    KEY_B,
    cache_counts,
    cache_yaml,
    counted_since,
    doc,
    post,
    unique,
    upstream,
)
from gwtest import Gateway, running

from fastgw import metrics
from fastgw.cache import CacheEntry


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    with running(cache_yaml) as g:
        yield g


def answer(r: Any) -> dict[str, Any]:
    """A whole answer without what differs between two answers of one entry."""
    d: dict[str, Any] = orjson.loads(r.body)
    d.pop("id", None)
    return d


def events(body: bytes) -> list[bytes]:
    """The data lines of an SSE body."""
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


# -- the key and its scope ---------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["chat", "completions", "embeddings", "responses",
                                      "messages"])
def test_the_same_request_twice_goes_upstream_once(gw: Gateway, endpoint: str) -> None:
    d = doc(endpoint, "claude" if endpoint == "messages" else "gpt", unique(endpoint))
    before = upstream(gw)
    first = post(gw, d, endpoint)
    assert first.status == 200, first.body
    assert first.headers["x-fastgw-cache"] == "miss"
    second = post(gw, d, endpoint)
    assert second.status == 200, second.body
    assert second.headers["x-fastgw-cache"] == "hit"
    assert upstream(gw) - before == 1
    assert answer(second) == answer(first)
    if endpoint != "embeddings":  # an embeddings list has no id
        assert orjson.loads(second.body)["id"] != orjson.loads(first.body)["id"]
    assert second.headers["x-request-id"] != first.headers["x-request-id"]


def test_key_order_and_whitespace_do_not_change_the_key(gw: Gateway) -> None:
    text = unique()
    t = orjson.dumps(text)
    a = b'{"model":"gpt","temperature":0,"messages":[{"role":"user","content":' + t + b'}]}'
    b = (b'{ "messages" : [ { "content" : ' + t + b' ,\n "role" : "user" } ] ,\t'
         b'"temperature": 0.0, "model": "gpt" }')
    before = upstream(gw)
    assert post(gw, a).headers["x-fastgw-cache"] == "miss"
    r = post(gw, b)
    assert r.status == 200 and r.headers["x-fastgw-cache"] == "hit"
    assert upstream(gw) - before == 1


def test_stream_stream_options_user_and_controls_are_not_in_the_key(gw: Gateway) -> None:
    text = unique()
    before = upstream(gw)
    assert post(gw, doc(text=text, user="alice")).headers["x-fastgw-cache"] == "miss"
    variants: list[dict[str, Any]] = [
        doc(text=text, user="bob"),
        doc(text=text, stream=True),
        doc(text=text, stream=True, stream_options={"include_usage": True}),
        doc(text=text, fastgw={"allow_fallbacks": False}),
    ]
    for d in variants:
        r = post(gw, d)
        assert r.status == 200, r.body
        assert r.headers["x-fastgw-cache"] == "hit", d
    assert upstream(gw) - before == 1


def test_another_model_endpoint_or_body_is_a_miss(gw: Gateway) -> None:
    text = unique()
    before = upstream(gw)
    assert post(gw, doc(text=text)).headers["x-fastgw-cache"] == "miss"
    assert post(gw, doc(model="gpt-2", text=text)).headers["x-fastgw-cache"] == "miss"
    assert post(gw, doc(text=text, max_tokens=7)).headers["x-fastgw-cache"] == "miss"
    # One body on two endpoints: two entries.
    both = {"model": "gpt", "prompt": text, "input": text, "temperature": 0}
    assert post(gw, both, "completions").headers["x-fastgw-cache"] == "miss"
    assert post(gw, both, "embeddings").headers["x-fastgw-cache"] == "miss"
    assert upstream(gw) - before == 5
    assert post(gw, both, "embeddings").headers["x-fastgw-cache"] == "hit"
    assert upstream(gw) - before == 5


def test_scope_key_keeps_callers_apart(gw: Gateway) -> None:
    d = doc(text=unique())
    before = upstream(gw)
    assert post(gw, d, key=KEY_A).headers["x-fastgw-cache"] == "miss"
    assert post(gw, d, key=KEY_B).headers["x-fastgw-cache"] == "miss"
    assert post(gw, d, key=KEY_B).headers["x-fastgw-cache"] == "hit"
    assert post(gw, d, key=KEY_A).headers["x-fastgw-cache"] == "hit"
    assert upstream(gw) - before == 2


def test_scope_global_shares_entries_between_callers() -> None:
    with running(lambda p: cache_yaml(p, cache="{enabled: true, scope: global}")) as g:
        d = doc(text=unique())
        assert post(g, d, key=KEY_A).headers["x-fastgw-cache"] == "miss"
        r = post(g, d, key=KEY_B)
        assert r.status == 200 and r.headers["x-fastgw-cache"] == "hit"
        assert upstream(g) == 1


# -- what is cached ----------------------------------------------------------------------


def test_only_temperature_zero_is_cached(gw: Gateway) -> None:
    text = unique()
    before = upstream(gw)
    for d in (doc(text=text, temperature=0.7), {"model": "gpt", "messages": [
            {"role": "user", "content": text}]}, doc(text=text, temperature=False)):
        for _ in range(2):
            r = post(gw, d)
            assert r.status == 200, r.body
            assert r.headers["x-fastgw-cache"] == "bypass"
    assert upstream(gw) - before == 6
    # temperature 0 of the same text: a first miss, as the bypasses stored nothing
    assert post(gw, doc(text=text)).headers["x-fastgw-cache"] == "miss"


def test_only_deterministic_false_caches_any_temperature() -> None:
    with running(lambda p: cache_yaml(p, cache="{enabled: true, only_deterministic: false}")
                 ) as g:
        d = doc(text=unique(), temperature=0.9)
        assert post(g, d).headers["x-fastgw-cache"] == "miss"
        assert post(g, d).headers["x-fastgw-cache"] == "hit"
        assert upstream(g) == 1


@pytest.mark.parametrize("fault", ["500", "429:0", "400"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_error_is_never_stored(gw: Gateway, fault: str, stream: bool) -> None:
    d = doc(text=unique(), stream=stream)
    before = upstream(gw)
    r = post(gw, d, **{"x-mock-fault": fault})
    assert r.status >= 400, r.body
    assert r.headers["x-fastgw-cache"] == "miss"
    after_error = upstream(gw)
    assert after_error > before
    r = post(gw, d)
    assert r.status == 200 and r.headers["x-fastgw-cache"] == "miss"
    assert upstream(gw) == after_error + 1
    assert post(gw, d).headers["x-fastgw-cache"] == "hit"


@pytest.mark.parametrize("fault", ["cut:3", "cut:4", "error-event", "malformed"])
def test_a_stream_that_failed_is_never_stored(gw: Gateway, fault: str) -> None:
    d = doc(text=unique(), stream=True)
    # 2 chunks: cut:4 ends after the finish chunk, before the usage chunk and [DONE]
    r = post(gw, d, **{"x-mock-fault": fault, "x-mock-chunks": "2"})
    assert r.status == 200  # the head went out before the failure
    assert r.headers["x-fastgw-cache"] == "miss"
    # cut and error-event end without [DONE]; a malformed event is relayed as it is
    assert (b"[DONE]" in r.body) == (fault == "malformed")
    before = upstream(gw)
    r = post(gw, d)
    assert r.status == 200 and r.headers["x-fastgw-cache"] == "miss"
    assert b"[DONE]" in r.body
    assert upstream(gw) == before + 1
    assert post(gw, d).headers["x-fastgw-cache"] == "hit"


def test_a_whole_answer_that_is_not_json_is_never_stored(gw: Gateway) -> None:
    d = doc(text=unique())
    r = post(gw, d, **{"x-mock-fault": "malformed"})  # a 200 whose body is cut-off JSON
    assert r.status == 200 and r.headers["x-fastgw-cache"] == "miss"
    before = upstream(gw)
    r = post(gw, d)
    assert r.headers["x-fastgw-cache"] == "miss" and orjson.loads(r.body)["choices"]
    assert upstream(gw) == before + 1
    assert post(gw, d).headers["x-fastgw-cache"] == "hit"


def test_an_entry_that_cannot_be_replayed_as_a_stream_is_a_miss(gw: Gateway) -> None:
    # An entry that is not an answer of its endpoint's shape (written by another
    # version into a shared Redis, say): a streamed request goes upstream instead of
    # failing, and its answer replaces the entry.
    d = doc(text=unique())
    assert post(gw, d).headers["x-fastgw-cache"] == "miss"
    memory = gw.app.gateway.state.snapshot.cache.memory  # type: ignore[union-attr]
    assert memory is not None and len(memory) >= 1
    now = time.time()
    for key in list(memory.keys()):
        entry = memory.get(key, now)
        if entry is not None:
            assert memory.put(key, CacheEntry(entry.created, entry.body[:40], 1, 1), 3600, now)
    before = upstream(gw)
    r = post(gw, {**d, "stream": True})
    assert r.status == 200 and r.headers["x-fastgw-cache"] == "miss"
    assert r.body.rstrip().endswith(b"data: [DONE]")
    assert upstream(gw) == before + 1
    r = post(gw, {**d, "stream": True})
    assert r.headers["x-fastgw-cache"] == "hit" and upstream(gw) == before + 1


def test_a_whole_stream_is_stored(gw: Gateway) -> None:
    d = doc(text=unique(), stream=True)
    first = post(gw, d, **{"x-mock-chunks": "5"})
    assert first.headers["x-fastgw-cache"] == "miss" and b"[DONE]" in first.body
    whole = post(gw, doc(text=d["messages"][0]["content"]))
    assert whole.headers["x-fastgw-cache"] == "hit"
    text = "".join(orjson.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events(first.body)[:-1] if orjson.loads(e)["choices"])
    assert orjson.loads(whole.body)["choices"][0]["message"]["content"] == text


# -- controls, header, metrics, access log -------------------------------------------------


def test_no_cache_goes_upstream_and_refreshes_the_entry(gw: Gateway) -> None:
    d = doc(text=unique())
    before = upstream(gw)
    assert post(gw, d).headers["x-fastgw-cache"] == "miss"
    first_created = orjson.loads(post(gw, d).body)["created"]
    r = post(gw, d, **{"cache-control": "no-cache", "x-mock-chunks": "2"})
    assert r.status == 200 and r.headers["x-fastgw-cache"] == "miss"
    assert upstream(gw) - before == 2
    refreshed = post(gw, d)  # the entry is the refreshed answer (2 chunks: a shorter text)
    assert refreshed.headers["x-fastgw-cache"] == "hit"
    assert answer(refreshed) == answer(r)
    assert orjson.loads(refreshed.body)["created"] >= first_created
    assert upstream(gw) - before == 2


def test_no_store_neither_reads_nor_writes(gw: Gateway) -> None:
    d = doc(text=unique())
    before = upstream(gw)
    r = post(gw, d, **{"cache-control": "no-store"})
    assert r.status == 200 and r.headers["x-fastgw-cache"] == "bypass"
    assert post(gw, d).headers["x-fastgw-cache"] == "miss"  # nothing was written
    r = post(gw, d, **{"cache-control": "no-store"})
    assert r.headers["x-fastgw-cache"] == "bypass"  # nor read
    assert upstream(gw) - before == 3
    assert post(gw, d).headers["x-fastgw-cache"] == "hit"


def test_max_age_accepts_only_a_younger_entry(gw: Gateway) -> None:
    d = doc(text=unique())
    assert post(gw, d).headers["x-fastgw-cache"] == "miss"
    before = upstream(gw)
    r = post(gw, d, **{"cache-control": "max-age=3600"})
    assert r.headers["x-fastgw-cache"] == "hit"
    assert upstream(gw) == before
    r = post(gw, d, **{"cache-control": "max-age=0"})
    assert r.status == 200 and r.headers["x-fastgw-cache"] == "miss"
    assert upstream(gw) == before + 1


def test_a_model_without_cache_has_no_cache_header(gw: Gateway) -> None:
    d = doc(model="plain", text=unique())
    before_counts = cache_counts(gw)
    before = upstream(gw)
    for _ in range(2):
        r = post(gw, d)
        assert r.status == 200
        assert "x-fastgw-cache" not in r.headers
    assert upstream(gw) - before == 2
    assert counted_since(gw, before_counts) == {"hit": 0, "miss": 0, "bypass": 0}


def test_every_answer_of_a_cached_model_says_hit_miss_or_bypass(gw: Gateway) -> None:
    text = unique()
    before = cache_counts(gw)
    saved = gw.metric(metrics.CACHE_SAVED, "gpt")
    said = [post(gw, doc(text=text)).headers.get("x-fastgw-cache"),
            post(gw, doc(text=text)).headers.get("x-fastgw-cache"),
            post(gw, doc(text=text, stream=True)).headers.get("x-fastgw-cache"),
            post(gw, doc(text=text, temperature=1)).headers.get("x-fastgw-cache"),
            post(gw, doc(text=text), **{"x-mock-fault": "500"}).headers.get("x-fastgw-cache")]
    assert said == ["miss", "hit", "hit", "bypass", "hit"]
    assert counted_since(gw, before) == {"hit": 3, "miss": 1, "bypass": 1}
    # A hit saves the price of the entry's tokens (1 and 2 USD per million).
    usage = orjson.loads(post(gw, doc(text=text)).body)["usage"]
    per_hit = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    assert per_hit > 0
    assert gw.metric(metrics.CACHE_SAVED, "gpt") - saved == pytest.approx(4 * per_hit)


def test_the_access_log_says_the_cache_result(tmp_path: Any) -> None:
    log = tmp_path / "access.log"
    with running(lambda p: cache_yaml(p, log=log)) as g:
        text = unique()
        ids = [post(g, doc(text=text)).headers["x-request-id"],
               post(g, doc(text=text)).headers["x-request-id"],
               post(g, doc(text=text, temperature=0.5)).headers["x-request-id"],
               post(g, doc(model="plain", text=text)).headers["x-request-id"]]
    lines = {x["request_id"]: x for x in map(orjson.loads, log.read_text().splitlines())}
    assert [lines[i]["cache"] for i in ids] == ["miss", "hit", "bypass", None]
    assert lines[ids[1]]["status"] == 200



# -- credentials and limits ------------------------------------------------------------------


def test_a_bad_key_is_refused_before_the_cache(gw: Gateway) -> None:
    d = doc(text=unique())
    assert post(gw, d).headers["x-fastgw-cache"] == "miss"
    before, calls = cache_counts(gw), upstream(gw)
    for key in ("sk-not-a-key", ""):
        r = post(gw, d, key=key)
        assert r.status == 401, r.body
        assert "x-fastgw-cache" not in r.headers
        assert b"hello" not in r.body and b"mock response" not in r.body
    assert counted_since(gw, before) == {"hit": 0, "miss": 0, "bypass": 0}
    assert upstream(gw) == calls


LIMITS = ", limits: {rpm: 4, tpm: 100000}"


def spent(g: Gateway) -> list[float]:
    """Tokens in and out and USD counted for ``gpt``."""
    return [g.metric(metrics.TOKENS, "gpt", "input"), g.metric(metrics.TOKENS, "gpt", "output"),
            g.metric(metrics.COST, "gpt", "")]


def test_a_hit_counts_one_request_but_no_tokens_nor_spend() -> None:
    with running(lambda p: cache_yaml(p, keys=LIMITS)) as g:
        d = doc(text=unique())
        miss = post(g, d)
        assert miss.headers["x-fastgw-cache"] == "miss"
        assert miss.headers["x-ratelimit-remaining-requests"] == "3"
        tokens = spent(g)
        assert tokens[0] > 0 and tokens[2] > 0
        remaining = [int(miss.headers["x-ratelimit-remaining-tokens"])]
        for left in ("2", "1", "0"):
            r = post(g, d)
            assert r.status == 200 and r.headers["x-fastgw-cache"] == "hit"
            assert r.headers["x-ratelimit-remaining-requests"] == left
            remaining.append(int(r.headers["x-ratelimit-remaining-tokens"]))
        # tokens only refill: a hit reserves none
        assert remaining == sorted(remaining)
        assert spent(g) == tokens
        # the rpm is spent: the next one is refused, hit or not, and is not a hit served
        before, saved = cache_counts(g), g.metric(metrics.CACHE_SAVED, "gpt")
        r = post(g, d)
        assert r.status == 429 and "retry-after" in r.headers
        assert b"mock response" not in r.body
        assert counted_since(g, before)["hit"] == 0
        assert g.metric(metrics.CACHE_SAVED, "gpt") == saved
        assert upstream(g) == 1
