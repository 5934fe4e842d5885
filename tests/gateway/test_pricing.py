"""Cost and token counts with prompt caching, in both dialects: cache reads and
writes at their own prices, the Anthropic input count completed with the
cached tokens (OpenAI's already holds them)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from gwtest import Gateway, chat, http, running

from fastgw import metrics

PRICES = "price: {input_per_mtok: 1.0, output_per_mtok: 2.0, cached_input_per_mtok: 0.1, " \
         "cache_write_per_mtok: 1.25}"


def yaml(port: int) -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - {{name: oa, kind: openai-compatible, base_url: "http://127.0.0.1:{port}/v1", api_key: k}}
  - {{name: an, kind: anthropic, base_url: "http://127.0.0.1:{port}", api_key: k}}
models:
  - {{name: gpt, targets: [{{provider: oa, model: g}}], {PRICES}}}
  - {{name: claude, targets: [{{provider: an, model: c}}], {PRICES}}}
  - {{name: plain, targets: [{{provider: oa, model: g}}],
     price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}}}
observability: {{access_log: off}}
"""


def counted(gw: Gateway, model: str) -> tuple[float, float, float]:
    return (gw.metric(metrics.TOKENS, model, "input"), gw.metric(metrics.TOKENS, model, "output"),
            gw.metric(metrics.COST, model, ""))


def delta(gw: Gateway, model: str, before: tuple[float, float, float]
          ) -> tuple[float, float, float]:
    after = counted(gw, model)
    return after[0] - before[0], after[1] - before[1], after[2] - before[2]


def stream_body(gw: Gateway, path: str, doc: dict[str, Any], headers: dict[str, str]) -> bytes:
    r = http(gw.port, "POST", path, doc, headers)
    assert r.status == 200, r.body
    return r.body


@pytest.mark.parametrize("stream", [False, True])
def test_openai_cached_tokens_are_priced_at_the_cached_rate(stream: bool) -> None:
    with running(yaml) as gw:
        before = counted(gw, "gpt")
        r = http(gw.port, "POST", "/v1/chat/completions", chat("gpt", stream=stream),
                 {"x-mock-cache-read": "1000"})
        assert r.status == 200
        prompt, completion, cost = delta(gw, "gpt", before)
        assert prompt >= 1000  # OpenAI counts cached tokens inside prompt_tokens
        uncached = prompt - 1000
        assert cost == pytest.approx((uncached * 1.0 + 1000 * 0.1 + completion * 2.0) / 1e6)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_pass_through_counts_cache_reads_and_writes(stream: bool) -> None:
    with running(yaml) as gw:
        before = counted(gw, "claude")
        doc = {"model": "claude", "max_tokens": 50, "stream": stream,
               "messages": [{"role": "user", "content": "hello there"}]}
        r = http(gw.port, "POST", "/v1/messages", doc,
                 {"x-mock-cache-read": "1000", "x-mock-cache-creation": "200"})
        assert r.status == 200
        if not stream:
            usage = orjson.loads(r.body)["usage"]
            base = usage["input_tokens"]
        else:
            start = r.body.split(b"\n\n")[0].split(b"data: ", 1)[1]
            base = orjson.loads(start)["message"]["usage"]["input_tokens"]
        prompt, completion, cost = delta(gw, "claude", before)
        # Anthropic's input_tokens leaves the cache out: the gateway adds it back.
        assert prompt == base + 1000 + 200
        assert cost == pytest.approx(
            (base * 1.0 + 1000 * 0.1 + 200 * 1.25 + completion * 2.0) / 1e6)


def test_openai_client_on_anthropic_target_is_priced_from_the_translated_usage() -> None:
    with running(yaml) as gw:
        before = counted(gw, "claude")
        r = http(gw.port, "POST", "/v1/chat/completions", chat("claude"),
                 {"x-mock-cache-read": "1000"})
        assert r.status == 200
        usage = orjson.loads(r.body)["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == 1000
        prompt, completion, cost = delta(gw, "claude", before)
        assert prompt == usage["prompt_tokens"]
        assert cost == pytest.approx(
            ((prompt - 1000) * 1.0 + 1000 * 0.1 + completion * 2.0) / 1e6)


def test_without_cache_prices_cached_tokens_cost_the_input_price() -> None:
    with running(yaml) as gw:
        before = counted(gw, "plain")
        r = http(gw.port, "POST", "/v1/chat/completions", chat("plain"),
                 {"x-mock-cache-read": "1000"})
        assert r.status == 200
        prompt, completion, cost = delta(gw, "plain", before)
        assert cost == pytest.approx((prompt * 1.0 + completion * 2.0) / 1e6)
