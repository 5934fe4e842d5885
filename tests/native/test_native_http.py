"""The native whole-message parsers read what llhttp reads (or leave the bytes
to it), and the header pass and usage reader give the reference's answers."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import http as ref

# Sockets leaked by other tests' servers can be collected while these run;
# pytest would blame the test that happens to trigger the collection.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
)

MAX_HEAD = 65536
MAX_BODY = 1 << 20

_NAMES = [b"Host", b"Content-Type", b"Authorization", b"User-Agent", b"Accept",
          b"X-Request-Id", b"Connection", b"Keep-Alive", b"X-Fastgw-Only", b"Cookie",
          b"X-Hop", b"x-custom", b"Expect", b"Transfer-Encoding", b"Upgrade", b"Te",
          b"Content-Length", b"Bad Name", b"Bad:Name", b"\xc3\xa9"]
_VALUE_CHARS = st.sampled_from([b"a", b"Z", b"0", b" ", b"\t", b"-", b",", b":", b"\xc3",
                                b"\xa9", b"close", b"keep-alive", b"x-hop", b"upgrade",
                                b"chunked", b"100-continue", b"\x0b", b"\x7f", b"\x00",
                                b"req_1.2", b"Bearer k"])
_value = st.lists(_VALUE_CHARS, max_size=6).map(b"".join)
_header = st.tuples(st.sampled_from(_NAMES), _value)
_PLAIN_NAMES = [b"Host", b"Content-Type", b"Authorization", b"User-Agent", b"Accept",
                b"X-Request-Id", b"x-custom", b"X-Stainless-Lang", b"Accept-Encoding"]

_ODDITIES = ["method", "path", "version", "name", "value", "connection", "framing", "length",
             "eol", "cut", "pipelined"]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Plain requests, each with zero, one or two of the oddities the native
    parser must either read exactly as llhttp does or leave to it."""
    odd = draw(st.lists(st.sampled_from(_ODDITIES), max_size=2))
    method = b"POST"
    if "method" in odd:
        method = draw(st.sampled_from([b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
                                       b"FOO", b"post", b"CONNECT", b"PRI"]))
    path = b"/v1/chat/completions" + draw(st.sampled_from([b"", b"?a=1", b"?a=%20&b"]))
    if "path" in odd:
        path = draw(st.sampled_from([b"http://h/x", b"*", b"/\xc3\xa9", b"/a b", b"/a#f",
                                     b"/a?\xc3", b"/~x", b"//x", b"/a\x7f"]))
    version = b"HTTP/1.1"
    if "version" in odd:
        version = draw(st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1"]))
    headers = draw(st.lists(st.tuples(st.sampled_from(_PLAIN_NAMES),
                                      st.text("abcXYZ019-_./:;=", max_size=12)
                                      .map(str.encode)), max_size=5))
    if "name" in odd:
        headers.append((draw(st.sampled_from(_NAMES)), b"v"))
    if "value" in odd:
        headers.append((b"X-A", draw(_value)))
    if "connection" in odd:
        headers += draw(st.sampled_from([
            [(b"Connection", b"close")], [(b"Connection", b"keep-alive")],
            [(b"Connection", b"Upgrade"), (b"Upgrade", b"h2c")], [(b"Connection", b"x, close")],
            [(b"Connection", b"close"), (b"Connection", b"keep-alive")],
            [(b"Connection", b"x-hop"), (b"X-Hop", b"1")], [(b"Connection", b" CLOSE ")]]))
    if "framing" in odd:
        headers += draw(st.sampled_from([
            [(b"Transfer-Encoding", b"chunked")], [(b"Expect", b"100-continue")],
            [(b"Upgrade", b"websocket")], [(b"Transfer-Encoding", b"gzip")]]))
    body = draw(st.binary(max_size=40))
    length = draw(st.sampled_from(["none", "short", "long", "twice", "leading-zero", "plus",
                                   "space"])) if "length" in odd else "right"
    if length == "right" or (length == "none" and body):
        headers.append((b"Content-Length", b"%d" % len(body)))
    if length == "none":
        body = b""
    elif length == "short" and body:
        headers.append((b"Content-Length", b"%d" % (len(body) - 1)))
    elif length == "long":
        headers.append((b"Content-Length", b"%d" % (len(body) + 1)))
    elif length == "twice":
        headers += [(b"Content-Length", b"%d" % len(body))] * 2
    elif length == "leading-zero":
        headers.append((b"Content-Length", b"0%d" % len(body)))
    elif length == "plus":
        headers.append((b"Content-Length", b"+%d" % len(body)))
    elif length == "space":
        headers.append((b"Content-Length", b"%d " % len(body)))
    headers = list(draw(st.permutations(headers)))
    lines = [method + b" " + path + b" " + version] + [n + b": " + v for n, v in headers] + [b""]
    ends = [b"\r\n"] * len(lines)
    if "eol" in odd:
        ends[draw(st.integers(0, len(ends) - 1))] = draw(st.sampled_from([b"\n", b"\r", b"\n\r"]))
    data = b"".join(line + end for line, end in zip(lines, ends, strict=True)) + body
    if "cut" in odd:
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if "pipelined" in odd:
        data += data
    return data


@settings(max_examples=1500, deadline=None)
@given(requests())
@example(b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
@example(b"POST /a HTTP/1.1\r\nX-A: trailing \r\nContent-Length: 0\r\n\r\n")
@example(b"GET /a HTTP/1.1\r\nConnection: close, upgrade\r\n\r\n")
@example(b"GET /a HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n")
def test_a_request_parsed_whole_is_what_llhttp_reads(data: bytes) -> None:
    got = native.parse_request(data, MAX_HEAD, MAX_BODY)
    if got is not None:
        assert got == ref.parse_request(data, MAX_HEAD, MAX_BODY)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from([b"POST", b"GET"]),
    query=st.sampled_from([b"", b"?a=1", b"?a=1&b=%20"]),
    headers=st.lists(st.tuples(st.sampled_from(_PLAIN_NAMES),
                               st.text("abcXYZ019-_./ :;=", max_size=20)
                               .map(lambda t: t.strip().encode())), max_size=8),
    body=st.binary(max_size=200),
    close=st.booleans(),
)
def test_plain_requests_are_parsed_natively(method: bytes, query: bytes,
                                            headers: list[tuple[bytes, bytes]], body: bytes,
                                            close: bool) -> None:
    """What clients send every time is never left to llhttp (it would be correct,
    but slow)."""
    head = b"%s /v1/chat/completions%s HTTP/1.1\r\n" % (method, query)
    if close:
        headers = [*headers, (b"Connection", b"close")]
    head += b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    got = native.parse_request(data, MAX_HEAD, MAX_BODY)
    assert got is not None
    assert got == ref.parse_request(data, MAX_HEAD, MAX_BODY)
    assert isinstance(got[3], native.Headers)  # (a view: equal to the reference's list)
    assert list(got[3])[:len(headers)] == [(n.lower(), v) for n, v in headers]
    assert got[5] is (not close)
    assert got[4] == body


def test_limits_leave_the_request_to_llhttp() -> None:
    data = b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd"
    assert native.parse_request(data, len(data) - 4, 4) is not None
    assert native.parse_request(data, len(data) - 5, 4) is None  # head too large
    assert native.parse_request(data, MAX_HEAD, 3) is None  # body too large


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """Plain answers, each with zero, one or two oddities."""
    odd = draw(st.lists(st.sampled_from(["status", "version", "name", "value", "connection",
                                         "framing", "length", "eol", "cut", "extra"]),
                        max_size=2))
    status = draw(st.sampled_from([200, 201, 400, 429, 500, 503]))
    if "status" in odd:
        status = draw(st.sampled_from([100, 101, 103, 204, 304, 199, 600, 999]))
    version = b"HTTP/1.0" if "version" in odd else b"HTTP/1.1"
    reason = draw(st.sampled_from([b"OK", b"", b"Too Many Requests", b"x\ty"]))
    headers = draw(st.lists(st.tuples(st.sampled_from([b"content-type", b"openai-version",
                                                       b"x-request-id", b"date", b"Server"]),
                                      st.text("abcXYZ019-_./:;= ", max_size=12)
                                      .map(lambda t: t.strip().encode())), max_size=5))
    if "name" in odd:
        headers.append((draw(st.sampled_from(_NAMES)), b"v"))
    if "value" in odd:
        headers.append((b"x-a", draw(_value)))
    if "connection" in odd:
        headers.append((b"connection", draw(st.sampled_from([b"close", b"keep-alive",
                                                             b"upgrade", b"x, Close"]))))
    chunked = False
    if "framing" in odd:
        header = draw(st.sampled_from([(b"transfer-encoding", b"chunked"),
                                       (b"Transfer-Encoding", b"Chunked"),
                                       (b"transfer-encoding", b"gzip, chunked"),
                                       (b"upgrade", b"h2c")]))
        headers.append(header)
        chunked = header[0].lower() == b"transfer-encoding"
    body = draw(st.binary(max_size=40))
    if chunked:
        body = b"%x\r\n" % len(body) + body + b"\r\n" if body else b""
    length = draw(st.sampled_from(["none", "short", "twice", "space"])) if "length" in odd \
        else ("none" if chunked else "right")
    if length == "right":
        headers.append((b"content-length", b"%d" % len(body)))
    elif length == "short" and body:
        headers.append((b"content-length", b"%d" % (len(body) - 1)))
    elif length == "twice":
        headers += [(b"content-length", b"%d" % len(body))] * 2
    elif length == "space":
        headers.append((b"content-length", b" %d " % len(body)))
    lines = [b"%s %d %s" % (version, status, reason)] + [n + b": " + v for n, v in headers]
    lines.append(b"")
    ends = [b"\r\n"] * len(lines)
    if "eol" in odd:
        ends[draw(st.integers(0, len(ends) - 1))] = b"\n"
    data = b"".join(line + end for line, end in zip(lines, ends, strict=True)) + body
    if "cut" in odd:
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if "extra" in odd:
        data += b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    return data


@settings(max_examples=1000, deadline=None)
@given(responses())
@example(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
def test_a_response_parsed_whole_is_what_llhttp_reads(data: bytes) -> None:
    got = native.parse_response(data)
    if got is not None:
        assert got == ref.parse_response(data)


def test_a_plain_answer_is_parsed_natively() -> None:
    body = b'{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":5}}'
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nopenai-version: 1\r\n"
            b"content-length: %d\r\n\r\n" % len(body))
    got = native.parse_response(head + body)
    assert got is not None
    assert got[1] == [(b"content-type", b"application/json"), (b"openai-version", b"1"),
                      (b"content-length", b"%d" % len(body))]
    assert (got[0], *got[2:]) == (200, True, len(head), body)
    assert got == ref.parse_response(head + body)
    stream = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    got = native.parse_response(stream + b"5\r\nhel")
    assert got is not None
    assert got[1] == [(b"transfer-encoding", b"chunked")]
    assert (got[0], *got[2:]) == (200, True, len(stream), None)
    assert got == ref.parse_response(stream + b"5\r\nhel")


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    """Chunked bodies as upstreams send them, with now and then one oddity."""
    odd = draw(st.sampled_from(["none", "none", "none", "size", "ext", "eol", "data", "trailer",
                                "after", "cut"]))
    out = b""
    for data in draw(st.lists(st.binary(min_size=1, max_size=30), max_size=5)):
        size = b"%x" % len(data)
        size = draw(st.sampled_from([size, size.upper(), b"0" + size]))
        ext = draw(st.sampled_from([b"", b"", b";a", b";a=1", b";a=1;b", b';a="b c"', b";=",
                                    b";;a", b';a="b\\"c";d']))
        out += size + ext + b"\r\n" + data + b"\r\n"
    trailer = draw(st.sampled_from([b"", b"", b"x-t: 1\r\n", b"x-a: 1\r\nx-b:\r\n"]))
    out += b"0\r\n" + trailer + b"\r\n"
    if odd == "size":
        out = draw(st.sampled_from([b" 5", b"5 ", b"0x5", b"g", b"ffffffffffffffffff", b""])) \
            + b"\r\nhello\r\n" + out
    elif odd == "ext":
        out = b"5" + draw(st.sampled_from([b";", b"; a", b";a b", b";==", b";a;", b";a=b=c",
                                           b';a="b"c', b';a="\x01"', b";\x80", b";a=;b",
                                           b';a="\t\xc3"', b";a=b;", b";=;"])) \
            + b"\r\nhello\r\n" + out
    elif odd == "eol":
        i = draw(st.integers(0, len(out) - 1))
        out = out[:i] + draw(st.sampled_from([b"\n", b"\r", b"x"])) + out[i + 1:]
    elif odd == "data":
        out = b"5\r\nhelloX\r\n" + out
    elif odd == "trailer":
        out = out[:-2] + draw(st.sampled_from([b"bad line\r\n", b": v\r\n", b"x\x01: v\r\n"])) \
            + b"\r\n"
    elif odd == "after":
        out += draw(st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"x"]))
    elif odd == "cut":
        out = out[: draw(st.integers(0, len(out)))]
    return out


