"""Request smuggling: a table of ambiguous requests and what the gateway answers.

Each row is sent on a fresh connection followed by a well-formed request
carrying ``x-request-id: smuggled``. A refused row gets its one answer, the
connection is closed, the smuggled request is never interpreted, and nothing
reaches the upstream. The rows follow what nginx and Envoy refuse; the basic
Content-Length/Transfer-Encoding conflicts are in ``test_http_server.py``.
Rows that are unusual but unambiguous (optional whitespace, upper case,
chunk extensions and trailers) are accepted, forwarded once with a
Content-Length, and the connection goes on.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import cast

import gwtest
import orjson
import pytest
from gwtest import Gateway, chat, connect
from test_http_server import assert_error, read_to_eof, server_yaml, upstream_requests

BODY = orjson.dumps(chat())
N = len(BODY)
POST = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\n")
POST10 = POST.replace(b"HTTP/1.1", b"HTTP/1.0")
GOOD = POST + b"content-length: %d\r\n\r\n" % N + BODY
SMUGGLED = (POST + b"x-request-id: smuggled\r\ncontent-length: %d\r\n\r\n" % N + BODY)


def chunked(body: bytes, size: bytes | None = None, end: bytes = b"0\r\n\r\n") -> bytes:
    return (size if size is not None else b"%x" % len(body)) + b"\r\n" + body + b"\r\n" + end


def with_cl(*headers: bytes, body: bytes = BODY, head: bytes = POST) -> bytes:
    return head + b"".join(h + b"\r\n" for h in headers) + b"content-length: %d\r\n\r\n" % len(
        body) + body


def with_te(te: bytes, body: bytes = BODY, head: bytes = POST) -> bytes:
    return head + b"transfer-encoding: " + te + b"\r\n\r\n" + chunked(body)


# name: (request, status, error code)
REFUSED: dict[str, tuple[bytes, int, str]] = {
    # Transfer-Encoding: only a single plain "chunked" on HTTP/1.1
    "te-xchunked": (with_te(b"xchunked"), 400, "bad_framing"),
    "te-chunked-identity": (with_te(b"chunked, identity"), 400, "bad_framing"),
    "te-identity-chunked": (with_te(b"identity, chunked"), 400, "bad_framing"),
    "te-gzip-chunked": (with_te(b"gzip, chunked"), 400, "bad_framing"),
    "te-empty-element-chunked": (with_te(b",chunked"), 400, "bad_framing"),
    "te-identity": (POST + b"transfer-encoding: identity\r\n\r\n" + BODY, 400, "bad_framing"),
    "te-twice-split": (POST + b"transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n\r\n"
                       + chunked(BODY), 400, "bad_framing"),
    "te-on-http10": (with_te(b"chunked", head=POST10), 400, "bad_framing"),
    "te-and-cl-on-http10": (POST10 + b"transfer-encoding: chunked\r\ncontent-length: %d\r\n\r\n"
                            % N + chunked(BODY), 400, "bad_framing"),
    "te-vertical-tab": (with_te(b"\x0bchunked"), 400, "bad_framing"),
    "te-name-with-space-before-colon": (POST + b"transfer-encoding : chunked\r\n"
                                        b"content-length: %d\r\n\r\n" % N + BODY,
                                        400, "bad_framing"),
    # CR, LF, NUL, space in header names and values; bare line ends
    "cr-in-value": (with_cl(b"x-a: b\rc"), 400, "bad_framing"),
    "lf-in-value": (with_cl(b"x-a: b\ntransfer-encoding: chunked"), 400, "bad_framing"),
    "nul-in-value": (with_cl(b"x-a: b\x00c"), 400, "bad_framing"),
    "nul-in-name": (with_cl(b"x-\x00a: b"), 400, "bad_framing"),
    "cr-in-name": (with_cl(b"x-\ra: b"), 400, "bad_framing"),
    "space-in-name": (with_cl(b"x a: b"), 400, "bad_framing"),
    "cl-space-before-colon": (POST + b"content-length : %d\r\n\r\n" % N + BODY,
                              400, "bad_framing"),
    "bare-lf-in-one-line": (with_cl(b"x-a: b\nx-b: c"), 400, "bad_framing"),
    "bare-cr-line-end": (with_cl(b"x-a: b\rx-b: c"), 400, "bad_framing"),
    "leading-whitespace-first-header": (b"POST /v1/chat/completions HTTP/1.1\r\n host: x\r\n"
                                        b"content-length: %d\r\n\r\n" % N + BODY,
                                        400, "bad_framing"),
    # Content-Length: digits only, one value
    "cl-plus": (POST + b"content-length: +%d\r\n\r\n" % N + BODY, 400, "bad_framing"),
    "cl-minus-zero": (POST + b"content-length: -0\r\n\r\n" + BODY, 400, "bad_framing"),
    "cl-hex": (POST + b"content-length: 0x%x\r\n\r\n" % N + BODY, 400, "bad_framing"),
    "cl-space-inside": (POST + b"content-length: %d %d\r\n\r\n" % (N // 10, N % 10) + BODY,
                        400, "bad_framing"),
    "cl-decimal-point": (POST + b"content-length: %d.0\r\n\r\n" % N + BODY, 400, "bad_framing"),
    "cl-empty": (POST + b"content-length: \r\n\r\n" + BODY, 400, "bad_framing"),
    "cl-overflow": (POST + b"content-length: 18446744073709551616%d\r\n\r\n" % N + BODY,
                    400, "bad_framing"),
    "cl-differing": (POST + b"content-length: %d\r\ncontent-length: 5\r\n\r\n" % N + BODY,
                     400, "bad_framing"),
    # chunk sizes
    "chunk-size-overflow": (POST + b"transfer-encoding: chunked\r\n\r\n"
                            + chunked(BODY, b"1" + b"0" * 16 + b"%x" % N), 400, "bad_framing"),
    # (2^64-1 is a size llhttp takes: the smuggled request is read as chunk data,
    # and the connection times out; httptools does not tell the size to refuse it early.)
    "chunk-size-64-bit-max": (POST + b"transfer-encoding: chunked\r\n\r\n"
                              + chunked(BODY, b"ffffffffffffffff"), 408, "request_timeout"),
    "chunk-size-negative": (POST + b"transfer-encoding: chunked\r\n\r\n"
                            + chunked(BODY, b"-%x" % N), 400, "bad_framing"),
    "chunk-size-0x": (POST + b"transfer-encoding: chunked\r\n\r\n"
                      + chunked(BODY, b"0x%x" % N), 400, "bad_framing"),
    "chunk-size-space": (POST + b"transfer-encoding: chunked\r\n\r\n"
                         + chunked(BODY, b"%x " % N), 400, "bad_framing"),
    "chunk-size-bare-lf": (POST + b"transfer-encoding: chunked\r\n\r\n"
                           + b"%x\n" % N + BODY + b"\r\n0\r\n\r\n", 400, "bad_framing"),
    "chunk-extension-nul": (POST + b"transfer-encoding: chunked\r\n\r\n"
                            + chunked(BODY, b"%x;a\x00" % N), 400, "bad_framing"),
    "chunk-data-without-crlf": (POST + b"transfer-encoding: chunked\r\n\r\n"
                                + b"%x\r\n" % N + BODY + b"XX0\r\n\r\n", 400, "bad_framing"),
    "trailer-with-bad-line": (POST + b"transfer-encoding: chunked\r\n\r\n"
                              + chunked(BODY, end=b"0\r\nbad trailer\r\n\r\n"),
                              400, "bad_framing"),
    # request line
    "http-0.9": (b"GET /healthz\r\n\r\n", 505, "http_version_not_supported"),
    "http-2.0": (GOOD.replace(b"HTTP/1.1", b"HTTP/2.0", 1), 505, "http_version_not_supported"),
    "http-1.2": (GOOD.replace(b"HTTP/1.1", b"HTTP/1.2", 1), 400, "bad_framing"),
    "h2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "bad_framing"),
    "lowercase-method": (GOOD.replace(b"POST", b"post", 1), 400, "bad_framing"),
    "nul-in-target": (GOOD.replace(b"/v1/chat", b"/v1/\x00chat", 1), 400, "bad_framing"),
    "space-in-target": (GOOD.replace(b"/v1/chat", b"/v1/ chat", 1), 400, "bad_framing"),
    # upgrades and tunnels: refused before any handler sees them (one answer)
    "connect": (b"CONNECT evil:443 HTTP/1.1\r\nhost: evil:443\r\n\r\n", 400, "bad_framing"),
    "upgrade-h2c-with-body": (with_cl(b"connection: upgrade", b"upgrade: h2c"),
                              400, "bad_framing"),
    "upgrade-websocket": (b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\n"
                          b"upgrade: websocket\r\nsec-websocket-version: 13\r\n\r\n",
                          400, "bad_framing"),
    # expectations
    "expect-unknown": (with_cl(b"expect: 200-ok"), 417, "expectation_failed"),
    "expect-continue-and-more": (with_cl(b"expect: 100-continue, x-more"), 417,
                                 "expectation_failed"),
    # sizes (server.max_header_bytes is 2048 here)
    "long-request-line": (GOOD.replace(b"completions", b"completions?" + b"a" * 3000, 1),
                          431, "headers_too_large"),
    "long-header-line": (with_cl(b"x-a: " + b"a" * 3000), 431, "headers_too_large"),
    "many-headers": (with_cl(*(b"x-h%d: v" % i for i in range(300))), 431, "headers_too_large"),
    "body-over-limit": (POST + b"content-length: 4097\r\n\r\n" + b"x" * 4097, 413,
                        "payload_too_large"),
}

# Unusual but unambiguous: answered and forwarded once; the connection goes on.
ACCEPTED: dict[str, bytes] = {
    "te-tab-before-value": with_te(b"\tchunked"),
    "te-spaces-around-value": POST + b"transfer-encoding:   chunked  \r\n\r\n" + chunked(BODY),
    "te-upper-case": with_te(b"CHUNKED"),
    "cl-optional-whitespace": POST + b"content-length: \t%d \r\n\r\n" % N + BODY,
    "cl-leading-zeros": POST + b"content-length: 000%d\r\n\r\n" % N + BODY,
    "chunk-extensions": POST + b"transfer-encoding: chunked\r\n\r\n"
    + chunked(BODY, b'%x;name=value;q="quoted"' % N),
    "chunk-size-upper-hex-leading-zeros": POST + b"transfer-encoding: chunked\r\n\r\n"
    + chunked(BODY, b"00%X" % N),
    "chunk-trailer-fields": POST + b"transfer-encoding: chunked\r\n\r\n"
    + chunked(BODY, end=b"0\r\nx-checksum: 1\r\n\r\n"),
    "expect-100-continue-any-case": with_cl(b"expect: 100-Continue"),
    "header-name-upper-case": with_cl(b"X-Custom: 1"),
}

# Well framed but not for us: a 4xx, nothing forwarded, the connection goes on.
NOT_ROUTED: dict[str, tuple[bytes, int, str]] = {
    "absolute-form-target": (GOOD.replace(b"POST /v1", b"POST http://evil/v1", 1), 404,
                             "unknown_path"),
    "absolute-form-https-target": (GOOD.replace(b"POST /v1", b"POST https://evil:443/v1", 1),
                                   404, "unknown_path"),
    "asterisk-target": (b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n", 404, "unknown_path"),
    "unknown-method": (GOOD.replace(b"POST", b"PROPFIND", 1), 405, "method_not_allowed"),
}


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    with gwtest.running(server_yaml()) as g:
        yield g


def exchange(gw: Gateway, raw: bytes) -> tuple[list[gwtest.Response], bool, int]:
    """Send ``raw`` then the smuggled request: (answers, closed, upstream requests made)."""
    before = upstream_requests(gw)
    with connect(gw.port) as s:
        try:
            s.sendall(raw + SMUGGLED)
        except OSError:
            pass  # refused and closed before all was sent
        data, closed = read_to_eof(s, 1.5)  # the keep-alive timeout is 0.5 s
    reader = gwtest.Reader(cast(socket.socket, None))  # reads from its buffer only
    reader.buf = data
    answers = []
    while reader.buf:
        answers.append(reader.next())
    time.sleep(0.05)
    return answers, closed, upstream_requests(gw) - before


@pytest.mark.parametrize(("raw", "status", "code"), list(REFUSED.values()), ids=list(REFUSED))
def test_ambiguous_request_is_refused_closed_and_never_forwarded(
        gw: Gateway, raw: bytes, status: int, code: str) -> None:
    answers, closed, forwarded = exchange(gw, raw)
    assert [a.status for a in answers] == [status], [(a.status, a.body[:120]) for a in answers]
    assert_error(answers[0], status, code)
    assert answers[0].headers["connection"] == "close"
    assert closed
    assert forwarded == 0  # neither the request nor the one smuggled behind it


@pytest.mark.parametrize("raw", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_unusual_but_unambiguous_request_is_answered_and_forwarded_once(
        gw: Gateway, raw: bytes) -> None:
    answers, _, forwarded = exchange(gw, raw)
    finals = [a for a in answers if a.status >= 200]
    assert [a.status for a in finals] == [200, 200], [(a.status, a.body[:120]) for a in answers]
    assert finals[1].headers["x-request-id"] == "smuggled"
    assert forwarded == 2


@pytest.mark.parametrize(("raw", "status", "code"), list(NOT_ROUTED.values()),
                         ids=list(NOT_ROUTED))
def test_well_framed_request_for_no_route_is_refused_and_the_connection_goes_on(
        gw: Gateway, raw: bytes, status: int, code: str) -> None:
    answers, _, forwarded = exchange(gw, raw)
    assert [a.status for a in answers] == [status, 200]
    assert_error(answers[0], status, code)
    assert answers[1].headers["x-request-id"] == "smuggled"
    assert forwarded == 1  # the second request only


@pytest.mark.parametrize("delta", [-10, -1, 1, 10])
def test_request_behind_a_body_of_the_wrong_length_is_never_forwarded(
        gw: Gateway, delta: int) -> None:
    # The declared length is wrong: the body's tail (or the next request's head) is
    # read as a request line, refused, and the connection closed; what follows is lost.
    raw = POST + b"content-length: %d\r\n\r\n" % (N + delta) + BODY
    answers, closed, forwarded = exchange(gw, raw)
    assert closed
    assert forwarded == 0
    assert all(a.headers.get("x-request-id") != "smuggled" for a in answers)
    assert answers[-1].status == 400 and answers[-1].headers["connection"] == "close"
    assert_error(answers[-1], 400, "bad_framing")


def test_expect_continue_on_a_refused_request_sends_no_100(gw: Gateway) -> None:
    answers, closed, forwarded = exchange(gw, POST + b"expect: 100-continue\r\n"
                                          b"transfer-encoding: gzip, chunked\r\n\r\n"
                                          + chunked(BODY))
    assert [a.status for a in answers] == [400]
    assert closed and forwarded == 0
