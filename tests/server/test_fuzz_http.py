"""Fuzzing the HTTP/1.1 server with mutated and random requests, on real sockets.

Valid chat requests are mutated (flipped bytes, inserted CR/LF/NUL, headers
duplicated or removed, odd methods and versions, odd Content-Lengths, chunked
bodies with bad sizes, extensions and trailers), pipelined several per
connection and sent in pieces cut at random points. Whatever arrives:

- the gateway stays up and answers its health check afterwards, and logs no
  internal error;
- every connection gets a sequence of well-formed HTTP answers (status line,
  headers, framing that adds up), then is closed or stays quiet;
- every request that reaches the upstream (a recording server that parses
  strictly) is a well-formed one a client really sent: its body is a JSON
  body the fuzzer sent, byte for byte (the model name aside), and its headers
  are lines the client sent or the gateway's own.

Cases are drawn from a seeded generator (case ``i`` uses seed ``SEED + i``), so a
failure names the case that reproduces it; the count and time are bounded.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import gwtest
import orjson
import pytest
from gwtest import Gateway, LoopThread

SEED = 20240611
CASES = 240  # connections; a few seconds in all
CONCURRENCY = 24
TIME_LIMIT_S = 60.0  # a bound, never reached on a healthy gateway

SERVER = (", max_header_bytes: 2048, max_body_bytes: 4096, header_timeout_s: 1.0, "
          "keepalive_timeout_s: 0.3")

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [\x20-\x7e]*")
UPSTREAM_MODEL = b'"model":"mock-deployment"'
CLIENT_MODEL = b'"model":"gpt-test"'
NONCE = re.compile(rb"fz[0-9]+x[0-9]+")


# -- the recording upstream -------------------------------------------------------------------


ANSWER = orjson.dumps({
    "id": "chatcmpl-fuzz", "object": "chat.completion", "created": 1, "model": "mock-deployment",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
})
ANSWER_BYTES = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                % len(ANSWER) + ANSWER)


@dataclass
class Recorded:
    head: list[bytes]  # request line, then header lines
    body: bytes


@dataclass
class Recorder:
    """Everything the upstream received, parsed strictly; what did not parse is kept apart."""

    requests: list[Recorded] = field(default_factory=list)
    malformed: list[tuple[str, bytes]] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head[:-4].split(b"\r\n")
                problem = self._check_head(lines)
                if problem:
                    self.malformed.append((problem, head))
                    return
                length = next(int(line.split(b":", 1)[1]) for line in lines[1:]
                              if line.split(b":", 1)[0].lower() == b"content-length")
                body = await reader.readexactly(length)
                self.requests.append(Recorded(lines, body))
                writer.write(ANSWER_BYTES)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.malformed.append((f"cut off: {exc!r}", b""))
        finally:
            writer.close()

    @staticmethod
    def _check_head(lines: list[bytes]) -> str | None:
        if lines[0] != b"POST /v1/chat/completions HTTP/1.1":
            return f"request line {lines[0]!r}"
        lengths = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not TOKEN.fullmatch(name):
                return f"header line {line!r}"
            if any((b < 0x20 and b != 0x09) or b == 0x7f for b in value):
                return f"control byte in {line!r}"
            low = name.lower()
            if low == b"transfer-encoding":
                return "transfer-encoding sent upstream"
            if low == b"content-length":
                lengths.append(value.strip())
        if len(lengths) != 1 or not lengths[0].isdigit():
            return f"content-length {lengths!r}"
        return None


# -- the requests --------------------------------------------------------------------------------


def valid_request(rng: random.Random, nonce: str) -> tuple[bytes, list[bytes]]:
    """(head, body parts): a chat request the gateway forwards, its body split in parts."""
    body = orjson.dumps({"model": "gpt-test", "user": nonce,
                         "messages": [{"role": "user", "content": "hello " * rng.randint(1, 8)}]})
    headers = [b"host: 127.0.0.1", b"content-type: application/json",
               b"x-request-id: " + nonce.encode(), b"content-length: %d" % len(body)]
    if rng.random() < 0.3:
        headers.append(b"x-extra-%d: %s" % (rng.randint(0, 9), nonce.encode()))
    rng.shuffle(headers)
    head = b"POST /v1/chat/completions HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n"
    return head, [body]


def _chunked(rng: random.Random, body: bytes, corrupt: bool) -> bytes:
    parts, i = [], 0
    while i < len(body):
        n = rng.randint(1, max(1, len(body) - i))
        parts.append(body[i:i + n])
        i += n
    out = []
    for p in parts:
        size = b"%x" % len(p) if rng.random() < 0.7 else b"%X" % len(p)
        if rng.random() < 0.1:
            size += rng.choice([b";ext", b";a=b", b';q="x y"', b";\x00", b"; bad ext", b";=x"])
        if corrupt and rng.random() < 0.3:
            size = rng.choice([b"-1", b"zz", b"%x" % (len(p) + rng.randint(1, 9)),
                               b"%x" % max(0, len(p) - rng.randint(1, 9)), b"1" + b"0" * 17,
                               b"ffffffffffffffff", b" " + size, size + b" ", b"0x" + size, b""])
        out.append(size + b"\r\n" + p + b"\r\n")
    end = b"0\r\n"
    if rng.random() < 0.3:
        end += rng.choice([b"x-trailer: 1\r\n", b"content-length: 5\r\n", b"bad trailer\r\n",
                           b"x-t: \x00\r\n", b"transfer-encoding: chunked\r\n"])
    out.append(end + (b"\r\n" if not corrupt or rng.random() < 0.7 else b""))
    return b"".join(out)


def _replace_header(head: bytes, name: bytes, new: bytes | None) -> bytes:
    lines = head.split(b"\r\n")
    out = [line for line in lines if not line.lower().startswith(name + b":")]
    if new is not None:
        out.insert(1, new)
    return b"\r\n".join(out)


CONTENT_LENGTHS = [b"-1", b"+%d", b"0x%x", b"%d, %d", b"%d %d", b"", b"99999999999999999999999",
                   b"18446744073709551616", b"%d.0", b" %d", b"%d\t", b"0%d", b"4097"]
# (HEAD is left out: its answer has a content-length and no body, which a reader
# that does not know which request an answer belongs to cannot frame.)
METHODS = [b"GET", b"PUT", b"post", b"PRI", b"CONNECT", b"OPTIONS", b"DELETE",
           b"P\x00ST", b"", b"POST POST", b"BREW", b"M-SEARCH"]
VERSIONS = [b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/1", b"", b"HTTP/11",
            b"http/1.1", b"HTTP/1.1 ", b"HTTP/1.1\x00"]
TE_VALUES = [b"chunked", b"Chunked", b"\tchunked", b"chunked ", b"xchunked", b"chunked, identity",
             b"identity, chunked", b"gzip, chunked", b",chunked", b"chunked,", b"identity", b""]
VALUE_BYTES = [*range(0x20, 0x7f), *range(0x80, 0x100), 0x09, 0x00, 0x0d, 0x0a, 0x7f, 0x01]
INSERTS = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b",", b"\r\n\r\n", b"\xff",
           b"\x7f", b"GET / HTTP/1.1\r\n\r\n"]


def mutate(rng: random.Random, head: bytes, body: bytes) -> tuple[bytes, bytes, str]:
    """One mutation of a request; returns (head, body, what was done)."""
    kind = rng.randrange(12)
    lines = head[:-4].split(b"\r\n")
    if kind in (2, 3) and len(lines) < 2:
        kind = 0  # no header line left to duplicate or remove
    if kind == 0:  # flip a bit
        flipped = bytearray(head + body)
        i = rng.randrange(len(flipped))
        flipped[i] ^= 1 << rng.randrange(8)
        return bytes(flipped), b"", f"flip@{i}"
    if kind == 1:  # insert a troublesome byte sequence
        data = head + body
        i = rng.randrange(len(data) + 1)
        ins = rng.choice(INSERTS)
        return data[:i] + ins + data[i:], b"", f"insert {ins!r}@{i}"
    if kind == 2:  # duplicate a header line
        i = rng.randrange(1, len(lines))
        lines.insert(rng.randrange(1, len(lines) + 1), lines[i])
        return b"\r\n".join(lines) + b"\r\n\r\n", body, f"dup {lines[i]!r}"
    if kind == 3:  # remove a header line
        i = rng.randrange(1, len(lines))
        gone = lines.pop(i)
        return b"\r\n".join(lines) + b"\r\n\r\n", body, f"drop {gone!r}"
    if kind == 4:  # odd method
        method = rng.choice(METHODS)
        return method + head[4:], body, f"method {method!r}"
    if kind == 5:  # odd version
        version = rng.choice(VERSIONS)
        return head.replace(b"HTTP/1.1", version, 1), body, f"version {version!r}"
    if kind == 6:  # odd content-length
        n = len(body)
        form = rng.choice(CONTENT_LENGTHS)
        value = form % ((n, n) if form.count(b"%") == 2 else (n,) * form.count(b"%"))
        return (_replace_header(head, b"content-length", b"content-length: " + value),
                body, f"content-length {value!r}")
    if kind == 7:  # content-length off by a little: the rest is read as the next request
        n = max(0, len(body) + rng.choice([-7, -1, 1, 7]))
        return (_replace_header(head, b"content-length", b"content-length: %d" % n), body,
                f"content-length {n} for {len(body)}")
    if kind in (8, 9):  # chunked, well-formed (8) or not (9), maybe with a content-length too
        te = rng.choice(TE_VALUES) if rng.random() < 0.4 else b"chunked"
        new = _replace_header(head, b"content-length", None if rng.random() < 0.8
                              else b"content-length: %d" % len(body))
        new = _replace_header(new, b"transfer-encoding", b"transfer-encoding: " + te)
        return new, _chunked(rng, body, kind == 9), f"chunked te={te!r} corrupt={kind == 9}"
    if kind == 10:  # a header with random bytes
        name = rng.choice([b"x-r", b"expect", b"upgrade", b"connection", b"host", b"te",
                           b"x r", b"x\x00r", b"content-type"])
        # Mostly what llhttp lets through (visible ASCII, tab, obs-text), some controls.
        value = bytes(rng.choice(VALUE_BYTES) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.5:
            value = rng.choice([b"100-continue", b"close", b"keep-alive", b"upgrade", b"h2c",
                                b"trailers", b"gzip", value])
        lines.insert(rng.randrange(1, len(lines) + 1), name + b": " + value)
        return b"\r\n".join(lines) + b"\r\n\r\n", body, f"header {name!r}: {value!r}"
    cut = rng.randrange(len(head) + len(body))  # truncated (the connection times out)
    return (head + body)[:cut], b"", f"truncate@{cut}"


@dataclass
class Case:
    index: int
    data: bytes
    pieces: list[bytes]
    bodies: dict[str, bytes]  # nonce -> request as sent (mutated or not)
    dechunked: dict[str, bytes]  # nonce -> body before it was sent in chunks
    intact: list[str]  # nonces of the requests sent unmutated
    notes: list[str]


def make_case(index: int) -> Case:
    rng = random.Random(SEED + index)
    out, bodies, dechunked, intact, notes = [], {}, {}, [], []
    for j in range(rng.choice([1, 1, 2, 3, 4])):
        nonce = f"fz{index}x{j}"
        head, (body,) = valid_request(rng, nonce)
        if rng.random() < 0.65:
            for _ in range(rng.choice([1, 1, 2])):
                plain = body
                head, body, note = mutate(rng, head, body)
                notes.append(f"{nonce}: {note}")
                if note.startswith("chunked"):
                    dechunked[nonce] = plain
                    break  # the last mutation, so the body it framed is known
        else:
            intact.append(nonce)
        bodies[nonce] = head + body
        out.append(head + body)
    if rng.random() < 0.05:
        out.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))))
        notes.append("random bytes")
    data = b"".join(out)
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 4))))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return Case(index, data, pieces, bodies, dechunked, intact, notes)


# -- the client side ------------------------------------------------------------------------------


class BadAnswer(AssertionError):
    pass


def parse_answers(raw: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Every answer in ``raw``, checked strictly; the bytes must end with a whole answer."""
    out = []
    rest = raw
    while rest:
        end = rest.find(b"\r\n\r\n")
        if end < 0:
            raise BadAnswer(f"unterminated head {rest[:200]!r}")
        lines = rest[:end].split(b"\r\n")
        rest = rest[end + 4:]
        m = STATUS_LINE.fullmatch(lines[0])
        if not m:
            raise BadAnswer(f"status line {lines[0]!r}")
        status = int(m.group(1))
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b": ")
            if not sep or not TOKEN.fullmatch(name) or name.lower() != name:
                raise BadAnswer(f"header line {line!r}")
            if any(b < 0x20 or b == 0x7f for b in value):
                raise BadAnswer(f"control byte in {line!r}")
            if name in headers:
                raise BadAnswer(f"duplicate header {name!r}")
            headers[name] = value
        if status < 200:
            out.append((status, headers, b""))
            continue
        if b"x-request-id" not in headers:
            raise BadAnswer(f"no x-request-id in {lines!r}")
        length, te = headers.get(b"content-length"), headers.get(b"transfer-encoding")
        if (length is None) == (te is None):
            if length is None and lines[0].startswith(b"HTTP/1.0"):
                body, rest = rest, b""  # close-delimited
                out.append((status, headers, body))
                continue
            raise BadAnswer(f"framing of {lines!r}")
        if length is not None:
            if not length.isdigit() or len(rest) < int(length):
                raise BadAnswer(f"content-length {length!r} for {len(rest)} bytes")
            body, rest = rest[:int(length)], rest[int(length):]
        else:
            if te != b"chunked":
                raise BadAnswer(f"transfer-encoding {te!r}")
            body = b""
            while True:
                size_line, sep, rest = rest.partition(b"\r\n")
                if not sep or not re.fullmatch(rb"[0-9a-f]+", size_line):
                    raise BadAnswer(f"chunk size {size_line!r}")
                size = int(size_line, 16)
                if rest[size:size + 2] != b"\r\n":
                    raise BadAnswer("chunk not followed by CRLF")
                body += rest[:size]
                rest = rest[size + 2:]
                if size == 0:
                    break
        if status >= 400 and headers.get(b"content-type") == b"application/json":
            err = orjson.loads(body)["error"]
            assert isinstance(err["message"], str) and err["message"]
        out.append((status, headers, body))
        if headers.get(b"connection") == b"close" and rest:
            raise BadAnswer(f"bytes after connection: close: {rest[:100]!r}")
    return out