def _read(decoder: Any, body: bytes, cuts: list[int], join: bool,
          feed: Any = None) -> list[Any]:
    """What a decoder gives, read by read: pieces (``feed(decoder, data)``'s answer
    when given), or the read where it failed."""
    got: list[Any] = []
    prev = 0
    for c in [*sorted(set(cuts)), len(body)]:
        data = b"pad" + body[prev:c]
        try:
            got.append(decoder.feed(data, 3, join=join) if feed is None else feed(decoder, data))
        except ValueError:
            got.append("error")
            break
        got.append(decoder.done)
        prev = c
    return got


@settings(max_examples=1500, deadline=None)
@given(body=chunked_bodies(), data=st.data(), join=st.booleans())
@example(body=b"5\r\nhello\r\n0\r\n\r\n", data=None, join=False)
@example(body=b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n", data=None, join=False)
def test_chunked_bodies_read_as_llhttp_reads_them(body: bytes, data: Any, join: bool) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=6)) if data else []
    got = _read(native.ChunkedDecoder(), body, cuts, join)
    assert got == _read(ref.ChunkedDecoder(), body, cuts, join)


def _read_each(decoder: Any, body: bytes, cuts: list[int], takes: int) -> list[Any]:
    """What a decoder gives to a consumer taking ``takes`` chunks one by one (then
    declining more), and returns, read by read."""
    left = [takes]

    def each(piece: bytes) -> bool:
        seen.append(("each", piece))
        left[0] -= 1
        return left[0] > 0

    seen: list[Any] = []

    def feed(d: Any, data: bytes) -> Any:
        seen.clear()
        rest = d.feed_each(data, 3, each) if left[0] > 0 else d.feed(data, 3, join=True)
        return [*seen, ("rest", rest)]

    return _read(decoder, body, cuts, False, feed)


