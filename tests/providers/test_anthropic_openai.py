"""An Anthropic Messages client in front of an OpenAI chat backend: requests,
answers, streams and errors (``fastgw.providers.anthropic_openai``)."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from anthropic.types import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.errors import BadRequest, UpstreamProtocolError
from fastgw.providers import anthropic_openai, openai_anthropic
from fastgw.providers.anthropic_openai import (
    MessagesFromChatStream,
    translate_error,
    translate_request,
    translate_response,
)

from .sse_util import (
    COMMIT,
    DONE,
    ERROR,
    USAGE,
    accumulate_anthropic,
    anthropic_events,
    feed_cut,
    read_sse,
    sse,
    union,
)


def req(doc: dict[str, Any], *, stream: bool = False, default_max_tokens: int | None = None,
        drop: bool = False) -> dict[str, Any]:
    out = translate_request(doc, deployment="gpt-x", stream=stream,
                            default_max_tokens=default_max_tokens, drop_unsupported=drop)
    assert isinstance(out, bytes)
    got: dict[str, Any] = orjson.loads(out)
    return got


def messages(*msgs: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {"model": "claude", "max_tokens": 256, "messages": list(msgs), **params}


USER = {"role": "user", "content": "hi"}

# ---------------------------------------------------------------- requests


def test_minimal_request() -> None:
    assert req(messages(USER)) == {"model": "gpt-x", "messages": [
        {"role": "user", "content": "hi"}], "max_tokens": 256}


def test_system_prompt() -> None:
    assert req(messages(USER, system="be brief"))["messages"][0] == {
        "role": "system", "content": "be brief"}
    got = req(messages(USER, system=[{"type": "text", "text": "a",
                                      "cache_control": {"type": "ephemeral"}},
                                     {"type": "text", "text": "b"}]))
    assert got["messages"][0] == {"role": "system", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}


def test_turns_text_and_images() -> None:
    got = req(messages(
        {"role": "user", "content": [
            {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                         "data": "/9j/4AAQ"}},
            {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "thanks"}))
    assert got["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "thanks"},
    ]


def test_tool_use_and_tool_results() -> None:
    got = req(messages(
        USER,
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Let me "}, {"type": "text", "text": "check."},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"q": "é", "n": [1]}},
            {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "here you go"},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "timeout"}]}]},
    ))
    assert got["messages"][1:] == [
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "f", "arguments": '{"q":"é","n":[1]}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "42"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [
            {"type": "text", "text": "Error: "}, {"type": "text", "text": "timeout"}]},
        {"role": "user", "content": [{"type": "text", "text": "here you go"}]},
    ]


def test_tool_results_alone_and_odd_contents() -> None:
    got = req(messages(
        USER,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "f",
                                           "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "a"},
            {"type": "tool_result", "tool_use_id": "b", "content": "x", "is_error": True}]},
        {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "z"}]},
    ))
    assert got["messages"][1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": ""},
        {"role": "tool", "tool_call_id": "b", "content": "Error: x"},
    ]  # the thinking-only turn is dropped


def test_tools_and_tool_choice() -> None:
    tools = [{"name": "get_weather", "description": "weather", "input_schema": {
        "type": "object", "properties": {"city": {"type": "string"}}},
        "cache_control": {"type": "ephemeral"}},
        {"type": "custom", "name": "now", "input_schema": {"type": "object"}, "strict": True}]
    got = req(messages(USER, tools=tools, tool_choice={"type": "auto"}))
    assert got["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "weather",
                                          "parameters": {"type": "object", "properties": {
                                              "city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object"},
                                          "strict": True}},
    ]
    assert got["tool_choice"] == "auto" and "parallel_tool_calls" not in got
    for choice, expected in [({"type": "any"}, "required"), ({"type": "none"}, "none"),
                             ({"type": "tool", "name": "now"},
                              {"type": "function", "function": {"name": "now"}})]:
        assert req(messages(USER, tools=tools, tool_choice=choice))["tool_choice"] == expected
    got = req(messages(USER, tools=tools, tool_choice={"type": "any",
                                                       "disable_parallel_tool_use": True}))
    assert got["tool_choice"] == "required" and got["parallel_tool_calls"] is False


def test_parameters() -> None:
    got = req(messages(USER, temperature=0.3, top_p=0.8, stop_sequences=["\n\nHuman:"],
                       metadata={"user_id": "u-9"}, stream=True, cache_control={
                           "type": "ephemeral"}, fastgw={"only": ["a"]},
                       thinking={"type": "disabled"}, service_tier="auto"), stream=True)
    assert got == {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}],
                   "temperature": 0.3, "top_p": 0.8, "stop": ["\n\nHuman:"], "user": "u-9",
                   "max_tokens": 256, "stream": True, "stream_options": {"include_usage": True}}
    doc = {"model": "claude", "messages": [USER]}  # no max_tokens
    assert "max_tokens" not in req(doc)
    assert req(doc, default_max_tokens=512)["max_tokens"] == 512
    assert "user" not in req(messages(USER, metadata={}))


@pytest.mark.parametrize(("param", "value", "path"), [
    ("top_k", 40, "top_k"),
    ("thinking", {"type": "enabled", "budget_tokens": 1024}, "thinking"),
    ("service_tier", "standard_only", "service_tier"),
    ("container", "c1", "container"),
    ("mcp_servers", [{"url": "x"}], "mcp_servers"),
])
def test_unsupported_parameters(param: str, value: Any, path: str) -> None:
    with pytest.raises(BadRequest) as info:
        req(messages(USER, **{param: value}))
    err = info.value
    assert (err.status, err.param, err.code) == (400, path, "unsupported_parameter")
    assert f"'{path}'" in err.message and "drop_unsupported_params" in err.message
    assert req(messages(USER, **{param: value}), drop=True) == req(messages(USER))


def test_unsupported_blocks_and_tools() -> None:
    doc = messages({"role": "user", "content": [
        {"type": "text", "text": "read"},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                        "data": "JVBER"}}]})
    with pytest.raises(BadRequest) as info:
        req(doc)
    assert info.value.param == "messages[0].content[1].type"
    assert req(doc, drop=True)["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "read"}]}]
    doc = messages(USER, {"role": "assistant", "content": "x"}, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://i"}}]}]})
    with pytest.raises(BadRequest) as info:
        req(doc)
    assert info.value.param == "messages[2].content[0].content[0].type"
    doc = messages(USER, tools=[{"type": "web_search_20250305", "name": "web_search"}])
    with pytest.raises(BadRequest) as info:
        req(doc)
    assert info.value.param == "tools[0].type"
    assert "tools" not in req(doc, drop=True)
    doc = messages(USER, tools=[{"name": "f", "input_schema": {}, "input_examples": [{}]}])
    with pytest.raises(BadRequest) as info:
        req(doc)
    assert info.value.param == "tools[0].input_examples"
    doc = messages({"role": "user", "content": [{"type": "image", "source": {
        "type": "file", "file_id": "f"}}]})
    with pytest.raises(BadRequest) as info:
        req(doc)
    assert info.value.param == "messages[0].content[0].source.type"


@pytest.mark.parametrize(("doc", "param"), [
    ("x", "body"),
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
     "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "data": "x"}}]}]}, "messages[0].content[0].source.media_type"),
    ({"messages": [USER], "max_tokens": "many"}, "max_tokens"),
    ({"messages": [USER], "stop_sequences": "x"}, "stop_sequences"),
    ({"messages": [USER], "stop_sequences": [1]}, "stop_sequences"),
    ({"messages": [USER], "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    ({"messages": [USER], "tools": [{"name": "f"}]}, "tools[0].input_schema"),
    ({"messages": [USER], "system": [{"type": "text"}]}, "system[0].text"),
    ({"messages": [USER], "metadata": {"user_id": 3}}, "metadata.user_id"),
])
def test_bad_shapes_name_what_to_fix(doc: Any, param: str) -> None:
    with pytest.raises(BadRequest) as info:
        req(doc)
    assert info.value.status == 400 and info.value.param == param


# ---------------------------------------------------------------- request round trip

_text = st.text(max_size=12)
_ident = st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=8)
_args = st.dictionaries(st.text(max_size=4), st.one_of(
    st.integers(-1000, 1000), st.text(max_size=6), st.booleans(), st.none()), max_size=3)
_text_block = st.builds(lambda t: {"type": "text", "text": t}, _text)
_image_block = st.one_of(
    st.builds(lambda m, d: {"type": "image", "source": {"type": "base64", "media_type": m,
                                                        "data": d}},
              st.sampled_from(["image/png", "image/webp"]),
              st.text("ABCxyz019+/=", min_size=1, max_size=12)),
    st.builds(lambda p: {"type": "image", "source": {"type": "url",
                                                     "url": f"https://i.test/{p}"}}, _ident),
)
_result = st.builds(
    lambda i, c, e: {"type": "tool_result", "tool_use_id": i, "content": c,
                     **({"is_error": e} if e is not None else {})},
    _ident, st.one_of(_text, st.lists(_text_block, max_size=2)), st.none() | st.booleans())
_user = st.builds(lambda c: {"role": "user", "content": c}, st.one_of(
    _text, st.lists(st.one_of(_text_block, _image_block, _result), max_size=4)))
_tool_use = st.builds(lambda i, n, a: {"type": "tool_use", "id": i, "name": n, "input": a},
                      _ident, _ident, _args)
_thinking = st.builds(lambda t: {"type": "thinking", "thinking": t, "signature": "s"}, _text)
_assistant = st.builds(lambda c: {"role": "assistant", "content": c}, st.one_of(
    _text, st.lists(st.one_of(_text_block, _tool_use, _thinking), max_size=4)))
_tool = st.builds(
    lambda n, d, props: {"name": n, **({"description": d} if d is not None else {}),
                         "input_schema": {"type": "object", "properties": props}},
    _ident, st.none() | _text, st.dictionaries(_ident, st.just({"type": "integer"}), max_size=2))


@st.composite
def anthropic_requests(draw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": "claude", "max_tokens": draw(st.integers(1, 10_000)),
                           "messages": draw(st.lists(st.one_of(_user, _assistant), min_size=1,
                                                     max_size=6))}
    system = draw(st.none() | _text | st.lists(_text_block, max_size=2))
    if system is not None:
        doc["system"] = system
    tools = draw(st.lists(_tool, max_size=2))
    if tools:
        doc["tools"] = tools
        choice: dict[str, Any] = draw(st.sampled_from([
            {"type": "auto"}, {"type": "any"}, {"type": "none"},
            {"type": "tool", "name": tools[-1]["name"]}]))
        if draw(st.booleans()):
            choice = {**choice, "disable_parallel_tool_use": draw(st.booleans())}
        doc["tool_choice"] = choice
    for key, strat in [("temperature", st.floats(0, 1)), ("top_p", st.floats(0, 1)),
                       ("stop_sequences", st.lists(_text, min_size=1, max_size=2)),
                       ("metadata", st.builds(lambda u: {"user_id": u}, _text))]:
        if draw(st.booleans()):
            doc[key] = draw(strat)
    return doc


def _flat(msgs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """A Messages conversation with the documented normalisations applied, as one flat
    list: thinking dropped, an assistant's texts concatenated and put before its tool
    calls,
    ``is_error`` written into the result, and each run of user-side items with its
    tool results first."""
    items: list[tuple[Any, ...]] = []
    for m in msgs:
        c = m["content"]
        blocks = [{"type": "text", "text": c}] if isinstance(c, str) else c
        if m["role"] == "user":
            for b in blocks:
                if b["type"] == "tool_result":
                    content = b.get("content", "")
                    if b.get("is_error"):
                        content = ("Error: " + content if isinstance(content, str)
                                   else [{"type": "text", "text": "Error: "}, *content])
                    items.append(("result", b["tool_use_id"], orjson.dumps(content)))
                else:
                    items.append(("user", orjson.dumps(b)))
        else:
            items += [("text", b["text"]) for b in blocks if b["type"] == "text"]
            items += [("call", b["id"], b["name"], orjson.dumps(b["input"]))
                      for b in blocks if b["type"] == "tool_use"]
    return _runs(items)


def _runs(items: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Each run of user-side items with its tool results first; each run of assistant
    items as its texts joined (when not empty), then its tool calls."""
    out: list[tuple[Any, ...]] = []
    run: list[tuple[Any, ...]] = []
    for item in [*items, ("end",)]:
        if run and (run[0][0] in ("user", "result")) != (item[0] in ("user", "result")):
            if run[0][0] in ("user", "result"):
                out += [i for i in run if i[0] == "result"] + [i for i in run if i[0] == "user"]
            else:
                text = "".join(i[1] for i in run if i[0] == "text")
                out += ([("text", text)] if text else []) + [i for i in run if i[0] == "call"]
            run = []
        run.append(item)
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=anthropic_requests(), stream=st.booleans())
def test_messages_request_survives_openai_and_back(doc: dict[str, Any], stream: bool) -> None:
    chat = req(doc, stream=stream)
    assert chat.get("stream_options") == ({"include_usage": True} if stream else None)
    if not chat["messages"]:  # nothing left to send (thinking only): refused, not sent
        with pytest.raises(BadRequest):
            openai_anthropic.translate_request(chat, deployment="claude", stream=stream,
                                               default_max_tokens=None, drop_unsupported=False)
        return
    back: dict[str, Any] = orjson.loads(openai_anthropic.translate_request(
        chat, deployment="claude", stream=stream, default_max_tokens=None,
        drop_unsupported=False))
    assert _flat(back["messages"]) == _flat(doc["messages"])
    roles = [m["role"] for m in back["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles))
    system = doc.get("system")
    if isinstance(system, list):
        assert back.get("system", []) == system
    else:
        assert back.get("system", "") == (system or "")
    assert back.get("tools") == doc.get("tools")
    choice = doc.get("tool_choice")
    if choice is not None:
        choice = dict(choice)
        if not choice.get("disable_parallel_tool_use") or choice["type"] == "none":
            choice.pop("disable_parallel_tool_use", None)
    assert back.get("tool_choice") == choice
    for key in ("temperature", "top_p", "stop_sequences", "metadata", "max_tokens"):
        assert back.get(key) == doc.get(key)
    assert back.get("stream") == (True if stream else None)


# ---------------------------------------------------------------- answers

COMPLETION = {
    "id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-x-2024",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
        "role": "assistant", "content": "Checking.", "reasoning_content": "think",
        "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": '{"a": [1, 2]}'}},
            {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{"}},
        ]}}],
    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
              "prompt_tokens_details": {"cached_tokens": 60},
              "completion_tokens_details": {"reasoning_tokens": 5}},
}


