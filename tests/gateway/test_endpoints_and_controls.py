"""README promises about endpoints and per-request controls: every OpenAI
endpoint proxied, with or without the ``/v1`` prefix; ``allow_fallbacks: false``
in the body or as a header."""

from __future__ import annotations

import socket
from typing import Any

import orjson
import pytest
from gwtest import http, running

BODIES: dict[str, dict[str, Any]] = {
    "chat/completions": {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
    "completions": {"model": "gpt-test", "prompt": "hi"},
    "embeddings": {"model": "gpt-test", "input": "hi"},
    "responses": {"model": "gpt-test", "input": "hi"},
}
OBJECTS = {"chat/completions": "chat.completion", "completions": "text_completion",
           "embeddings": "list", "responses": "response"}


@pytest.mark.parametrize("prefix", ["/v1/", "/"])
@pytest.mark.parametrize("endpoint", list(BODIES))
def test_every_endpoint_is_proxied_with_or_without_v1(prefix: str, endpoint: str) -> None:
    with running() as gw:
        before = gw.mock_stats()["requests"]
        r = http(gw.port, "POST", prefix + endpoint, BODIES[endpoint])
        assert r.status == 200, r.body
        assert orjson.loads(r.body)["object"] == OBJECTS[endpoint]
        assert r.headers["x-fastgw-model"] == "mock-deployment"
        assert gw.mock_stats()["requests"] - before == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fallback_yaml(mock_port: int) -> str:
    return f"""
providers:
  - {{name: good, kind: openai-compatible, base_url: "http://127.0.0.1:{mock_port}/v1"}}
  - {{name: bad, kind: openai-compatible, base_url: "http://127.0.0.1:{_closed_port()}/v1"}}
models:
  - name: primary
    retry: {{attempts: 1}}
    fallbacks: [backup]
    targets: [{{provider: bad, model: x}}]
  - name: backup
    targets: [{{provider: good, model: y}}]
observability: {{access_log: off}}
"""


@pytest.mark.parametrize("how", ["body", "header"])
def test_allow_fallbacks_false_stops_at_the_model_itself(how: str) -> None:
    doc: dict[str, Any] = {"model": "primary",
                           "messages": [{"role": "user", "content": "hi"}]}
    with running(_fallback_yaml) as gw:
        r = http(gw.port, "POST", "/v1/chat/completions", doc)
        assert r.status == 200 and r.headers["x-fastgw-provider"] == "good"  # fell back
        before = gw.mock_stats()["requests"]
        headers = {}
        if how == "body":
            doc["fastgw"] = {"allow_fallbacks": False}
        else:
            headers["x-fastgw-allow-fallbacks"] = "false"
        r = http(gw.port, "POST", "/v1/chat/completions", doc, headers=headers)
        assert r.status == 502, r.body
        assert r.headers["x-fastgw-attempts"] == "1"
        assert gw.mock_stats()["requests"] == before  # the fallback was not asked