@settings(max_examples=1000, deadline=None)
@given(body=chunked_bodies(), data=st.data(), takes=st.integers(1, 6))
def test_chunks_fed_one_by_one_then_joined_as_the_reference(body: bytes, data: Any,
                                                           takes: int) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=6))
    assert _read_each(native.ChunkedDecoder(), body, cuts, takes) == \
        _read_each(ref.ChunkedDecoder(), body, cuts, takes)


def test_chunks_fed_one_by_one_stop_where_the_consumer_says_and_raise_what_it_raises(
        ) -> None:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"ab", b"cd", b"ef", b"gh"))
    seen: list[bytes] = []

    def two(piece: bytes) -> bool:
        seen.append(piece)
        return len(seen) < 2

    def every(piece: bytes) -> bool:
        seen.append(piece)
        return True

    rest = native.ChunkedDecoder().feed_each(body, 0, two)
    assert seen == [b"ab", b"cd"] and rest == b"efgh"
    seen.clear()
    assert native.ChunkedDecoder().feed_each(body, 0, every) is None
    assert seen == [b"ab", b"cd", b"ef", b"gh"]

    def boom(piece: bytes) -> bool:
        raise KeyError(piece)

    with pytest.raises(KeyError):
        native.ChunkedDecoder().feed_each(body, 0, boom)


