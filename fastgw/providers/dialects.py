"""The client's dialect: how the gateway's own errors reach a client.

An OpenAI client (``/v1/chat/completions`` and the other OpenAI endpoints)
gets OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}`` and
``event: error`` in streams; an Anthropic client (``/v1/messages``) gets
``{"type": "error", "error": {"type", "message"}}`` with Anthropic's error type
for the status, in bodies and in ``event: error``. The status is the same.
"""

from __future__ import annotations

from fastgw.errors import GatewayError, anthropic_error_body, anthropic_error_type
from fastgw.providers.base import ANTHROPIC, OPENAI


class ClientDialect:
    """One client dialect (two instances: :data:`OPENAI_CLIENT`, :data:`ANTHROPIC_CLIENT`)."""

    __slots__ = ("name", "resume_drop")

    def __init__(self, name: str) -> None:
        self.name = name
        # What a stream resumed on another target after a failover leaves out of
        # the new upstream's events before its first content: None, all of them
        # (OpenAI: the role event); Anthropic: only message_start (its content
        # blocks must still be opened).
        self.resume_drop: bytes | None = b"message_start" if name == ANTHROPIC else None

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
ANTHROPIC_CLIENT = ClientDialect(ANTHROPIC)
