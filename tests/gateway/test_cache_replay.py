"""A hit answered in the form asked for, through the official SDKs: an entry made
from a whole answer replayed as a stream (ending with [DONE], the usage chunk
only when asked) and an entry recorded from a stream served whole; a new id and
a new x-request-id each time; Anthropic clients get Anthropic's events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from cache_gw import KEY_A, cache_yaml, doc, post, unique, upstream
from gwtest import Gateway, running


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    with running(cache_yaml) as g:
        yield g


@pytest.fixture
def client(gw: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0,
                       timeout=10) as c:
        yield c


def chat_args(text: str) -> dict[str, Any]:
    return {"model": "gpt", "temperature": 0, "messages": [{"role": "user", "content": text}]}


def streamed_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_whole_answer_serves_a_streamed_request(gw: Gateway, client: openai.OpenAI,
                                                  include_usage: bool) -> None:
    args = chat_args(unique())
    before = upstream(gw)
    raw = client.chat.completions.with_raw_response.create(**args)
    whole = raw.parse()
    assert raw.headers["x-fastgw-cache"] == "miss"
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    hit = client.chat.completions.with_raw_response.create(stream=True, **args, **extra)
    assert hit.headers["x-fastgw-cache"] == "hit"
    assert hit.headers["content-type"].startswith("text/event-stream")
    assert hit.headers["x-request-id"] != raw.headers["x-request-id"]
    chunks = list(hit.parse())
    assert upstream(gw) - before == 1
    assert streamed_text(chunks) == whole.choices[0].message.content
    assert chunks[-1 - include_usage].choices[0].finish_reason == "stop"
    assert {c.id for c in chunks} != {whole.id} and len({c.id for c in chunks}) == 1
    if include_usage:
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None and whole.usage is not None
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    else:
        assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


@pytest.mark.parametrize("include_usage", [False, True])
def test_the_replayed_stream_ends_with_done(gw: Gateway, include_usage: bool) -> None:
    text = unique()
    assert post(gw, doc(text=text)).headers["x-fastgw-cache"] == "miss"
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    r = post(gw, doc(text=text, stream=True, **extra))
    assert r.headers["x-fastgw-cache"] == "hit"
    assert r.body.endswith(b"data: [DONE]\n\n")
    assert (b'"usage":{' in r.body) == include_usage


def test_a_streamed_answer_serves_a_whole_request(gw: Gateway, client: openai.OpenAI) -> None:
    args = chat_args(unique())
    before = upstream(gw)
    first = client.chat.completions.with_raw_response.create(stream=True, **args)
    assert first.headers["x-fastgw-cache"] == "miss"
    chunks = list(first.parse())
    raw = client.chat.completions.with_raw_response.create(**args)
    assert raw.headers["x-fastgw-cache"] == "hit"
    assert raw.headers["x-request-id"] != first.headers["x-request-id"]
    whole = raw.parse()
    assert upstream(gw) - before == 1
    assert whole.choices[0].message.content == streamed_text(chunks)
    assert whole.choices[0].finish_reason == "stop"
    assert whole.id != chunks[0].id
    # the entry keeps the stream's usage (the gateway asked upstream for it)
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    again = client.chat.completions.create(**args)
    assert again.id != whole.id


def test_completions_replay_both_ways(gw: Gateway, client: openai.OpenAI) -> None:
    prompt = unique()
    before = upstream(gw)
    whole = client.completions.create(model="gpt", prompt=prompt, temperature=0)
    chunks = list(client.completions.create(model="gpt", prompt=prompt, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert upstream(gw) - before == 1


def test_embeddings_and_responses_hits_through_the_sdk(gw: Gateway,
                                                       client: openai.OpenAI) -> None:
    text = unique()
    before = upstream(gw)
    e1 = client.embeddings.with_raw_response.create(model="gpt", input=text)
    e2 = client.embeddings.with_raw_response.create(model="gpt", input=text)
    assert [e1.headers["x-fastgw-cache"], e2.headers["x-fastgw-cache"]] == ["miss", "hit"]
    assert e2.parse().data[0].embedding == e1.parse().data[0].embedding
    r1 = client.responses.with_raw_response.create(model="gpt", input=text, temperature=0)
    r2 = client.responses.with_raw_response.create(model="gpt", input=text, temperature=0)
    assert [r1.headers["x-fastgw-cache"], r2.headers["x-fastgw-cache"]] == ["miss", "hit"]
    assert r2.parse().output_text == r1.parse().output_text
    assert r2.parse().id != r1.parse().id
    assert upstream(gw) - before == 2
    # A streamed Responses request is answered, not cached (no replay of its events).
    s = client.responses.with_raw_response.create(model="gpt", input=text, temperature=0,
                                                  stream=True)
    assert s.headers["x-fastgw-cache"] == "bypass"
    assert any(ev.type == "response.completed" for ev in s.parse())


@pytest.fixture
def claude(gw: Gateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gw.url, api_key=KEY_A, max_retries=0, timeout=10) as c:
        yield c


def test_anthropic_client_whole_then_streamed(gw: Gateway, claude: anthropic.Anthropic) -> None:
    text = unique()
    args: dict[str, Any] = {"model": "claude", "max_tokens": 50, "extra_body": {"temperature": 0},
                            "messages": [{"role": "user", "content": text}]}
    before = upstream(gw)
    raw = claude.messages.with_raw_response.create(**args)
    whole = raw.parse()
    assert raw.headers["x-fastgw-cache"] == "miss"
    with claude.messages.stream(**args) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert upstream(gw) - before == 1
    assert streamed == whole.content[0].text
    assert final.id != whole.id and final.stop_reason == whole.stop_reason


def test_anthropic_client_streamed_then_whole(gw: Gateway, claude: anthropic.Anthropic) -> None:
    text = unique()
    args: dict[str, Any] = {"model": "claude", "max_tokens": 50, "extra_body": {"temperature": 0},
                            "messages": [{"role": "user", "content": text}]}
    before = upstream(gw)
    with claude.messages.stream(**args) as stream:
        streamed = "".join(stream.text_stream)
        first = stream.get_final_message()
    raw = claude.messages.with_raw_response.create(**args)
    assert raw.headers["x-fastgw-cache"] == "hit"
    whole = raw.parse()
    assert upstream(gw) - before == 1
    assert whole.content[0].text == streamed
    assert whole.id != first.id
    assert whole.usage.output_tokens == first.usage.output_tokens