def test_a_chunk_size_of_sixteen_hex_digits_is_read_and_seventeen_overflow() -> None:
    body = b"ffffffffffffffffff\r\nhello\r\n"
    for cut in range(len(body) + 1):
        assert _read(native.ChunkedDecoder(), body, [cut], False) == \
            _read(ref.ChunkedDecoder(), body, [cut], False), cut
    assert _read(native.ChunkedDecoder(), body[:16], [], False) == [[], False]


_FWD_NAMES = [b"host", b"authorization", b"x-request-id", b"connection", b"keep-alive",
              b"x-hop", b"x-other", b"x-fastgw-only", b"x-fastgw-order", b"user-agent",
              b"te", b"cookie", b"accept", b"x-api-key"]
_FWD_VALUES = st.lists(st.sampled_from([b"a", b" ", b"\t", b",", b"x-hop", b"X-Other", b"\x0b",
                                        b"keep-alive", b"req-1", b"!", b"\xc3", b"Bearer",
                                        b"bEaReR", b"Basic", b"sk-1"]),
                       max_size=5).map(b"".join)


@settings(max_examples=800, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_FWD_NAMES), _FWD_VALUES), max_size=8))
def test_forwarded_matches_the_reference(headers: list[tuple[bytes, bytes]]) -> None:
    assert native.forwarded(headers) == ref.forwarded(headers)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_FWD_NAMES), _FWD_VALUES, st.integers(0, 2)),
                max_size=8))
