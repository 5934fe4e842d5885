"""Pure-Python references of the native HTTP helpers (``rust/src/http.rs``).

- ``parse_request`` / ``parse_response``: what llhttp (``httptools``, the
  parser the server and the upstream client fall back to) reads of a buffer
  holding exactly one whole message (or, for a chunked answer, its head), in
  the native functions' tuple shapes; None when llhttp refuses the bytes.
- ``ChunkedDecoder``: a chunked body, read by llhttp.
  The native functions give the same answer or None: they take a strict
  subset (see ``rust/src/http.rs``) and leave the rest to llhttp.
- ``forwarded``: the request header pass (what goes upstream).
- ``usage``: token counts after the last ``"usage"`` key of a JSON answer.
- ``splice_model``: a request body with its top-level model name replaced in place.
- ``render_request``: a whole upstream request (head and spliced body) in one piece.
- ``response_block``: the header block of an answer to the client.
- ``answer``: a whole answer to the client (status line, date, block, body) in one piece.
- ``date_line``: the ``date`` header line (``email.utils.formatdate``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from email.utils import formatdate

import httptools
import orjson

from fastgw.types import HeaderPairs, usage_asked

__all__ = ["ChunkedDecoder", "answer", "date_line", "forwarded", "parse_request",
           "parse_response", "peek_request", "render_request", "response_block", "splice_model",
           "usage"]

_DROP_REQUEST = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
    b"proxy-authenticate", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host",
    b"content-length", b"content-type", b"expect", b"authorization", b"x-api-key", b"api-key",
    b"accept-encoding", b"cookie", b"openai-organization", b"openai-project", b"x-request-id",
    b"x-forwarded-for", b"forwarded", b"x-real-ip", b"anthropic-version",
})
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def forwarded(headers: HeaderPairs
              ) -> tuple[bytes, bytes | None, bool, bytes | None]:
    """(header block to send upstream, the client's x-request-id if usable, whether
    any ``x-fastgw-*`` control header is present, the caller's credential); names are
    lowercase. The credential: the first ``authorization``'s token when it is
    ``Bearer <token>`` (any case, stripped, not empty), else the first ``x-api-key``
    stripped, when not empty."""
    out: list[bytes] = []
    rid: bytes | None = None
    hop: list[bytes] = []
    controls = False
    auth: bytes | None = None
    api_key: bytes | None = None
    for name, value in headers:
        if name in _DROP_REQUEST:
            if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
                rid = value
            elif name == b"authorization":
                auth = value if auth is None else auth
            elif name == b"x-api-key":
                api_key = value if api_key is None else api_key
            elif name == b"connection":
                hop.extend(v.strip().lower() for v in value.split(b","))
            continue
        if name.startswith(b"x-fastgw-"):
            controls = True
            continue
        out.append(name + b": " + value + b"\r\n")
    if hop:
        out = [line for line in out if line.split(b":", 1)[0] not in hop]
    credential = None
    if auth is not None:
        scheme, _, token = auth.partition(b" ")
        token = token.strip()
        if token and scheme.lower() == b"bearer":
            credential = token
    if credential is None and api_key is not None and api_key.strip():
        credential = api_key.strip()
    return b"".join(out), rid, controls, credential


_PROMPT = re.compile(rb'"(?:prompt_tokens|input_tokens)"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"(?:completion_tokens|output_tokens)"\s*:\s*(\d+)')


def usage(body: bytes) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) read after the last ``"usage"`` key (0 for
    an absent count); None without the key or without either count."""
    i = body.rfind(b'"usage"')
    if i < 0:
        return None
    p = _PROMPT.search(body, i)
    c = _COMPLETION.search(body, i)
    if p is None and c is None:
        return None
    return (int(p.group(1)) if p else 0), (int(c.group(1)) if c else 0)


class _Collect:
    """httptools callbacks that keep one message (and count messages)."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.messages = 0
        self.complete = 0
        self.keep_alive: bool | None = None
        self.parser: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete += 1


def _feed(parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
          data: bytes) -> bool:
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return False
    return True


def parse_request(data: bytes, max_head: int, max_body: int
                  ) -> tuple[bytes, bytes, bytes, HeaderPairs, bytes, bool, int,
                             bytes, bytes | None, bool, bytes | None] | None:
    """``(method, path, query, headers, body, keep_alive, content_length,
    forwarded_block, request_id, controls, credential)`` as llhttp reads ``data``, or
    None."""
    c = _Collect()
    parser = httptools.HttpRequestParser(c)
    c.parser = parser
    if not _feed(parser, data) or c.messages != 1 or c.complete != 1:
        return None
    body = b"".join(c.body)
    head_len = len(data) - len(body)
    if head_len > max_head or len(body) > max_body:
        return None
    path, _, query = c.url.partition(b"?")
    length = -1
    for name, value in c.headers:
        if name == b"content-length":
            length = int(value)
    fwd, rid, controls, credential = forwarded(c.headers)
    return (parser.get_method(), path, query, c.headers, body, bool(c.keep_alive), length, fwd, rid,
            controls, credential)


def peek_request(body: bytes) -> tuple[str, bool, bool, int, bool | None] | None:
    """``(model, stream, controls, completion, usage_asked)`` of a body
    ``orjson.loads`` reads as a dict with a str ``model`` and a bool ``stream`` (or
    none), else None."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    model = doc.get("model")
    stream = doc.get("stream", False)
    if not isinstance(model, str) or not isinstance(stream, bool):
        return None
    mt = doc.get("max_completion_tokens") or doc.get("max_tokens") or doc.get(
        "max_output_tokens")
    if type(mt) is not int or mt <= 0:
        mt = 256
    return model, stream, "fastgw" in doc, mt, usage_asked(doc)


def parse_response(data: bytes) -> tuple[int, HeaderPairs, bool, int,
                                         bytes | None] | None:
    """``(status, headers, keep_alive, head_len, body)`` as llhttp reads ``data``: the
    whole body of a content-length answer that ``data`` holds exactly, or None for
    a chunked answer (whose head ``data`` holds; its body is the decoder's); None
    otherwise."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head_len = end + 4
    c = _Collect()
    parser = httptools.HttpResponseParser(c)
    c.parser = parser
    if not _feed(parser, data[:head_len]) or c.keep_alive is None:
        return None
    status = parser.get_status_code()
    if any(n == b"transfer-encoding" for n, _ in c.headers):
        return status, c.headers, c.keep_alive, head_len, None
    if not _feed(parser, data[head_len:]) or c.messages != 1 or c.complete != 1:
        return None
    return status, c.headers, c.keep_alive, head_len, b"".join(c.body)


class ChunkedDecoder:
    """A chunked body, read by llhttp behind a head it is given."""

    _HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"

    def __init__(self) -> None:
        self._c = _Collect()
        self._parser = httptools.HttpResponseParser(self._c)
        self._c.parser = self._parser
        self._parser.feed_data(self._HEAD)
        self._failed = False

    @property
    def done(self) -> bool:
        return self._c.complete == 1

    def feed(self, data: bytes, start: int = 0, *, join: bool = False) -> list[bytes]:
        if self._failed:
            raise ValueError("the body failed already")
        if self.done and data[start:]:
            self._failed = True
            raise ValueError("bytes after the end of the response")
        self._c.body = []
        try:
            self._parser.feed_data(data[start:])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._failed = True
            raise ValueError(str(exc)) from None
        if self._c.messages > 1:
            self._failed = True
            raise ValueError("bytes after the end of the response")
        pieces = [p for p in self._c.body if p]
        return [b"".join(pieces)] if join and len(pieces) > 1 else pieces

    def feed_each(self, data: bytes, start: int, each: Callable[[bytes], object]) -> bytes | None:
        pieces = self.feed(data, start)
        for i, piece in enumerate(pieces):
            if not each(piece):
                rest = pieces[i + 1:]
                return b"".join(rest) if rest else None
        return None


def splice_model(body: bytes, old: bytes, new: bytes) -> bytes | None:
    """``body`` with ``"model":<old>`` (or ``"model": <old>``; ``old`` and ``new``
    JSON string literals) replaced by the same with ``new``, when that occurs and
    ``"model"`` occurs nowhere else in ``body`` (it is then the top-level key);
    None otherwise. The separator without a space is looked for first."""
    for sep in (b'"model":', b'"model": '):
        needle = sep + old
        i = body.find(needle)
        if i >= 0:
            if body.find(b'"model"', i + len(needle)) < 0 and body.rfind(b'"model"', 0, i) < 0:
                return body[:i] + sep + new + body[i + len(needle):]
            return None
    return None


def render_request(prefix: bytes, request_id: bytes, fwd: bytes, body: bytes, old: bytes,
                   new: bytes) -> bytes | None:
    """``prefix``, ``content-length``, ``x-request-id``, the forwarded block, the blank
    line and ``body`` with its model literal ``old`` spliced to ``new`` (unchanged
    when equal); None when :func:`splice_model` cannot splice it."""
    if old != new:
        spliced = splice_model(body, old, new)
        if spliced is None:
            return None
        body = spliced
    return (prefix + b"content-length: %d\r\nx-request-id: %s\r\n" % (len(body), request_id)
            + fwd + b"\r\n" + body)


# Upstream response headers passed to clients (lowercase name -> name sent).
PASS_RESPONSE = {
    b"openai-processing-ms": b"openai-processing-ms",
    b"openai-version": b"openai-version",
    b"x-request-id": b"x-upstream-request-id",
    b"retry-after": b"retry-after",
    b"retry-after-ms": b"retry-after-ms",
}


def response_block(ctype: bytes, request_id: bytes, target_headers: bytes, attempts: int,
                   overhead_s: float, extra: bytes, up_headers: HeaderPairs,
                   secrets: tuple[bytes, ...]) -> bytes:
    """The header block of an answer: content-type, x-request-id, the target's lines,
    attempts, overhead in ms (``%.3f``), the extra lines, then the allow-listed
    upstream headers with every secret (in turn) replaced by ``[redacted]``."""
    passed = b""
    for name, value in up_headers:
        sent = PASS_RESPONSE.get(name)
        if sent is not None:
            passed += sent + b": " + value + b"\r\n"
    for secret in secrets if passed else ():
        if secret:
            passed = passed.replace(secret, b"[redacted]")
    return (b"content-type: " + ctype + b"\r\nx-request-id: " + request_id + b"\r\n"
            + target_headers + b"x-fastgw-attempts: %d\r\nx-fastgw-overhead-ms: %.3f\r\n"
            % (attempts, overhead_s * 1000.0) + extra + passed)


def date_line(secs: int | None = None) -> bytes:
    """``date: <HTTP date>\\r\\n`` of ``secs`` (Unix time), else of now."""
    when = int(time.time()) if secs is None else secs
    return b"date: " + formatdate(when, usegmt=True).encode() + b"\r\n"


def answer(status_line: bytes, conn: bytes, ctype: bytes, request_id: bytes,
           target_headers: bytes, attempts: int, overhead_s: float, extra: bytes,
           up_headers: HeaderPairs, secrets: tuple[bytes, ...], body: bytes,
           head_only: bool) -> bytes:
    """A whole answer: status line, date line, :func:`response_block`, ``conn``,
    content-length of ``body``, the blank line, then ``body`` unless ``head_only``."""
    return (status_line + date_line()
            + response_block(ctype, request_id, target_headers, attempts, overhead_s, extra,
                             up_headers, secrets)
            + conn + b"content-length: %d\r\n\r\n" % len(body) + (b"" if head_only else body))
