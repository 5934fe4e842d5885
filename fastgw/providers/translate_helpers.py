"""What the dialect translators share: usage, stop reasons, errors, JSON checks.

The pair modules (``openai_anthropic``, ``anthropic_openai``) each translate
one client dialect to one backend's; everything both need is here, written
once:

- :data:`Usage` and its conversions from and to each dialect's usage object;
- the finish/stop-reason tables, both ways;
- error-type tables and the error bodies of each dialect;
- the unsupported-parameter rule (400 naming it, or dropped on request) and
  small shape checks that raise :class:`~fastgw.errors.BadRequest` with the
  parameter's path.
"""

from __future__ import annotations

from typing import Any, NoReturn

import orjson

from fastgw.errors import BadRequest, anthropic_error_body, anthropic_error_type

__all__ = [
    "ANTHROPIC_TO_OPENAI_ERROR",
    "FINISH_TO_STOP",
    "STOP_TO_FINISH",
    "Usage",
    "anthropic_error_from_openai",
    "anthropic_usage_fields",
    "bad_request",
    "finish_reason",
    "json_list",
    "json_object",
    "json_str",
    "openai_error_body",
    "openai_error_from_anthropic",
    "openai_error_type",
    "openai_usage",
    "stop_reason",
    "unsupported",
    "usage_from_anthropic",
    "usage_from_openai",
]

Usage = dict[str, int]
"""Token counts in the gateway's terms, the keys of ``SseScanner.usage``:
``prompt_tokens`` (all input, cache reads and writes included),
``completion_tokens``, ``total_tokens``, and when the upstream said so
``cached_tokens`` (cache reads), ``cache_creation_tokens`` (cache writes),
``reasoning_tokens`` (part of the completion)."""

# ---------------------------------------------------------------- stop reasons

STOP_TO_FINISH: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""Anthropic ``stop_reason`` -> OpenAI ``finish_reason``."""

FINISH_TO_STOP: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""OpenAI ``finish_reason`` -> Anthropic ``stop_reason``."""


def finish_reason(stop: object) -> str:
    """The OpenAI finish reason for an Anthropic stop reason (unknown or absent: ``stop``)."""
    return STOP_TO_FINISH.get(stop, "stop") if isinstance(stop, str) else "stop"


def stop_reason(finish: object) -> str:
    """The Anthropic stop reason for an OpenAI finish reason (unknown or absent: ``end_turn``)."""
    return FINISH_TO_STOP.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"


# ---------------------------------------------------------------- usage


def _count(obj: object, key: str) -> int | None:
    if isinstance(obj, dict):
        v = obj.get(key)
        if type(v) is int and v >= 0:
            return v
    return None


def usage_from_anthropic(u: dict[str, Any]) -> Usage:
    """An Anthropic usage object (``Message.usage``, or the fields of ``message_start``
    and ``message_delta`` merged) in the gateway's terms."""
    read = _count(u, "cache_read_input_tokens")
    write = _count(u, "cache_creation_input_tokens")
    prompt = (_count(u, "input_tokens") or 0) + (read or 0) + (write or 0)
    completion = _count(u, "output_tokens") or 0
    out: Usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}
    if read is not None:
        out["cached_tokens"] = read
    if write is not None:
        out["cache_creation_tokens"] = write
    thinking = _count(u.get("output_tokens_details"), "thinking_tokens")
    if thinking is not None:
        out["reasoning_tokens"] = thinking
    return out


def usage_from_openai(u: dict[str, Any]) -> Usage:
    """An OpenAI ``usage`` object in the gateway's terms."""
    prompt = _count(u, "prompt_tokens") or 0
    completion = _count(u, "completion_tokens") or 0
    total = _count(u, "total_tokens")
    out: Usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion if total is None else total}
    details = u.get("prompt_tokens_details")
    cached = _count(details, "cached_tokens")
    if cached is not None:
        out["cached_tokens"] = cached
    write = _count(details, "cache_write_tokens")
    if write is not None:
        out["cache_creation_tokens"] = write
    reasoning = _count(u.get("completion_tokens_details"), "reasoning_tokens")
    if reasoning is not None:
        out["reasoning_tokens"] = reasoning
    return out