def test_forwarded_reads_names_in_any_case(headers: list[tuple[bytes, bytes, int]]) -> None:
    """Names as a client spells them (the parser's view holds them as sent) pass as
    their lowercase: the same block, with lowercase names, the same answers."""
    spelled = [(n.upper() if how == 1 else n.title() if how == 2 else n, v)
               for n, v, how in headers]
    assert native.forwarded(spelled) == ref.forwarded([(n, v) for n, v, _ in headers])


_PEEK_VALUES = (st.none() | st.booleans() | st.integers(-5, 10**6)
                | st.sampled_from([0, 2**53, 2**63 - 1, 2**63, 2**64 - 1, 1.5, 0.0, -0.0, 1e300,
                                   "", "x", [], [0], {}, {"a": 1}]))
_PEEK_MUTATIONS = [
    b"", b"x", b",", b" ", b"\t\n\r", b"\x0b", b"\x0c", b"\xef\xbb\xbf", b"\xff", b"\xc3",
    b"\\ud800", b"\\ud83d\\ude00", b"\\u002d", b"\\x", b"\x01", b"}", b"]", b"{", b"[",
    b'"model":"dup",', b',"model":7', b',"stream":true', b',"stream":"yes"', b',"fastgw":{}',
    b"NaN", b"1e400", b"-0", b"18446744073709551616", b',"max_tokens":18446744073709551615',
    b',"stream_options":{"include_usage":true}', b',"stream_options":null',
]


@st.composite
def _peek_bodies(draw: st.DrawFn) -> bytes:
    """JSON request bodies: orjson's dump of a dict with or without each member
    the peek reads, then maybe cut or with bytes put in (escapes, repeated keys,
    invalid UTF-8, odd whitespace, numbers out of range, trailing data)."""
    doc: dict[str, Any] = {}
    if draw(st.integers(0, 4)):
        doc["model"] = draw(st.text(max_size=8) if draw(st.integers(0, 4)) else _PEEK_VALUES)
    if draw(st.booleans()):
        doc["stream"] = draw(st.booleans() if draw(st.integers(0, 3)) else _PEEK_VALUES)
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens", "fastgw",
                "messages"):
        if draw(st.integers(0, 2)) == 0:
            doc[key] = draw(_PEEK_VALUES)
    if draw(st.integers(0, 2)) == 0:
        doc["stream_options"] = draw(st.fixed_dictionaries(
            {}, optional={"include_usage": _PEEK_VALUES, "x": st.just(1)}) | _PEEK_VALUES)
    top: Any = doc if draw(st.integers(0, 9)) else draw(_PEEK_VALUES)
    body = orjson.dumps(top)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        at = draw(st.integers(0, len(body)))
        cut = draw(st.integers(0, 1))
        body = body[:at] + draw(st.sampled_from(_PEEK_MUTATIONS)) + body[at + cut:]
    return body


@settings(max_examples=3000, deadline=None)
@given(_peek_bodies())
@example(b'{"model":"gpt\\u002d4o","stream":false,"max_tokens":0,"max_output_tokens":9}')
@example(b'{"model":"m","model":"n","fastgw":null}')
@example(b'{"model":"\\ud83d\\ude00"}')
@example(b'{"model":"\\ud83d"}')
@example(b'[{"model":"m"}]')
@example(b'{"model":"m","max_tokens":1e2}')
@example(b'{"model":"m","max_tokens":true}')
@example(b"{" * 1025 + b"}" * 1025)
@example(b'{"model":"m","x":' + b"[" * 1023 + b"]" * 1023 + b"}")
def test_a_peeked_request_is_what_its_dict_says(body: bytes) -> None:
    """What the request phase reads of a body without parsing it into a dict is
    what orjson's dict of it says, and it reads nothing where orjson refuses it
    (or where the dict would not do: then the phase parses the body itself)."""
    assert native.peek_request(body) == ref.peek_request(body)


