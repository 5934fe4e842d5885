"""SSE framing the gateway writes itself: the typed error event."""

from __future__ import annotations

import orjson

from fastgw.errors import GatewayError


def error_event(exc: GatewayError) -> bytes:
    """``event: error`` with the OpenAI error envelope; the OpenAI SDKs raise on it."""
    payload = orjson.dumps({"error": {"message": exc.message, "type": exc.type,
                                      "param": exc.param, "code": exc.code}})
    return b"event: error\ndata: " + payload + b"\n\n"
