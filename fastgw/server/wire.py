"""Bytes on the wire: precomputed status lines, response heads, chunk framing.

Everything constant is built once at import so a response head is one
``b"".join`` and one ``transport.write``. The ``date`` line is native
(:func:`~fastgw._native.date_line`, rendered at most once a second).
"""

from __future__ import annotations

import http

from fastgw.errors import GatewayError
from fastgw.types import HeaderPairs


def _reason(code: int) -> bytes:
    try:
        return http.HTTPStatus(code).phrase.encode("latin-1")
    except ValueError:
        return b""


STATUS_LINE: dict[int, bytes] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, _reason(code)) for code in range(100, 600)
}
STATUS_LINE_10: dict[int, bytes] = {
    code: b"HTTP/1.0 %d %s\r\n" % (code, _reason(code)) for code in range(100, 600)
}

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CONNECTION_CLOSE = b"connection: close\r\n"
CONNECTION_KEEP_ALIVE = b"connection: keep-alive\r\n"
CHUNKED = b"transfer-encoding: chunked\r\n"
JSON_TYPE = b"content-type: application/json\r\n"



def header_block(headers: HeaderPairs) -> bytes:
    """Render ``name: value\\r\\n`` lines."""
    return b"".join([n + b": " + v + b"\r\n" for n, v in headers])


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk carrying ``data`` (must not be empty)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def error_parts(exc: GatewayError) -> tuple[int, bytes, bytes]:
    """(status, extra header block, body) for an error answer."""
    extra = header_block(list(exc.headers)) if exc.headers else b""
    return exc.status, JSON_TYPE + extra, exc.body()
