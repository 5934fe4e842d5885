"""One error tree for the whole gateway, mapped to HTTP in one place.

Every error a client can see is a :class:`GatewayError`. Each class carries the
HTTP status, the OpenAI error ``type``, where the fault lies (``source``) and
whether another attempt may succeed (``retryable``). Leaves also subclass the
matching builtin (``TimeoutError``, ``ConnectionError``) so generic handlers
still work. :func:`error_body` renders the OpenAI envelope; nothing else in the
code base formats error JSON.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import orjson


class Source(enum.Enum):
    """Who is at fault: decides the status family and whether to retry."""

    CLIENT = "client"
    UPSTREAM = "upstream"
    GATEWAY = "gateway"


class GatewayError(Exception):
    """Base of every error that ends a request with an HTTP error answer."""

    status: int = 500
    type: str = "server_error"
    source: Source = Source.GATEWAY
    retryable: bool = False
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = tuple(headers)

    def body(self) -> bytes:
        """The OpenAI error envelope for this error."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> bytes:
    """Render ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}})


# --- client errors (4xx) -------------------------------------------------------


class ClientError(GatewayError):
    """The request is wrong; retrying it unchanged cannot help."""

    status = 400
    type = "invalid_request_error"
    source = Source.CLIENT


class BadRequest(ClientError):
    """Malformed JSON, a missing field or a field of the wrong type."""


class BadFraming(ClientError):
    """Ambiguous or broken HTTP framing (smuggling attempts); never forwarded."""

    default_code = "bad_framing"


class Unauthorized(ClientError):
    """No credentials, or credentials that do not verify."""

    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class Forbidden(ClientError):
    """Valid credentials that may not do this (IP rule, model not allowed)."""

    status = 403
    type = "permission_error"
    default_code = "forbidden"


class NotFound(ClientError):
    """Unknown path or model."""

    status = 404
    type = "not_found_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    """The requested model is not configured (or not visible to the caller)."""

    default_code = "model_not_found"


class GuardrailBlocked(ClientError):
    """A model's guardrail refused the conversation (or the answer)."""

    default_code = "guardrail_blocked"


class MethodNotAllowed(ClientError):
    """Known path, wrong HTTP method; ``Allow`` lists the right ones."""

    status = 405
    default_code = "method_not_allowed"


class RequestTimeout(ClientError, TimeoutError):
    """The client sent its request too slowly."""

    status = 408
    default_code = "request_timeout"


class PayloadTooLarge(ClientError):
    """The body is larger than ``server.max_body_bytes``."""

    status = 413
    default_code = "payload_too_large"


class RateLimited(ClientError):
    """A limit was hit; carries ``Retry-After`` and ``x-ratelimit-*`` headers."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ExpectationFailed(ClientError):
    """An ``Expect`` header other than ``100-continue``."""

    status = 417
    default_code = "expectation_failed"


class HttpVersionNotSupported(ClientError):
    """A request line of an HTTP version other than 1.0 and 1.1 (0.9, 2.0 in plain text)."""

    status = 505
    default_code = "http_version_not_supported"


class HeadersTooLarge(ClientError):
    """The request head is larger than ``server.max_header_bytes``."""

    status = 431
    default_code = "headers_too_large"


# Anthropic's error ``type`` for an HTTP status, for answers in Anthropic's dialect
# (``/v1/messages`` clients); the statuses not listed fall back by family.
ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    """Anthropic's error ``type`` for ``status``: the table, else by family (other 4xx
    ``invalid_request_error``, everything else ``api_error``)."""
    type_ = ANTHROPIC_ERROR_TYPES.get(status)
    if type_ is not None:
        return type_
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def anthropic_error_body(message: str, type_: str) -> bytes:
    """Render Anthropic's ``{"type": "error", "error": {"type", "message"}}``."""
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": message}})


# --- upstream errors (5xx) -----------------------------------------------------


class UpstreamError(GatewayError):
    """The upstream failed; another target may succeed."""

    status = 502
    type = "api_error"
    source = Source.UPSTREAM
    retryable = True
    default_code = "upstream_error"
    reason: str = "error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
        sent: bool = False,
    ) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        # True when the request may have reached the upstream (bytes were written
        # and the failure came after): callers use it to decide on a blind retry.
        self.sent = sent


class UpstreamConnectError(UpstreamError, ConnectionError):
    """Could not open a connection (refused, DNS, TLS handshake)."""

    reason = "connect"


class UpstreamProtocolError(UpstreamError):
    """The upstream broke HTTP (bad framing, connection closed mid-response)."""

    reason = "protocol"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status.

    5xx, 408, 409 and 429 are retryable; other 4xx are the client's fault and
    reach it as they are (``upstream_body``, provider secrets scrubbed).
    """

    reason = "status"

    def __init__(self, message: str, *, upstream_status: int, body: bytes,
                 headers: Sequence[tuple[bytes, bytes]] = (),
                 retry_after: float | None = None) -> None:
        super().__init__(message, headers=headers, sent=True)
        self.upstream_status = upstream_status
        self.upstream_body = body
        self.retry_after = retry_after
        self.retryable = upstream_status >= 500 or upstream_status in (408, 409, 429)
        if 400 <= upstream_status < 500:
            self.status = upstream_status


class ContextLengthExceeded(UpstreamStatusError):
    """The prompt does not fit the deployment's context window (400
    ``context_length_exceeded``): ``context_fallbacks`` may take it."""


class StreamFailedBeforeCommit(UpstreamError):
    """A stream failed before its first content (an in-band error event, or no
    content within ``first_byte_s``): nothing was sent, another target may serve."""

    reason = "stream_error"


class UpstreamTimeout(UpstreamError, TimeoutError):
    """A timeout (``connect_s``, ``first_byte_s``, ``idle_s``, ``total_s``) expired."""

    status = 504
    type = "timeout_error"
    default_code = "upstream_timeout"
    reason = "timeout"


class NoHealthyTarget(GatewayError):
    """Every target of the model is down or excluded."""

    status = 503
    type = "api_error"
    source = Source.GATEWAY
    default_code = "no_healthy_target"


class ServiceUnavailable(GatewayError):
    """The gateway is draining or not ready."""

    status = 503
    type = "api_error"
    default_code = "unavailable"


class InternalError(GatewayError):
    """A bug: the message shown to the client never contains details."""

    status = 500
    type = "server_error"
    default_code = "internal_error"


# --- configuration -------------------------------------------------------------


class StateDirError(Exception):
    """``server.state_dir`` cannot be used; the message says why and what to do."""


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` holds every (yaml path, message)."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in self.errors))


class NativeModuleMissing(ImportError):
    """The Rust extension ``fastgw._native`` is not built or not importable."""