def test_a_chat_completion_becomes_a_message() -> None:
    body, usage = translate_response(orjson.dumps(COMPLETION))
    got = orjson.loads(body)
    assert got == {
        "id": "chatcmpl-9", "type": "message", "role": "assistant", "model": "gpt-x-2024",
        "content": [
            {"type": "thinking", "thinking": "think", "signature": ""},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": [1, 2]}},
            {"type": "tool_use", "id": "call_2", "name": "g", "input": {}},  # unparsable
        ],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 40, "output_tokens": 20, "cache_read_input_tokens": 60},
    }
    assert usage == {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                     "cached_tokens": 60, "reasoning_tokens": 5}
    Message.model_validate(got)


def test_plain_answers_refusals_and_parts() -> None:
    def one(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
        doc = {"id": "c", "model": "m", "choices": [{"index": 0, "message": message,
                                                     "finish_reason": finish}]}
        got: dict[str, Any] = orjson.loads(translate_response(orjson.dumps(doc))[0])
        return got
    got = one({"role": "assistant", "content": "hi"})
    assert got["content"] == [{"type": "text", "text": "hi"}]
    assert got["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert one({"role": "assistant", "content": None, "refusal": "no"}, "content_filter")[
        "content"] == [{"type": "text", "text": "no"}]
    assert one({"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                 {"type": "text", "text": "b"}]})[
        "content"] == [{"type": "text", "text": "ab"}]
    assert one({"role": "assistant", "content": "", "reasoning": "r"})["content"] == [
        {"type": "thinking", "thinking": "r", "signature": ""}]
    assert one({"role": "assistant", "content": ""})["content"] == []


@pytest.mark.parametrize(("finish", "stop"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
    ("function_call", "tool_use"), ("content_filter", "refusal"), (None, "end_turn"),
])
def test_stop_reasons(finish: str | None, stop: str) -> None:
    doc = {**COMPLETION, "choices": [{**COMPLETION["choices"][0],  # type: ignore[index]
                                      "finish_reason": finish}]}
    assert orjson.loads(translate_response(orjson.dumps(doc))[0])["stop_reason"] == stop


@pytest.mark.parametrize("body", [b"<html>", b"[1]", b'{"choices":[]}', b'{"choices":[1]}',
                                  b'{"choices":[{"index":0}]}', b'{"error":{"message":"x"}}'])
def test_not_a_chat_completion(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError) as info:
        translate_response(body)
    assert info.value.sent is True


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("status", "type_"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (429, "rate_limit_error"), (500, "api_error"),
    (503, "api_error"), (529, "overloaded_error"), (413, "request_too_large"),
])
def test_errors_in_anthropic_form(status: int, type_: str) -> None:
    body = orjson.dumps({"error": {"message": "nope", "type": "whatever", "param": None,
                                   "code": None}})
    assert orjson.loads(translate_error(status, body)) == {
        "type": "error", "error": {"type": type_, "message": "nope"}}


def test_an_error_body_that_is_not_openai() -> None:
    assert orjson.loads(translate_error(502, b"Bad Gateway")) == {
        "type": "error", "error": {"type": "api_error", "message": "Bad Gateway"}}


# ---------------------------------------------------------------- streams


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, *,
          usage: dict[str, Any] | None = None) -> tuple[None, dict[str, Any]]:
    doc: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                           "created": 5, "model": "gpt-x"}
    doc["choices"] = [] if delta is None else [{"index": 0, "delta": delta,
                                                "finish_reason": finish}]
    if usage is not None:
        doc["usage"] = usage
    return None, doc