async def run_case(port: int, case: Case, deadline: float) -> tuple[bytes, bool]:
    """Send the case in its pieces; everything the gateway answers, and whether it closed."""
    rng = random.Random(-case.index)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = bytearray()

    async def read() -> bool:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            except TimeoutError:
                return False
            except ConnectionError:
                return True  # reset: closed with bytes of ours unread
            if not data:
                return True
            got.extend(data)

    reading = asyncio.ensure_future(read())
    try:
        for piece in case.pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(rng.choice([0, 0, 0.001, 0.003]))
    except ConnectionError:
        pass  # the gateway refused and closed already
    # The gateway closes every connection itself: after an answer with "connection:
    # close", at keepalive_timeout_s when idle, at header_timeout_s mid-request.
    closed = await reading
    writer.close()
    return bytes(got), closed


async def run_all(port: int, cases: list[Case]) -> list[tuple[bytes, bool]]:
    deadline = time.monotonic() + TIME_LIMIT_S
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(case: Case) -> tuple[bytes, bool]:
        async with sem:
            return await run_case(port, case, deadline)

    return list(await asyncio.gather(*(one(c) for c in cases)))


# -- the test ------------------------------------------------------------------------------------


@pytest.fixture
def recorded_gateway() -> Iterator[tuple[Gateway, Recorder]]:
    lt = LoopThread()
    recorder = Recorder()
    try:
        server = lt.run(asyncio.start_server(recorder.serve, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        with gwtest.running(lambda _mock: gwtest.minimal_yaml(port, server=SERVER), lt=lt) as gw:
            yield gw, recorder
        lt.call(server.close)
    finally:
        lt.close()


def check_forwarded(rec: Recorded, cases: list[Case]) -> None:
    """``rec`` is a request a client really sent on one connection: its body and its
    header fields are in that connection's bytes (whatever request they were meant for)."""
    orjson.loads(rec.body)  # JSON, or this raises
    assert rec.body.count(UPSTREAM_MODEL) == 1, rec.body
    as_sent = rec.body.replace(UPSTREAM_MODEL, CLIENT_MODEL)
    m = NONCE.search(rec.body)
    # (A flipped bit may have made it another nonce: then look at every connection.)
    mine = [c for c in cases if m and m.group().decode() in c.bodies]
    case = next((c for c in [*mine, *cases]
                 if as_sent in c.data or as_sent in c.dechunked.values()), None)
    assert case is not None, f"forwarded a body no client sent: {rec.body[:200]!r}"
    client_fields = {_field(line) for line in case.data.split(b"\r\n")}
    for line in rec.head[1:]:
        name, value = _field(line)
        if name in (b"host", b"content-length", b"authorization", b"content-type",
                    b"x-request-id", b"traceparent") or name.startswith(b"x-fastgw"):
            continue  # the gateway's own
        assert (name, value) in client_fields, f"forwarded a header no client sent: {line!r}"


def _field(line: bytes) -> tuple[bytes, bytes]:
    name, _, value = line.partition(b":")
    return name.lower(), value.strip(b" \t")


def test_mutated_requests_get_well_formed_answers_and_only_sent_requests_go_upstream(
        recorded_gateway: tuple[Gateway, Recorder], caplog: pytest.LogCaptureFixture) -> None:
    gw, recorder = recorded_gateway
    caplog.set_level(logging.ERROR, logger="fastgw")
    cases = [make_case(i) for i in range(CASES)]
    results = asyncio.run(run_all(gw.port, cases))

    statuses: dict[int, int] = {}
    for case, (raw, closed) in zip(cases, results, strict=True):
        where = f"case {case.index} ({'; '.join(case.notes) or 'intact'}): {case.data[:300]!r}"
        assert closed, f"connection left open past the time limit: {where}"
        try:
            answers = parse_answers(raw)
        except BadAnswer as exc:
            raise AssertionError(f"{exc} in {raw[:600]!r} for {where}") from None
        for status, _, _ in answers:
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500 or status == 505, f"{status} for {where}: {raw[:600]!r}"
        if not case.notes:  # all intact: every one answered 200, in order
            ids = [h[b"x-request-id"] for s, h, _ in answers if s >= 200]
            assert ids == [n.encode() for n in case.intact], (where, answers)
            assert all(s == 200 for s, _, _ in answers if s >= 200), where

    sent = {n for c in cases for n in c.bodies}
    assert not recorder.malformed, recorder.malformed[:3]
    for rec in recorder.requests:
        check_forwarded(rec, cases)
    forwarded = [orjson.loads(r.body).get("user") for r in recorder.requests]
    intact = [n for c in cases if not c.notes for n in c.intact]
    assert set(intact) <= set(forwarded)
    once = [n for n in forwarded if n in sent]
    assert len(once) == len(set(once)), "a request was forwarded twice"

    assert gwtest.http(gw.port, "GET", "/healthz").status == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors[:5]]
    # The fuzzer reached the refusals, not only the happy path.
    assert statuses.get(200, 0) > CASES // 4
    assert statuses.get(400, 0) > CASES // 10
    assert 408 in statuses
