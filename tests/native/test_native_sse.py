"""The native SSE scanner gives the reference's answers at every chunking, and
passes chunks through untouched unless it must drop a usage-only event."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import sse as ref

from .conftest import OPENAI_USAGE, STREAMS, openai_stream

# Sockets leaked by other tests' servers can be collected while these run;
# pytest would blame the test that happens to trigger the collection.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
)

Flags = native.SseScanner


def _run(mod: Any, stream: bytes, cuts: list[int], drop: bool) -> tuple[list[Any], Any]:
    s = mod.SseScanner(drop_usage=drop)
    out = []
    prev = 0
    for c in [*sorted(set(cuts)), len(stream)]:
        chunk = stream[prev:c]
        fwd, flags = s.feed(chunk)
        out.append((fwd, flags, s.boundaries, s.committed, s.done, s.error, s.usage, s.events))
        prev = c
    out.append(s.finish())
    return out, s


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from(sorted(STREAMS)),
    drop=st.booleans(),
    data=st.data(),
)
def test_random_chunkings_match_the_reference(name: str, drop: bool, data: Any) -> None:
    stream = STREAMS[name]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    got, s = _run(native, stream, cuts, drop)
    assert got == _run(ref, stream, cuts, drop)[0]
    # Whatever the chunking, the bytes passed on are the same.
    whole, w = _run(native, stream, [], drop)
    joined = b"".join(step[0] for step in got[:-1]) + got[-1]
    assert joined == b"".join(step[0] for step in whole[:-1]) + whole[-1]
    union = 0
    for step in got[:-1]:
        union |= step[1]
    assert union == whole[0][1]
    assert (s.usage, s.committed, s.done, s.error, s.events) == (
        w.usage,
        w.committed,
        w.done,
        w.error,
        w.events,
    )


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from(
                [b"data: ", b"\r", b"\n", b"\r\n", b"data: [DONE]", b":", b"event: error", b"{"]
            ),
            st.sampled_from(list(STREAMS.values())).map(lambda s: s[:90]),
        ),
        max_size=20,
    ),
    drop=st.booleans(),
)
def test_garbage_never_panics_and_matches_the_reference(chunks: list[bytes], drop: bool) -> None:
    a, b = native.SseScanner(drop_usage=drop), ref.SseScanner(drop_usage=drop)
    for c in chunks:
        assert a.feed(c) == b.feed(c)
        assert (a.usage, a.committed, a.done, a.error, a.boundaries) == (
            b.usage,
            b.committed,
            b.done,
            b.error,
            b.boundaries,
        )
    assert a.finish() == b.finish()


def test_unchanged_chunks_are_the_same_object() -> None:
    s = native.SseScanner()
    stream = openai_stream()
    for i in range(0, len(stream), 37):
        chunk = stream[i : i + 37]
        fwd, _ = s.feed(chunk)
        assert fwd is chunk
    dropper = native.SseScanner(drop_usage=True)
    first = stream[: stream.index(b"\n\n") + 2]
    assert dropper.feed(first)[0] is first


def test_openai_stream_flags_usage_and_commit_point() -> None:
    s = native.SseScanner()
    events = openai_stream(3).split(b"\n\n")[:-1]
    flags = [s.feed(e + b"\n\n")[1] for e in events]
    assert flags[0] == 0  # role chunk with empty content: not committed yet
    assert flags[1] == Flags.COMMIT
    assert flags[2:5] == [0, 0, 0]
    assert flags[5] == Flags.USAGE
    assert flags[6] == Flags.DONE
    assert s.usage == {**OPENAI_USAGE, "cached_tokens": 4}
    assert s.committed and s.done and not s.error and s.events == 7


def test_drop_usage_removes_only_the_usage_chunk() -> None:
    stream = openai_stream(2)
    s = native.SseScanner(drop_usage=True)
    out, flags = s.feed(stream)
    assert flags & Flags.DROPPED and flags & Flags.USAGE
    kept = [e for e in stream.split(b"\n\n") if b'"choices": []' not in e]
    assert out == b"\n\n".join(kept)
    assert b'usage": {' not in out and out.endswith(b"data: [DONE]\n\n")
    assert s.usage is not None and s.usage["total_tokens"] == 17


def test_drop_mode_holds_back_half_an_event_until_it_ends() -> None:
    s = native.SseScanner(drop_usage=True)
    out, _ = s.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"cho')
    assert out == b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    out, _ = s.feed(b'ices":[]}\n\n')
    assert out == b'data: {"choices":[]}\n\n'
    assert s.feed(b"data: [DO")[0] == b""
    assert s.finish() == b"data: [DO"


@pytest.mark.parametrize(
    ("name", "usage", "flags"),
    [
        (
            "anthropic",
            {"prompt_tokens": 35, "completion_tokens": 15, "total_tokens": 50, "cached_tokens": 7,
             "cache_creation_tokens": 3},
            Flags.COMMIT | Flags.USAGE | Flags.DONE,
        ),
        (
            "responses",
            {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12, "cached_tokens": 2},
            Flags.COMMIT | Flags.USAGE | Flags.DONE,
        ),
        ("error", None, Flags.ERROR),
        ("tools", None, Flags.COMMIT | Flags.DONE),
        ("multiline", None, Flags.COMMIT | Flags.DONE),
    ],
)
def test_provider_streams(name: str, usage: dict[str, int] | None, flags: int) -> None:
    s = native.SseScanner()
    assert s.feed(STREAMS[name])[1] == flags
    assert s.usage == usage


def test_boundaries_are_offsets_past_each_blank_line() -> None:
    s = native.SseScanner()
    chunk = b"data: a\n\n: c\r\n\r\ndata: b\r\rdata: c"
    s.feed(chunk)
    assert s.boundaries == [9, 16, 25]
    assert s.events == 2


def test_oversized_events_are_value_errors() -> None:
    for mod in (native, ref):
        s = mod.SseScanner(max_event_size=64)
        with pytest.raises(ValueError, match="larger than"):
            s.feed(b"data: " + b"x" * 100)
        s = mod.SseScanner(max_event_size=64)
        with pytest.raises(ValueError, match="larger than"):
            s.feed(b"data: " + b"x" * 40 + b"\ndata: " + b"y" * 40 + b"\n")


def test_feed_takes_bytes_only() -> None:
    with pytest.raises(TypeError):
        native.SseScanner().feed("data: x\n\n")  # type: ignore[arg-type]


_VALUES = st.sampled_from([
    b"null", b"true", b"0", b"-0", b"12", b"-3", b"1.5", b"1e400", b"-1e400",
    b"18446744073709551615", b"18446744073709551616", b"99999999999999999999999", b'""',
    b'"hi"', b'"\\u00e9"', b'"\\ud800"', b'"\\udc00"', b'"\\ud83d\\ude00"', b'"\xff"',
    b'"\x01"', b'"a\\"b"', b"[]", b"{}", b"[1,]", b"NaN", b"[[[[[[]]]]]]",
])
_KEYS = st.sampled_from([b"usage", b"choices", b"error", b"type", b"delta", b"content", b"text",
                         b"prompt_tokens", b"completion_tokens", b"total_tokens", b"input_tokens",
                         b"output_tokens", b"message", b"response", b"u\\u0073age", b"role"])


@st.composite
def _json_events(draw: st.DrawFn, depth: int = 0) -> bytes:
    """Objects shaped like stream events, with JSON's odd corners in them."""
    members = []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(_KEYS)
        if depth < 3 and draw(st.booleans()):
            inner = draw(_json_events(depth + 1))
            value = b"[" + inner + b"]" if key == b"choices" else inner
        else:
            value = draw(_VALUES)
        members.append(b'"' + key + b'":' + value)
    return b"{" + b",".join(members) + b"}"


@settings(max_examples=800, deadline=None)
@given(events=st.lists(_json_events(), min_size=1, max_size=6), drop=st.booleans())
def test_odd_json_in_events_reads_as_the_reference_reads_it(events: list[bytes],
                                                             drop: bool) -> None:
    stream = b"".join(b"data: " + e + b"\n\n" for e in events)
    a, b = native.SseScanner(drop_usage=drop), ref.SseScanner(drop_usage=drop)
    assert a.feed(stream) == b.feed(stream)
    assert (a.usage, a.committed, a.done, a.error) == (b.usage, b.committed, b.done, b.error)
