"""Limits on the local backend, end to end: rpm, tpm, max_inflight and budgets over
keys, models, tiers and providers; reserve-then-settle, refunds, headers, metrics."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from gwtest import Response, chat, connect, http, running, wait_for
from limits_helpers import KEY_A, KEY_B, bearer, gw_yaml, keys_yaml, metric


def post(port: int, key: str | None, model: str = "gpt-test", headers: dict[str, str] | None
         = None, **body: Any) -> Response:
    h = dict(bearer(key)) if key else {}
    h.update(headers or {})
    return http(port, "POST", "/v1/chat/completions", chat(model, **body), h, timeout=20)


def test_rpm_remaining_counts_the_current_request_then_429() -> None:
    with running(lambda p: gw_yaml(p, keys_yaml(a_limits="rpm: 3"))) as gw:
        before = metric(gw.port, "fastgw_ratelimited_total", scope="key")
        seen = []
        for _ in range(3):
            r = post(gw.port, KEY_A)
            assert r.status == 200, r.body
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            seen.append(r.headers["x-ratelimit-remaining-requests"])
            assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        assert seen == ["2", "1", "0"]
        r = post(gw.port, KEY_A)
        assert r.status == 429
        err = orjson.loads(r.body)["error"]
        assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
        assert "requests per minute" in err["message"]
        # One request refills every 20 s: Retry-After is that wait, in whole seconds.
        assert r.headers["retry-after"].isdigit()
        assert 18 <= int(r.headers["retry-after"]) <= 20
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert metric(gw.port, "fastgw_ratelimited_total", scope="key") == before + 1
        assert gw.mock_stats()["requests"] == 3
        # The other key has no limit.
        assert post(gw.port, KEY_B).status == 200
        assert "x-ratelimit-limit-requests" not in post(gw.port, KEY_B).headers


def test_openai_sdk_raises_rate_limit_error() -> None:
    with running(lambda p: gw_yaml(p, keys_yaml(a_limits="rpm: 1"))) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0)
        msgs: Any = [{"role": "user", "content": "hi"}]
        raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=msgs)
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="gpt-test", messages=msgs)
        assert info.value.status_code == 429
        assert int(info.value.response.headers["retry-after"]) >= 1


def test_tpm_reserves_the_estimate_and_settles_the_real_usage() -> None:
    with running(lambda p: gw_yaml(p, keys_yaml(a_limits="tpm: 2000"))) as gw, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(post, gw.port, KEY_A, headers={"x-mock-latency-ms": "500"},
                           max_tokens=1500)
        time.sleep(0.2)
        # 1500 + the prompt are reserved by the request in flight: no room for another.
        r = post(gw.port, KEY_A, max_tokens=1500)
        assert r.status == 429, r.body
        assert "tokens per minute" in orjson.loads(r.body)["error"]["message"]
        first = slow.result()
        assert first.status == 200
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 500
        # Settled with ~20 real tokens: the reservation came back.
        r = post(gw.port, KEY_A, max_tokens=1500)
        assert r.status == 200, r.body
        assert r.headers["x-ratelimit-limit-tokens"] == "2000"
        remaining = int(r.headers["x-ratelimit-remaining-tokens"])
        assert 2000 - 1500 - 60 - 60 < remaining < 2000 - 1500
        assert r.headers["x-ratelimit-reset-tokens"]


def test_max_inflight_refuses_then_gives_slots_back() -> None:
    with running(lambda p: gw_yaml(p, keys_yaml(a_limits="max_inflight: 2"))) as gw, \
            concurrent.futures.ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(post, gw.port, KEY_A, headers={"x-mock-latency-ms": "600"})
                for _ in range(2)]
        time.sleep(0.25)
        r = post(gw.port, KEY_A)
        assert r.status == 429
        assert r.headers["retry-after"] == "1"
        assert "concurrent requests" in orjson.loads(r.body)["error"]["message"]
        assert [f.result().status for f in slow] == [200, 200]
        assert [post(gw.port, KEY_A).status for _ in range(3)] == [200, 200, 200]


def test_client_disconnect_mid_stream_releases_the_slot() -> None:
    with running(lambda p: gw_yaml(p, keys_yaml(a_limits="max_inflight: 1"))) as gw:
        s = connect(gw.port)
        data = orjson.dumps(chat(stream=True))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
                  + KEY_A.encode() + b"\r\nx-mock-chunks: 50\r\nx-mock-chunk-interval-ms: 100"
                  b"\r\ncontent-length: %d\r\n\r\n%s" % (len(data), data))
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert post(gw.port, KEY_A).status == 429  # the stream holds the only slot
        s.close()
        assert wait_for(lambda: post(gw.port, KEY_A).status == 200, timeout=3)


def test_upstream_error_refunds_tokens_but_counts_the_request() -> None:
    with running(lambda p: gw_yaml(p, keys_yaml(a_limits="rpm: 10, tpm: 3000"))) as gw:
        r = post(gw.port, KEY_A, headers={"x-mock-fault": "500"}, max_tokens=2000)
        assert r.status == 502
        r = post(gw.port, KEY_A)
        assert r.status == 200
        assert r.headers["x-ratelimit-remaining-requests"] == "8"
        # Only this request's own reservation (~300 tokens) is out, not the failed one's.
        assert int(r.headers["x-ratelimit-remaining-tokens"]) > 2600


def test_refused_model_and_unknown_model_reserve_nothing() -> None:
    extra = keys_yaml(a_limits="rpm: 2", a_extra=", models: [gpt-test]")
    with running(lambda p: gw_yaml(p, extra)) as gw:
        assert post(gw.port, KEY_A, "pricey").status == 403
        # Outside the key's allow-list: 403 whether the model exists or not.
        assert post(gw.port, KEY_A, "no-such-model").status == 403
        assert [post(gw.port, KEY_A).status for _ in range(3)] == [200, 200, 429]


def test_budget_cannot_be_overspent_by_more_than_one_reservation() -> None:
    # pricey costs $1 per token; the mock answers 8 completion tokens (max_tokens 8 is
    # honest), so each stream reserves ~(body/4 + 8) dollars and spends a bit less.
    extra = keys_yaml(a_limits="budget_usd: {amount: 400, period: day}")
    with running(lambda p: gw_yaml(p, extra)) as gw:
        body = chat("pricey", stream=True, max_tokens=8)
        reservation = len(orjson.dumps(body)) // 4 + 1 + 8

        def spent_so_far() -> float:
            # Per-key labels are opt-in; only key-a spends here. The total is
            # process-wide (other tests spend on this model too): the change counts.
            return metric(gw.port, "fastgw_cost_usd_total", model="pricey", key="")

        before = spent_so_far()

        def stream(_: int) -> int:
            r = post(gw.port, KEY_A, "pricey", headers={"x-mock-chunk-interval-ms": "20"},
                     stream=True, max_tokens=8)
            if r.status == 200:
                assert b"data: [DONE]" in r.body
            return r.status

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(stream, range(32)))
        assert 200 in statuses and 429 in statuses
        while stream(0) == 200:  # then one by one until the budget refuses
            pass

        def spent() -> float:
            return spent_so_far() - before

        assert wait_for(lambda: spent() > 0)
        total = spent()
        assert 400 - reservation <= total <= 400 + reservation
        r = post(gw.port, KEY_A, "pricey", stream=True, max_tokens=8)
        assert r.status == 429
        assert "budget (USD 400 per day)" in orjson.loads(r.body)["error"]["message"]
        assert int(r.headers["retry-after"]) == pytest.approx(
            86400 - time.time() % 86400, abs=5)
        # The budget covers USD, not requests: the cheap model still answers.
        assert post(gw.port, KEY_A).status == 200


def test_reload_keeps_counts_where_the_rule_is_unchanged(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"

    def yaml_for(port: int, rpm: int = 3) -> str:
        text = gw_yaml(port, keys_yaml() + f"limits:\n  - {{match: {{model: gpt-test}}, "
                                           f"rpm: {rpm}}}\n")
        cfg.write_text(text)
        return text

    with running(yaml_for) as gw:
        gw.app.config = dataclasses.replace(gw.app.config, source=str(cfg))
        assert [post(gw.port, KEY_A).headers["x-ratelimit-remaining-requests"]
                for _ in range(2)] == ["2", "1"]
        yaml_for(gw.mock.port, rpm=4)
        assert gw.lt.run(gw.app.reload())
        r = post(gw.port, KEY_A)  # 1 left before the reload, still 1 after it
        assert r.status == 200
        assert r.headers["x-ratelimit-limit-requests"] == "4"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert post(gw.port, KEY_A).status == 429


def test_shared_and_per_key_rules() -> None:
    extra = keys_yaml() + """limits:
  - {match: {model: gpt-test}, per: rule, rpm: 3}
  - {match: {model: "same*"}, rpm: 100}
  - {match: {model: "pric*"}, rpm: 2}
