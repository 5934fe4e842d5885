"""Dialects, end to end: the official Anthropic SDK on ``POST /v1/messages``.

On a model served by an Anthropic deployment the request passes through (only the
model and the credentials change) and so does the answer; on one served by an
OpenAI deployment the request is translated into a chat completion request and
the answer, the stream and the tool calls back into Messages form.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import anthropic
import orjson
import pytest
from anthropic.types import TextBlock, ToolUseBlock
from dialect_helpers import (
    AN_KEY,
    ANTHROPIC_WEATHER,
    CLIENT_KEY,
    OA_KEY,
    TEXT,
    WEATHER_ARGS,
    Setup,
    dialect_gateway,
    sse_json,
)
from gwtest import http

MODELS = """
  - name: gpt-short
    targets: [{provider: oa, model: gpt-dep}]
    default_max_tokens: 77
"""

HI: list[Any] = [{"role": "user", "content": "hi"}]
_ID = re.compile(rb'"(msg|chatcmpl)-?_?[0-9a-f]{16}"')


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with dialect_gateway(MODELS) as s:
        yield s


@pytest.fixture
def client(setup: Setup) -> Iterator[anthropic.Anthropic]:
    with setup.anthropic() as c:
        yield c


def text_of(content: list[Any]) -> str:
    return "".join(b.text for b in content if isinstance(b, TextBlock))


def tool_uses(content: list[Any]) -> list[ToolUseBlock]:
    return [b for b in content if isinstance(b, ToolUseBlock)]


# -- an Anthropic deployment: pass-through -------------------------------------------------


def test_messages_pass_through_with_only_the_model_and_the_key_replaced(
        setup: Setup, client: anthropic.Anthropic) -> None:
    sent: dict[str, Any] = {
        "model": "claude", "max_tokens": 300, "system": [{"type": "text", "text": "Brief.",
                                                          "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 100},
        "metadata": {"user_id": "u-1"}, "some_future_field": {"x": [1, 2]}}
    n = len(setup.rec.seen)
    raw = client.messages.with_raw_response.create(
        max_tokens=sent["max_tokens"], model="claude", messages=sent["messages"],
        system=sent["system"], metadata=sent["metadata"],
        thinking=sent["thinking"], extra_headers={"x-mock-echo": "1"},
        extra_body={"top_k": 5, "some_future_field": {"x": [1, 2]}})
    message = raw.parse()
    assert raw.headers["x-fastgw-provider"] == "an"
    assert message.model == "claude-dep"
    echo = (message.model_extra or {})["echo"]
    assert (echo["method"], echo["path"]) == ("POST", "/v1/messages")
    assert echo["body"] == {**sent, "model": "claude-dep"}  # nothing else changed
    assert echo["headers"]["x-api-key"] == AN_KEY
    assert echo["headers"]["anthropic-version"] == "2023-06-01"
    assert all(CLIENT_KEY not in v for v in echo["headers"].values())
    # The bytes went as the client sent them, the model spliced in.
    [seen] = setup.rec.since(n)
    assert b'"model":"claude-dep"' in seen.raw_body
    assert orjson.loads(seen.raw_body) == {**sent, "model": "claude-dep"}


def test_pass_through_answers_are_the_upstreams_but_for_the_model(setup: Setup) -> None:
    doc = {"max_tokens": 50, "messages": HI}
    via = http(setup.gw.port, "POST", "/v1/messages", {**doc, "model": "claude"})
    direct = http(setup.mock_port, "POST", "/v1/messages", {**doc, "model": "claude-dep"})
    assert via.status == direct.status == 200
    assert _ID.sub(b"ID", via.body) == _ID.sub(b"ID", direct.body)

    stream = {**doc, "stream": True}
    via = http(setup.gw.port, "POST", "/v1/messages", {**stream, "model": "claude"})
    direct = http(setup.mock_port, "POST", "/v1/messages", {**stream, "model": "claude-dep"})
    assert via.headers["content-type"].startswith("text/event-stream")
    assert _ID.sub(b"ID", via.body) == _ID.sub(b"ID", direct.body)
    assert via.body.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def test_stream_from_an_anthropic_deployment_via_the_sdk(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="claude", max_tokens=50, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == TEXT == text_of(final.content)
    assert final.stop_reason == "end_turn" and final.model == "claude-dep"
    assert final.usage.output_tokens == 8


# -- an OpenAI deployment: translated ------------------------------------------------------


def test_messages_on_an_openai_deployment_answer_in_messages_form(
        setup: Setup, client: anthropic.Anthropic) -> None:
    turns: Any = [{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"},
                  {"role": "user", "content": [{"type": "text", "text": "bye"}]}]
    n = len(setup.rec.seen)
    raw = client.messages.with_raw_response.create(
        model="gpt", max_tokens=100, system="Be brief.", extra_body={"temperature": 0.5},
        stop_sequences=["STOP"], metadata={"user_id": "user-7"}, messages=turns)
    message = raw.parse()
    assert raw.headers["x-fastgw-provider"] == "oa"
    assert raw.headers["x-fastgw-model"] == "gpt-dep"
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "gpt-dep"
    assert text_of(message.content) == TEXT
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 8 and message.usage.input_tokens > 0
    [seen] = setup.rec.since(n)
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.headers["authorization"] == f"Bearer {OA_KEY}"
    assert "x-api-key" not in seen.headers and "anthropic-version" not in seen.headers
    assert all(CLIENT_KEY not in v for v in seen.headers.values())
    assert seen.body == {
        "model": "gpt-dep",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "hello"},
                     {"role": "user", "content": [{"type": "text", "text": "bye"}]}],
        "max_tokens": 100, "temperature": 0.5, "stop": ["STOP"], "user": "user-7"}


def test_max_tokens_default_and_images_and_tool_results_translated(
        setup: Setup, client: anthropic.Anthropic) -> None:
    turns: Any = [
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                         "data": "AAAA"}}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_abc", "name": "get_weather",
             "input": WEATHER_ARGS}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_abc", "content": "18 C"},
            {"type": "text", "text": "ok?"}]},
    ]
    n = len(setup.rec.seen)
    client.messages.create(model="gpt-short", max_tokens=77, tools=[ANTHROPIC_WEATHER],
                           messages=turns)
    [seen] = setup.rec.since(n)
    assert seen.body["max_tokens"] == 77
    assert seen.body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": ANTHROPIC_WEATHER["input_schema"]}}]
    assert seen.body["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_abc", "type": "function",
             "function": {"name": "get_weather", "arguments": orjson.dumps(WEATHER_ARGS)
                          .decode()}}]},
        {"role": "tool", "tool_call_id": "toolu_abc", "content": "18 C"},
        {"role": "user", "content": [{"type": "text", "text": "ok?"}]},
    ]
    # A raw request without max_tokens (the SDK insists on one): the model's default.
    n = len(setup.rec.seen)
    r = http(setup.gw.port, "POST", "/v1/messages", {"model": "gpt-short", "messages": HI})
    assert r.status == 200
    assert setup.rec.since(n)[0].body["max_tokens"] == 77


@pytest.mark.parametrize(("header", "stop", "tokens"), [
    ({}, "end_turn", 8),
    ({"x-mock-max-tokens": "3"}, "max_tokens", 3),
    ({"x-mock-tool": "get_weather"}, "tool_use", None),
], ids=["stop", "length", "tool_calls"])
def test_finish_reasons_become_stop_reasons(client: anthropic.Anthropic,
                                           header: dict[str, str], stop: str,
                                           tokens: int | None) -> None:
    message = client.messages.create(model="gpt", max_tokens=100, messages=HI,
                                     tools=[ANTHROPIC_WEATHER], extra_headers=header)
    assert message.stop_reason == stop
    with client.messages.stream(model="gpt", max_tokens=100, messages=HI,
                                tools=[ANTHROPIC_WEATHER], extra_headers=header) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == stop
    if tokens is not None:
        assert message.usage.output_tokens == final.usage.output_tokens == tokens


def test_cache_reads_reported_by_openai_become_anthropic_cache_fields(
        client: anthropic.Anthropic) -> None:
    plain = client.messages.create(model="gpt", max_tokens=100, messages=HI)
    cached = client.messages.create(model="gpt", max_tokens=100, messages=HI,
                                    extra_headers={"x-mock-cache-read": "30"})
    # OpenAI counts cache reads inside prompt_tokens; Anthropic outside input_tokens.
    assert cached.usage.cache_read_input_tokens == 30
    assert cached.usage.input_tokens == plain.usage.input_tokens


def test_stream_on_an_openai_deployment_is_a_coherent_messages_stream(
        setup: Setup, client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="gpt", max_tokens=100, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == TEXT == text_of(final.content)
    assert final.model == "gpt-dep" and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 8 and final.usage.input_tokens > 0

    r = http(setup.gw.port, "POST", "/v1/messages",
             {"model": "gpt", "max_tokens": 100, "stream": True, "messages": HI})
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_json(r.body)
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events)  # Anthropic's event lines
    assert names[0] == "message_start" and names.count("message_start") == 1
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names[1:-2] == ["content_block_start"] + ["content_block_delta"] * 8 \
        + ["content_block_stop"]
    assert b"[DONE]" not in r.body and b"chat.completion" not in r.body
    assert events[-2][1]["usage"]["output_tokens"] == 8


def test_tool_use_whole_and_streamed_from_an_openai_deployment(
        setup: Setup, client: anthropic.Anthropic) -> None:
    n = len(setup.rec.seen)
    message = client.messages.create(model="gpt", max_tokens=100, messages=HI,
                                     tools=[ANTHROPIC_WEATHER], tool_choice={"type": "any"})
    assert setup.rec.since(n)[0].body["tool_choice"] == "required"
    assert message.stop_reason == "tool_use"
    [use] = tool_uses(message.content)
    assert use.id == "call_mock_0_get_weather"  # OpenAI's id, kept as it is
    assert use.name == "get_weather" and use.input == WEATHER_ARGS

    with client.messages.stream(model="gpt", max_tokens=100, messages=HI,
                                tools=[ANTHROPIC_WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [use] = tool_uses(final.content)
    assert (use.id, use.name, use.input) == ("call_mock_0_get_weather", "get_weather",
                                             WEATHER_ARGS)

    # On the wire: a tool_use block opened with empty input, then input_json_delta pieces.
    r = http(setup.gw.port, "POST", "/v1/messages",
             {"model": "gpt", "max_tokens": 100, "stream": True, "messages": HI,
              "tools": [ANTHROPIC_WEATHER], "tool_choice": {"type": "any"}})
    events = sse_json(r.body)
    starts = [d for name, d in events if name == "content_block_start"]
    assert [s["content_block"] for s in starts] == [
        {"type": "tool_use", "id": "call_mock_0_get_weather", "name": "get_weather",
         "input": {}}]
    pieces = [d["delta"]["partial_json"] for name, d in events
              if name == "content_block_delta"]
    assert len(pieces) > 1 and orjson.loads("".join(pieces)) == WEATHER_ARGS


def test_parallel_tool_uses_streamed_get_one_block_each(client: anthropic.Anthropic) -> None:
    tools: Any = [ANTHROPIC_WEATHER, {"name": "get_time", "input_schema": {
        "type": "object", "properties": {"tz": {"type": "string"}}}}]
    with client.messages.stream(model="gpt", max_tokens=100, messages=HI, tools=tools,
                                extra_headers={"x-mock-tool": "get_weather,get_time"}) as s:
        final = s.get_final_message()
    assert [(u.id, u.name, u.input) for u in tool_uses(final.content)] == [
        ("call_mock_0_get_weather", "get_weather", WEATHER_ARGS),
        ("call_mock_1_get_time", "get_time", {"tz": "mock"})]

