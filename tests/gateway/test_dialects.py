"""Dialects, end to end: the official OpenAI SDK on a model served by an Anthropic
deployment. The gateway translates the chat request into a Messages request
(checked as the upstream received it) and the answer, the stream and the tool
calls back into OpenAI's form (checked as the SDK and the raw bytes see them).

The other directions and the rest of the contract: ``test_dialects_messages.py``
(Anthropic SDK clients), ``test_dialects_errors.py`` (errors in the client's
dialect), ``test_dialects_across.py`` (fallbacks, failover, metrics, the direct
path and the configuration across dialects).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from dialect_helpers import (
    AN_KEY,
    CLIENT_KEY,
    OPENAI_WEATHER,
    TEXT,
    WEATHER_ARGS,
    WEATHER_SCHEMA,
    Setup,
    dialect_gateway,
    sse_json,
)
from gwtest import http
from openai.types.chat import ChatCompletionMessageFunctionToolCall

MODELS = """
  - name: claude-short
    targets: [{provider: an, model: claude-dep}]
    default_max_tokens: 77
"""

HI: Any = [{"role": "user", "content": "hi"}]  # Any: the SDK wants its TypedDicts


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with dialect_gateway(MODELS) as s:
        yield s


@pytest.fixture
def client(setup: Setup) -> Iterator[openai.OpenAI]:
    with setup.openai() as c:
        yield c


def function_calls(calls: Any) -> list[ChatCompletionMessageFunctionToolCall]:
    assert calls is not None
    out = []
    for c in calls:
        assert isinstance(c, ChatCompletionMessageFunctionToolCall)
        out.append(c)
    return out


# -- whole answers -----------------------------------------------------------------------


def test_chat_answer_from_an_anthropic_deployment_is_a_chat_completion(
        setup: Setup, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=HI)
    done = raw.parse()
    assert done.object == "chat.completion"
    assert done.model == "claude-dep"
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == TEXT
    assert done.choices[0].message.tool_calls is None
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens == 8
    assert done.usage.total_tokens == done.usage.prompt_tokens + 8
    assert raw.headers["x-fastgw-provider"] == "an"
    assert raw.headers["x-fastgw-model"] == "claude-dep"
    assert raw.headers["content-type"].startswith("application/json")
    seen = setup.rec.last()
    assert (seen.method, seen.path) == ("POST", "/v1/messages")


@pytest.mark.parametrize(("header", "finish", "tokens"), [
    ({}, "stop", 8),
    ({"x-mock-stop": "END"}, "stop", 8),  # Anthropic's stop_sequence
    ({"x-mock-max-tokens": "3"}, "length", 3),  # Anthropic's max_tokens
], ids=["end_turn", "stop_sequence", "max_tokens"])
def test_stop_reasons_become_finish_reasons(client: openai.OpenAI, header: dict[str, str],
                                            finish: str, tokens: int) -> None:
    done = client.chat.completions.create(model="claude", messages=HI, extra_headers=header)
    assert done.choices[0].finish_reason == finish
    assert done.usage is not None and done.usage.completion_tokens == tokens
    chunks = list(client.chat.completions.create(model="claude", messages=HI, stream=True,
                                                 extra_headers=header))
    assert chunks[-1].choices[0].finish_reason == finish
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == done.choices[0].message.content


def test_cache_reads_and_writes_count_in_prompt_tokens_and_show_in_details(
        client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="claude", messages=HI)
    cached = client.chat.completions.create(
        model="claude", messages=HI,
        extra_headers={"x-mock-cache-read": "40", "x-mock-cache-creation": "7"})
    assert plain.usage is not None and cached.usage is not None
    # Anthropic reports cache reads and writes outside input_tokens; OpenAI counts
    # them inside prompt_tokens.
    assert cached.usage.prompt_tokens == plain.usage.prompt_tokens + 40 + 7
    assert cached.usage.total_tokens == cached.usage.prompt_tokens + 8
    details = cached.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == 40
    assert details.cache_write_tokens == 7
    streamed = list(client.chat.completions.create(
        model="claude", messages=HI, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-mock-cache-read": "40"}))
    usage = streamed[-1].usage
    assert usage is not None and usage.prompt_tokens == plain.usage.prompt_tokens + 40
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 40


# -- what the Anthropic upstream receives --------------------------------------------------


def test_upstream_gets_a_messages_request_with_the_provider_key(
        setup: Setup, client: openai.OpenAI) -> None:
    conversation: Any = [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "hi"},
                         {"role": "user", "content": "and more"},
                         {"role": "assistant", "content": "hello"},
                         {"role": "developer", "content": "No emojis."},
                         {"role": "user", "content": "bye"}]
    n = len(setup.rec.seen)
    client.chat.completions.create(model="claude", user="user-42", stop=["STOP", "END"],
                                   temperature=0.3, top_p=0.9, messages=conversation)
    [seen] = setup.rec.since(n)
    assert (seen.method, seen.path) == ("POST", "/v1/messages")
    assert seen.headers["x-api-key"] == AN_KEY
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert all(CLIENT_KEY not in v for v in seen.headers.values())
    assert seen.body == {
        "model": "claude-dep",
        "system": "Be brief.\n\nNo emojis.",
        "messages": [  # alternating turns: the two user messages merged into one
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                         {"type": "text", "text": "and more"}]},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"}],
        "max_tokens": 4096,  # Anthropic needs one; the client set none
        "stop_sequences": ["STOP", "END"],
        "temperature": 0.3,
        "top_p": 0.9,
        "metadata": {"user_id": "user-42"},
    }


@pytest.mark.parametrize(("model", "given", "sent"), [
    ("claude", {}, 4096),
    ("claude-short", {}, 77),  # the model's default_max_tokens
    ("claude-short", {"max_tokens": 12}, 12),
    ("claude", {"max_completion_tokens": 20, "max_tokens": 12}, 20),
])
def test_max_tokens_sent_upstream(setup: Setup, client: openai.OpenAI, model: str,
                                  given: dict[str, int], sent: int) -> None:
    n = len(setup.rec.seen)
    client.chat.completions.create(model=model, messages=HI, extra_body=given)
    [seen] = setup.rec.since(n)
    assert seen.body["max_tokens"] == sent


def test_images_by_url_and_base64_become_image_source_blocks(
        setup: Setup, client: openai.OpenAI) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nnot-really").decode()
    asked: Any = [{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg",
                                            "detail": "high"}},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
    ]}]
    n = len(setup.rec.seen)
    done = client.chat.completions.create(model="claude", messages=asked)
    assert done.choices[0].message.content == TEXT
    [seen] = setup.rec.since(n)
    assert seen.body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": png}},
    ]}]


def test_a_tool_round_trip_reaches_anthropic_as_tool_use_and_tool_result(
        setup: Setup, client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="claude", tools=[OPENAI_WEATHER],
                                           tool_choice="required", messages=HI)
    [call] = function_calls(first.choices[0].message.tool_calls)
    n = len(setup.rec.seen)
    conversation: Any = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"},
        {"role": "user", "content": "Thanks; and tomorrow?"},
    ]
    client.chat.completions.create(model="claude", tools=[OPENAI_WEATHER],
                                   messages=conversation)
    [seen] = setup.rec.since(n)
    body = seen.body
    assert body["system"] == "Use tools."
    assert body["tools"] == [{"name": "get_weather", "description": "Weather in a city",
                              "input_schema": WEATHER_SCHEMA}]
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": call.id, "name": "get_weather", "input": WEATHER_ARGS}]},
        # The tool result and the next user message make one user turn, result first.
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees"},
            {"type": "text", "text": "Thanks; and tomorrow?"}]},
    ]


# -- streams -------------------------------------------------------------------------------


def test_stream_reassembles_the_answer_without_a_usage_chunk_unless_asked(
        client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="claude", messages=HI, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert all(c.choices and c.usage is None for c in chunks)
    assert all(c.model == "claude-dep" and c.object == "chat.completion.chunk"
               for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1

    chunks = list(client.chat.completions.create(
        model="claude", messages=HI, stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 8
    assert last.usage.total_tokens == last.usage.prompt_tokens + 8
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_bytes_are_openai_sse_ending_with_one_done(setup: Setup,
                                                          include_usage: bool) -> None:
    doc: dict[str, Any] = {"model": "claude", "stream": True, "messages": HI}
    if include_usage:
        doc["stream_options"] = {"include_usage": True}
    r = http(setup.gw.port, "POST", "/v1/chat/completions", doc)
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.body.endswith(b"\n\ndata: [DONE]\n\n")
    assert r.body.count(b"[DONE]") == 1
    assert b"event:" not in r.body  # OpenAI's chunks are bare data events
    events = sse_json(r.body)
    assert all(name is None for name, _ in events)
    chunks = [data for _, data in events[:-1]]
    with_usage = [c for c in chunks if c.get("usage")]
    if include_usage:
        assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
        assert with_usage[0]["choices"] == []
    else:
        assert with_usage == []
    assert b"message_start" not in r.body and b"content_block" not in r.body


# -- tools ---------------------------------------------------------------------------------


def test_tool_calls_whole_keep_their_ids_and_exact_arguments(
        setup: Setup, client: openai.OpenAI) -> None:
    n = len(setup.rec.seen)
    done = client.chat.completions.create(model="claude", tools=[OPENAI_WEATHER],
                                          tool_choice="required", messages=HI)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = function_calls(choice.message.tool_calls)
    assert call.id == "toolu_mock_0_get_weather"  # Anthropic's id, kept as it is
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    [seen] = setup.rec.since(n)
    assert seen.body["tool_choice"] == {"type": "any"}


def test_parallel_tool_calls_whole_and_streamed(client: openai.OpenAI) -> None:
    tools: Any = [OPENAI_WEATHER, {"type": "function", "function": {
        "name": "get_time", "parameters": {"type": "object",
                                           "properties": {"tz": {"type": "string"}}}}}]
    headers = {"x-mock-tool": "get_weather,get_time"}
    done = client.chat.completions.create(model="claude", tools=tools, messages=HI,
                                          extra_headers=headers)
    calls = function_calls(done.choices[0].message.tool_calls)
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("toolu_mock_0_get_weather", "get_weather", WEATHER_ARGS),
        ("toolu_mock_1_get_time", "get_time", {"tz": "mock"})]
    with client.chat.completions.stream(model="claude", tools=tools, messages=HI,
                                        extra_headers=headers) as stream:
        final = stream.get_final_completion()
    streamed = function_calls(final.choices[0].message.tool_calls)
    assert [(c.id, c.function.name, c.function.arguments) for c in streamed] == [
        (c.id, c.function.name, c.function.arguments) for c in calls]
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_calls_streamed_arrive_as_argument_deltas_that_join_exactly(
        setup: Setup, client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="claude", tools=[OPENAI_WEATHER],
                                        tool_choice="required", messages=HI) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = function_calls(choice.message.tool_calls)
    assert call.id == "toolu_mock_0_get_weather"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS

    # On the wire: the id and name once, then the arguments in pieces.
    r = http(setup.gw.port, "POST", "/v1/chat/completions",
             {"model": "claude", "stream": True, "tools": [OPENAI_WEATHER],
              "tool_choice": "required", "messages": HI})
    chunks = [d for _, d in sse_json(r.body) if d != "[DONE]"]
    deltas = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["id"] == "toolu_mock_0_get_weather"
    assert deltas[0]["function"]["name"] == "get_weather"
    assert all("id" not in d for d in deltas[1:]) and len(deltas) > 2
    assert all(d["index"] == 0 for d in deltas)
    joined = "".join(d["function"]["arguments"] for d in deltas)
    assert orjson.loads(joined) == WEATHER_ARGS
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