"""
    with running(lambda p: gw_yaml(p, extra)) as gw:
        assert [post(gw.port, k).status for k in (KEY_A, KEY_B, KEY_A)] == [200] * 3
        assert post(gw.port, KEY_B).status == 429  # one count for every caller
        assert post(gw.port, KEY_A).status == 429
        # per: key (the default): each key has its own count.
        assert [post(gw.port, KEY_A, "pricey").status for _ in range(3)] == [200, 200, 429]
        assert [post(gw.port, KEY_B, "pricey").status for _ in range(2)] == [200, 200]


def test_the_tightest_scope_is_reported() -> None:
    extra = keys_yaml(a_limits="rpm: 10") + "limits:\n  - {match: {key: key-a}, rpm: 5}\n"
    with running(lambda p: gw_yaml(p, extra)) as gw:
        r = post(gw.port, KEY_A)
        assert r.headers["x-ratelimit-limit-requests"] == "5"
        assert r.headers["x-ratelimit-remaining-requests"] == "4"


def test_tier_and_provider_rules() -> None:
    extra = keys_yaml(a_extra=", tier: free", b_extra=", tier: pro") + """limits:
  - {match: {tier: free}, rpm: 2}
  - {match: {provider: other}, rpm: 1}
"""
    with running(lambda p: gw_yaml(p, extra)) as gw:
        before = metric(gw.port, "fastgw_ratelimited_total", scope="tier")
        assert [post(gw.port, KEY_A).status for _ in range(3)] == [200, 200, 429]
        assert metric(gw.port, "fastgw_ratelimited_total", scope="tier") == before + 1
        assert [post(gw.port, KEY_B).status for _ in range(3)] == [200, 200, 200]
        assert [post(gw.port, KEY_B, "elsewhere").status for _ in range(2)] == [200, 429]
        assert post(gw.port, KEY_B, "pricey").status == 200


def test_limits_without_auth_count_the_anonymous_caller() -> None:
    with running(lambda p: gw_yaml(p, "limits:\n  - {rpm: 2}\n")) as gw:
        assert [post(gw.port, None).status for _ in range(3)] == [200, 200, 429]
        r = post(gw.port, None)
        assert r.headers["x-ratelimit-limit-requests"] == "2"


def test_rate_refills_continuously() -> None:
    with running(lambda p: gw_yaml(p, keys_yaml(a_limits="rpm: 120"))) as gw:
        for _ in range(120):
            post(gw.port, KEY_A)
        r = post(gw.port, KEY_A)
        assert r.status == 429
        wait = int(r.headers["retry-after"])
        assert wait == 1  # two requests per second refill
        time.sleep(wait)
        assert post(gw.port, KEY_A).status == 200
