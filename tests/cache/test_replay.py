"""Replay: a whole answer as its endpoint's stream (checked with the official SDKs'
types and stream accumulators), a relayed stream back to the whole answer
(StreamRecorder, fed in arbitrary pieces), and a hit's fresh id."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from fastgw.cache.replay import (
    ReplayError,
    StreamRecorder,
    fresh_id,
    to_stream,
    with_id,
)
from fastgw.mock.bodies import (
    Shape,
    chat_body,
    chat_events,
    completion_body,
    completion_events,
    error_event,
    malformed_event,
    message_body,
    message_events,
)
from fastgw.mock.tools import ToolCall
from fastgw.providers.anthropic_openai import MessagesFromChatStream
from fastgw.providers.anthropic_openai import translate_response as message_from_chat
from fastgw.providers.openai_anthropic import ChatFromMessagesStream
from fastgw.providers.openai_anthropic import translate_response as chat_from_message

EVENT = TypeAdapter(RawMessageStreamEvent)

# ---------------------------------------------------------------- helpers


def sse_events(stream: bytes) -> list[tuple[str | None, bytes]]:
    """(event name, data) of each event of a stream written with "\\n" line ends."""
    assert stream.endswith(b"\n\n")
    out = []
    for block in stream[:-2].split(b"\n\n"):
        name = None
        data = None
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            else:
                assert line.startswith(b"data: "), line
                data = line[6:]
        assert data is not None
        out.append((name, data))
    return out


def openai_chunks(stream: bytes) -> list[dict[str, Any]]:
    events = sse_events(stream)
    assert events[-1] == (None, b"[DONE]")
    assert all(name is None for name, _ in events)
    return [orjson.loads(d) for _, d in events[:-1]]


def record(endpoint: str, stream: bytes, cuts: Iterable[int] = (), **kw: Any) -> bytes | None:
    """Feed ``stream`` to a recorder cut at ``cuts``; its result."""
    rec = StreamRecorder(endpoint, **kw)
    start = 0
    for cut in sorted(set(cuts)):
        rec.feed(stream[start:cut])
        start = cut
    rec.feed(stream[start:])
    return rec.result()


def cuts_of(stream: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(stream)), max_size=12)


# ---------------------------------------------------------------- strategies

# Text as models write it: words, spaces, newlines, and any non-surrogate character.
CHARS = st.characters(exclude_categories=["Cs"])
WORD = st.text(CHARS, min_size=1, max_size=12)
SPACE = st.sampled_from([" ", "  ", "\n", "\n\n", "\t", " \r\n"])
TEXT = st.one_of(
    st.text(CHARS, max_size=200),
    st.lists(st.tuples(WORD, SPACE), max_size=60).map(lambda ws: "".join(a + b for a, b in ws)),
)
NAME = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(CHARS, max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(CHARS, max_size=8),
                                                                inner, max_size=3),
    max_leaves=10)
OBJECT = st.dictionaries(st.text(CHARS, max_size=8), JSON, max_size=4)
ID = st.from_regex(r"[A-Za-z0-9]{6,24}", fullmatch=True)
COUNT = st.integers(0, 10**6)


@st.composite
def openai_usage(draw: st.DrawFn) -> dict[str, Any]:
    p, c = draw(COUNT), draw(COUNT)
    usage: dict[str, Any] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    if draw(st.booleans()):
        usage["prompt_tokens_details"] = {"cached_tokens": draw(st.integers(0, p))}
    if draw(st.booleans()):
        usage["completion_tokens_details"] = {"reasoning_tokens": draw(st.integers(0, c))}
    return usage


@st.composite
def token_logprobs(draw: st.DrawFn) -> dict[str, Any]:
    items = draw(st.lists(st.builds(
        lambda t, lp: {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []},
        WORD, st.floats(-50, 0)), min_size=1, max_size=4))
    return {"content": items, "refusal": None}


@st.composite
def chat_doc(draw: st.DrawFn) -> dict[str, Any]:
    choices = []
    for i in range(draw(st.integers(1, 3))):
        msg: dict[str, Any] = {"role": "assistant",
                               "content": draw(st.none() | TEXT),
                               "refusal": draw(st.none() | st.just(None) | TEXT)}
        if draw(st.booleans()):
            msg["reasoning_content"] = draw(TEXT)
        calls = draw(st.lists(st.builds(
            lambda cid, name, args: {"id": "call_" + cid, "type": "function",
                                     "function": {"name": name, "arguments": args}},
            ID, NAME, OBJECT.map(lambda o: orjson.dumps(o).decode()) | TEXT), max_size=3))
        if calls:
            msg["tool_calls"] = calls
        choices.append({"index": i, "message": msg,
                        "logprobs": draw(st.none() | token_logprobs()),
                        "finish_reason": draw(st.sampled_from(
                            ["stop", "length", "tool_calls", "content_filter"]))})
    doc: dict[str, Any] = {"id": "chatcmpl-" + draw(ID), "object": "chat.completion",
                           "created": draw(st.integers(0, 2**33)), "model": draw(NAME),
                           "choices": choices}
    if draw(st.booleans()):
        doc["usage"] = draw(openai_usage())
    if draw(st.booleans()):
        doc["system_fingerprint"] = "fp_" + draw(ID)
    if draw(st.booleans()):
        doc["service_tier"] = "default"
    return doc


@st.composite
def completion_doc(draw: st.DrawFn) -> dict[str, Any]:
    choices = []
    for i in range(draw(st.integers(1, 3))):
        lp = None
        if draw(st.booleans()):
            toks = draw(st.lists(WORD, min_size=1, max_size=4))
            lp = {"tokens": toks, "token_logprobs": [-0.5] * len(toks),
                  "top_logprobs": [{t: -0.5} for t in toks],
                  "text_offset": list(range(len(toks)))}
        choices.append({"text": draw(TEXT), "index": i, "logprobs": lp,
                        "finish_reason": draw(st.sampled_from(["stop", "length",
                                                               "content_filter"]))})
    doc: dict[str, Any] = {"id": "cmpl-" + draw(ID), "object": "text_completion",
                           "created": draw(st.integers(0, 2**33)), "model": draw(NAME),
                           "choices": choices}
    if draw(st.booleans()):
        doc["usage"] = draw(openai_usage())
    if draw(st.booleans()):
        doc["system_fingerprint"] = "fp_" + draw(ID)
    return doc


BLOCK = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, TEXT),
    st.builds(lambda t: {"type": "text", "text": t, "citations": None}, TEXT),
    st.builds(lambda t, s: {"type": "thinking", "thinking": t, "signature": s}, TEXT,
              st.text(CHARS, max_size=40)),
    st.builds(lambda d: {"type": "redacted_thinking", "data": d}, ID),
    st.builds(lambda i, n, inp: {"type": "tool_use", "id": "toolu_" + i, "name": n,
                                 "input": inp}, ID, NAME, OBJECT),
)


@st.composite
def message_doc(draw: st.DrawFn) -> dict[str, Any]:
    usage: dict[str, Any] = {"input_tokens": draw(COUNT)}
    if draw(st.booleans()):
        usage["cache_creation_input_tokens"] = draw(COUNT)
        usage["cache_read_input_tokens"] = draw(COUNT)
    usage["output_tokens"] = draw(COUNT)
    reason = draw(st.sampled_from(["end_turn", "max_tokens", "stop_sequence", "tool_use",
                                   "pause_turn", "refusal"]))
    return {"id": "msg_" + draw(ID), "type": "message", "role": "assistant",
            "model": draw(NAME), "content": draw(st.lists(BLOCK, max_size=4)),
            "stop_reason": reason,
            "stop_sequence": draw(TEXT) if reason == "stop_sequence" else None,
            "usage": usage}


# ---------------------------------------------------------------- chat

HYPO = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@HYPO
@given(doc=chat_doc(), include_usage=st.booleans(), data=st.data())
def test_chat_round_trip_through_stream_and_recorder(doc: dict[str, Any], include_usage: bool,
                                                     data: st.DataObject) -> None:
    body = orjson.dumps(doc)
    stream = to_stream("chat", body, include_usage=include_usage)
    got = record("chat", stream, data.draw(cuts_of(stream)))
    assert got is not None
    back = orjson.loads(got)
    if include_usage or "usage" not in doc:
        assert back == doc
    else:  # the usage chunk was not sent: the rest is all there
        assert "usage" not in back
        assert back == {k: v for k, v in doc.items() if k != "usage"}


@HYPO
@given(doc=chat_doc(), include_usage=st.booleans())
def test_chat_stream_validates_and_accumulates_with_the_openai_sdk(
        doc: dict[str, Any], include_usage: bool) -> None:
    stream = to_stream("chat", orjson.dumps(doc), include_usage=include_usage)
    chunks = openai_chunks(stream)
    state = ChatCompletionStreamState()
    for obj in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(obj))
    # the snapshot: get_final_completion raises on "length" and "content_filter"
    final = state.current_completion_snapshot
    want = ChatCompletion.model_validate(doc)
    assert (final.id, final.model, final.created) == (want.id, want.model, want.created)
    assert final.system_fingerprint == want.system_fingerprint
    assert len(final.choices) == len(want.choices)
    for got_c, want_c in zip(final.choices, want.choices, strict=True):
        assert got_c.finish_reason == want_c.finish_reason
        g, w = got_c.message, want_c.message
        assert g.content == w.content
        assert g.refusal == w.refusal
        assert (g.model_extra or {}).get("reasoning_content") == (
            w.model_extra or {}).get("reasoning_content")
        assert [(t.id, t.function.name, t.function.arguments) for t in g.tool_calls or []] == [
            (t.id, t.function.name, t.function.arguments)  # type: ignore[union-attr]
            for t in w.tool_calls or []]
        assert (got_c.logprobs is None) == (want_c.logprobs is None)
        if want_c.logprobs is not None:
            assert got_c.logprobs is not None
            assert got_c.logprobs.content == want_c.logprobs.content
    if include_usage:
        assert all(c["usage"] is None for c in chunks if c["choices"])
    else:
        assert all("usage" not in c for c in chunks)
    if include_usage and want.usage is not None:
        assert final.usage == want.usage
        assert chunks[-1]["choices"] == []
    else:
        assert final.usage is None


def test_chat_stream_shape() -> None:
    doc = {"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
           "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                        "message": {"role": "assistant", "content": "Let me look. " * 20,
                                    "reasoning_content": "thinking it over",
                                    "tool_calls": [{"id": "call_1", "type": "function",
                                                    "function": {"name": "get",
                                                                 "arguments": '{"q": 1}'}}]}}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
           "system_fingerprint": "fp_x"}
    chunks = openai_chunks(to_stream("chat", orjson.dumps(doc), include_usage=True))
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"reasoning_content": "thinking it over"}
    texts = [d["content"] for d in deltas if d and "content" in d and "role" not in d]
    assert len(texts) > 2 and "".join(texts) == "Let me look. " * 20
    assert all(t.endswith(" ") for t in texts)  # cut after whitespace
    call = [d["tool_calls"][0] for d in deltas if d and "tool_calls" in d]
    assert call[0] == {"index": 0, "id": "call_1", "type": "function",
                       "function": {"name": "get", "arguments": ""}}
    assert "".join(c["function"]["arguments"] for c in call[1:]) == '{"q": 1}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1] == {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
                          "model": "m", "system_fingerprint": "fp_x", "choices": [],
                          "usage": doc["usage"]}
    for c in chunks:
        assert (c["id"], c["object"], c["created"], c["model"]) == (
            "chatcmpl-1", "chat.completion.chunk", 7, "m")


def test_a_long_answer_is_replayed_in_a_bounded_number_of_chunks() -> None:
    text = "word " * 100_000
    doc = {"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
           "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text}}]}
    chunks = openai_chunks(to_stream("chat", orjson.dumps(doc), include_usage=False))
    assert 100 < len(chunks) < 700
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text


def test_the_openai_client_reads_a_replayed_stream() -> None:
    shape = Shape(route="chat", model="m", n=6, truncated=False, include_usage=True,
                  prompt_tokens=9, calls=(ToolCall("lookup", '{"city": "Paris"}'),))
    body = chat_body(shape, "Qz7MOCKIDQz7Qz7Q")
    stream = to_stream("chat", body, include_usage=True)
    client = openai.OpenAI(api_key="k", base_url="http://gw/v1", http_client=httpx2.Client(
        transport=httpx2.MockTransport(lambda _: httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=stream))))
    with client.chat.completions.stream(model="m", messages=[{"role": "user",
                                                              "content": "hi"}]) as s:
        final = s.get_final_completion()
    want = ChatCompletion.model_validate_json(body)
    assert [(t.id, t.function.name, t.function.arguments)
            for t in final.choices[0].message.tool_calls or []] == [
        ("call_mock_0_lookup", "lookup", '{"city": "Paris"}')]
    assert want.choices[0].message.tool_calls is not None
    assert want.choices[0].message.tool_calls[0].id == "call_mock_0_lookup"
    assert final.choices[0].finish_reason == "tool_calls" and final.usage == want.usage


# ---------------------------------------------------------------- completions


@HYPO
@given(doc=completion_doc(), include_usage=st.booleans(), data=st.data())
def test_completion_round_trip_and_sdk_types(doc: dict[str, Any], include_usage: bool,
                                             data: st.DataObject) -> None:
    stream = to_stream("completions", orjson.dumps(doc), include_usage=include_usage)
    chunks = openai_chunks(stream)
    texts: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    for obj in chunks:
        # The SDK types a streamed chunk as a Completion, whose finish_reason may not be
        # null; OpenAI's chunks (and ours) have null until the last: validate the rest.
        chunk = Completion.model_validate({**obj, "choices": [
            {**c, "finish_reason": c["finish_reason"] or "stop"} for c in obj["choices"]]})
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
        for c in obj["choices"]:
            if c["finish_reason"] is not None:
                finish[c["index"]] = c["finish_reason"]
    assert texts == {c["index"]: c["text"] for c in doc["choices"]}
    assert finish == {c["index"]: c["finish_reason"] for c in doc["choices"]}
    back = orjson.loads(record("completions", stream, data.draw(cuts_of(stream))) or b"null")
    if include_usage or "usage" not in doc:
        assert back == doc
    else:
        assert back == {k: v for k, v in doc.items() if k != "usage"}


# ---------------------------------------------------------------- messages


def anthropic_events(stream: bytes) -> list[dict[str, Any]]:
    out = []
    for name, data in sse_events(stream):
        obj = orjson.loads(data)
        assert name == obj["type"]  # framed as Anthropic frames them
        out.append(obj)
    return out


def sdk_dump(message: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = message.model_dump(exclude_none=True)
    for block in dumped["content"]:
        block.pop("parsed_output", None)
    return dumped


@HYPO
@given(doc=message_doc(), data=st.data())
def test_message_round_trip_through_stream_and_recorder(doc: dict[str, Any],
                                                        data: st.DataObject) -> None:
    stream = to_stream("messages", orjson.dumps(doc), include_usage=False)
    got = record("messages", stream, data.draw(cuts_of(stream)))
    assert got is not None and orjson.loads(got) == doc


@HYPO
@given(doc=message_doc())
def test_message_stream_validates_and_accumulates_with_the_anthropic_sdk(
        doc: dict[str, Any]) -> None:
    events = anthropic_events(to_stream("messages", orjson.dumps(doc), include_usage=True))
    assert [e["type"] for e in events[:1] + events[-2:]] == [
        "message_start", "message_delta", "message_stop"]
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for obj in events:
        snapshot = accumulate_event(event=EVENT.validate_python(obj),
                                    current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    assert sdk_dump(snapshot) == sdk_dump(Message.model_validate(doc))


def test_message_stream_shape() -> None:
    doc = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
           "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                       {"type": "text", "text": "Here you go."},
                       {"type": "tool_use", "id": "toolu_1", "name": "get",
                        "input": {"q": "x"}}],
           "stop_reason": "tool_use", "stop_sequence": None,
           "usage": {"input_tokens": 10, "cache_read_input_tokens": 4, "output_tokens": 20}}
    events = anthropic_events(to_stream("messages", orjson.dumps(doc), include_usage=False))
    assert [(e["type"], e.get("index"), (e.get("delta") or {}).get("type")) for e in events] == [
        ("message_start", None, None),
        ("content_block_start", 0, None), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"), ("content_block_stop", 0, None),
        ("content_block_start", 1, None), ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, None), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("message_delta", None, None), ("message_stop", None, None)]
    start = events[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"] == {"input_tokens": 10, "cache_read_input_tokens": 4,
                              "output_tokens": 0}
    assert events[5]["content_block"] == {"type": "text", "text": ""}
    assert events[8]["content_block"] == {"type": "tool_use", "id": "toolu_1", "name": "get",
                                          "input": {}}
    assert events[-2] == {"type": "message_delta",
                          "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                          "usage": {"input_tokens": 10, "cache_read_input_tokens": 4,
                                    "output_tokens": 20}}


def test_the_anthropic_client_reads_a_replayed_stream() -> None:
    shape = Shape(route="messages", model="claude", n=7, truncated=False, include_usage=True,
                  prompt_tokens=11, cache_read=5, cache_creation=2)
    body = message_body(shape, "Qz7MOCKIDQz7Qz7Q")
    stream = to_stream("messages", body, include_usage=False)
    client = anthropic.Anthropic(api_key="k", base_url="http://gw", http_client=httpx2.Client(
        transport=httpx2.MockTransport(lambda _: httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=stream))))
    with client.messages.stream(model="claude", max_tokens=10,
                                messages=[{"role": "user", "content": "hi"}]) as s:
        final = s.get_final_message()
    assert sdk_dump(final) == sdk_dump(Message.model_validate_json(body))


# ---------------------------------------------------------------- the recorder on real streams

CHAT_SHAPES = [
    Shape(route="chat", model="m", n=5, truncated=False, include_usage=True, prompt_tokens=7),
    Shape(route="chat", model="m", n=3, truncated=True, include_usage=True, prompt_tokens=7,
          cache_read=2),
    Shape(route="chat", model="m", n=4, truncated=False, include_usage=True, prompt_tokens=7,
          calls=(ToolCall("a", '{"x": [1, 2, 3]}'), ToolCall("b", '{"y": "z"}'))),
]


@pytest.mark.parametrize("shape", CHAT_SHAPES)
def test_the_recorder_rebuilds_the_mock_upstreams_whole_chat_answer(shape: Shape) -> None:
    stream = b"".join(chat_events(shape, "Qz7MOCKIDQz7Qz7Q"))
    assert record("chat", stream) == chat_body(shape, "Qz7MOCKIDQz7Qz7Q")
    # fed one byte at a time, with CRLF line ends: the same answer
    crlf = stream.replace(b"\n", b"\r\n")
    assert record("chat", crlf, range(len(crlf))) == chat_body(shape, "Qz7MOCKIDQz7Qz7Q")


def test_the_recorder_rebuilds_the_mock_upstreams_completion_and_message() -> None:
    c = Shape(route="completions", model="m", n=4, truncated=False, include_usage=True,
              prompt_tokens=3)
    stream = b"".join(completion_events(c, "Qz7MOCKIDQz7Qz7Q"))
    assert record("completions", stream, range(0, len(stream), 5)) == completion_body(
        c, "Qz7MOCKIDQz7Qz7Q")
    for m in (Shape(route="messages", model="m", n=4, truncated=False, include_usage=True,
                    prompt_tokens=3, cache_read=1, cache_creation=2),
              Shape(route="messages", model="m", n=4, truncated=False, include_usage=True,
                    prompt_tokens=3, calls=(ToolCall("t", '{"k": {"n": null}}'),)),
              Shape(route="messages", model="m", n=4, truncated=False, include_usage=True,
                    prompt_tokens=3, stop="END")):
        stream = b"".join(message_events(m, "Qz7MOCKIDQz7Qz7Q"))
        assert record("messages", stream, range(0, len(stream), 3)) == message_body(
            m, "Qz7MOCKIDQz7Qz7Q")


def test_usage_the_client_did_not_get_is_filled_in_from_the_relays_count() -> None:
    shape = Shape(route="chat", model="m", n=5, truncated=False, include_usage=False,
                  prompt_tokens=7)
    stream = b"".join(chat_events(shape, "Qz7MOCKIDQz7Qz7Q"))
    rec = StreamRecorder("chat")
    rec.feed(stream)
    assert "usage" not in orjson.loads(rec.result() or b"{}")
    got = orjson.loads(rec.result({"prompt_tokens": 7, "completion_tokens": 5,
                                   "total_tokens": 12, "cached_tokens": 2}) or b"{}")
    assert got["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12,
                            "prompt_tokens_details": {"cached_tokens": 2}}
    # a usage chunk in the stream wins over the relay's count
    with_usage = b"".join(chat_events(CHAT_SHAPES[0], "Qz7MOCKIDQz7Qz7Q"))
    rec = StreamRecorder("chat")
    rec.feed(with_usage)
    assert orjson.loads(rec.result({"prompt_tokens": 1, "completion_tokens": 1}) or b"{}")[
        "usage"]["prompt_tokens"] == 7


def test_the_recorder_reads_translated_anthropic_usage_in_message_delta() -> None:
    """The gateway's OpenAI -> Anthropic translation tells the input count only at the
    end: message_delta's counts replace message_start's."""
    events = [
        (b"message_start", {"type": "message_start", "message": {
            "id": "chatcmpl-9", "type": "message", "role": "assistant", "model": "gpt",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        (b"ping", {"type": "ping"}),
        (b"content_block_start", {"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}}),
        (b"content_block_delta", {"type": "content_block_delta", "index": 0,
                                  "delta": {"type": "text_delta", "text": "Hi"}}),
        (b"content_block_stop", {"type": "content_block_stop", "index": 0}),
        (b"message_delta", {"type": "message_delta",
                            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": 3, "input_tokens": 12,
                                      "cache_read_input_tokens": None}}),
        (b"message_stop", {"type": "message_stop"})]
    stream = b"".join(b"event: " + n + b"\ndata: " + orjson.dumps(o) + b"\n\n"
                      for n, o in events)
    got = orjson.loads(record("messages", stream) or b"null")
    assert got["usage"] == {"input_tokens": 12, "output_tokens": 3}
    assert got["content"] == [{"type": "text", "text": "Hi"}]
    assert got["stop_reason"] == "end_turn"


@pytest.mark.parametrize("calls", [(), (ToolCall("t", '{"k": [1, {"x": null}]}'),)])
def test_the_recorder_reads_the_gateways_translated_streams(calls: tuple[ToolCall, ...]) -> None:
    """What a client gets from a translated stream records as the answer the whole
    translation gives (content, tool calls, stop, usage)."""
    rid = "Qz7MOCKIDQz7Qz7Q"
    chat = Shape(route="chat", model="m", n=4, truncated=False, include_usage=True,
                 prompt_tokens=5, calls=calls)
    tr = MessagesFromChatStream(include_usage=False, created=1)
    relayed = b"".join(tr.feed(e)[0] for e in chat_events(chat, rid)) + tr.finish()
    got = orjson.loads(record("messages", relayed, range(0, len(relayed), 13)) or b"null")
    assert got == orjson.loads(message_from_chat(chat_body(chat, rid))[0])

    msg = Shape(route="messages", model="m", n=4, truncated=False, include_usage=True,
                prompt_tokens=5, calls=calls, cache_read=2)
    tr2 = ChatFromMessagesStream(include_usage=True, created=1)
    relayed = b"".join(tr2.feed(e)[0] for e in message_events(msg, rid)) + tr2.finish()
    got = orjson.loads(record("chat", relayed, range(0, len(relayed), 13)) or b"null")
    want = orjson.loads(chat_from_message(message_body(msg, rid))[0])
    g, w = got["choices"][0], want["choices"][0]
    assert g["finish_reason"] == w["finish_reason"] and got["usage"] == want["usage"]
    assert (g["message"]["content"] or None) == w["message"]["content"]
    assert [(c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
            for c in g["message"].get("tool_calls", [])] == [
        (c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
        for c in w["message"].get("tool_calls", [])]


# ---------------------------------------------------------------- streams that ended badly

GOOD_CHAT_EVENTS = chat_events(CHAT_SHAPES[2], "Qz7MOCKIDQz7Qz7Q")
GOOD_CHAT = b"".join(GOOD_CHAT_EVENTS)
GOOD_MESSAGE_EVENTS = message_events(
    Shape(route="messages", model="m", n=4, truncated=False, include_usage=True,
          prompt_tokens=3, calls=(ToolCall("t", '{"k": 1}'),)), "Qz7MOCKIDQz7Qz7Q")
GOOD_MESSAGE = b"".join(GOOD_MESSAGE_EVENTS)


def inserted(events: list[bytes], at: int, event: bytes) -> bytes:
    """The stream with ``event`` between events ``at - 1`` and ``at``."""
    return b"".join(events[:at]) + event + b"".join(events[at:])


def test_the_good_streams_give_an_answer() -> None:
    """The baseline of the cases below: the same streams, unbroken, are recorded."""
    assert record("chat", GOOD_CHAT) is not None
    assert record("messages", GOOD_MESSAGE) is not None


@pytest.mark.parametrize(("endpoint", "stream"), [
    ("chat", b""),
    ("chat", GOOD_CHAT[:GOOD_CHAT.rindex(b"data: [DONE]")]),  # no [DONE]
    ("chat", GOOD_CHAT[:-1]),  # [DONE] not finished
    ("chat", inserted(GOOD_CHAT_EVENTS, 3, error_event("chat"))),
    # the gateway's own typed error event, and an upstream's error chunk
    ("chat", inserted(GOOD_CHAT_EVENTS, 3, b'event: error\ndata: {"error": {"message": "x", '
                                           b'"type": "server_error"}}\n\n')),
    ("chat", inserted(GOOD_CHAT_EVENTS, 3, b'data: {"error": {"message": "x"}}\n\n')),
    ("chat", inserted(GOOD_CHAT_EVENTS, 3, b'event: error\ndata: {"message": "x"}\n\n')),
    ("chat", inserted(GOOD_CHAT_EVENTS, 3, malformed_event("chat"))),
    ("chat", inserted(GOOD_CHAT_EVENTS, 0, b"data: [1, 2]\n\n")),  # JSON, not a chunk
    # a choice that never finished
    ("chat", b"".join(e for e in chat_events(CHAT_SHAPES[0], "x") if b'"finish_reason":"'
                      not in e)),
    ("messages", GOOD_MESSAGE[:GOOD_MESSAGE.rindex(b"event: message_stop")]),
    ("messages", inserted(GOOD_MESSAGE_EVENTS, 3, error_event("messages"))),
    ("messages", inserted(GOOD_MESSAGE_EVENTS, 3, b'event: error\ndata: {"type": "overloaded"}'
                                                  b"\n\n")),
    ("messages", inserted(GOOD_MESSAGE_EVENTS, 3, b'data: {"type": "error", "error": '
                                                  b'{"type": "api_error"}}\n\n')),
    ("messages", inserted(GOOD_MESSAGE_EVENTS, 3, malformed_event("messages"))),
    # a delta for a block already closed
    ("messages", inserted(GOOD_MESSAGE_EVENTS, len(GOOD_MESSAGE_EVENTS) - 2,
                          b'event: content_block_delta\ndata: {"type": "content_block_delta", '
                          b'"index": 0, "delta": {"type": "input_json_delta", '
                          b'"partial_json": "1"}}\n\n')),
    ("messages", GOOD_MESSAGE.replace(b'{"type":"content_block_stop","index":0}',
                                      b'{"type":"ping"}')),  # a block never closed
    ("messages", GOOD_MESSAGE.replace(b'"partial_json":"{', b'"partial_json":"[')),
    ("messages", GOOD_MESSAGE[GOOD_MESSAGE.index(b"event: content_block_start"):]),
], ids=lambda v: v if isinstance(v, str) else str(len(v)))
def test_a_stream_that_did_not_end_well_gives_no_answer(endpoint: str, stream: bytes) -> None:
    assert record(endpoint, stream) is None
    assert record(endpoint, stream, range(0, len(stream), 7)) is None


def test_sse_details_are_read_as_clients_read_them() -> None:
    """Comments, "data:" without a space, data split over lines, bytes after [DONE]."""
    body = chat_body(CHAT_SHAPES[0], "Qz7MOCKIDQz7Qz7Q")
    events = chat_events(CHAT_SHAPES[0], "Qz7MOCKIDQz7Qz7Q")
    first = orjson.loads(events[0][6:-2])
    odd = [b": keep-alive\n\n",
           b"data:" + orjson.dumps(first) + b"\n\n",
           b"data: " + orjson.dumps(orjson.loads(events[1][6:-2]), option=orjson.OPT_INDENT_2)
           .replace(b"\n", b"\ndata: ") + b"\n\n",
           *events[2:], b"data: {not json after the end\n\n"]
    assert record("chat", b"".join(odd), range(0, 4000, 11)) == body


def test_line_ends_cut_between_cr_and_lf_are_one_line_end() -> None:
    """CRLF line ends fed one byte at a time, in events whose data spans lines."""
    body = chat_body(CHAT_SHAPES[0], "Qz7MOCKIDQz7Qz7Q")
    multi = [b"data: " + orjson.dumps(orjson.loads(e[6:-2]), option=orjson.OPT_INDENT_2)
             .replace(b"\n", b"\ndata: ") + b"\n\n" if e != b"data: [DONE]\n\n" else e
             for e in chat_events(CHAT_SHAPES[0], "Qz7MOCKIDQz7Qz7Q")]
    crlf = b"".join(multi).replace(b"\n", b"\r\n")
    assert record("chat", crlf, range(len(crlf))) == body
    cr = b"".join(multi).replace(b"\n", b"\r")
    assert record("chat", cr, range(0, len(cr), 2)) == body


def test_the_recorder_gives_up_past_its_bound_and_holds_nothing() -> None:
    shape = Shape(route="chat", model="m", n=400, truncated=False, include_usage=True,
                  prompt_tokens=7)
    stream = b"".join(chat_events(shape, "Qz7MOCKIDQz7Qz7Q"))
    assert record("chat", stream, max_bytes=1 << 20) is not None
    rec = StreamRecorder("chat", max_bytes=1000)  # the answer alone is ~2.6k characters
    for i in range(0, len(stream), 100):
        rec.feed(stream[i:i + 100])
    assert rec.failed and rec.result() is None
    assert len(rec._buf) == 0 and rec._acc.held == 0  # everything forgotten
    # one event longer than the bound, never finished
    rec = StreamRecorder("chat", max_bytes=1000)
    rec.feed(b"data: " + b"x" * 2000)
    assert rec.failed
    # an Anthropic answer: text, thinking and tool input count
    for block, delta in (({"type": "text", "text": ""}, {"type": "text_delta", "text": "t" * 50}),
                         ({"type": "thinking", "thinking": "", "signature": ""},
                          {"type": "thinking_delta", "thinking": "t" * 50}),
                         ({"type": "tool_use", "id": "t", "name": "n", "input": {}},
                          {"type": "input_json_delta", "partial_json": "1" * 50})):
        events = [b"event: message_start\ndata: " + orjson.dumps({
            "type": "message_start", "message": {"id": "m", "content": [], "usage": {}}}),
            b"event: content_block_start\ndata: " + orjson.dumps({
                "type": "content_block_start", "index": 0, "content_block": block})]
        events += [b"event: content_block_delta\ndata: " + orjson.dumps({
            "type": "content_block_delta", "index": 0, "delta": delta})] * 100
        rec = StreamRecorder("messages", max_bytes=3000)  # 5000 characters of deltas
        rec.feed(b"\n\n".join(events) + b"\n\n")
        assert rec.failed, block["type"]
        rec = StreamRecorder("messages", max_bytes=6000)
        rec.feed(b"\n\n".join(events) + b"\n\n")
        assert not rec.failed, block["type"]


def test_text_pieces_are_what_the_stream_counts_not_its_framing() -> None:
    """A long streamed answer whose framing is many times its text still fits."""
    shape = Shape(route="chat", model="m", n=20_000, truncated=False, include_usage=True,
                  prompt_tokens=7)
    stream = b"".join(chat_events(shape, "Qz7MOCKIDQz7Qz7Q"))
    text_len = len(orjson.loads(chat_body(shape, "x"))["choices"][0]["message"]["content"])
    assert len(stream) > 20 * text_len // 2
    assert record("chat", stream, max_bytes=2 * text_len) is not None


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize(("endpoint", "body"), [
    ("embeddings", b'{"object": "list", "data": []}'),
    ("responses", b'{"id": "resp_1", "object": "response"}'),
    ("chat", b"not json"),
    ("chat", b"[]"),
    ("chat", b'{"id": "x", "created": 1, "model": "m"}'),
    ("chat", b'{"id": "x", "created": 1, "model": "m", "choices": [{"index": 0}]}'),
    ("chat", b'{"id": "x", "created": 1, "model": "m", "choices": [{"message": '
             b'{"content": [{"type": "text"}]}}]}'),
    ("completions", b'{"id": "x", "created": 1, "model": "m", "choices": [{"text": 5}]}'),
    ("messages", b'{"id": "x", "content": "text"}'),
    ("messages", b'{"id": "x", "content": [{"type": "text", "text": 1}]}'),
])
def test_what_has_no_stream_form_is_a_replay_error(endpoint: str, body: bytes) -> None:
    with pytest.raises(ReplayError):
        to_stream(endpoint, body, include_usage=True)


def test_a_recorder_only_exists_for_streamed_endpoints() -> None:
    with pytest.raises(ValueError):
        StreamRecorder("embeddings")


# ---------------------------------------------------------------- ids


def test_with_id_splices_a_leading_id() -> None:
    body = chat_body(CHAT_SHAPES[0], "Qz7MOCKIDQz7Qz7Q")
    out = with_id("chat", body, "chatcmpl-new")
    assert out == body.replace(b"chatcmpl-Qz7MOCKIDQz7Qz7Q", b"chatcmpl-new")
    assert with_id("chat", b' { "id" : "a", "x": 1}', 'q"uote') == (
        b' { "id" : "q\\"uote", "x": 1}')


@pytest.mark.parametrize("body", [
    b'{"object": "chat.completion", "id": "later", "choices": []}',
    b'{\n  "id": "esc\\"aped",\n  "model": "m"\n}',
    b'{"id": "\\u00e9t\\u00e9", "n": 1.5}',
])
def test_with_id_re_encodes_when_it_cannot_splice(body: bytes) -> None:
    doc = orjson.loads(body)
    out = orjson.loads(with_id("chat", body, "new"))
    assert out == {**doc, "id": "new"} and list(out) == list(doc)


@pytest.mark.parametrize("body", [
    b'{"object": "list", "data": [{"embedding": [0.5]}], "model": "e"}',
    b"not json",
    b'["id", "x"]',
])
def test_with_id_leaves_a_body_without_an_id_alone(body: bytes) -> None:
    assert with_id("embeddings", body, "new") is body


@settings(max_examples=200, deadline=None)
@given(doc=st.dictionaries(st.text(CHARS, max_size=6), JSON, max_size=4),
       old=st.text(CHARS, max_size=20), new=st.text(CHARS, max_size=20), first=st.booleans())
def test_with_id_changes_the_id_and_nothing_else(doc: dict[str, Any], old: str, new: str,
                                                 first: bool) -> None:
    doc.pop("id", None)
    doc = {"id": old, **doc} if first else {**doc, "id": old}
    out = orjson.loads(with_id("chat", orjson.dumps(doc), new))
    assert out == {**doc, "id": new} and list(out) == list(doc)


def test_fresh_ids_look_like_the_endpoints_and_differ() -> None:
    ids = {fresh_id("chat") for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("chatcmpl-") for i in ids)
    assert fresh_id("messages").startswith("msg_")
    assert fresh_id("completions").startswith("cmpl-")
    assert fresh_id("responses").startswith("resp_")


def test_a_forked_worker_draws_other_ids_than_its_parent() -> None:
    """Ids come from the process's PRNG: a forked worker must not repeat its parent's
    (the PRNG is reseeded in the child)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: its first id, then out
        os.write(write, fresh_id("chat").encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    os.close(write)
    parent = fresh_id("chat")
    assert child.startswith("chatcmpl-") and len(child) == len(parent) == 33
    assert child != parent


def test_a_replayed_hit_with_a_fresh_id_streams_that_id() -> None:
    body = message_body(Shape(route="messages", model="m", n=2, truncated=False,
                              include_usage=True, prompt_tokens=1), "Qz7MOCKIDQz7Qz7Q")
    new = fresh_id("messages")
    events = anthropic_events(to_stream("messages", with_id("messages", body, new),
                                        include_usage=False))
    assert events[0]["message"]["id"] == new