def openai_usage(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object for ``usage``: the three counts, and the details
    (``cached_tokens``, ``cache_write_tokens``, ``reasoning_tokens``) that are known."""
    out: dict[str, Any] = {"prompt_tokens": usage["prompt_tokens"],
                           "completion_tokens": usage["completion_tokens"],
                           "total_tokens": usage["total_tokens"]}
    cached = usage.get("cached_tokens")
    write = usage.get("cache_creation_tokens")
    if cached is not None or write is not None:
        details: dict[str, int] = {}
        if cached is not None:
            details["cached_tokens"] = cached
        if write is not None:
            details["cache_write_tokens"] = write
        out["prompt_tokens_details"] = details
    reasoning = usage.get("reasoning_tokens")
    if reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def anthropic_usage_fields(usage: Usage) -> dict[str, int]:
    """Anthropic's usage fields for ``usage``: ``input_tokens`` is the input read
    neither from nor into the cache; the cache fields only when known."""
    read = usage.get("cached_tokens")
    write = usage.get("cache_creation_tokens")
    out = {"input_tokens": max(0, usage["prompt_tokens"] - (read or 0) - (write or 0)),
           "output_tokens": usage["completion_tokens"]}
    if write is not None:
        out["cache_creation_input_tokens"] = write
    if read is not None:
        out["cache_read_input_tokens"] = read
    return out


# ---------------------------------------------------------------- errors

ANTHROPIC_TO_OPENAI_ERROR: dict[str, str] = {
    "invalid_request_error": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "billing_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "timeout_error": "timeout_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
}
"""Anthropic error ``type`` -> OpenAI error ``type`` (unknown: ``server_error``)."""

_OPENAI_TO_ANTHROPIC_ERROR: dict[str, str] = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "rate_limit_exceeded": "rate_limit_error",
    "insufficient_quota": "rate_limit_error",
    "server_error": "api_error",
    "api_error": "api_error",
    "timeout_error": "api_error",
}

_OPENAI_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    429: "rate_limit_error",
    504: "timeout_error",
}


def openai_error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status (other 4xx ``invalid_request_error``,
    other statuses ``server_error``)."""
    type_ = _OPENAI_TYPE_BY_STATUS.get(status)
    if type_ is not None:
        return type_
    return "invalid_request_error" if 400 <= status < 500 else "server_error"


def openai_error_body(message: str, type_: str, code: str | None) -> bytes:
    """OpenAI's envelope ``{"error": {"message", "type", "param": null, "code"}}``."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None,
                                   "code": code}})


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace").strip() or "(empty error body)"


def openai_error_from_anthropic(doc: object, status: int | None, raw: bytes) -> bytes:
    """OpenAI's error envelope for an Anthropic error document (``{"type": "error",
    "error": {"type", "message"}}``); anything else becomes the message itself. The
    OpenAI ``code`` is the Anthropic error type, so the detail is kept."""
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        a_type = err.get("type")
        if isinstance(a_type, str):
            type_ = ANTHROPIC_TO_OPENAI_ERROR.get(a_type, "server_error")
            return openai_error_body(err["message"], type_, a_type)
        type_ = openai_error_type(status) if status is not None else "server_error"
        return openai_error_body(err["message"], type_, None)
    type_ = openai_error_type(status) if status is not None else "server_error"
    return openai_error_body(_text(raw), type_, None)


def anthropic_error_from_openai(doc: object, status: int | None, raw: bytes) -> bytes:
    """Anthropic's error body for an OpenAI error document (the envelope, or the flat
    ``{"object": "error", "message", "type", "code"}`` some OpenAI-compatible servers
    send); anything else becomes the message itself. The type comes from ``status``
    when there is one, else from the error's numeric ``code`` or its ``type``."""
    err: Any = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if err is None and isinstance(doc.get("message"), str):
            err = doc
    message: str
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        message = err["message"]
    elif isinstance(err, str):
        message, err = err, None
    else:
        message, err = _text(raw), None
    if status is not None:
        return anthropic_error_body(message, anthropic_error_type(status))
    type_ = "api_error"
    if isinstance(err, dict):
        code = err.get("code")
        if type(code) is int and 400 <= code < 600:
            type_ = anthropic_error_type(code)
        else:
            for key in ("type", "code"):
                v = err.get(key)
                if isinstance(v, str) and v in _OPENAI_TO_ANTHROPIC_ERROR:
                    type_ = _OPENAI_TO_ANTHROPIC_ERROR[v]
                    break
    return anthropic_error_body(message, type_)


# ---------------------------------------------------------------- request checks


def bad_request(message: str, param: str) -> NoReturn:
    """Raise the 400 for a request of the wrong shape at ``param``."""
    raise BadRequest(message, param=param)


def unsupported(param: str, backend: str, drop: bool, hint: str = "") -> None:
    """The rule for a parameter ``backend`` cannot express: return when the model drops
    unsupported parameters (the caller then skips it), else raise the 400 naming it."""
    if drop:
        return
    raise BadRequest(
        f"'{param}' is not supported when this model is served by {backend}"
        + (f" ({hint})" if hint else "")
        + "; remove it, or set drop_unsupported_params: true on the model to drop it.",
        param=param, code="unsupported_parameter")


def json_object(value: object, what: str, param: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else the 400 naming ``param``."""
    if not isinstance(value, dict):
        bad_request(f"{what} must be an object.", param)
    return value


def json_list(value: object, what: str, param: str) -> list[Any]:
    """``value`` if it is a JSON array, else the 400 naming ``param``."""
    if not isinstance(value, list):
        bad_request(f"{what} must be an array.", param)
    return value


def json_str(value: object, what: str, param: str) -> str:
    """``value`` if it is a string, else the 400 naming ``param``."""
    if not isinstance(value, str):
        bad_request(f"{what} must be a string.", param)
    return value