class _Headers:
    """A request llhttp read, before the header pass (``forwarded`` unset)."""

    forwarded = None

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers


@settings(max_examples=800, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"authorization", b"x-api-key", b"user-agent"]),
                          _FWD_VALUES), max_size=4))
def test_access_control_reads_the_credential_the_reference_reads(
        headers: list[tuple[bytes, bytes]]) -> None:
    """A request the header pass has not seen: access control runs it (natively) and
    finds the key or token the pure-Python reading finds."""
    from typing import cast

    from fastgw.pipeline.access import credential
    from fastgw.server.protocol import Cycle

    cycle = _Headers(headers)
    assert credential(cast(Cycle, cycle)) == ref.forwarded(headers)[3]
    assert cycle.forwarded is not None  # kept for whoever reads it next


def test_forwarded_drops_hop_by_hop_credentials_and_controls() -> None:
    block, rid, controls, cred = native.forwarded([
        (b"host", b"gw"), (b"authorization", b"Bearer sk-secret"), (b"x-api-key", b"k"),
        (b"connection", b"X-Hop"), (b"x-hop", b"1"), (b"x-fastgw-only", b"a"),
        (b"x-request-id", b"bad id"), (b"user-agent", b"t"),
    ])
    assert block == b"user-agent: t\r\n"
    assert rid is None  # not a usable id: the gateway makes its own
    assert controls is True
    assert cred == b"sk-secret"  # kept aside for access control, never forwarded


_USAGE_PARTS = st.sampled_from([
    b'"usage"', b":", b" ", b"\n", b"{", b"}", b",", b'"prompt_tokens"', b'"input_tokens"',
    b'"completion_tokens"', b'"output_tokens"', b"12", b"0", b"99999999999999999999999", b'"x"',
    b"-1", b"null",
])


@settings(max_examples=1500, deadline=None)
@given(st.lists(_USAGE_PARTS, max_size=20).map(b"".join))
@example(b'{"usage":{"prompt_tokens": 12, "completion_tokens" :\t3}}')
@example(b'{"usage":{"input_tokens":1,"prompt_tokens":2}}')
def test_usage_matches_the_reference(body: bytes) -> None:
    assert native.usage(body) == ref.usage(body)


# -- the model name spliced into a request body -------------------------------------------

_MODELS = st.sampled_from(["gpt", "gpt-4o", 'a "quoted" name', "é", "model", "gp"])
_LEAF = st.one_of(st.integers(-5, 5), st.booleans(), st.none(), _MODELS)
_NESTED = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["model", "role", "content", "n"]), inner, max_size=3), max_leaves=6)


def _encoded(doc: dict[str, Any], how: int) -> bytes:
    if how == 0:
        return orjson.dumps(doc)
    if how == 1:
        return json.dumps(doc).encode()  # ", " and ": " (Python's SDK)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


@settings(max_examples=600, deadline=None)
@given(asked=_MODELS, new=_MODELS, before=st.dictionaries(
    st.sampled_from(["messages", "n", "temperature", "metadata"]), _NESTED, max_size=3),
    after=st.dictionaries(st.sampled_from(["stream", "user", "tools"]), _NESTED, max_size=2),
    how=st.integers(0, 2), cut=st.integers(0, 400))
@example(asked="gpt", new="x", before={}, after={"tools": {"model": "gpt"}}, how=0, cut=400)
@example(asked="gpt", new="x", before={"messages": [{"role": "model"}]}, after={}, how=1,
         cut=400)
def test_the_model_splice_matches_the_reference(asked: str, new: str, before: dict[str, Any],
                                                after: dict[str, Any], how: int,
                                                cut: int) -> None:
    doc = {**before, "model": asked, **after}
    body = _encoded(doc, how)
    old_lit, new_lit = orjson.dumps(asked), orjson.dumps(new)
    for b in (body, body[:cut], body[cut:]):  # pieces too: no assumption on the bytes
        got = native.splice_model(b, old_lit, new_lit)
        assert got == ref.splice_model(b, old_lit, new_lit)
    got = native.splice_model(body, old_lit, new_lit)
    if got is not None:
        assert orjson.loads(got) == {**doc, "model": new}
    else:  # refused only for another spelling of the name or another "model" in the body
        assert body.count(b'"model"') > 1 or old_lit not in body


