"""The translators' shared parts: the incremental SSE event parser, the usage
conversions, the stop-reason tables and the error bodies of both dialects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw.errors import (
    ANTHROPIC_ERROR_TYPES,
    BadRequest,
    anthropic_error_body,
    anthropic_error_type,
)
from fastgw.providers.sse_events import SseEventParser, StreamTranslator, frame, frame_typed
from fastgw.providers.translate_helpers import (
    FINISH_TO_STOP,
    STOP_TO_FINISH,
    Usage,
    anthropic_error_from_openai,
    anthropic_usage_fields,
    finish_reason,
    openai_error_from_anthropic,
    openai_usage,
    stop_reason,
    unsupported,
    usage_from_anthropic,
    usage_from_openai,
)

# ---------------------------------------------------------------- SSE parser


def _parse_all(data: bytes, cuts: Sequence[int] = (),
               max_event_size: int = 16 << 20) -> list[tuple[bytes, bytes]]:
    p = SseEventParser(max_event_size)
    out = []
    prev = 0
    for c in [*sorted(set(cuts)), len(data)]:
        out += p.feed(data[prev:c])
        prev = c
    return out


def _reference(data: bytes) -> list[tuple[bytes, bytes]]:
    """The event-stream rules written plainly, line by line, over the whole input."""
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = text.split(b"\n")
    lines.pop()  # after the last line end: an unfinished line, never dispatched
    events = []
    event, datas = b"", list[bytes]()
    for line in lines:
        if line == b"":
            if datas:
                events.append((event, b"\n".join(datas)))
            event, datas = b"", list[bytes]()
        elif line.startswith(b":"):
            continue
        else:
            name, colon, value = line.partition(b":")
            if colon and value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                datas.append(value)
            elif name == b"event":
                event = value
    return events


def test_one_line_data_events() -> None:
    data = b'data: {"a":1}\n\ndata: [DONE]\n\n'
    assert _parse_all(data) == [(b"", b'{"a":1}'), (b"", b"[DONE]")]


def test_event_type_and_data_as_anthropic_sends_them() -> None:
    data = frame_typed(b"ping", b'{"type":"ping"}') + frame(b"x")
    assert _parse_all(data) == [(b"ping", b'{"type":"ping"}'), (b"", b"x")]


@pytest.mark.parametrize("nl", [b"\n", b"\r\n", b"\r"])
def test_every_line_end(nl: bytes) -> None:
    data = b"event: e" + nl + b"data: a" + nl + b"data: b" + nl + nl + b"data: c" + nl + nl
    assert _parse_all(data) == [(b"e", b"a\nb"), (b"", b"c")]
    # cut at every byte, the CR LF pair included
    assert _parse_all(data, list(range(len(data)))) == [(b"e", b"a\nb"), (b"", b"c")]


def test_cr_then_lf_in_the_next_chunk_is_one_line_end() -> None:
    p = SseEventParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\n") == []  # the pair of the CR: not a blank line
    assert p.feed(b"\r\n") == [(b"", b"a")]


def test_comments_other_fields_and_events_without_data() -> None:
    data = (b": keep-alive\n\nid: 7\nretry: 100\nevent: x\n\n"  # no data: not dispatched
            b"event: y\n: note\ndata\ndata:tight\n\n")
    assert _parse_all(data) == [(b"y", b"\ntight")]


def test_blank_lines_between_events_and_the_type_reset() -> None:
    data = b"\n\n\nevent: a\ndata: 1\n\n\n\ndata: 2\n\n"
    assert _parse_all(data) == [(b"a", b"1"), (b"", b"2")]


def test_an_unfinished_event_is_held() -> None:
    p = SseEventParser()
    assert p.feed(b"data: abc") == []
    assert p.pending == 9
    assert p.feed(b"def\n") == []
    assert p.feed(b"\n") == [(b"", b"abcdef")]
    assert p.pending == 0


def test_an_event_past_the_bound_is_refused_whole_or_in_pieces() -> None:
    big = b"data: " + b"x" * 200 + b"\n\n"
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        _parse_all(big, max_event_size=100)
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        _parse_all(big, list(range(0, len(big), 7)), max_event_size=100)
    # small events in one large chunk are fine
    assert len(_parse_all(b"data: 1234\n\n" * 100, max_event_size=100)) == 100


_field = st.sampled_from([b"data", b"event", b"id", b"", b"retry", b"data "])
_value = st.binary(max_size=8).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_line = st.one_of(
    st.tuples(_field, st.sampled_from([b":", b": ", b""]), _value).map(lambda t: b"".join(t)),
    st.just(b""),
    _value.map(lambda v: b":" + v),
)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.tuples(_line, st.sampled_from([b"\n", b"\r\n", b"\r"])), max_size=20),
       cuts=st.lists(st.integers(0, 400), max_size=8))
def test_any_cut_gives_the_events_the_rules_give(lines: list[tuple[bytes, bytes]],
                                                 cuts: list[int]) -> None:
    data = b"".join(line + nl for line, nl in lines)
    expected = _reference(data)
    assert _parse_all(data) == expected
    assert _parse_all(data, [c for c in cuts if c <= len(data)]) == expected


class _Recorder(StreamTranslator):
    """A translator that writes down the events it is given."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        super().__init__(include_usage=False, created=0)
        self.seen: list[tuple[bytes, bytes]] = []

    def _event(self, event: bytes, data: bytes, out: list[bytes]) -> int:
        self.seen.append((event, data))
        return 0

    def finish(self) -> bytes:
        return b""


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.tuples(_line, st.sampled_from([b"\n", b"\r\n", b"\r"])), max_size=20),
       cuts=st.lists(st.integers(0, 400), max_size=8), whole_events=st.booleans())
