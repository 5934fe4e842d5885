"""Tool calls, finish reasons and prompt-cache usage of the mock upstream.

The official openai and anthropic SDKs talk straight to the mock over real
sockets; raw sockets check the streamed bytes themselves.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import orjson
import pytest
from mock_helpers import CHAT, MockThread, http, sse_data

from fastgw.mock.tools import ToolCall, arguments_for, call_id, pick, split_arguments

TEXT8 = "This is a mock response from fastgw mock-upstream."

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "temp": {"type": "number"},
        "metric": {"type": "boolean"},
        "hours": {"type": "array", "items": {"type": "integer"}},
        "where": {"type": "object"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "note": {"type": ["null", "string"]},
    },
    "required": ["city"],
}
WEATHER_ARGS: dict[str, Any] = {
    "city": "mock",
    "days": 1,
    "temp": 1.5,
    "metric": True,
    "hours": [],
    "where": {},
    "unit": "celsius",
    "note": "mock",
}
TIME_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"tz": {"type": "string"}}}
TIME_ARGS = {"tz": "mock"}

OAI_TOOLS: Any = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "d", "parameters": WEATHER_SCHEMA},
    },
    {"type": "function", "function": {"name": "get_time", "parameters": TIME_SCHEMA}},
]
ANT_TOOLS: Any = [
    {"name": "get_weather", "description": "d", "input_schema": WEATHER_SCHEMA},
    {"name": "get_time", "input_schema": TIME_SCHEMA},
]
MESSAGES: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


def oai(m: MockThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=m.base + "/v1", api_key="sk-test", max_retries=0, timeout=10)


def claude(m: MockThread, key: str = "sk-ant") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=m.base, api_key=key, max_retries=0, timeout=10)


def compact(obj: object) -> str:
    return orjson.dumps(obj).decode()


# -- the pure helpers ------------------------------------------------------------------


def test_arguments_follow_the_schema_types_in_order() -> None:
    args = arguments_for(WEATHER_SCHEMA)
    assert args == WEATHER_ARGS
    assert list(args) == list(WEATHER_SCHEMA["properties"])
    assert arguments_for(None) == {}
    assert arguments_for({"type": "object"}) == {}
    assert arguments_for({"properties": {"x": {}, "y": "junk"}}) == {"x": None, "y": None}


def test_pick_by_tool_choice_and_by_header() -> None:
    assert pick("chat", OAI_TOOLS, "auto", None) == ()
    assert pick("chat", OAI_TOOLS, None, None) == ()
    assert [c.name for c in pick("chat", OAI_TOOLS, "required", None)] == ["get_weather"]
    named = {"type": "function", "function": {"name": "get_time"}}
    assert pick("chat", OAI_TOOLS, named, None) == (ToolCall("get_time", compact(TIME_ARGS)),)
    assert [c.name for c in pick("messages", ANT_TOOLS, {"type": "any"}, None)] == ["get_weather"]
    one = {"type": "tool", "name": "get_time"}
    assert [c.name for c in pick("messages", ANT_TOOLS, one, None)] == ["get_time"]
    assert pick("messages", ANT_TOOLS, {"type": "auto"}, None) == ()
    # the header wins over tool_choice; "1" is the first tool; unknown tools get {}
    assert [c.name for c in pick("chat", OAI_TOOLS, "none", ("1",))] == ["get_weather"]
    assert pick("chat", None, None, ("1",)) == ()
    assert pick("chat", None, None, ("lookup",)) == (ToolCall("lookup", "{}"),)
    both = pick("messages", ANT_TOOLS, None, ("get_time", "get_weather"))
    assert [(c.name, orjson.loads(c.arguments)) for c in both] == [
        ("get_time", TIME_ARGS),
        ("get_weather", WEATHER_ARGS),
    ]


def test_split_arguments_pieces_join_to_the_arguments() -> None:
    for text in ("{}", '{"a":1}', compact(WEATHER_ARGS), '{"q":"\\"é\\u2028"}'):
        parts = split_arguments(text)
        assert "".join(parts) == text
        assert len(parts) >= 2
        assert all(1 <= len(p) <= 8 for p in parts)
    assert call_id("toolu_", 1, "a b/c") == "toolu_mock_1_a_b_c"


# -- OpenAI: whole answers -------------------------------------------------------------


def test_openai_tool_choice_required_calls_the_first_tool(mock: MockThread) -> None:
    with oai(mock) as client:
        r = client.chat.completions.create(
            model="gpt-x", messages=MESSAGES, tools=OAI_TOOLS, tool_choice="required"
        )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls: Any = choice.message.tool_calls
    assert len(calls) == 1
    assert calls[0].id == "call_mock_0_get_weather"
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == compact(WEATHER_ARGS)
    assert r.usage is not None and r.usage.completion_tokens == 8


def test_openai_named_tool_choice_calls_that_tool(mock: MockThread) -> None:
    with oai(mock) as client:
        r = client.chat.completions.create(
            model="gpt-x",
            messages=MESSAGES,
            tools=OAI_TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
    calls: Any = r.choices[0].message.tool_calls
    assert [(c.function.name, orjson.loads(c.function.arguments)) for c in calls] == [
        ("get_time", TIME_ARGS)
    ]


def test_openai_auto_tool_choice_answers_text(mock: MockThread) -> None:
    with oai(mock) as client:
        r = client.chat.completions.create(
            model="gpt-x", messages=MESSAGES, tools=OAI_TOOLS, tool_choice="auto"
        )
    assert r.choices[0].message.content == TEXT8
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].finish_reason == "stop"


def test_openai_header_asks_for_parallel_tool_calls(mock: MockThread) -> None:
    with oai(mock) as client:
        r = client.chat.completions.create(
            model="gpt-x",
            messages=MESSAGES,
            tools=OAI_TOOLS,
            extra_headers={"x-mock-tool": "get_time, 1"},
        )
    calls: Any = r.choices[0].message.tool_calls
    assert [c.id for c in calls] == ["call_mock_0_get_time", "call_mock_1_get_weather"]
    assert [orjson.loads(c.function.arguments) for c in calls] == [TIME_ARGS, WEATHER_ARGS]
    assert r.choices[0].finish_reason == "tool_calls"


# -- OpenAI: streams -------------------------------------------------------------------


def test_openai_stream_helper_accumulates_tool_calls(mock: MockThread) -> None:
    with (
        oai(mock) as client,
        client.chat.completions.stream(
            model="gpt-x",
            messages=MESSAGES,
            tools=OAI_TOOLS,
            tool_choice="required",
            stream_options={"include_usage": True},
            extra_headers={"x-mock-tool": "get_weather,get_time"},
        ) as stream,
    ):
        events = list(stream)
        final = stream.get_final_completion()
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [(e.index, e.name, e.arguments) for e in done] == [
        (0, "get_weather", compact(WEATHER_ARGS)),
        (1, "get_time", compact(TIME_ARGS)),
    ]
    deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(deltas) >= 4  # several pieces per call
    calls: Any = final.choices[0].message.tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_mock_0_get_weather", "get_weather", compact(WEATHER_ARGS)),
        ("call_mock_1_get_time", "get_time", compact(TIME_ARGS)),
    ]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.completion_tokens == 8


def test_openai_create_stream_tool_call_deltas(mock: MockThread) -> None:
    with oai(mock) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-x",
                messages=MESSAGES,
                tools=OAI_TOOLS,
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                stream=True,
            )
        )
    assert chunks[0].choices[0].delta.role == "assistant"
    ids: dict[int, str] = {}
    args: dict[int, str] = {}
    for c in chunks:
        for tc in c.choices[0].delta.tool_calls or []:
            if tc.id is not None:
                ids[tc.index] = tc.id
            if tc.function is not None and tc.function.arguments:
                args[tc.index] = args.get(tc.index, "") + tc.function.arguments
    assert ids == {0: "call_mock_0_get_weather"}
    assert args == {0: compact(WEATHER_ARGS)}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage is None  # no usage chunk unless asked


def test_openai_stream_tool_bytes(mock: MockThread) -> None:
    body = {
        **CHAT,
        "tools": OAI_TOOLS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    resp = http(mock.port, b"POST", b"/v1/chat/completions", body, {"x-mock-tool": "1,get_time"})
    assert resp.status == 200 and resp.complete
    data = sse_data(resp.chunks)
    assert data[-1] == b"[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    role = chunks[0]["choices"][0]["delta"]
    assert role == {"role": "assistant", "content": None, "refusal": None}
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8
    finish = chunks[-2]["choices"][0]
    assert finish == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
    per_call: dict[int, list[str]] = {}
    for chunk in chunks[1:-2]:
        choice = chunk["choices"][0]
        assert choice["finish_reason"] is None
        (tc,) = choice["delta"]["tool_calls"]
        if tc["index"] not in per_call:  # the call's first chunk: id, type, name, no arguments
            assert tc == {
                "index": tc["index"],
                "id": f"call_mock_{tc['index']}_{tc['function']['name']}",
                "type": "function",
                "function": {"name": tc["function"]["name"], "arguments": ""},
            }
            per_call[tc["index"]] = []
        else:  # then only the index and a piece of the arguments
            assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}
            per_call[tc["index"]].append(tc["function"]["arguments"])
    assert sorted(per_call) == [0, 1]
    assert all(len(pieces) >= 2 for pieces in per_call.values())
    assert "".join(per_call[0]).encode() == orjson.dumps(WEATHER_ARGS)
    assert "".join(per_call[1]).encode() == orjson.dumps(TIME_ARGS)


# -- Anthropic: whole answers ----------------------------------------------------------


def test_anthropic_tool_choice_any_answers_tool_use(mock: MockThread) -> None:
    with claude(mock) as client:
        r = client.messages.create(
            model="claude-x",
            max_tokens=100,
            messages=MESSAGES,
            tools=ANT_TOOLS,
            tool_choice={"type": "any"},
        )
    assert r.stop_reason == "tool_use"
    assert r.stop_sequence is None
    assert len(r.content) == 1
    block: Any = r.content[0]
    assert block.type == "tool_use"
    assert block.id == "toolu_mock_0_get_weather"
    assert block.name == "get_weather"
    assert block.input == WEATHER_ARGS
    assert r.usage.output_tokens == 8


def test_anthropic_named_tool_and_auto(mock: MockThread) -> None:
    with claude(mock) as client:
        named = client.messages.create(
            model="claude-x",
            max_tokens=100,
            messages=MESSAGES,
            tools=ANT_TOOLS,
            tool_choice={"type": "tool", "name": "get_time"},
        )
        auto = client.messages.create(
            model="claude-x",
            max_tokens=100,
            messages=MESSAGES,
            tools=ANT_TOOLS,
            tool_choice={"type": "auto"},
        )
    block: Any = named.content[0]
    assert (block.name, block.input, block.id) == ("get_time", TIME_ARGS, "toolu_mock_0_get_time")
    assert auto.stop_reason == "end_turn"
    assert auto.content[0].type == "text" and auto.content[0].text == TEXT8


def test_anthropic_header_asks_for_two_tool_calls(mock: MockThread) -> None:
    with claude(mock) as client:
        r = client.messages.create(
            model="claude-x",
            max_tokens=100,
            messages=MESSAGES,
            tools=ANT_TOOLS,
            extra_headers={"x-mock-tool": "get_time,get_weather"},
        )
    blocks: Any = r.content
    assert [(b.type, b.id, b.name, b.input) for b in blocks] == [
        ("tool_use", "toolu_mock_0_get_time", "get_time", TIME_ARGS),
        ("tool_use", "toolu_mock_1_get_weather", "get_weather", WEATHER_ARGS),
    ]
    assert r.stop_reason == "tool_use"


# -- Anthropic: streams ----------------------------------------------------------------


@pytest.mark.parametrize("calls", [["get_weather"], ["get_weather", "get_time"]])
def test_anthropic_stream_accumulates_tool_use(mock: MockThread, calls: list[str]) -> None:
    with (
        claude(mock) as client,
        client.messages.stream(
            model="claude-x",
            max_tokens=100,
            messages=MESSAGES,
            tools=ANT_TOOLS,
            extra_headers={"x-mock-tool": ",".join(calls)},
        ) as stream,
    ):
        events = list(stream)
        final = stream.get_final_message()
    expected = {"get_weather": WEATHER_ARGS, "get_time": TIME_ARGS}
    blocks: Any = final.content
    assert [(b.type, b.id, b.name, b.input) for b in blocks] == [
        ("tool_use", f"toolu_mock_{i}_{name}", name, expected[name]) for i, name in enumerate(calls)
    ]
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 8
    partial = [e for e in events if e.type == "input_json"]
    assert len(partial) >= 2 * len(calls)


def test_anthropic_stream_tool_bytes(mock: MockThread) -> None:
    body = {"model": "c", "max_tokens": 100, "stream": True, "messages": MESSAGES}
    body["tools"] = ANT_TOOLS
    body["tool_choice"] = {"type": "tool", "name": "get_weather"}
    resp = http(mock.port, b"POST", b"/v1/messages", body)
    assert resp.status == 200 and resp.complete
    names = [c.split(b"\n", 1)[0] for c in resp.chunks]
    data = [orjson.loads(d) for d in sse_data(resp.chunks)]
    n = len(names) - 5
    assert n >= 2
    assert names == [
        b"event: message_start",
        b"event: content_block_start",
        *[b"event: content_block_delta"] * n,
        b"event: content_block_stop",
        b"event: message_delta",
        b"event: message_stop",
    ]
    assert data[1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {
            "type": "tool_use",
            "id": "toolu_mock_0_get_weather",
            "name": "get_weather",
            "input": {},
        },
    }
    pieces = []
    for d in data[2 : 2 + n]:
        assert d["index"] == 0 and d["delta"]["type"] == "input_json_delta"
        pieces.append(d["delta"]["partial_json"])
    assert "".join(pieces).encode() == orjson.dumps(WEATHER_ARGS)
    assert data[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert data[-2]["usage"] == {"output_tokens": 8}


def test_fault_error_event_on_a_tool_stream(mock: MockThread) -> None:
    body = {"model": "c", "max_tokens": 100, "stream": True, "messages": MESSAGES}
    headers = {"x-mock-tool": "lookup", "x-mock-fault": "error-event"}
    resp = http(mock.port, b"POST", b"/v1/messages", body, headers)
    data = [orjson.loads(d) for d in sse_data(resp.chunks)]
    assert [d["type"] for d in data] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "error",
    ]
    assert data[2]["delta"] == {"type": "input_json_delta", "partial_json": "{"}


# -- finish reasons --------------------------------------------------------------------


def test_stop_header_ends_a_message_with_its_stop_sequence(mock: MockThread) -> None:
    headers = {"x-mock-stop": "END"}
    kwargs: Any = {"model": "c", "max_tokens": 100, "messages": MESSAGES}
    with claude(mock) as client:
        whole = client.messages.create(**kwargs, stop_sequences=["END"], extra_headers=headers)
        with client.messages.stream(
            **kwargs, stop_sequences=["END"], extra_headers=headers
        ) as stream:
            final = stream.get_final_message()
        plain = client.messages.create(**kwargs, stop_sequences=["END"])
    for r in (whole, final):
        assert (r.stop_reason, r.stop_sequence) == ("stop_sequence", "END")
        text: Any = r.content[0]
        assert text.type == "text" and text.text == TEXT8
    assert (plain.stop_reason, plain.stop_sequence) == ("end_turn", None)
    with oai(mock) as oclient:
        chat = oclient.chat.completions.create(
            model="m", messages=MESSAGES, stop=["END"], extra_headers=headers
        )
    assert chat.choices[0].finish_reason == "stop"


def test_max_tokens_header_ends_by_length(mock: MockThread) -> None:
    headers = {"x-mock-max-tokens": "1"}
    with oai(mock) as oclient:
        chat = oclient.chat.completions.create(model="m", messages=MESSAGES, extra_headers=headers)
        chunks = list(
            oclient.chat.completions.create(
                model="m", messages=MESSAGES, stream=True, extra_headers=headers
            )
        )
        tools = oclient.chat.completions.create(
            model="m",
            messages=MESSAGES,
            tools=OAI_TOOLS,
            tool_choice="required",
            extra_headers=headers,
        )
    assert chat.choices[0].finish_reason == "length"
    assert chat.choices[0].message.content == "This"
    assert chat.usage is not None and chat.usage.completion_tokens == 1
    assert chunks[-1].choices[0].finish_reason == "length"
    assert tools.choices[0].finish_reason == "length"
    assert tools.choices[0].message.tool_calls is None
    kwargs: Any = {"model": "c", "max_tokens": 100, "messages": MESSAGES}
    with claude(mock) as client:
        whole = client.messages.create(**kwargs, extra_headers=headers)
        with client.messages.stream(**kwargs, extra_headers=headers) as stream:
            final = stream.get_final_message()
    for r in (whole, final):
        assert r.stop_reason == "max_tokens"
        assert r.usage.output_tokens == 1


# -- prompt-cache usage ----------------------------------------------------------------


def test_cache_headers_in_anthropic_usage(mock: MockThread) -> None:
    kwargs: Any = {"model": "c", "max_tokens": 100, "messages": MESSAGES}
    headers = {"x-mock-cache-read": "100", "x-mock-cache-creation": "20"}
    with claude(mock) as client:
        plain = client.messages.create(**kwargs)
        whole = client.messages.create(**kwargs, extra_headers=headers)
        with client.messages.stream(**kwargs, extra_headers=headers) as stream:
            final = stream.get_final_message()
        read_only = client.messages.create(**kwargs, extra_headers={"x-mock-cache-read": "7"})
    assert plain.usage.cache_read_input_tokens is None
    for r in (whole, final):
        assert r.usage.input_tokens == plain.usage.input_tokens  # cached tokens counted apart
        assert r.usage.cache_read_input_tokens == 100
        assert r.usage.cache_creation_input_tokens == 20
        assert r.usage.output_tokens == 8
    assert read_only.usage.cache_read_input_tokens == 7
    assert read_only.usage.cache_creation_input_tokens == 0
    body = {**kwargs, "stream": True}
    resp = http(mock.port, b"POST", b"/v1/messages", body, headers)
    start = orjson.loads(sse_data(resp.chunks)[0])
    assert start["message"]["usage"] == {
        "input_tokens": plain.usage.input_tokens,
        "cache_creation_input_tokens": 20,
        "cache_read_input_tokens": 100,
        "output_tokens": 1,
    }


def test_cache_headers_in_openai_usage(mock: MockThread) -> None:
    with oai(mock) as client:
        plain = client.chat.completions.create(model="m", messages=MESSAGES)
        cached = client.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"x-mock-cache-read": "64"}
        )
        chunks = list(
            client.chat.completions.create(
                model="m",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-mock-cache-read": "64"},
            )
        )
    assert plain.usage is not None and cached.usage is not None
    assert plain.usage.prompt_tokens_details is None
    assert cached.usage.prompt_tokens == plain.usage.prompt_tokens + 64  # counted inside
    assert cached.usage.total_tokens == cached.usage.prompt_tokens + 8
    assert cached.usage.prompt_tokens_details is not None
    assert cached.usage.prompt_tokens_details.cached_tokens == 64
    usage = chunks[-1].usage
    assert usage is not None and usage.model_dump() == cached.usage.model_dump()


def test_answer_headers_never_leak_into_cached_plain_answers(mock: MockThread) -> None:
    """The same body with and without the headers: each answer is its own."""
    body = {**CHAT, "tools": OAI_TOOLS}
    path = b"/v1/chat/completions"
    for _ in range(2):
        plain = orjson.loads(http(mock.port, b"POST", path, body).body)
        assert plain["choices"][0]["message"]["content"] == TEXT8
        assert "prompt_tokens_details" not in plain["usage"]
        tool = orjson.loads(http(mock.port, b"POST", path, body, {"x-mock-tool": "1"}).body)
        assert tool["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
        other = orjson.loads(http(mock.port, b"POST", path, body, {"x-mock-tool": "get_time"}).body)
        assert other["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_time"
        cached = orjson.loads(http(mock.port, b"POST", path, body, {"x-mock-cache-read": "3"}).body)
        assert cached["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}
        assert cached["choices"][0]["message"]["content"] == TEXT8