@settings(max_examples=400, deadline=None)
@given(asked=_MODELS, new=_MODELS, before=st.dictionaries(
    st.sampled_from(["messages", "n", "metadata"]), _NESTED, max_size=3),
    how=st.integers(0, 2), rid=st.binary(max_size=12),
    fwd=st.lists(st.sampled_from([b"x-a: 1\r\n", b"user-agent: t\r\n", b""]), max_size=3))
def test_the_rendered_request_matches_the_reference(asked: str, new: str,
                                                    before: dict[str, Any], how: int,
                                                    rid: bytes, fwd: list[bytes]) -> None:
    doc = {**before, "model": asked}
    body = _encoded(doc, how)
    prefix = b"POST /v1/chat/completions HTTP/1.1\r\nhost: up\r\n"
    args = (prefix, rid, b"".join(fwd), body, orjson.dumps(asked), orjson.dumps(new))
    got = native.render_request(*args)
    assert got == ref.render_request(*args)
    if asked == new:  # nothing to splice: always rendered, the body as it came
        assert got is not None and got.endswith(b"\r\n\r\n" + body)


_UP_NAMES = [b"openai-processing-ms", b"openai-version", b"x-request-id", b"retry-after",
             b"retry-after-ms", b"server", b"set-cookie", b"openai-organization", b"date"]
_SECRET_BITS = st.sampled_from([b"sk-", b"1", b"abc", b"[", b"redacted", b" "])


@settings(max_examples=500, deadline=None)
@given(up=st.lists(st.tuples(st.sampled_from(_UP_NAMES),
                             st.lists(_SECRET_BITS, max_size=4).map(b"".join)), max_size=6),
       secrets=st.lists(st.lists(_SECRET_BITS, max_size=3).map(b"".join), max_size=3),
       attempts=st.integers(0, 12),
       overhead=st.floats(0, 10, allow_nan=False) | st.sampled_from([0.0005, 0.0015, 1e-9]),
       extra=st.sampled_from([b"", b"x-fastgw-cache: miss\r\n"]))
def test_the_response_block_matches_the_reference(up: list[tuple[bytes, bytes]],
                                                  secrets: list[bytes], attempts: int,
                                                  overhead: float, extra: bytes) -> None:
    args = (b"application/json", b"req_1", b"x-fastgw-provider: p\r\n", attempts, overhead,
            extra, up, tuple(secrets))
    got = native.response_block(*args)
    assert got == ref.response_block(*args)
    view = _view(up)  # the parser's Headers: read natively, as the list of its pairs
    assert native.response_block(*args[:6], view, args[7]) == native.response_block(
        *args[:6], list(view), args[7])


@settings(max_examples=300, deadline=None)
@given(up=st.lists(st.tuples(st.sampled_from(_UP_NAMES),
                             st.lists(_SECRET_BITS, max_size=4).map(b"".join)), max_size=4),
       secrets=st.lists(st.lists(_SECRET_BITS, max_size=3).map(b"".join), max_size=2),
       status=st.sampled_from([200, 201, 299]),
       conn=st.sampled_from([b"", b"connection: close\r\n", b"connection: keep-alive\r\n"]),
       body=st.binary(max_size=64), head_only=st.booleans())
def test_the_whole_answer_matches_the_reference(up: list[tuple[bytes, bytes]],
                                               secrets: list[bytes], status: int, conn: bytes,
                                               body: bytes, head_only: bool) -> None:
    args = (b"HTTP/1.1 %d X\r\n" % status, conn, b"application/json", b"req_1",
            b"x-fastgw-provider: p\r\n", 2, 0.00125, b"x-ratelimit-limit: 5\r\n", up,
            tuple(secrets), body, head_only)
    before = ref.answer(*args)
    got = native.answer(*args)
    # (the date line is of now: a second may turn between the two)
    assert got in (before, ref.answer(*args))
    assert got.endswith(b"\r\n\r\n" + (b"" if head_only else body))
    view = _view(up)
    listed = native.answer(*args[:8], list(view), *args[9:])
    assert native.answer(*args[:8], view, *args[9:]) in (listed, native.answer(
        *args[:8], list(view), *args[9:]))


