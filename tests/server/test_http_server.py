"""The HTTP/1.1 server over raw sockets, against a real gateway and mock upstream.

Every test speaks bytes on a socket so framing, ordering, timing and closing
are observed exactly as a client sees them. "Never forwarded" is checked on
the mock upstream's own request counter.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import gwtest
import orjson
import pytest
from gwtest import Gateway, Reader, Response, chat, connect, wait_for

# Small limits so every limit is reached with little traffic.
TIGHT = (", max_header_bytes: 2048, max_body_bytes: 4096, header_timeout_s: 0.5, "
         "keepalive_timeout_s: 0.5")


def server_yaml(server: str = TIGHT) -> Callable[[int], str]:
    return lambda port: gwtest.minimal_yaml(port, server=server)


@pytest.fixture
def gw() -> Iterator[Gateway]:
    with gwtest.running(server_yaml()) as g:
        yield g


# -- helpers -------------------------------------------------------------------------


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
            version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "host: 127.0.0.1"]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
        lines.append("content-type: application/json")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chat_request(headers: dict[str, str] | None = None, **extra: Any) -> bytes:
    return request("POST", "/v1/chat/completions", orjson.dumps(chat(**extra)), headers)


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def read_to_eof(s: socket.socket, limit_s: float) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes; (data, closed) — closed is False
    when ``limit_s`` passed with the connection still open."""
    deadline = time.monotonic() + limit_s
    out = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out, False
        s.settimeout(left)
        try:
            data = s.recv(65536)
        except TimeoutError:
            return out, False
        except ConnectionResetError:
            return out, True
        if not data:
            return out, True
        out += data


