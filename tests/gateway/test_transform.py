"""Transforms on real sockets: what the upstream receives after ``request.set``,
``default``, ``cap``, ``drop``, ``prepend_system`` (chat, Responses and Anthropic
Messages, system as a string or content parts) and ``headers.add/remove``;
before translation and before the cache key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from dialect_helpers import dialect_gateway
from gwtest import Gateway, running

TRANSFORM = """
    transform:
      request:
        set: {temperature: 0, metadata: {team: blue}}
        default: {max_tokens: 64}
        cap: {max_tokens: 100, top_p: 0.5}
        drop: [user, seed]
        prepend_system: "Answer in English."
      headers:
        add: {x-team: blue}
        remove: [x-debug]
"""


def transform_yaml(mock_port: int) -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - name: mock
    kind: openai-compatible
    base_url: http://127.0.0.1:{mock_port}/v1
    api_key: sk-provider-secret
  - name: claude
    kind: anthropic
    base_url: http://127.0.0.1:{mock_port}
    api_key: sk-ant-secret
cache: {{enabled: false}}
models:
  - name: shaped
    targets: [{{provider: mock, model: mock-deployment}}]
{TRANSFORM}
  - name: shaped-claude
    targets: [{{provider: claude, model: claude-x}}]
{TRANSFORM}
  - name: shaped-cached
    targets: [{{provider: mock, model: mock-deployment}}]
    cache: true
    transform:
      request: {{set: {{temperature: 0}}}}
observability: {{access_log: off}}
"""


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    with running(transform_yaml) as g:
        yield g


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0,
                         timeout=10)


def echo(resp: Any) -> dict[str, Any]:
    got: dict[str, Any] = (resp.model_extra or {})["echo"]
    return got


def test_the_upstream_receives_the_transformed_chat_request(gw: Gateway) -> None:
    with client(gw) as c:
        resp = c.chat.completions.create(
            model="shaped", temperature=1.5, max_tokens=4000, top_p=0.9, user="u-1", seed=7,
            extra_headers={"x-mock-echo": "1", "x-debug": "yes", "x-other": "kept"},
            messages=[{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "hi"}])
    got = echo(resp)
    body, headers = got["body"], got["headers"]
    assert body["temperature"] == 0
    assert body["metadata"] == {"team": "blue"}
    assert body["max_tokens"] == 100 and body["top_p"] == 0.5
    assert "user" not in body and "seed" not in body
    assert body["messages"][0] == {"role": "system",
                                   "content": "Answer in English.\n\nBe brief."}
    assert headers["x-team"] == "blue" and headers["x-other"] == "kept"
    assert "x-debug" not in headers


def test_defaults_apply_only_when_absent_and_a_system_prompt_is_made(gw: Gateway) -> None:
    with client(gw) as c:
        resp = c.chat.completions.create(model="shaped", extra_headers={"x-mock-echo": "1"},
                                         messages=[{"role": "user", "content": "hi"}])
        body = echo(resp)["body"]
        assert body["max_tokens"] == 64
        assert body["messages"] == [{"role": "system", "content": "Answer in English."},
                                    {"role": "user", "content": "hi"}]
        resp = c.chat.completions.create(
            model="shaped", extra_headers={"x-mock-echo": "1"}, max_tokens=10,
            messages=[{"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
                      {"role": "user", "content": "hi"}])
        body = echo(resp)["body"]
        assert body["max_tokens"] == 10
        assert body["messages"][0]["content"] == [
            {"type": "text", "text": "Answer in English."}, {"type": "text", "text": "Be kind."}]


def test_responses_instructions_get_the_prepended_text(gw: Gateway) -> None:
    with client(gw) as c:
        resp = c.responses.create(model="shaped", input="hi", instructions="Be brief.",
                                  extra_headers={"x-mock-echo": "1"})
        assert echo(resp)["body"]["instructions"] == "Answer in English.\n\nBe brief."


def test_anthropic_clients_system_string_and_parts(gw: Gateway) -> None:
    with anthropic.Anthropic(base_url=gw.url, api_key="sk-client", max_retries=0,
                             timeout=10) as c:
        msg = c.messages.create(model="shaped-claude", max_tokens=500, system="Be brief.",
                                extra_headers={"x-mock-echo": "1"},
                                messages=[{"role": "user", "content": "hi"}])
        body = (msg.model_extra or {})["echo"]["body"]
        assert body["system"] == "Answer in English.\n\nBe brief."
        assert body["max_tokens"] == 100 and body["temperature"] == 0
        msg = c.messages.create(model="shaped-claude", max_tokens=50,
                                system=[{"type": "text", "text": "Be brief."}],
                                extra_headers={"x-mock-echo": "1"},
                                messages=[{"role": "user", "content": "hi"}])
        body = (msg.model_extra or {})["echo"]["body"]
        assert body["system"] == [{"type": "text", "text": "Answer in English."},
                                  {"type": "text", "text": "Be brief."}]


def test_the_transform_comes_before_translation() -> None:
    """An OpenAI chat client on an Anthropic deployment: the system prompt made by
    the transform is translated into Anthropic's ``system``, the cap applies to
    the translated ``max_tokens``, the added header goes out."""
    models = """
  - name: shaped-an
    targets: [{provider: an, model: claude-dep}]
""" + TRANSFORM
    with dialect_gateway(models) as setup, setup.openai() as c:
        resp = c.chat.completions.create(model="shaped-an", max_tokens=4000,
                                         messages=[{"role": "user", "content": "hi"}])
        assert resp.choices[0].message.content
        seen = setup.rec.last()
    assert seen.path == "/v1/messages"
    assert seen.body["system"] == "Answer in English."
    assert seen.body["max_tokens"] == 100 and seen.body["temperature"] == 0
    assert seen.headers["x-team"] == "blue"


def test_the_cache_key_is_of_the_transformed_request(gw: Gateway) -> None:
    with client(gw) as c:
        first = c.chat.completions.with_raw_response.create(
            model="shaped-cached", temperature=0.7,
            messages=[{"role": "user", "content": "cache me"}])
        second = c.chat.completions.with_raw_response.create(
            model="shaped-cached", temperature=1.3,
            messages=[{"role": "user", "content": "cache me"}])
    assert first.headers["x-fastgw-cache"] == "miss"
    assert second.headers["x-fastgw-cache"] == "hit"