@pytest.mark.parametrize("size", [0, 100, 5000, 1 << 20])
def test_a_header_view_keeps_a_large_message_s_head_only(size: int) -> None:
    """A view keeps its message's bytes only while they are mostly head: a large
    body is never held by its headers (a pooled connection keeps its last
    answer's headers until its next exchange)."""
    body = b"x" * size
    request = (b"POST /v1/x HTTP/1.1\r\nHost: h\r\nX-Custom: v\r\nContent-Length: %d\r\n\r\n"
               % size + body)
    response = b"HTTP/1.1 200 OK\r\nServer: s\r\ncontent-length: %d\r\n\r\n" % size + body
    for data, parse in ((request, lambda d: native.parse_request(d, MAX_HEAD, 2 << 20)),
                        (response, native.parse_response)):
        before = sys.getrefcount(data)
        got = parse(data)
        assert got is not None
        view = next(v for v in got if isinstance(v, native.Headers))
        kept = sys.getrefcount(data) - before
        assert kept == (1 if size < 2048 else 0), (size, kept)
        assert list(view)[-1] == (b"content-length", b"%d" % size)
        assert got[4] == body  # (the body itself is its own object)


def _view(up: list[tuple[bytes, bytes]]) -> native.Headers:
    """The native Headers of an answer with these headers, names in mixed case
    (values stripped: the parser leaves a value's edge blanks to llhttp)."""
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(
        (n.title() if i % 2 else n) + b": " + v.strip(b" ") + b"\r\n"
        for i, (n, v) in enumerate(up))
    got = native.parse_response(head + b"content-length: 0\r\n\r\n")
    assert got is not None
    return got[1]


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.tuples(st.sampled_from(_NAMES[:12] + _PLAIN_NAMES), _value),
                        max_size=8),
       data=st.data())
def test_a_header_view_is_the_list_of_its_pairs(headers: list[tuple[bytes, bytes]],
                                               data: st.DataObject) -> None:
    """What the parser hands Python for a whole message's headers behaves as the
    list of its pairs (names lowercase), and the native functions that read it
    directly read what they read from that list."""
    raw = b"POST /v1/x HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    got = native.parse_request(raw + b"Content-Length: 0\r\n\r\n", MAX_HEAD, MAX_BODY)
    if got is None:
        return  # (odd enough to be llhttp's)
    view = got[3]
    pairs = list(view)
    assert isinstance(view, native.Headers) and isinstance(view, Sequence)
    assert pairs == [(n.lower(), v) for n, v in pairs] and len(view) == len(pairs)
    assert view == pairs and (view != pairs) is False and view != pairs[:-1] and view != 3
    for i in range(-len(pairs), len(pairs)):
        assert view[i] == pairs[i]
    for bad in (len(pairs), -len(pairs) - 1):
        with pytest.raises(IndexError):
            view[bad]
    start, stop = data.draw(st.integers(-9, 9)), data.draw(st.integers(-9, 9))
    step = data.draw(st.sampled_from([1, 2, -1, -3]))
    assert view[start:stop:step] == pairs[start:stop:step]
    assert native.forwarded(view) == native.forwarded(pairs) == got[7:]
    assert repr(view) == f"Headers({pairs!r})"


@settings(max_examples=2000, deadline=None)
@given(secs=st.integers(0, 253_402_300_799)
       | st.sampled_from([0, 951_782_400, 951_868_799, 4_107_542_400, 253_402_300_799]))
def test_the_date_line_matches_formatdate(secs: int) -> None:
    assert native.date_line(secs) == ref.date_line(secs)


def test_the_date_line_of_now_is_this_second() -> None:
    before = ref.date_line()
    got = native.date_line()
    assert got in (before, ref.date_line())
    assert got.startswith(b"date: ") and got.endswith(b" GMT\r\n") and len(got) == 37


def test_a_secret_echoed_by_the_upstream_is_scrubbed() -> None:
    up = [(b"x-request-id", b"id-sk-live-1"), (b"set-cookie", b"sk-live-1"),
          (b"openai-version", b"2020")]
    got = native.response_block(b"application/json", b"r", b"", 1, 0.0015, b"", up,
                                (b"sk-live-1",))
    assert got.endswith(b"x-upstream-request-id: id-[redacted]\r\nopenai-version: 2020\r\n")
    assert b"sk-live" not in got and b"cookie" not in got
    assert b"x-fastgw-overhead-ms: 1.500\r\n" in got
