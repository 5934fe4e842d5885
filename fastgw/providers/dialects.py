"""The client's dialect: how the gateway's own errors reach a client.

An OpenAI client (``/v1/chat/completions`` and the other OpenAI endpoints)
gets OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}`` and
``event: error`` in streams; an Anthropic client (``/v1/messages``) gets
``{"type": "error", "error": {"type", "message"}}`` with Anthropic's error type
for the status, in bodies and in ``event: error``. The status is the same.
"""

from __future__ import annotations

import re

from fastgw.errors import GatewayError, anthropic_error_body, anthropic_error_type
from fastgw.providers.base import ANTHROPIC, OPENAI


class ClientDialect:
    """One client dialect (two instances: :data:`OPENAI_CLIENT`, :data:`ANTHROPIC_CLIENT`)."""

    __slots__ = ("name", "opening")

    def __init__(self, name: str, opening: re.Pattern[bytes] | None = None) -> None:
        self.name = name
        # The opening event of its streams when only it may go out before the
        # first content (Anthropic's message_start; see streaming/relay.py); None:
        # all of what comes before it (OpenAI's role event).
        self.opening = opening

    def error_body(self, exc: GatewayError) -> bytes | None:
        """``exc``'s error body in this dialect; None: OpenAI's envelope, which
        :meth:`GatewayError.body` renders (the server's default)."""
        if self.name == ANTHROPIC:
            return anthropic_error_body(exc.message, anthropic_error_type(exc.status))
        return None

    def error_event(self, exc: GatewayError) -> bytes:
        """The typed SSE error event that ends a stream after its commit point
        (no fake end marker: the SDKs raise on it)."""
        body = self.error_body(exc)
        return b"event: error\ndata: " + (exc.body() if body is None else body) + b"\n\n"


OPENAI_CLIENT = ClientDialect(OPENAI)
ANTHROPIC_CLIENT = ClientDialect(
    ANTHROPIC, re.compile(rb"event: ?message_start\r?\n(?:data:[^\r\n]*\r?\n)+\r?\n"))