def test_translators_read_the_events_the_rules_give(lines: list[tuple[bytes, bytes]],
                                                    cuts: list[int], whole_events: bool) -> None:
    data = b"".join(line + nl for line, nl in lines)
    if whole_events:  # cut only at event boundaries: the translators' single-event reads
        cuts = [i + 2 for i in range(len(data)) if data[i:i + 2] == b"\n\n"]
    tr = _Recorder()
    prev = 0
    for c in [*sorted({c for c in cuts if c <= len(data)}), len(data)]:
        assert tr.feed(data[prev:c]) == (b"", 0)
        prev = c
    assert tr.seen == _reference(data)


# ---------------------------------------------------------------- usage


def test_anthropic_usage_counts_cache_reads_and_writes_as_prompt() -> None:
    u = usage_from_anthropic({"input_tokens": 10, "cache_read_input_tokens": 5,
                              "cache_creation_input_tokens": 3, "output_tokens": 7,
                              "output_tokens_details": {"thinking_tokens": 2}})
    assert u == {"prompt_tokens": 18, "completion_tokens": 7, "total_tokens": 25,
                 "cached_tokens": 5, "cache_creation_tokens": 3, "reasoning_tokens": 2}
    assert usage_from_anthropic({"input_tokens": 4, "output_tokens": 1}) == {
        "prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}


def test_openai_usage_details() -> None:
    u = usage_from_openai({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                           "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
                           "completion_tokens_details": {"reasoning_tokens": 2}})
    assert u == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                 "cached_tokens": 4, "reasoning_tokens": 2}
    # total absent: the sum; counts of the wrong type: absent
    assert usage_from_openai({"prompt_tokens": 3, "completion_tokens": True}) == {
        "prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}


def test_the_keys_of_the_native_scanner() -> None:
    from fastgw._native import SseScanner

    s = SseScanner()
    s.feed(b'data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,'
           b'"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}}}\n\n')
    assert s.usage == usage_from_openai({"prompt_tokens": 10, "completion_tokens": 5,
                                         "total_tokens": 15,
                                         "prompt_tokens_details": {"cached_tokens": 4}})


_count = st.integers(0, 10**6)


@st.composite
def _usages(draw: Any) -> Usage:
    read = draw(st.none() | _count)
    write = draw(st.none() | _count)
    fresh = draw(_count)
    out = draw(_count)
    u: Usage = {"prompt_tokens": fresh + (read or 0) + (write or 0), "completion_tokens": out,
                "total_tokens": fresh + (read or 0) + (write or 0) + out}
    if read is not None:
        u["cached_tokens"] = read
    if write is not None:
        u["cache_creation_tokens"] = write
    reasoning = draw(st.none() | st.integers(0, out))
    if reasoning is not None:
        u["reasoning_tokens"] = reasoning
    return u


@settings(max_examples=200, deadline=None)
@given(u=_usages())
def test_usage_survives_either_dialect(u: Usage) -> None:
    assert usage_from_openai(openai_usage(u)) == u
    fields = anthropic_usage_fields(u)
    without_reasoning = {k: v for k, v in u.items() if k != "reasoning_tokens"}
    assert usage_from_anthropic(fields) == without_reasoning  # Anthropic has no field for it


# ---------------------------------------------------------------- stop reasons


def test_stop_reason_tables() -> None:
    assert [finish_reason(r) for r in ("end_turn", "stop_sequence", "max_tokens", "tool_use",
                                       "refusal", "pause_turn", None, "new_reason")] == [
        "stop", "stop", "length", "tool_calls", "content_filter", "stop", "stop", "stop"]
    assert [stop_reason(r) for r in ("stop", "length", "tool_calls", "function_call",
                                     "content_filter", None, 3)] == [
        "end_turn", "max_tokens", "tool_use", "tool_use", "refusal", "end_turn", "end_turn"]
    # the tables agree both ways where both dialects have the reason
    for finish, stop in FINISH_TO_STOP.items():
        if finish != "function_call":
            assert STOP_TO_FINISH[stop] == finish


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("status", "type_"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"),
    (500, "api_error"), (502, "api_error"), (503, "api_error"), (504, "api_error"),
    (529, "overloaded_error"), (405, "invalid_request_error"), (422, "invalid_request_error"),
    (501, "api_error"), (599, "api_error"),
])
def test_anthropic_error_type_by_status(status: int, type_: str) -> None:
    assert anthropic_error_type(status) == type_
    assert set(ANTHROPIC_ERROR_TYPES) >= {400, 401, 403, 404, 413, 429, 500, 529}


