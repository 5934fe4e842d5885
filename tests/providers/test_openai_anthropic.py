"""An OpenAI chat client in front of an Anthropic Messages backend: requests,
answers, streams and errors (``fastgw.providers.openai_anthropic``)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from fastgw import _native as native
from fastgw.errors import BadRequest, UpstreamProtocolError
from fastgw.providers import anthropic_openai, openai_anthropic
from fastgw.providers.openai_anthropic import (
    ChatFromMessagesStream,
    translate_error,
    translate_request,
    translate_response,
)

from .sse_util import (
    COMMIT,
    DONE,
    ERROR,
    USAGE,
    feed_cut,
    openai_chunks,
    reassemble_openai,
    sse,
    union,
)


def req(doc: dict[str, Any], *, stream: bool = False, default_max_tokens: int | None = None,
        drop: bool = False) -> dict[str, Any]:
    out = translate_request(doc, deployment="claude-x", stream=stream,
                            default_max_tokens=default_max_tokens, drop_unsupported=drop)
    assert isinstance(out, bytes)
    got: dict[str, Any] = orjson.loads(out)
    return got


def chat(*messages: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": list(messages), **params}


USER = {"role": "user", "content": "hi"}

# ---------------------------------------------------------------- requests


def test_minimal_request() -> None:
    assert req(chat(USER)) == {"model": "claude-x", "messages": [{"role": "user",
                                                                  "content": "hi"}],
                               "max_tokens": 4096}


def test_system_and_developer_messages_become_the_system_prompt() -> None:
    got = req(chat({"role": "system", "content": "be brief"}, USER,
                   {"role": "developer", "content": "use French"}))
    assert got["system"] == "be brief\n\nuse French"
    assert got["messages"] == [{"role": "user", "content": "hi"}]
    # parts given: text blocks kept
    got = req(chat({"role": "system", "content": [{"type": "text", "text": "a"},
                                                  {"type": "text", "text": "b"}]},
                   {"role": "developer", "content": "c"}, USER))
    assert got["system"] == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"},
                             {"type": "text", "text": "c"}]
    with pytest.raises(BadRequest) as info:
        req(chat({"role": "system", "content": [{"type": "image_url", "image_url": {}}]}, USER))
    assert info.value.param == "messages[0].content[0].type"


def test_multi_turn_text_and_parts() -> None:
    got = req(chat(USER, {"role": "assistant", "content": "hello", "name": "bot"},
                   {"role": "user", "content": [{"type": "text", "text": "how"}],
                    "name": "ann"}))
    assert got["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "text", "text": "how"}]},
    ]


def test_consecutive_messages_of_one_role_are_merged() -> None:
    got = req(chat(USER, {"role": "user", "content": [{"type": "text", "text": "there"}]},
                   {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}))
    assert got["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a"},
                                          {"type": "text", "text": "b"}]},
    ]


def test_images_by_data_url_and_by_http_url() -> None:
    got = req(chat({"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0=",
                                            "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}))
    assert got["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize("url", ["data:image/png,abc", "data:;base64,abc", "ftp://x/y.png",
                                 "data:image/png;base64"])
def test_bad_image_urls(url: str) -> None:
    with pytest.raises(BadRequest) as info:
        req(chat({"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}))
    assert info.value.param == "messages[0].content[0].image_url.url"


def test_tools_and_tool_choice() -> None:
    tools = [
        {"type": "function", "function": {"name": "get_weather", "description": "weather",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}}},
                                           "strict": True}},
        {"type": "function", "function": {"name": "now"}},
    ]
    got = req(chat(USER, tools=tools, tool_choice="auto"))
    assert got["tools"] == [
        {"name": "get_weather", "description": "weather",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert got["tool_choice"] == {"type": "auto"}
    for choice, expected in [("none", {"type": "none"}), ("required", {"type": "any"}),
                             ({"type": "function", "function": {"name": "now"}},
                              {"type": "tool", "name": "now"})]:
        assert req(chat(USER, tools=tools, tool_choice=choice))["tool_choice"] == expected


def test_parallel_tool_calls_false() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    got = req(chat(USER, tools=tools, parallel_tool_calls=False))
    assert got["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    got = req(chat(USER, tools=tools, tool_choice="required", parallel_tool_calls=False))
    assert got["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    got = req(chat(USER, tools=tools, tool_choice="none", parallel_tool_calls=False))
    assert got["tool_choice"] == {"type": "none"}
    assert "tool_choice" not in req(chat(USER, tools=tools, parallel_tool_calls=True))
    assert "tool_choice" not in req(chat(USER, parallel_tool_calls=False))


def test_tool_calls_and_tool_results() -> None:
    got = req(chat(
        USER,
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_A", "type": "function",
             "function": {"name": "f", "arguments": '{"x": [1, "é"]}'}},
            {"id": "call_B", "type": "function", "function": {"name": "g", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "call_A", "content": "1"},
        {"role": "tool", "tool_call_id": "call_B",
         "content": [{"type": "text", "text": "2"}]},
        {"role": "user", "content": "thanks"},
    ))
    assert got["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_A", "name": "f", "input": {"x": [1, "é"]}},
            {"type": "tool_use", "id": "call_B", "name": "g", "input": {}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_A", "content": "1"},
            {"type": "tool_result", "tool_use_id": "call_B",
             "content": [{"type": "text", "text": "2"}]},
            {"type": "text", "text": "thanks"},
        ]},
    ]


def test_assistant_text_with_tool_calls_and_empty_assistants() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    got = req(chat(USER, {"role": "assistant", "content": "let me see", "tool_calls": [call]},
                   {"role": "tool", "tool_call_id": "c", "content": "ok"},
                   {"role": "assistant", "content": None}))
    assert got["messages"][1]["content"] == [
        {"type": "text", "text": "let me see"},
        {"type": "tool_use", "id": "c", "name": "f", "input": {}}]
    assert len(got["messages"]) == 3  # the empty assistant message is dropped
    got = req(chat(USER, {"role": "assistant", "content": [{"type": "text", "text": ""}],
                          "tool_calls": [call]}))
    assert got["messages"][1]["content"] == [{"type": "tool_use", "id": "c", "name": "f",
                                              "input": {}}]
    got = req(chat(USER, {"role": "assistant", "content": [
        {"type": "text", "text": "a"}, {"type": "refusal", "refusal": "no"}]}))
    assert got["messages"][1]["content"] == [{"type": "text", "text": "a"},
                                             {"type": "text", "text": "no"}]


def test_tool_results_go_first_in_a_user_turn() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    got = req(chat(USER, {"role": "assistant", "tool_calls": [call]},
                   {"role": "user", "content": "and"},
                   {"role": "tool", "tool_call_id": "c", "content": "r"}))
    assert got["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c", "content": "r"},
        {"type": "text", "text": "and"}]


@pytest.mark.parametrize("arguments", ["[1, 2]", "not json", '"s"', "3"])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(BadRequest) as info:
        req(chat(USER, {"role": "assistant", "tool_calls": [call]}))
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"
    assert "JSON object" in info.value.message


def test_sampling_stop_max_tokens_user_stream() -> None:
    got = req(chat(USER, temperature=0.2, top_p=0.9, top_k=5, stop="END", max_tokens=100,
                   user="u-1", stream=True, stream_options={"include_usage": True}, n=1,
                   fastgw={"order": ["a"]}, metadata={"k": "v"}), stream=True)
    assert got == {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": 100, "stop_sequences": ["END"], "temperature": 0.2,
                   "top_p": 0.9, "top_k": 5, "metadata": {"user_id": "u-1"}, "stream": True}
    assert req(chat(USER, stop=["a", "b"]))["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in req(chat(USER, stop=[]))
    assert req(chat(USER, max_completion_tokens=7, max_tokens=9))["max_tokens"] == 7
    assert req(chat(USER, max_tokens=9, max_completion_tokens=7))["max_tokens"] == 7
    assert req(chat(USER), default_max_tokens=1000)["max_tokens"] == 1000
    assert req(chat(USER, max_tokens=None))["max_tokens"] == 4096
    assert req(chat(USER, safety_identifier="s"))["metadata"] == {"user_id": "s"}
    assert req(chat(USER, user="u", safety_identifier="s"))["metadata"] == {"user_id": "u"}


@pytest.mark.parametrize(("param", "value"), [
    ("n", 2), ("logprobs", True), ("top_logprobs", 3), ("logit_bias", {"1": 5}),
    ("presence_penalty", 0.5), ("frequency_penalty", -1), ("seed", 0),
    ("response_format", {"type": "json_object"}), ("audio", {"voice": "x"}),
    ("modalities", ["text", "audio"]), ("prediction", {"type": "content", "content": "x"}),
    ("reasoning_effort", "high"), ("functions", [{"name": "f"}]), ("store", True),
    ("service_tier", "flex"), ("made_up", 1),
])
def test_unsupported_parameters_are_refused_or_dropped(param: str, value: Any) -> None:
    with pytest.raises(BadRequest) as info:
        req(chat(USER, **{param: value}))
    err = info.value
    assert (err.status, err.param, err.code) == (400, param, "unsupported_parameter")
    assert f"'{param}'" in err.message and "drop_unsupported_params" in err.message
    assert req(chat(USER, **{param: value}), drop=True) == req(chat(USER))


@pytest.mark.parametrize(("param", "value"), [
    ("n", 1), ("logprobs", False), ("top_logprobs", 0), ("logit_bias", {}),
    ("presence_penalty", 0), ("frequency_penalty", 0.0), ("store", False),
    ("service_tier", "auto"), ("modalities", ["text"]), ("response_format", {"type": "text"}),
    ("seed", None), ("prompt_cache_key", "k"),
])
def test_values_that_ask_for_nothing_pass_silently(param: str, value: Any) -> None:
    assert req(chat(USER, **{param: value})) == req(chat(USER))


def test_no_op_values_are_exact() -> None:
    with pytest.raises(BadRequest):
        req(chat(USER, n=True))  # true is not 1
    with pytest.raises(BadRequest):
        req(chat(USER, logprobs=0))  # 0 is not false


def test_unsupported_content_parts_and_tools() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}
    doc = chat({"role": "user", "content": [{"type": "text", "text": "a"}, audio]})
    with pytest.raises(BadRequest) as info:
        req(doc)
    assert info.value.param == "messages[0].content[1].type"
    assert req(doc, drop=True)["messages"][0]["content"] == [{"type": "text", "text": "a"}]
    doc = chat(USER, tools=[{"type": "custom", "custom": {"name": "x"}}])
    with pytest.raises(BadRequest) as info:
        req(doc)
    assert info.value.param == "tools[0].type"
    assert "tools" not in req(doc, drop=True)
    doc = chat({"role": "function", "name": "f", "content": "x"}, USER)
    with pytest.raises(BadRequest) as info:
        req(doc)
    assert info.value.param == "messages[0].role"
    assert req(doc, drop=True)["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("doc", "param"), [
    ([], "body"),
    ({"model": "m"}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0].text"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [USER], "temperature": "hot"}, "temperature"),
    ({"messages": [USER], "max_tokens": -1}, "max_tokens"),
    ({"messages": [USER], "stop": 3}, "stop"),
    ({"messages": [USER], "tools": {"a": 1}}, "tools"),
    ({"messages": [USER], "tools": [{"type": "function"}]}, "tools[0].function"),
    ({"messages": [USER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": [USER], "parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "messages[1].tool_calls[0].id"),
])
def test_bad_shapes_name_what_to_fix(doc: Any, param: str) -> None:
    with pytest.raises(BadRequest) as info:
        req(doc)
    assert info.value.status == 400 and info.value.param == param
    assert info.value.code is None  # a wrong request, not an unsupported parameter


# ---------------------------------------------------------------- request round trip

_text = st.text(max_size=12)
_ident = st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=8)
_args = st.dictionaries(st.text(max_size=4), st.one_of(
    st.integers(-1000, 1000), st.text(max_size=6), st.booleans(), st.none(),
    st.lists(st.integers(0, 9), max_size=2)), max_size=3)
_image = st.one_of(
    st.builds(lambda m, d: f"data:{m};base64,{d}", st.sampled_from(["image/png", "image/gif"]),
              st.text("ABCxyz019+/=", min_size=1, max_size=12)),
    st.builds(lambda p: f"https://img.example/{p}.png", _ident),
)
_user_part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _text),
    st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, _image),
)
_user = st.builds(lambda c: {"role": "user", "content": c},
                  st.one_of(_text, st.lists(_user_part, min_size=1, max_size=3)))
_call = st.builds(lambda i, n, a: {"id": i, "type": "function",
                                   "function": {"name": n, "arguments": orjson.dumps(a).decode()}},
                  _ident, _ident, _args)
_tool_content = st.one_of(_text, st.lists(st.builds(lambda t: {"type": "text", "text": t}, _text),
                                          max_size=2))


@st.composite
def _assistant_then_results(draw: Any) -> list[dict[str, Any]]:
    calls = draw(st.lists(_call, max_size=3, unique_by=lambda c: c["id"]))
    content = draw(st.one_of(st.none(), _text) if calls else _text)
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        msg["tool_calls"] = calls
    results = [{"role": "tool", "tool_call_id": c["id"], "content": draw(_tool_content)}
               for c in calls]
    return [msg, *results]


_tool = st.builds(
    lambda n, d, p: {"type": "function", "function": {
        "name": n, **({"description": d} if d is not None else {}),
        **({"parameters": p} if p is not None else {})}},
    _ident, st.none() | _text,
    st.none() | st.builds(lambda props: {"type": "object", "properties": props},
                          st.dictionaries(_ident, st.just({"type": "string"}), max_size=2)))


@st.composite
def openai_requests(draw: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 2))):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])),
                         "content": draw(st.one_of(_text, st.lists(st.builds(
                             lambda t: {"type": "text", "text": t}, _text), max_size=2)))})
    for _ in range(draw(st.integers(1, 5))):
        messages += draw(st.one_of(_user.map(lambda m: [m]), _assistant_then_results()))
    doc: dict[str, Any] = {"model": "gpt", "messages": messages}
    tools = draw(st.lists(_tool, max_size=2))
    if tools:
        doc["tools"] = tools
        doc["tool_choice"] = draw(st.sampled_from(["auto", "none", "required", {
            "type": "function", "function": {"name": tools[0]["function"]["name"]}}]))
        if draw(st.booleans()):
            doc["parallel_tool_calls"] = draw(st.booleans())
    for key, strat in [("temperature", st.floats(0, 1)), ("top_p", st.floats(0, 1)),
                       ("stop", st.one_of(_text, st.lists(_text, max_size=2))),
                       ("max_tokens", st.integers(1, 10_000)), ("user", _text)]:
        if draw(st.booleans()):
            doc[key] = draw(strat)
    return doc


def _flat(messages: list[dict[str, Any]]) -> tuple[Any, list[tuple[Any, ...]]]:
    """An OpenAI conversation with the documented normalisations applied: the system
    prompt (strings joined, or the text parts), and the rest as one flat list where
    an assistant's texts are concatenated, empty ones left out, and each run of
    user-side items has its tool results first."""
    sys_texts: list[str] = []
    sys_parts = False
    items: list[tuple[Any, ...]] = []
    for m in messages:
        role, c = m["role"], m.get("content")
        c = c if c is not None else []
        if role in ("system", "developer"):
            if isinstance(c, str):
                sys_texts.append(c)
            else:
                sys_parts = True
                sys_texts += [p["text"] for p in c]
        elif role == "user":
            parts = [{"type": "text", "text": c}] if isinstance(c, str) else c
            items += [("user", orjson.dumps(p)) for p in parts]
        elif role == "tool":
            items.append(("tool", m["tool_call_id"], orjson.dumps(m["content"])))
        else:
            texts = [c] if isinstance(c, str) else [p["text"] for p in c]
            for t in texts:
                if not t:
                    continue
                if items and items[-1][0] == "text":
                    items[-1] = ("text", items[-1][1] + t)
                else:
                    items.append(("text", t))
            for call in m.get("tool_calls", []):
                items.append(("call", call["id"], call["function"]["name"],
                              orjson.loads(call["function"]["arguments"] or "{}")))
    out: list[tuple[Any, ...]] = []
    run: list[tuple[Any, ...]] = []
    for item in [*items, ("end",)]:
        if item[0] in ("user", "tool"):
            run.append(item)
            continue
        out += [i for i in run if i[0] == "tool"] + [i for i in run if i[0] == "user"]
        run = []
        out.append(item)
    system = sys_texts if sys_parts else "\n\n".join(sys_texts)
    return system, out[:-1]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=openai_requests(), stream=st.booleans())
def test_openai_request_survives_anthropic_and_back(doc: dict[str, Any], stream: bool) -> None:
    anthropic = req(doc, stream=stream)
    # what Anthropic needs: strict alternation, tool results first in a user turn
    roles = [m["role"] for m in anthropic["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles))
    for m in anthropic["messages"]:
        if isinstance(m["content"], list):
            kinds = [b["type"] == "tool_result" for b in m["content"]]
            assert kinds == sorted(kinds, reverse=True)
    back: dict[str, Any] = orjson.loads(anthropic_openai.translate_request(
        anthropic, deployment="gpt", stream=stream, default_max_tokens=None,
        drop_unsupported=False))
    want_system, want = _flat(doc["messages"])
    got_system, got = _flat(back["messages"])
    assert got == want
    assert got_system == (want_system if want_system else "")
    if want_system and not isinstance(want_system, list):
        assert back["messages"][0] == {"role": "system", "content": want_system}
    # tools: a missing schema becomes the empty object schema
    tools = [{"type": "function", "function": {
        "parameters": {"type": "object", "properties": {}}, **t["function"]}}
        for t in doc.get("tools", [])]
    assert back.get("tools", []) == tools
    choice = doc.get("tool_choice")
    if doc.get("parallel_tool_calls") is False and choice != "none":
        assert back["parallel_tool_calls"] is False
        assert back["tool_choice"] == choice or "auto"
    else:
        assert "parallel_tool_calls" not in back
        assert back.get("tool_choice") == choice
    stop = doc.get("stop")
    assert back.get("stop") == ([stop] if isinstance(stop, str) else stop or None)
    for key in ("temperature", "top_p", "user"):
        assert back.get(key) == doc.get(key)
    assert back["max_tokens"] == doc.get("max_tokens", 4096)
    assert back.get("stream") == (True if stream else None)


# ---------------------------------------------------------------- answers

MESSAGE: dict[str, Any] = {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x-1",
    "content": [
        {"type": "thinking", "thinking": "let me think", "signature": "sig"},
        {"type": "text", "text": "It is "},
        {"type": "text", "text": "sunny."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
         "input": {"city": "Paris", "days": [1, 2]}},
        {"type": "redacted_thinking", "data": "xx"},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 5,
              "cache_creation_input_tokens": 2},
}


def test_a_messages_answer_becomes_a_chat_completion() -> None:
    before = int(time.time())
    body, usage = translate_response(orjson.dumps(MESSAGE))
    got = orjson.loads(body)
    assert before <= got.pop("created") <= time.time()
    assert got == {
        "id": "msg_01", "object": "chat.completion", "model": "claude-x-1",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "It is sunny.",
            "reasoning_content": "let me think",
            "tool_calls": [{"id": "toolu_1", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city":"Paris","days":[1,2]}'}}]}}],
        "usage": {"prompt_tokens": 17, "completion_tokens": 20, "total_tokens": 37,
                  "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 2}},
    }
    assert usage == {"prompt_tokens": 17, "completion_tokens": 20, "total_tokens": 37,
                     "cached_tokens": 5, "cache_creation_tokens": 2}
    ChatCompletion.model_validate(orjson.loads(body))


def test_only_tool_calls_gives_null_content() -> None:
    msg = {**MESSAGE, "content": [{"type": "text", "text": ""}, MESSAGE["content"][3]]}
    got = orjson.loads(translate_response(orjson.dumps(msg))[0])
    assert got["choices"][0]["message"]["content"] is None
    msg = {**MESSAGE, "content": [], "stop_reason": "end_turn"}
    got = orjson.loads(translate_response(orjson.dumps(msg))[0])
    assert got["choices"][0]["message"] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop"),
])
def test_finish_reasons(stop: str, finish: str) -> None:
    got = orjson.loads(translate_response(orjson.dumps({**MESSAGE, "stop_reason": stop}))[0])
    assert got["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"type":"error","error":{}}',
                                  b'{"type":"message","content":"x"}'])
def test_not_a_messages_answer(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError) as info:
        translate_response(body)
    assert info.value.sent is True and info.value.status == 502


# ---------------------------------------------------------------- errors


def test_errors_in_openai_envelope() -> None:
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    assert orjson.loads(translate_error(429, body)) == {"error": {
        "message": "slow down", "type": "rate_limit_error", "param": None,
        "code": "rate_limit_error"}}
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}'
    assert orjson.loads(translate_error(400, body))["error"]["type"] == "invalid_request_error"
    assert orjson.loads(translate_error(503, b"<html>down</html>")) == {"error": {
        "message": "<html>down</html>", "type": "server_error", "param": None, "code": None}}


# ---------------------------------------------------------------- streams


def ev(type_: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    return type_, {"type": type_, **fields}


START = ev("message_start", message={
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x-1", "content": [],
    "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 7}})


def text_block(index: int, *pieces: str) -> list[tuple[str, dict[str, Any]]]:
    return [ev("content_block_start", index=index, content_block={"type": "text", "text": ""}),
            *[ev("content_block_delta", index=index, delta={"type": "text_delta", "text": p})
              for p in pieces],
            ev("content_block_stop", index=index)]


def tool_block(index: int, tool_id: str, name: str,
               *pieces: str) -> list[tuple[str, dict[str, Any]]]:
    return [ev("content_block_start", index=index, content_block={
        "type": "tool_use", "id": tool_id, "name": name, "input": {}}),
        *[ev("content_block_delta", index=index,
             delta={"type": "input_json_delta", "partial_json": p}) for p in pieces],
        ev("content_block_stop", index=index)]


def end(stop: str = "end_turn", output: int = 15) -> list[tuple[str, dict[str, Any]]]:
    return [ev("message_delta", delta={"stop_reason": stop, "stop_sequence": None},
               usage={"output_tokens": output}), ev("message_stop")]


HEAD = (b'{"id":"msg_1","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"claude-x-1"')


def chunk(delta: bytes, finish: bytes = b"null") -> bytes:
    return (b"data: " + HEAD + b',"choices":[{"index":0,"delta":{' + delta
            + b'},"finish_reason":' + finish + b"}]}\n\n")


# The stream tests run against the pure-Python class (the reference) and its native
# twin, which must give the same bytes.
STREAM_CLASSES = [pytest.param(ChatFromMessagesStream, id="python"),
                  pytest.param(native.ChatFromMessagesStream, id="native")]
both = pytest.mark.parametrize("cls", STREAM_CLASSES)
Stream = ChatFromMessagesStream | native.ChatFromMessagesStream


def stream(cls: Any, include_usage: bool = True) -> Stream:
    tr: Stream = cls(include_usage=include_usage, created=1_700_000_000)
    return tr


@both
def test_a_text_stream_chunk_by_chunk(cls: Any) -> None:
    tr = stream(cls)
    out, flags = tr.feed(sse([START]))
    assert (out, flags, tr.committed) == (chunk(b'"role":"assistant","content":""'), USAGE,
                                          False)
    out, flags = tr.feed(sse([*text_block(0, "Hel")[:2], ("ping", {"type": "ping"})]))
    assert (out, flags, tr.committed) == (chunk(b'"content":"Hel"'), COMMIT, True)
    out, flags = tr.feed(sse([*text_block(0, 'lo "w"\n')[1:]]))
    assert (out, flags) == (chunk(b'"content":"lo \\"w\\"\\n"'), 0)
    out, flags = tr.feed(sse(end()))
    assert out == (chunk(b"", b'"stop"') + b"data: " + HEAD + b',"choices":[],"usage":'
                   b'{"prompt_tokens":32,"completion_tokens":15,"total_tokens":47,'
                   b'"prompt_tokens_details":{"cached_tokens":7}}}\n\ndata: [DONE]\n\n')
    assert flags == USAGE | DONE
    assert tr.done and not tr.error and tr.finish() == b""
    assert tr.usage == {"prompt_tokens": 32, "completion_tokens": 15, "total_tokens": 47,
                        "cached_tokens": 7}
    assert tr.feed(sse(text_block(1, "late"))) == (b"", 0)  # nothing after the end


@both
def test_the_usage_chunk_only_when_asked(cls: Any) -> None:
    tr = stream(cls, include_usage=False)
    out, _ = tr.feed(sse([START, *text_block(0, "x"), *end()]))
    assert out.endswith(chunk(b"", b'"stop"') + b"data: [DONE]\n\n")
    assert tr.usage is not None  # read all the same, for the gateway


@both
def test_tool_calls_reasoning_and_ignored_events(cls: Any) -> None:
    events = [START,
              ev("content_block_start", index=0, content_block={
                  "type": "thinking", "thinking": "", "signature": ""}),
              ev("content_block_delta", index=0, delta={"type": "thinking_delta",
                                                        "thinking": "hmm"}),
              ev("content_block_delta", index=0, delta={"type": "signature_delta",
                                                        "signature": "abc"}),
              ev("content_block_stop", index=0),
              *tool_block(1, "toolu_A", "f", "", '{"a":', "1}"),
              *tool_block(2, "toolu_B", "g", "{}"),
              ev("some_future_event", x=1),
              *end("tool_use")]
    out, flags = stream(cls, include_usage=False).feed(sse(events))
    assert flags == COMMIT | USAGE | DONE
    assert out == b"".join([
        chunk(b'"role":"assistant","content":""'),
        chunk(b'"reasoning_content":"hmm"'),
        chunk(b'"tool_calls":[{"index":0,"id":"toolu_A","type":"function","function":'
              b'{"name":"f","arguments":""}}]'),
        chunk(b'"tool_calls":[{"index":0,"function":{"arguments":"{\\"a\\":"}}]'),
        chunk(b'"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]'),
        chunk(b'"tool_calls":[{"index":1,"id":"toolu_B","type":"function","function":'
              b'{"name":"g","arguments":""}}]'),
        chunk(b'"tool_calls":[{"index":1,"function":{"arguments":"{}"}}]'),
        chunk(b"", b'"tool_calls"'),
        b"data: [DONE]\n\n",
    ])


@both
def test_an_error_event_before_content(cls: Any) -> None:
    tr = stream(cls)
    out, flags = tr.feed(sse([START]))
    out, flags = tr.feed(sse([ev("error", error={"type": "overloaded_error",
                                                 "message": "Overloaded"}),
                              *text_block(0, "never")]))
    assert flags == ERROR and tr.error and not tr.committed
    assert out == (b'event: error\ndata: {"error":{"message":"Overloaded","type":"server_error",'
                   b'"param":null,"code":"overloaded_error"}}\n\n')
    assert tr.feed(sse(end())) == (b"", 0)
    assert tr.finish() == b""


@both
def test_an_error_event_after_content_in_the_same_read(cls: Any) -> None:
    tr = stream(cls)
    out, flags = tr.feed(sse([START, *text_block(0, "a"),
                              ev("error", error={"type": "api_error", "message": "boom"})]))
    assert flags == COMMIT | ERROR | USAGE
    assert out.endswith(b'event: error\ndata: {"error":{"message":"boom","type":"server_error",'
                        b'"param":null,"code":"api_error"}}\n\n')


@both
def test_text_deltas_as_the_upstream_escaped_them(cls: Any) -> None:
    tr = stream(cls)
    tr.feed(sse([START, *text_block(0)[:1]]))
    # Anthropic's own escaping is kept as it is (the string is checked, not re-encoded)
    raw = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
           b'"delta":{"type":"text_delta","text":"caf\\u00e9 \\"q\\" \\/"}}\n\n')
    out, flags = tr.feed(raw)
    assert (out, flags) == (chunk(b'"content":"caf\\u00e9 \\"q\\" \\/"'), COMMIT)
    assert openai_chunks(out)[0][0].choices[0].delta.content == 'café "q" /'
    # a body that only looks like a text delta is read whole: nothing else is copied in
    raw = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
           b'"delta":{"type":"text_delta","text":"a"},"x":{"y":"b"}}\n\n')
    assert tr.feed(raw) == (chunk(b'"content":"a"'), 0)
    raw = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
           b'"delta":{"type":"text_delta","text":""}}\n\n')
    assert tr.feed(raw) == (b"", 0)


@both
def test_malformed_events_are_skipped(cls: Any) -> None:
    tr = stream(cls, include_usage=False)
    raw = (sse([START]) + b"event: content_block_delta\ndata: {not json\n\n"
           + sse([("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": "oops"}),
                  ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": 5}}),
                  ("message_start", {"type": "message_start"}),
                  ("x", [1, 2])])
           + sse(text_block(0, "ok")) + sse(end()))
    out, flags = tr.feed(raw)
    assert chunk(b'"content":"ok"') in out and flags == COMMIT | USAGE | DONE
    chunks, done, errors = openai_chunks(out)
    assert done and not errors and len(chunks) == 3


@both
def test_finish_gives_what_is_owed_at_a_clean_end(cls: Any) -> None:
    tr = stream(cls)
    tr.feed(sse([START, *text_block(0, "a")]))
    assert tr.finish() == (chunk(b"", b'"stop"') + b"data: " + HEAD + b',"choices":[],"usage":'
                           b'{"prompt_tokens":32,"completion_tokens":1,"total_tokens":33,'
                           b'"prompt_tokens_details":{"cached_tokens":7}}}\n\n'
                           b"data: [DONE]\n\n")
    assert tr.done and tr.finish() == b""
    tr = stream(cls, include_usage=False)
    tr.feed(sse([START, *text_block(0, "a"), end("max_tokens")[0]]))
    assert tr.finish() == b"data: [DONE]\n\n"
    assert stream(cls).finish() == b""  # nothing started: nothing owed


@both
def test_a_last_event_without_its_blank_line(cls: Any) -> None:
    tr = stream(cls)
    body = sse([START, *text_block(0, "a"), *end()])
    out, _ = tr.feed(body[:-1])  # message_stop's blank line never comes
    tail = tr.finish()
    whole, _ = stream(cls).feed(body)
    assert out + tail == whole and tr.done
    tr = stream(cls, include_usage=False)
    out, _ = tr.feed(sse([START, *text_block(0, "a")]) + b'event: content_block_delta\ndata: '
                     b'{"type":"content_block_delta","index":0,"delta":{"type":"text_d')
    assert tr.finish() == chunk(b"", b'"stop"') + b"data: [DONE]\n\n"  # the cut event: skipped


@both
def test_every_cut_of_a_crlf_stream(cls: Any) -> None:
    raw = sse([START, *text_block(0, "héllo ", "wörld"), *tool_block(1, "t", "f", '{"a"', ":1}"),
               *end("tool_use")], nl="\r\n")
    whole, steps, _ = feed_cut(stream(cls), raw)
    for cut in range(len(raw)):
        got, cut_steps, _ = feed_cut(stream(cls), raw, [cut])
        assert got == whole and union(cut_steps) == union(steps)
    got, cut_steps, _ = feed_cut(stream(cls), raw, list(range(len(raw))))
    assert got == whole and [f & COMMIT for _, f in cut_steps].count(COMMIT) == 1


@both
def test_an_event_past_the_bound(cls: Any) -> None:
    tr = cls(include_usage=False, created=1, max_event_size=1000)
    with pytest.raises(ValueError, match="larger than 1000"):
        tr.feed(sse(text_block(0, "x" * 2000)))


# ---------------------------------------------------------------- stream properties

_piece = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6) | \
    st.sampled_from(['"', "\\", "\n", "\r\n", "é", "😀", "\u2028", "</s>", "data: x\n\n"])


@st.composite
def anthropic_streams(draw: Any) -> tuple[list[tuple[str, Any]], dict[str, Any] | None, bool]:
    """An upstream event list, the whole message it amounts to (None when it fails
    with an error event), and whether the error comes before any content."""
    usage = {"input_tokens": draw(st.integers(0, 999)), "output_tokens": 1}
    if draw(st.booleans()):
        usage["cache_read_input_tokens"] = draw(st.integers(0, 99))
    if draw(st.booleans()):
        usage["cache_creation_input_tokens"] = draw(st.integers(0, 99))
    msg_id = draw(_ident)
    events: list[tuple[str, Any]] = [ev("message_start", message={
        "id": msg_id, "type": "message", "role": "assistant", "model": "claude-t",
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage})]
    content: list[dict[str, Any]] = []
    kinds = draw(st.lists(st.sampled_from(["text", "tool"]), max_size=4))
    if draw(st.booleans()):
        kinds.insert(0, "thinking")
    for i, kind in enumerate(kinds):
        if kind == "tool":
            tool_id, name, args = draw(_ident), draw(_ident), draw(_args)
            text = orjson.dumps(args).decode()
            cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=3)))
            pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
            events += tool_block(i, tool_id, name, *pieces)
            content.append({"type": "tool_use", "id": tool_id, "name": name, "input": args})
        elif kind == "text":
            pieces = draw(st.lists(_piece, max_size=4))
            events += text_block(i, *pieces)
            content.append({"type": "text", "text": "".join(pieces)})
        else:
            pieces = draw(st.lists(_piece, min_size=1, max_size=3))
            events += [ev("content_block_start", index=i, content_block={
                "type": "thinking", "thinking": "", "signature": ""}),
                *[ev("content_block_delta", index=i,
                     delta={"type": "thinking_delta", "thinking": p}) for p in pieces],
                ev("content_block_delta", index=i,
                   delta={"type": "signature_delta", "signature": "s"}),
                ev("content_block_stop", index=i)]
            content.append({"type": "thinking", "thinking": "".join(pieces), "signature": "s"})
        if draw(st.integers(0, 4)) == 0:
            events.append(ev("ping"))
    stop = draw(st.sampled_from(["end_turn", "max_tokens", "tool_use", "stop_sequence",
                                 "refusal"]))
    output = draw(st.integers(1, 999))
    events += end(stop, output)
    message = {"id": msg_id, "type": "message", "role": "assistant", "model": "claude-t",
               "content": content, "stop_reason": stop, "stop_sequence": None,
               "usage": {**usage, "output_tokens": output}}
    if draw(st.integers(0, 5)) == 0:  # an error event somewhere
        at = draw(st.integers(1, len(events) - 1))
        early = not any((e[1]["type"] == "content_block_delta"
                        and any(e[1]["delta"].get(k) for k in ("text", "partial_json",
                                                                "thinking")))
                        or (e[1]["type"] == "content_block_start"
                        and e[1]["content_block"]["type"] == "tool_use")
                        or e[1]["type"] == "message_delta"  # the finish chunk commits too
                        for e in events[:at])
        events = [*events[:at], ev("error", error={"type": "overloaded_error",
                                                   "message": draw(_text)})]
        return events, None, early
    return events, message, False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=anthropic_streams(), nl=st.sampled_from(["\n", "\r\n"]),
       include_usage=st.booleans(), data=st.data())
@both
def test_any_cut_of_any_stream(cls: Any, case: Any, nl: str, include_usage: bool,
                               data: Any) -> None:
    events, message, early_error = case
    raw = sse(events, nl=nl)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
    whole, whole_steps, _ = feed_cut(stream(cls, include_usage), raw)
    got, steps, _ = feed_cut(stream(cls, include_usage), raw, cuts)
    # the same bytes and flags whatever the cuts, COMMIT at most once
    assert got == whole
    assert union(steps) == union(whole_steps)
    commits = [i for i, (_, f) in enumerate(steps) if f & COMMIT]
    assert len(commits) == (0 if early_error else 1)
    if commits:  # ... in the call that sent the first content
        before = b"".join(o for o, _ in steps[:commits[0]])
        with_it = before + steps[commits[0]][0]
        assert all(not _has_content(c) for c in openai_chunks(before)[0])
        assert any(_has_content(c) for c in openai_chunks(with_it)[0]) or \
            openai_chunks(with_it)[1]
    chunks, done, errors = openai_chunks(got)  # valid for the openai SDK
    if message is None:
        assert not done and len(errors) == 1 and union(steps) & ERROR
        assert got.endswith(b"\n\n") and b"event: error\ndata: " in got
        return
    assert done and not errors
    expected = orjson.loads(translate_response(orjson.dumps(message))[0])
    got_msg = reassemble_openai(chunks)
    assert got_msg["message"] == expected["choices"][0]["message"]
    assert got_msg["finish_reason"] == expected["choices"][0]["finish_reason"]
    assert got_msg["usage"] == (expected["usage"] if include_usage else None)
    tr = stream(cls, include_usage)
    feed_cut(tr, raw)
    assert tr.usage == translate_response(orjson.dumps(message))[1]
    assert all(c.id == message["id"] and c.model == "claude-t" and c.created == 1_700_000_000
               for c in chunks)


def _has_content(c: Any) -> bool:
    return any(ch.delta.content or ch.delta.tool_calls or ch.finish_reason
               or (ch.delta.model_extra or {}).get("reasoning_content") for ch in c.choices)


def test_module_names() -> None:
    assert openai_anthropic.__all__ == ["ChatFromMessagesStream", "translate_error",
                                        "translate_request", "translate_response"]
