"""Helpers for the response cache's gateway tests: a configuration with two API
keys, cached and uncached models over one mock upstream (OpenAI and Anthropic
dialects), requests with a key, the cache's counters, and a real redis-server
on a free port that a test may kill."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from gwtest import Gateway, Response, http

from fastgw import metrics

KEY_A = "sk-cache-team-a"
KEY_B = "sk-cache-team-b"
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions",
         "embeddings": "/v1/embeddings", "responses": "/v1/responses",
         "messages": "/v1/messages"}
PRICE = "price: {input_per_mtok: 1.0, output_per_mtok: 2.0}"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def cache_yaml(port: int, *, cache: str = "{enabled: true}", keys: str = "",
               timeouts: str = "", redis_url: str | None = None, log: Path | None = None,
               extra: str = "") -> str:
    """``gpt`` and ``gpt-2`` cached (through the ``cache`` section), ``plain`` with
    ``cache: false``, ``claude`` on an Anthropic provider; keys team-a and team-b
    (``keys``: more of their YAML, e.g. limits)."""
    redis_section = f"redis: {{url: {redis_url}, timeout_s: 0.25}}\n" if redis_url else ""
    access = str(log) if log is not None else "off"
    return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - name: mock
    kind: openai-compatible
    base_url: http://127.0.0.1:{port}/v1
    api_key: sk-provider-secret{timeouts}
  - {{name: an, kind: anthropic, base_url: "http://127.0.0.1:{port}", api_key: k}}
models:
  - {{name: gpt, targets: [{{provider: mock, model: g}}], {PRICE}}}
  - {{name: gpt-2, targets: [{{provider: mock, model: g}}], {PRICE}}}
  - {{name: plain, targets: [{{provider: mock, model: g}}], {PRICE}, cache: false}}
  - {{name: claude, targets: [{{provider: an, model: c}}], {PRICE}}}
auth:
  keys:
    - {{name: team-a, key_sha256: "{sha(KEY_A)}"{keys}}}
    - {{name: team-b, key_sha256: "{sha(KEY_B)}"{keys}}}
cache: {cache}
{redis_section}observability: {{access_log: {access}}}
{extra}"""


def unique(label: str = "q") -> str:
    """A prompt no other request sends (entries of one gateway never mix across tests)."""
    global _N
    _N += 1
    return f"{label} {_N} {time.monotonic_ns()}"


_N = 0


def doc(endpoint: str = "chat", model: str = "gpt", text: str = "hello there",
        **extra: Any) -> dict[str, Any]:
    """A deterministic request (temperature 0) of ``endpoint`` saying ``text``."""
    d: dict[str, Any]
    if endpoint == "chat":
        d = {"model": model, "messages": [{"role": "user", "content": text}]}
    elif endpoint in ("completions",):
        d = {"model": model, "prompt": text}
    elif endpoint in ("embeddings", "responses"):
        d = {"model": model, "input": text}
    else:
        d = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": text}]}
    if endpoint != "embeddings":
        d["temperature"] = 0
    d.update(extra)
    return d


def post(gw: Gateway, body: dict[str, Any] | bytes, endpoint: str = "chat", key: str = KEY_A,
         **headers: str) -> Response:
    return http(gw.port, "POST", PATHS[endpoint], body,
                {"authorization": f"Bearer {key}", **headers})


def upstream(gw: Gateway) -> int:
    """API requests the mock upstream has answered."""
    return gw.mock_stats()["requests"]


def cache_counts(gw: Gateway) -> dict[str, float]:
    return {r: gw.metric(metrics.CACHE, r) for r in ("hit", "miss", "bypass")}


def counted_since(gw: Gateway, before: dict[str, float]) -> dict[str, float]:
    now = cache_counts(gw)
    return {r: now[r] - before[r] for r in now}


# -- a real redis-server -------------------------------------------------------------