def test_anthropic_error_body() -> None:
    assert orjson.loads(anthropic_error_body('no "model"', "invalid_request_error")) == {
        "type": "error", "error": {"type": "invalid_request_error", "message": 'no "model"'}}


def test_openai_error_from_anthropic() -> None:
    doc = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert orjson.loads(openai_error_from_anthropic(doc, 529, b"")) == {
        "error": {"message": "Overloaded", "type": "server_error", "param": None,
                  "code": "overloaded_error"}}
    doc = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    assert orjson.loads(openai_error_from_anthropic(doc, None, b""))["error"]["type"] == \
        "rate_limit_error"
    # not Anthropic's: the text is the message, the type from the status
    assert orjson.loads(openai_error_from_anthropic(None, 502, b" bad gateway ")) == {
        "error": {"message": "bad gateway", "type": "server_error", "param": None,
                  "code": None}}
    assert orjson.loads(openai_error_from_anthropic(None, 404, b""))["error"] == {
        "message": "(empty error body)", "type": "not_found_error", "param": None,
        "code": None}


def test_anthropic_error_from_openai() -> None:
    env = {"error": {"message": "bad", "type": "invalid_request_error", "param": "x",
                     "code": None}}
    assert orjson.loads(anthropic_error_from_openai(env, 400, b"")) == {
        "type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    # in a stream there is no status: the type comes from the error
    env = {"error": {"message": "slow", "type": "requests", "code": "rate_limit_exceeded"}}
    assert orjson.loads(anthropic_error_from_openai(env, None, b""))["error"]["type"] == \
        "rate_limit_error"
    flat = {"object": "error", "message": "boom", "type": "InternalServerError", "code": 503}
    assert orjson.loads(anthropic_error_from_openai(flat, None, b"")) == {
        "type": "error", "error": {"type": "api_error", "message": "boom"}}
    assert orjson.loads(anthropic_error_from_openai({"error": "plain"}, 429, b""))["error"] == {
        "type": "rate_limit_error", "message": "plain"}
    assert orjson.loads(anthropic_error_from_openai(None, 500, b"oops"))["error"] == {
        "type": "api_error", "message": "oops"}


def test_unsupported_names_the_parameter_unless_dropping() -> None:
    unsupported("seed", "X", True)  # dropped: nothing raised
    with pytest.raises(BadRequest) as info:
        unsupported("seed", "X", False, "X has no seed")
    err = info.value
    assert (err.status, err.param, err.code) == (400, "seed", "unsupported_parameter")
    assert "'seed'" in err.message and "drop_unsupported_params" in err.message
    assert "X has no seed" in err.message