def parse_one(raw: bytes) -> Response:
    """One complete response (with content-length) from bytes already read."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode()
    n = int(headers.get("content-length", len(rest)))
    return Response(int(lines[0].split()[1]), headers, rest[:n], head)


def assert_error(r: Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status == status, (r.status, r.body)
    assert r.headers["content-type"] == "application/json"
    assert r.headers.get("x-request-id")
    err = orjson.loads(r.body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code
    return dict(err)


def upstream_requests(gw: Gateway) -> int:
    return int(gw.mock_stats()["requests"])


def gateway_connections(gw: Gateway) -> int:
    return int(gw.lt.call(lambda: len(gw.app.server_state.connections)))


# -- keep-alive and pipelining ---------------------------------------------------------


def test_two_requests_share_one_keep_alive_connection(gw: Gateway) -> None:
    with connect(gw.port) as s:
        reader = Reader(s)
        s.sendall(request("GET", "/healthz"))
        first = reader.next()
        s.sendall(chat_request())
        second = reader.next()
        assert first.status == 200 and orjson.loads(first.body) == {"status": "ok"}
        assert "connection" not in first.headers
        assert second.status == 200
        assert orjson.loads(second.body)["object"] == "chat.completion"
        assert gateway_connections(gw) == 1
    assert upstream_requests(gw) == 1


def test_pipelined_requests_are_answered_in_request_order(gw: Gateway) -> None:
    # The first request is the slowest: answering in completion order would put it last.
    batch = (chat_request({"x-request-id": "p1", "x-mock-latency-ms": "300"})
             + request("GET", "/healthz", headers={"x-request-id": "p2"})
             + request("GET", "/v1/models", headers={"x-request-id": "p3"})
             + chat_request({"x-request-id": "p4"})
             + request("GET", "/nope", headers={"x-request-id": "p5"}))
    with connect(gw.port) as s:
        s.sendall(batch)
        reader = Reader(s)
        got = [reader.next() for _ in range(5)]
    assert [r.headers["x-request-id"] for r in got] == ["p1", "p2", "p3", "p4", "p5"]
    assert [r.status for r in got] == [200, 200, 200, 200, 404]
    assert orjson.loads(got[0].body)["object"] == "chat.completion"
    assert orjson.loads(got[1].body) == {"status": "ok"}
    assert orjson.loads(got[2].body)["object"] == "list"
    assert orjson.loads(got[3].body)["object"] == "chat.completion"


def test_whole_and_split_requests_alternate_on_one_connection(gw: Gateway) -> None:
    """A request in one read is parsed natively, one in pieces by llhttp: on one
    connection, in any order, each is read exactly (what reaches the upstream
    shows it), including a piece that ends a request and begins the next."""
    def echo(i: int) -> bytes:
        return chat_request({"x-request-id": f"r{i}", "x-mock-echo": "1", "x-tag": f"t{i}"},
                            user=f"u{i}")

    with connect(gw.port) as s:
        reader = Reader(s)
        got = []
        s.sendall(echo(0))  # whole
        got.append(reader.next())
        raw = echo(1)
        for piece in (raw[:17], raw[17:len(raw) // 2], raw[len(raw) // 2:]):  # in pieces
            s.sendall(piece)
            time.sleep(0.05)
        got.append(reader.next())
        s.sendall(echo(2))  # whole again
        got.append(reader.next())
        nxt = echo(4)
        s.sendall(echo(3) + nxt[:20])  # one whole request and the start of another
        got.append(reader.next())
        time.sleep(0.05)
        s.sendall(nxt[20:])
        got.append(reader.next())
        s.sendall(echo(5))
        got.append(reader.next())
    assert [r.status for r in got] == [200] * 6
    for i, r in enumerate(got):
        assert r.headers["x-request-id"] == f"r{i}"
        echoed = orjson.loads(r.body)["echo"]
        assert echoed["headers"]["x-tag"] == f"t{i}"
        assert echoed["headers"]["x-request-id"] == f"r{i}"
        assert "x-mock-echo" in echoed["headers"]
        assert echoed["body"]["user"] == f"u{i}"
    assert upstream_requests(gw) == 6


def test_pipeline_longer_than_the_queue_limit_is_answered_completely_in_order(
        gw: Gateway) -> None:
    n = 60  # well past the queue size at which the server stops reading
    batch = b"".join(request("GET", "/healthz", headers={"x-request-id": f"q{i}"})
                     for i in range(n))
    with connect(gw.port) as s:
        s.sendall(batch)
        reader = Reader(s)
        ids = [reader.next().headers["x-request-id"] for _ in range(n)]
        # Still usable afterwards.
        s.sendall(request("GET", "/healthz", headers={"x-request-id": "after"}))
        assert reader.next().headers["x-request-id"] == "after"
    assert ids == [f"q{i}" for i in range(n)]


def test_head_request_gets_headers_without_a_body(gw: Gateway) -> None:
    with connect(gw.port) as s:
        s.sendall(request("HEAD", "/healthz") + request("GET", "/healthz"))
        data = b""
        deadline = time.monotonic() + 5
        while data.count(b"\r\n\r\n") < 2 or not data.endswith(b'{"status":"ok"}'):
            assert time.monotonic() < deadline, data
            s.settimeout(1)
            data += s.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: 15" in head
    # The next bytes are the GET's status line, not a HEAD body.
    assert rest.startswith(b"HTTP/1.1 200")
    assert parse_one(rest).body == b'{"status":"ok"}'


def test_with_finish_a_client_that_half_closes_still_gets_the_answer() -> None:
    with gwtest.running(server_yaml(TIGHT + ", client_half_close: finish")) as gw, \
            connect(gw.port) as s:
        s.sendall(chat_request({"x-mock-latency-ms": "100"}))
        s.shutdown(socket.SHUT_WR)
        data, closed = read_to_eof(s, 5)
    assert closed
    r = parse_one(data)
    assert r.status == 200
    assert orjson.loads(r.body)["object"] == "chat.completion"


def test_a_client_that_half_closes_mid_request_has_left_and_its_upstream_is_closed(
        gw: Gateway) -> None:
    # The default (as nginx): a FIN while the answer is awaited is a client that
    # gave up. The upstream exchange is dropped at once, not after the answer.
    closed_before = gw.mock_stats()["closed_by_peer"]
    with connect(gw.port) as s:
        s.sendall(chat_request({"x-mock-latency-ms": "30000"}))
        assert wait_for(lambda: gw.mock_stats()["requests"] >= 1, timeout=5)
        s.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        data, closed = read_to_eof(s, 5)
        assert closed and data == b""
        assert wait_for(lambda: gw.mock_stats()["closed_by_peer"] > closed_before, timeout=5)
        # Well before the mock's 30 s answer: the upstream was dropped, not awaited.
        assert time.monotonic() - t0 < 15


# -- request bodies ----------------------------------------------------------------------


def test_chunked_request_body_is_forwarded_whole_with_a_content_length(gw: Gateway) -> None:
    doc = chat()
    doc["messages"][0]["content"] = "split across several chunks"
    raw = orjson.dumps(doc)
    body = chunked(raw[:7], raw[7:30], raw[30:])
    # A chunk extension must be accepted and not end up in the body.
    body = body.replace(b"\r\n", b";ext=1\r\n", 1)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/json\r\ntransfer-encoding: chunked\r\n"
            b"x-mock-echo: 1\r\n\r\n")
    with connect(gw.port) as s:
        s.sendall(head + body)
        r = Reader(s).next()
    assert r.status == 200, r.body
    echo = orjson.loads(r.body)["echo"]
    assert echo["method"] == "POST"
    assert echo["path"] == "/v1/chat/completions"
    assert echo["body"] == dict(doc, model="mock-deployment")
    assert "transfer-encoding" not in echo["headers"]
    assert int(echo["headers"]["content-length"]) == len(
        raw.replace(b'"gpt-test"', b'"mock-deployment"'))


def test_body_of_exactly_max_body_bytes_is_accepted(gw: Gateway) -> None:
    raw = orjson.dumps(chat())
    body = raw + b" " * (4096 - len(raw))  # trailing whitespace is valid JSON
    with connect(gw.port) as s:
        s.sendall(request("POST", "/v1/chat/completions", body))
        r = Reader(s).next()
    assert r.status == 200, r.body
    assert upstream_requests(gw) == 1


# -- HTTP/1.0 ------------------------------------------------------------------------------


def test_http10_request_is_answered_in_http10_and_closed(gw: Gateway) -> None:
    with connect(gw.port) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\nhost: 127.0.0.1\r\n\r\n")
        data, closed = read_to_eof(s, 3)
    assert closed
    assert data.startswith(b"HTTP/1.0 200 OK\r\n")
    r = parse_one(data)
    assert orjson.loads(r.body) == {"status": "ok"}
    assert r.headers["connection"] == "close"


def test_http10_keep_alive_request_stays_open_for_the_next_one(gw: Gateway) -> None:
    req = b"GET /healthz HTTP/1.0\r\nhost: 127.0.0.1\r\nconnection: keep-alive\r\n\r\n"
    with connect(gw.port) as s:
        reader = Reader(s)
        s.sendall(req)
        first = reader.next()
        s.sendall(req)
        second = reader.next()
    for r in (first, second):
        assert r.raw_head.startswith(b"HTTP/1.0 200")
        assert r.headers["connection"] == "keep-alive"
        assert r.headers["content-length"] == "15"


def test_http10_stream_is_close_delimited(gw: Gateway) -> None:
    body = orjson.dumps(chat(stream=True))
    with connect(gw.port) as s:
        s.sendall(request("POST", "/v1/chat/completions", body, version="HTTP/1.0"))
        data, closed = read_to_eof(s, 5)
    assert closed
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"transfer-encoding" not in head.lower()
    assert payload.startswith(b"data: ")
    assert payload.endswith(b"data: [DONE]\n\n")


# -- Expect: 100-continue -------------------------------------------------------------------


def test_expect_continue_gets_100_before_the_body_then_the_answer(gw: Gateway) -> None:
    body = orjson.dumps(chat())
    head = request("POST", "/v1/chat/completions", body,
                   {"expect": "100-continue"})[: -len(body)]
    with connect(gw.port) as s:
        s.sendall(head)
        s.settimeout(3)
        interim = s.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        r = Reader(s).next()
    assert r.status == 200
    assert orjson.loads(r.body)["object"] == "chat.completion"


def test_expect_continue_with_too_large_length_gets_413_and_no_100(gw: Gateway) -> None:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"expect: 100-continue\r\ncontent-length: 5000\r\n\r\n")
    with connect(gw.port) as s:
        s.sendall(head)
        data, closed = read_to_eof(s, 3)
    assert closed
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in data
    assert_error(parse_one(data), 413, "payload_too_large")


def test_expect_continue_waits_until_earlier_pipelined_answer_is_sent(gw: Gateway) -> None:
    body = orjson.dumps(chat())
    second_head = request("POST", "/v1/chat/completions", body,
                          {"expect": "100-continue", "x-request-id": "second"})[: -len(body)]
    with connect(gw.port) as s:
        s.sendall(chat_request({"x-mock-latency-ms": "200", "x-request-id": "first"})
                  + second_head)
        reader = Reader(s)
        first = reader.next()
        assert first.status == 200 and first.headers["x-request-id"] == "first"
        assert reader.next().status == 100
        s.sendall(body)
        second = reader.next()
    assert second.status == 200 and second.headers["x-request-id"] == "second"


def test_http10_client_expectation_is_ignored(gw: Gateway) -> None:
    # HTTP/1.0 clients do not know 1xx answers (RFC 9110 10.1.1): no 100 for them.
    body = orjson.dumps(chat())
    with connect(gw.port) as s:
        s.sendall(request("POST", "/v1/chat/completions", body, {"expect": "100-continue"},
                          version="HTTP/1.0"))
        data, closed = read_to_eof(s, 3)
    assert closed
    assert data.startswith(b"HTTP/1.0 200"), data[:80]


# -- size limits ------------------------------------------------------------------------------


def test_head_within_max_header_bytes_is_accepted(gw: Gateway) -> None:
    with connect(gw.port) as s:
        s.sendall(request("GET", "/healthz", headers={"x-pad": "a" * 1500}))
        assert Reader(s).next().status == 200


def test_too_large_head_is_431_and_closed(gw: Gateway) -> None:
    headers = {f"x-pad-{i}": "b" * 100 for i in range(30)}
    with connect(gw.port) as s:
        s.sendall(request("GET", "/healthz", headers=headers))
        data, closed = read_to_eof(s, 3)
    assert closed
    assert_error(parse_one(data), 431, "headers_too_large")


def test_too_long_url_is_431(gw: Gateway) -> None:
    with connect(gw.port) as s:
        s.sendall(request("GET", "/healthz?" + "q" * 3000))
        data, closed = read_to_eof(s, 3)
    assert closed
    assert_error(parse_one(data), 431, "headers_too_large")


def test_unterminated_huge_header_is_431_without_waiting_for_its_end() -> None:
    # A single header line that never ends must not be buffered until it does
    # (nor until the header timeout): the head limit applies while it grows.
    cfg = ", max_header_bytes: 2048, header_timeout_s: 60"
    with gwtest.running(server_yaml(cfg)) as gw, connect(gw.port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: ")
        t0 = time.monotonic()
        try:
            for _ in range(16):
                s.sendall(b"z" * 4096)
                time.sleep(0.01)
        except OSError:
            pass  # the server may already have answered and closed
        data, closed = read_to_eof(s, 30)
        elapsed = time.monotonic() - t0
    assert closed
    assert_error(parse_one(data), 431, "headers_too_large")
    assert elapsed < 30  # on the size, not at header_timeout_s


def test_content_length_over_limit_is_413_without_reading_the_body(gw: Gateway) -> None:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/json\r\ncontent-length: 4097\r\n"
            b"x-request-id: big-one\r\n\r\n")
    with connect(gw.port) as s:
        s.sendall(head)  # the body is never sent
        data, closed = read_to_eof(s, 3)
    assert closed
    r = parse_one(data)
    assert_error(r, 413, "payload_too_large")
    assert r.headers["connection"] == "close"
    assert r.headers["x-request-id"] == "big-one"  # the server's own answers keep it too
    assert upstream_requests(gw) == 0


def test_chunked_body_growing_over_limit_is_413(gw: Gateway) -> None:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
    with connect(gw.port) as s:
        s.sendall(head + b"".join(b"400\r\n" + b" " * 1024 + b"\r\n" for _ in range(5)))
        data, closed = read_to_eof(s, 3)
    assert closed
    assert_error(parse_one(data), 413, "payload_too_large")
    assert upstream_requests(gw) == 0


# -- timeouts ------------------------------------------------------------------------------------


def test_slowloris_head_gets_408_then_close(gw: Gateway) -> None:
    trickle = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: " + b"s" * 200
    data = b""
    with connect(gw.port) as s:
        t0 = time.monotonic()
        for byte in trickle:  # one byte every 50 ms: activity, but no complete head
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            s.settimeout(0.05)
            try:
                data += s.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if b"\r\n\r\n" in data:
                break
        answered = time.monotonic() - t0
        rest, closed = read_to_eof(s, 2)
    data += rest
    assert closed
    assert_error(parse_one(data), 408, "request_timeout")
    assert 0.4 <= answered < 2.0


def test_body_sent_slowly_but_steadily_is_not_timed_out(gw: Gateway) -> None:
    body = orjson.dumps(chat())
    pieces = [body[i:i + 10] for i in range(0, len(body), 10)]
    with connect(gw.port) as s:
        s.sendall(request("POST", "/v1/chat/completions", body)[: -len(body)])
        for piece in pieces:  # in all well over header_timeout_s, 0.2 s apart
            time.sleep(0.2)
            s.sendall(piece)
        assert len(pieces) * 0.2 > 1.0
        r = Reader(s).next()
    assert r.status == 200, r.body


def test_body_that_stops_arriving_gets_408(gw: Gateway) -> None:
    body = orjson.dumps(chat())
    with connect(gw.port) as s:
        s.sendall(request("POST", "/v1/chat/completions", body)[:-10])
        t0 = time.monotonic()
        data, closed = read_to_eof(s, 8)
        elapsed = time.monotonic() - t0
    assert closed  # within the read's 8 s: the timeout fired, not the peer
    assert_error(parse_one(data), 408, "request_timeout")
    assert elapsed >= 0.4
    assert upstream_requests(gw) == 0


def test_connection_that_sends_nothing_is_closed_after_header_timeout() -> None:
    cfg = ", header_timeout_s: 0.5, keepalive_timeout_s: 30"
    with gwtest.running(server_yaml(cfg)) as gw, connect(gw.port) as s:
        t0 = time.monotonic()
        data, closed = read_to_eof(s, 8)
        elapsed = time.monotonic() - t0
    assert closed
    assert data == b""
    assert 0.4 <= elapsed < 8


def test_idle_keep_alive_connection_is_closed_after_keepalive_timeout() -> None:
    cfg = ", header_timeout_s: 30, keepalive_timeout_s: 0.5"
    with gwtest.running(server_yaml(cfg)) as gw, connect(gw.port) as s:
        reader = Reader(s)
        # Requests closer together than the timeout keep the connection open.
        for _ in range(4):
            s.sendall(request("GET", "/healthz"))
            assert reader.next().status == 200
            time.sleep(0.3)
        s.sendall(request("GET", "/healthz"))
        assert reader.next().status == 200
        t0 = time.monotonic()
        data, closed = read_to_eof(s, 8)
        elapsed = time.monotonic() - t0
    assert closed
    assert data == b""
    assert 0.4 <= elapsed < 8


# -- framing attacks: rejected, never forwarded ----------------------------------------------

_CHAT = orjson.dumps(chat())
_POST = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
         b"content-type: application/json\r\n")

SMUGGLING = {
    "content-length-and-chunked": _POST + b"content-length: %d\r\n"
    b"transfer-encoding: chunked\r\n\r\n" % len(chunked(_CHAT)) + chunked(_CHAT),
    "chunked-and-content-length": _POST + b"transfer-encoding: chunked\r\n"
    b"content-length: %d\r\n\r\n" % len(_CHAT) + chunked(_CHAT),
    "conflicting-content-lengths": _POST + b"content-length: %d\r\ncontent-length: %d\r\n\r\n"
    % (len(_CHAT), len(_CHAT) + 6) + _CHAT + b"GET / ",
    "repeated-content-length": _POST + b"content-length: %d\r\ncontent-length: %d\r\n\r\n"
    % (len(_CHAT), len(_CHAT)) + _CHAT,
    "content-length-list": _POST + b"content-length: %d, %d\r\n\r\n"
    % (len(_CHAT), len(_CHAT)) + _CHAT,
    "bad-chunk-size": _POST + b"transfer-encoding: chunked\r\n\r\n"
    + b"zz\r\n" + _CHAT + b"\r\n0\r\n\r\n",
    "chunk-longer-than-its-size": _POST + b"transfer-encoding: chunked\r\n\r\n"
    + b"%x\r\n" % (len(_CHAT) - 5) + _CHAT + b"\r\n0\r\n\r\n",
    "chunked-then-identity": _POST + b"transfer-encoding: chunked, identity\r\n\r\n"
    + chunked(_CHAT),
    "transfer-encoding-twice": _POST + b"transfer-encoding: chunked\r\n"
    b"transfer-encoding: chunked\r\n\r\n" + chunked(_CHAT),
    "obs-fold": _POST + b"x-folded: first\r\n second\r\ncontent-length: %d\r\n\r\n"
    % len(_CHAT) + _CHAT,
    "obs-fold-transfer-encoding": _POST + b"transfer-encoding: identity\r\n chunked\r\n\r\n"
    + chunked(_CHAT),
    "space-before-colon": _POST + b"transfer-encoding : chunked\r\n\r\n" + chunked(_CHAT),
    "bare-lf-line-ends": _POST.replace(b"\r\n", b"\n") + b"content-length: %d\n\n"
    % len(_CHAT) + _CHAT,
    "negative-content-length": _POST + b"content-length: -1\r\n\r\n" + _CHAT,
}


@pytest.mark.parametrize("raw", list(SMUGGLING.values()), ids=list(SMUGGLING))
def test_ambiguous_or_broken_framing_is_400_and_never_forwarded(gw: Gateway, raw: bytes) -> None:
    with connect(gw.port) as s:
        s.sendall(raw)
        data, closed = read_to_eof(s, 3)
    assert closed
    assert_error(parse_one(data), 400, "bad_framing")
    time.sleep(0.05)
    assert upstream_requests(gw) == 0
    # The same request framed properly does reach the upstream: the check can see one.
    assert gwtest.http(gw.port, "POST", "/v1/chat/completions", chat()).status == 200
    assert upstream_requests(gw) == 1


def test_smuggling_attempt_behind_a_valid_request_is_answered_in_order_then_closed(
        gw: Gateway) -> None:
    with connect(gw.port) as s:
        s.sendall(chat_request({"x-request-id": "good"}) + SMUGGLING["content-length-and-chunked"]
                  + chat_request({"x-request-id": "hidden"}))
        data, closed = read_to_eof(s, 3)
    assert closed
    first = parse_one(data)
    assert first.status == 200 and first.headers["x-request-id"] == "good"
    second = parse_one(data[len(first.raw_head) + 4 + len(first.body):])
    assert_error(second, 400, "bad_framing")
    assert b"hidden" not in data
    time.sleep(0.05)
    assert upstream_requests(gw) == 1


def bad_json_request(rid: str, headers: dict[str, str] | None = None) -> bytes:
    """A chat request the gateway refuses in the turn it reads it (no task, no
    upstream): its answer is held to the end of that turn."""
    return request("POST", "/v1/chat/completions", b"{not json",
                   {"x-request-id": rid, **(headers or {})})


def responses(data: bytes) -> list[Response]:
    out = []
    while data:
        r = parse_one(data)
        out.append(r)
        data = data[len(r.raw_head) + 4 + len(r.body):]
    return out


def test_answers_held_to_the_end_of_the_turn_keep_their_order_with_later_writes(
        gw: Gateway) -> None:
    # Refused at once (held), proxied (written when the upstream answers), refused
    # at once, then a request rejected by the parser (written, then the close):
    # in request order, each whole, and the close after all of them.
    with connect(gw.port) as s:
        s.sendall(bad_json_request("a") + chat_request({"x-request-id": "b"})
                  + bad_json_request("c") + SMUGGLING["content-length-and-chunked"])
        data, closed = read_to_eof(s, 3)
    assert closed
    got = responses(data)
    assert [(r.status, r.headers.get("x-request-id")) for r in got[:3]] == [
        (400, "a"), (200, "b"), (400, "c")]
    assert len(got) == 4
    assert_error(got[3], 400, "bad_framing")


def test_a_held_answer_then_a_parser_rejection_in_one_read_both_arrive_before_the_close(
        gw: Gateway) -> None:
    # Both answered in the same turn: the rejection's close must wait for the held
    # answer before it (closing first would drop it).
    with connect(gw.port) as s:
        s.sendall(bad_json_request("held") + SMUGGLING["content-length-and-chunked"])
        data, closed = read_to_eof(s, 3)
    assert closed
    got = responses(data)
    assert [r.status for r in got] == [400, 400]
    assert got[0].headers["x-request-id"] == "held"
    assert_error(got[1], 400, "bad_framing")


def test_a_held_answer_to_a_connection_close_request_arrives_then_the_connection_closes(
        gw: Gateway) -> None:
    with connect(gw.port) as s:
        s.sendall(bad_json_request("last", {"connection": "close"})
                  + chat_request({"x-request-id": "never"}))
        data, closed = read_to_eof(s, 3)
    assert closed
    got = responses(data)
    assert len(got) == 1 and got[0].status == 400 and got[0].headers["x-request-id"] == "last"
    assert upstream_requests(gw) == 0


def test_nothing_sent_after_a_rejected_request_is_forwarded_even_with_a_full_pipeline(
        gw: Gateway) -> None:
    # Enough requests queued behind a slow one that reading pauses for the pipeline;
    # answering them must not resume reading past the rejected request.
    batch = b"".join(chat_request({"x-request-id": f"r{i}", "x-mock-latency-ms": "20"})
                     for i in range(20))
    with connect(gw.port) as s:
        s.sendall(batch + SMUGGLING["content-length-and-chunked"])
        time.sleep(0.1)
        try:
            for i in range(5):
                s.sendall(chat_request({"x-request-id": f"late{i}"}))
                time.sleep(0.05)
        except OSError:
            pass  # closed already
        data, closed = read_to_eof(s, 5)
    assert closed
    assert data.count(b"HTTP/1.1 200 ") == 20
    assert data.count(b"HTTP/1.1 400 ") == 1
    assert b"late" not in data
    time.sleep(0.05)
    assert upstream_requests(gw) == 20


def test_connection_close_request_is_answered_then_closed(gw: Gateway) -> None:
    with connect(gw.port) as s:
        s.sendall(request("GET", "/healthz", headers={"connection": "close"})
                  + request("GET", "/healthz"))  # never answered: the client said close
        data, closed = read_to_eof(s, 3)
    assert closed
    r = parse_one(data)
    assert r.status == 200 and r.headers["connection"] == "close"
    assert data.count(b"HTTP/1.1") == 1


def test_malformed_request_line_is_400(gw: Gateway) -> None:
    for raw in (b"GARBAGE\r\n\r\n", b"GET /healthz HTTP/9.9\r\nhost: x\r\n\r\n",
                b"GET  HTTP/1.1\r\n\r\n"):
        with connect(gw.port) as s:
            s.sendall(raw)
            data, closed = read_to_eof(s, 3)
        assert closed
        assert_error(parse_one(data), 400, "bad_framing")


# -- routing errors and request ids ----------------------------------------------------------------


def test_unknown_path_is_404_with_an_error_envelope(gw: Gateway) -> None:
    r = gwtest.http(gw.port, "GET", "/v2/nothing-here")
    err = assert_error(r, 404, "unknown_path")
    assert err["type"] == "not_found_error"
    assert "/v2/nothing-here" in err["message"]


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/v1/chat/completions", "POST"),
    ("PUT", "/v1/embeddings", "POST"),
    ("DELETE", "/healthz", "GET, HEAD"),
    ("POST", "/v1/models", "GET, HEAD"),
])
def test_wrong_method_is_405_with_allow_header(gw: Gateway, method: str, path: str,
                                               allow: str) -> None:
    r = gwtest.http(gw.port, method, path, b"{}" if method in ("POST", "PUT") else None)
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == allow
    assert upstream_requests(gw) == 0


def test_every_answer_echoes_the_clients_request_id(gw: Gateway) -> None:
    cases = [
        ("GET", "/healthz", None, 200),
        ("GET", "/readyz", None, 200),
        ("GET", "/v1/models", None, 200),
        ("GET", "/nowhere", None, 404),
        ("GET", "/v1/chat/completions", None, 405),
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("POST", "/v1/chat/completions", chat(model="no-such-model"), 404),
        ("POST", "/v1/chat/completions", chat(), 200),
    ]
    for i, (method, path, body, status) in enumerate(cases):
        rid = f"client-id.{i}:x_y-z"
        r = gwtest.http(gw.port, method, path, body, {"x-request-id": rid})
        assert r.status == status, (path, r.body)
        assert r.headers["x-request-id"] == rid, path


def test_answers_without_a_usable_client_request_id_get_a_new_one(gw: Gateway) -> None:
    seen = set()
    for headers in ({}, {"x-request-id": "has spaces in it"}, {"x-request-id": "x" * 200}):
        for path in ("/healthz", "/nowhere"):
            r = gwtest.http(gw.port, "GET", path, headers=headers)
            rid = r.headers["x-request-id"]
            assert rid and rid != headers.get("x-request-id")
            seen.add(rid)
    # Answers the server gives on its own (framing errors) carry one too.
    with connect(gw.port) as s:
        s.sendall(b"NOT HTTP\r\n\r\n")
        data, _ = read_to_eof(s, 3)
    rid = parse_one(data).headers["x-request-id"]
    assert rid
    seen.add(rid)
    assert len(seen) == 7  # all distinct


def test_clients_request_id_is_sent_upstream(gw: Gateway) -> None:
    r = gwtest.http(gw.port, "POST", "/v1/chat/completions", chat(),
                    {"x-request-id": "trace-me-42", "x-mock-echo": "1"})
    assert r.status == 200
    assert orjson.loads(r.body)["echo"]["headers"]["x-request-id"] == "trace-me-42"


# -- streaming flow control -----------------------------------------------------------------


def _stream_request(chunks: int, extra: dict[str, str] | None = None) -> bytes:
    headers = {"x-mock-chunks": str(chunks), **(extra or {})}
    return request("POST", "/v1/chat/completions", orjson.dumps(chat(stream=True)), headers)


def test_slow_reader_gets_back_pressure_not_unbounded_buffering() -> None:
    chunks = 10000  # about 2.5 MB of SSE
    with gwtest.running() as gw:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
        s.connect(("127.0.0.1", gw.port))
        with s:
            assert wait_for(lambda: gateway_connections(gw) == 1)

            def shrink_send_buffer() -> None:
                # Keep the kernel from absorbing the stream: what the gateway does not
                # hold back must then show in its own transport buffer.
                for conn in gw.app.server_state.connections:
                    assert conn.transport is not None
                    sock = conn.transport.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)

            gw.lt.call(shrink_send_buffer)

            def buffered() -> tuple[int, bool]:
                total, paused = 0, False
                for conn in gw.app.server_state.connections:
                    assert conn.transport is not None and conn.flow is not None
                    total += conn.transport.get_write_buffer_size()
                    paused = paused or conn.flow.write_paused
                return total, paused

            s.sendall(_stream_request(chunks))
            # The client reads nothing for a while.
            assert wait_for(lambda: gw.lt.call(buffered)[1], timeout=5)
            peak = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.0:
                peak = max(peak, gw.lt.call(buffered)[0])
                time.sleep(0.02)
            assert peak < 512 * 1024, peak
            assert gw.mock_stats()["aborted_streams"] == 0
            # Then it reads: the whole stream arrives, intact.
            r = Reader(s, limit_s=20).next()
    assert r.status == 200
    assert r.body.count(b'"delta":{"content":') == chunks
    assert b"event: error" not in r.body
    assert r.body.endswith(b"data: [DONE]\n\n")


def test_client_leaving_mid_stream_aborts_the_upstream_stream(gw: Gateway) -> None:
    with connect(gw.port) as s:
        s.sendall(_stream_request(500, {"x-mock-chunk-interval-ms": "20"}))
        s.settimeout(3)
        data = b""
        while b"data: " not in data:
            data += s.recv(65536)
    assert wait_for(lambda: gw.mock_stats()["aborted_streams"] == 1, timeout=3)
    assert wait_for(lambda: gw.mock_stats()["open_connections"] == 1, timeout=3)  # stats probe