ROLE = chunk({"role": "assistant", "content": ""})
DONE_EV = (None, "[DONE]")
USAGE_EV = chunk(usage={"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59,
                        "prompt_tokens_details": {"cached_tokens": 20}})


def stream() -> MessagesFromChatStream:
    return MessagesFromChatStream(include_usage=True, created=5)


START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"chatcmpl-1",'
         b'"type":"message","role":"assistant","model":"gpt-x","content":[],"stop_reason":null,'
         b'"stop_sequence":null,"usage":{"input_tokens":0,"output_tokens":0}}}\n\n')


def test_a_text_stream_chunk_by_chunk() -> None:
    tr = stream()
    assert tr.feed(sse([ROLE])) == (START, 0)
    out, flags = tr.feed(sse([chunk({"content": "Hi"})]))
    assert flags == COMMIT and tr.committed
    assert out == (b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                   b'"content_block":{"type":"text","text":""}}\n\n'
                   b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                   b'"delta":{"type":"text_delta","text":"Hi"}}\n\n')
    out, flags = tr.feed(sse([chunk({"content": ' "x"\n'})]))
    assert flags == 0 and out == (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":" \\"x\\"\\n"}}\n\n')
    out, flags = tr.feed(sse([chunk({}, "stop")]))
    assert flags == 0 and out == (b'event: content_block_stop\ndata: {"type":"content_block_stop",'
                                  b'"index":0}\n\n')
    assert tr.feed(sse([USAGE_EV])) == (b"", USAGE)
    out, flags = tr.feed(sse([DONE_EV]))
    assert flags == DONE and tr.done
    assert out == (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
                   b'"end_turn","stop_sequence":null},"usage":{"output_tokens":9,'
                   b'"input_tokens":30,"cache_read_input_tokens":20}}\n\n'
                   b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert tr.usage == {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59,
                        "cached_tokens": 20}
    assert tr.finish() == b""


def test_reasoning_then_text_then_tools() -> None:
    events = [ROLE, chunk({"reasoning_content": "let me"}), chunk({"reasoning_content": " see"}),
              chunk({"content": "ok"}),
              chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                     "function": {"name": "f", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
              chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                     "function": {"name": "g", "arguments": "{}"}}]}),
              chunk({}, "tool_calls"), USAGE_EV, DONE_EV]
    out, flags = stream().feed(sse(events))
    assert flags == COMMIT | USAGE | DONE
    evs, errors = anthropic_events(out)
    assert not errors
    assert [(e.type, getattr(e, "index", None)) for e in evs] == [
        ("message_start", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("content_block_start", 2), ("content_block_delta", 2), ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("content_block_start", 3), ("content_block_delta", 3), ("content_block_stop", 3),
        ("message_delta", None), ("message_stop", None)]
    final = accumulate_anthropic(evs)
    assert final["content"] == [
        {"type": "thinking", "thinking": "let me see", "signature": ""},
        {"type": "text", "text": "ok"},
        {"type": "tool_use", "id": "call_a", "name": "f", "input": {"x": 1}},
        {"type": "tool_use", "id": "call_b", "name": "g", "input": {}}]
    assert final["stop_reason"] == "tool_use"
    assert final["usage"] == {"input_tokens": 30, "output_tokens": 9,
                              "cache_read_input_tokens": 20}


def test_error_chunks() -> None:
    tr = stream()
    tr.feed(sse([ROLE]))
    out, flags = tr.feed(sse([(None, {"error": {"message": "overloaded", "type": "server_error",
                                                "code": None}}), chunk({"content": "x"})]))
    assert flags == ERROR and tr.error and not tr.committed
    assert out == (b'event: error\ndata: {"type":"error","error":{"type":"api_error",'
                   b'"message":"overloaded"}}\n\n')
    assert tr.feed(sse([DONE_EV])) == (b"", 0) and tr.finish() == b""
    # an "event: error" before anything: only the error
    tr = stream()
    out, flags = tr.feed(sse([("error", {"message": "limit", "type": "rate_limit_error"})]))
    assert flags == ERROR and read_sse(out) == [
        ("error", '{"type":"error","error":{"type":"rate_limit_error","message":"limit"}}')]


def test_no_done_marker_finish_ends_the_message() -> None:
    tr = stream()
    tr.feed(sse([ROLE, chunk({"content": "a"}), chunk({"content": "b"})]))
    tail = tr.finish()
    assert tail.startswith(b"event: content_block_stop") and tr.done
    evs, _ = anthropic_events(tail)
    assert [e.type for e in evs] == ["content_block_stop", "message_delta", "message_stop"]
    assert evs[1].delta.stop_reason == "end_turn" and evs[1].usage.output_tokens == 0
    assert tr.finish() == b""
    assert stream().finish() == b""


def test_a_last_event_without_its_blank_line() -> None:
    body = sse([ROLE, chunk({"content": "a"}), chunk({}, "length"), USAGE_EV, DONE_EV])
    tr = stream()
    out, _ = tr.feed(body[:-2])
    tail = tr.finish()
    assert out + tail == stream().feed(body)[0] and tr.done
    assert tr.feed(b"\n\n") == (b"", 0)
    tr = stream()
    out, _ = tr.feed(body[:-4])  # "data: [DON": not an event
    assert tr.finish().endswith(b'"stop_reason":"max_tokens","stop_sequence":null},"usage":'
                                b'{"output_tokens":9,"input_tokens":30,'
                                b'"cache_read_input_tokens":20}}\n\n'
                                b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def test_odd_upstreams() -> None:
    # [DONE] alone; a chunk that is not JSON; choices other than 0; a refusal delta;
    # a tool call without id
    out, flags = stream().feed(sse([DONE_EV]))
    assert flags == COMMIT | DONE
    assert [e.type for e in anthropic_events(out)[0]] == ["message_start", "message_delta",
                                                          "message_stop"]
    events = [ROLE, (None, "{oops"), (None, "[1,2]"), (None, {"choices": "x"}),
              (None, {"id": "c", "choices": [{"index": 1, "delta": {"content": "other"}}]}),
              chunk({"refusal": "I can't"}),
              chunk({"tool_calls": [{"index": 0, "function": {"name": "f",
                                                              "arguments": "{}"}}]}),
              chunk({}, "content_filter"), DONE_EV]
    out, flags = stream().feed(sse(events))
    final = accumulate_anthropic(anthropic_events(out)[0])
    assert final["content"] == [{"type": "text", "text": "I can't"},
                                {"type": "tool_use", "id": "call_0", "name": "f", "input": {}}]
    assert final["stop_reason"] == "refusal"


def test_every_cut_of_a_crlf_stream() -> None:
    raw = sse([ROLE, chunk({"content": "hé"}), chunk({"content": "llo"}),
               chunk({"tool_calls": [{"index": 0, "id": "c", "function": {
                   "name": "f", "arguments": '{"a"'}}]}),
               chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
               chunk({}, "tool_calls"), USAGE_EV, DONE_EV], nl="\r\n")
    whole, steps, _ = feed_cut(stream(), raw)
    for cut in range(len(raw)):
        got, cut_steps, _ = feed_cut(stream(), raw, [cut])
        assert got == whole and union(cut_steps) == union(steps)
    got, cut_steps, _ = feed_cut(stream(), raw, list(range(len(raw))))
    assert got == whole and [f & COMMIT for _, f in cut_steps].count(COMMIT) == 1


# ---------------------------------------------------------------- stream properties

_piece = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6) | \
    st.sampled_from(['"', "\\", "\n", "\r\n", "é", "😀", "\u2028", "data: x\n\n"])


@st.composite
def chat_streams(draw: Any) -> tuple[list[Any], dict[str, Any] | None, bool]:
    """An upstream chunk list, the ``chat.completion`` it amounts to (None when it
    fails with an error), and whether the error comes before any content."""
    events: list[Any] = []
    if draw(st.booleans()):
        events.append(ROLE)
    reasoning = draw(st.lists(_piece, max_size=3))
    text = draw(st.lists(_piece, max_size=4))
    events += [chunk({"reasoning_content": p}) for p in reasoning]
    events += [chunk({"content": p}) for p in text]
    calls = []
    for k in range(draw(st.integers(0, 3))):
        call_id, name, args = draw(_ident), draw(_ident), draw(_args)
        arguments = orjson.dumps(args).decode()
        cuts = sorted(draw(st.lists(st.integers(0, len(arguments)), max_size=3)))
        pieces = [arguments[a:b] for a, b in zip([0, *cuts], [*cuts, len(arguments)],
                                                 strict=True)]
        events.append(chunk({"tool_calls": [{"index": k, "id": call_id, "type": "function",
                                             "function": {"name": name,
                                                          "arguments": pieces[0]}}]}))
        events += [chunk({"tool_calls": [{"index": k, "function": {"arguments": p}}]})
                   for p in pieces[1:]]
        calls.append({"id": call_id, "type": "function",
                      "function": {"name": name, "arguments": arguments}})
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
    events.append(chunk({}, finish))
    usage = None
    if draw(st.booleans()):
        prompt = draw(st.integers(0, 999))
        usage = {"prompt_tokens": prompt, "completion_tokens": draw(st.integers(0, 999))}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if draw(st.booleans()):
            usage["prompt_tokens_details"] = {"cached_tokens": draw(st.integers(0, prompt))}
        events.append(chunk(usage=usage))
    if draw(st.booleans()):
        events.append(DONE_EV)  # else the body just ends: finish()
    joined = "".join(text)
    message: dict[str, Any] = {"role": "assistant",
                               "content": joined if joined or not calls else None}
    if "".join(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    completion = {"id": "chatcmpl-1", "object": "chat.completion", "created": 5,
                  "model": "gpt-x", "choices": [{"index": 0, "message": message,
                                                 "finish_reason": finish}]}
    if usage is not None:
        completion["usage"] = usage
    if draw(st.integers(0, 5)) == 0:
        at = draw(st.integers(0, len(events) - 1))
        early = not any(e[1] != "[DONE]" and e[1]["choices"] and any(
            e[1]["choices"][0]["delta"].get(k) for k in ("content", "reasoning_content",
                                                         "tool_calls"))
            for e in events[:at])
        error = draw(st.sampled_from([(None, {"error": {"message": "boom", "type": "x",
                                                        "code": 503}}),
                                      ("error", {"error": {"message": "e",
                                                           "type": "rate_limit_error"}})]))
        return [*events[:at], error], None, early
    return events, completion, False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=chat_streams(), nl=st.sampled_from(["\n", "\r\n"]), data=st.data())
def test_any_cut_of_any_stream(case: Any, nl: str, data: Any) -> None:
    events, completion, early_error = case
    raw = sse(events, nl=nl)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
    whole, whole_steps, _ = feed_cut(stream(), raw)
    tr = stream()
    got, steps, tail = feed_cut(tr, raw, cuts)
    assert got == whole
    assert union(steps) == union(whole_steps)
    commits = [i for i, (_, f) in enumerate(steps) if f & COMMIT]
    assert len(commits) == (0 if early_error else 1) or (not commits and tail)
    if commits:  # ... in the call that sent the first content
        before = b"".join(o for o, _ in steps[:commits[0]])
        assert all(e.type == "message_start" for e in anthropic_events(before)[0])
        assert len(anthropic_events(before + steps[commits[0]][0])[0]) > len(
            anthropic_events(before)[0])
    evs, errors = anthropic_events(got)  # valid for the anthropic SDK
    if completion is None:
        assert len(errors) == 1 and union(steps) & ERROR and not tail
        assert read_sse(got)[-1][0] == "error"
        return
    assert not errors
    expected_body, expected_usage = translate_response(orjson.dumps(completion))
    final = accumulate_anthropic(evs)
    assert final == orjson.loads(expected_body)
    Message.model_validate(final)
    if "usage" in completion:
        assert tr.usage == expected_usage
    else:
        assert tr.usage is None


def test_module_names() -> None:
    assert anthropic_openai.__all__ == ["MessagesFromChatStream", "translate_error",
                                        "translate_request", "translate_response"]
