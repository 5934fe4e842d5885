"""Response bodies and SSE events of the mock upstream, as bytes.

Pure functions, no I/O. Each takes a :class:`Shape` (the few request fields
that change an answer) and a response id, and returns the JSON body or the
list of SSE events exactly as OpenAI or Anthropic would send them.

They are called once per shape: the protocol renders them with
:data:`ID_SENTINEL` in place of the id, caches the bytes split on it, and a
request then only splices its own fixed-width id (see ``upstream.Prepared``).
So the id must appear only in JSON strings and have :data:`ID_WIDTH` chars.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from fastgw.mock.tools import ToolCall, call_id, split_arguments

ID_WIDTH: Final = 16
# Same width as a real id, so lengths computed with it hold for every request.
ID_SENTINEL: Final = "Qz7MOCKIDQz7Qz7Q"
CREATED: Final = int(time.time())
FINGERPRINT: Final = "fp_mock"

# Routes (the path without the /v1 prefix).
CHAT: Final = "chat"
COMPLETIONS: Final = "completions"
MESSAGES: Final = "messages"
RESPONSES: Final = "responses"

_WORDS: Final = ("This", "is", "a", "mock", "response", "from", "fastgw", "mock-upstream.")

EMBEDDING_DIM: Final = 8


def pieces(n: int) -> list[str]:
    """The n content pieces of an answer; joined they are the full text."""
    return [
        w if i == 0 else " " + w for i, w in enumerate(_WORDS[i % len(_WORDS)] for i in range(n))
    ]


def estimate_tokens(value: object) -> int:
    """A cheap, deterministic token count: characters of every string / 4."""
    return max(1, (_text_len(value) + 3) // 4)


def _text_len(value: object) -> int:
    # Iterative over the common cases: strings are summed without a call each.
    kind = type(value)
    if kind is str:
        return len(value)  # type: ignore[arg-type]
    if kind is list:
        items: Iterable[object] = value  # type: ignore[assignment]
    elif kind is dict:
        items = value.values()  # type: ignore[attr-defined]
    else:
        return 0
    total = 0
    for item in items:
        if type(item) is str:
            total += len(item)
        else:
            total += _text_len(item)
    return total


@dataclass(frozen=True, slots=True)
class Shape:
    """What a generated answer depends on (besides its id)."""

    route: str
    model: str
    n: int  # content pieces = completion tokens
    truncated: bool  # max_tokens cut the answer short
    include_usage: bool  # OpenAI streams: send the usage chunk
    prompt_tokens: int  # input tokens not read from nor written to the prompt cache
    calls: tuple[ToolCall, ...] = ()  # a tool-call answer instead of text
    stop: str | None = None  # the stop sequence that ended a text answer
    cache_read: int = 0  # prompt tokens read from the prompt cache
    cache_creation: int = 0  # prompt tokens written to the prompt cache

    @property
    def cached(self) -> bool:
        return bool(self.cache_read or self.cache_creation)

    @property
    def all_prompt_tokens(self) -> int:
        """OpenAI counts cached prompt tokens inside prompt_tokens, Anthropic outside."""
        return self.prompt_tokens + self.cache_read + self.cache_creation


def _dumps(obj: object) -> bytes:
    return orjson.dumps(obj)


def _data(obj: object) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


def _event(name: str, obj: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(obj) + b"\n\n"


DONE: Final = b"data: [DONE]\n\n"


# -- OpenAI chat completions ---------------------------------------------------------------


def _usage(s: Shape) -> dict[str, Any]:
    prompt = s.all_prompt_tokens
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": s.n,
        "total_tokens": prompt + s.n,
    }
    if s.cached:
        usage["prompt_tokens_details"] = {"cached_tokens": s.cache_read}
    return usage


def _chat_finish(s: Shape) -> str:
    if s.truncated:
        return "length"
    return "tool_calls" if s.calls else "stop"


def _chat_message(s: Shape) -> dict[str, Any]:
    if not s.calls:
        return {"role": "assistant", "content": "".join(pieces(s.n)), "refusal": None}
    return {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": call_id("call_", i, c.name),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for i, c in enumerate(s.calls)
        ],
    }


def chat_body(s: Shape, rid: str) -> bytes:
    return _dumps(
        {
            "id": "chatcmpl-" + rid,
            "object": "chat.completion",
            "created": CREATED,
            "model": s.model,
            "choices": [
                {
                    "index": 0,
                    "message": _chat_message(s),
                    "logprobs": None,
                    "finish_reason": _chat_finish(s),
                }
            ],
            "usage": _usage(s),
            "system_fingerprint": FINGERPRINT,
        }
    )


def chat_events(s: Shape, rid: str, first_extra: dict[str, Any] | None = None) -> list[bytes]:
    """role chunk, n content chunks, finish chunk, [usage chunk], [DONE].

    A tool-call answer has, instead of the content chunks, per call one chunk
    with its id, name and empty arguments, then its arguments in pieces."""
    cid = "chatcmpl-" + rid

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": s.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if s.include_usage:
            obj["usage"] = None  # as OpenAI does on every chunk but the last
        return obj

    first = chunk({"role": "assistant", "content": None if s.calls else "", "refusal": None}, None)
    if first_extra:
        first.update(first_extra)
    out = [_data(first)]
    if s.calls:
        for i, c in enumerate(s.calls):
            head = {
                "index": i,
                "id": call_id("call_", i, c.name),
                "type": "function",
                "function": {"name": c.name, "arguments": ""},
            }
            out.append(_data(chunk({"tool_calls": [head]}, None)))
            out.extend(
                _data(chunk({"tool_calls": [{"index": i, "function": {"arguments": a}}]}, None))
                for a in split_arguments(c.arguments)
            )
    else:
        out.extend(_data(chunk({"content": p}, None)) for p in pieces(s.n))
    out.append(_data(chunk({}, _chat_finish(s))))
    if s.include_usage:
        last = chunk({}, None)
        last["choices"] = []
        last["usage"] = _usage(s)
        out.append(_data(last))
    out.append(DONE)
    return out


# -- OpenAI legacy completions -------------------------------------------------------------


def completion_body(s: Shape, rid: str) -> bytes:
    return _dumps(
        {
            "id": "cmpl-" + rid,
            "object": "text_completion",
            "created": CREATED,
            "model": s.model,
            "choices": [
                {
                    "text": "".join(pieces(s.n)),
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": _chat_finish(s),
                }
            ],
            "usage": _usage(s),
            "system_fingerprint": FINGERPRINT,
        }
    )


def completion_events(s: Shape, rid: str, first_extra: dict[str, Any] | None = None) -> list[bytes]:
    """n text chunks, finish chunk, [usage chunk], [DONE]."""
    cid = "cmpl-" + rid

    def chunk(text: str, finish: str | None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": cid,
            "object": "text_completion",
            "created": CREATED,
            "model": s.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        }
        if s.include_usage:
            obj["usage"] = None
        return obj

    objs = [chunk(p, None) for p in pieces(s.n)]
    objs.append(chunk("", _chat_finish(s)))
    if s.include_usage:
        last = chunk("", None)
        last["choices"] = []
        last["usage"] = _usage(s)
        objs.append(last)
    if first_extra:
        objs[0].update(first_extra)
    out = [_data(o) for o in objs]
    out.append(DONE)
    return out


# -- Anthropic messages --------------------------------------------------------------------


def _stop_reason(s: Shape) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a Messages answer."""
    if s.truncated:
        return "max_tokens", None
    if s.calls:
        return "tool_use", None
    if s.stop is not None:
        return "stop_sequence", s.stop
    return "end_turn", None


def _message_usage(s: Shape, output_tokens: int) -> dict[str, int]:
    usage = {"input_tokens": s.prompt_tokens}
    if s.cached:
        usage["cache_creation_input_tokens"] = s.cache_creation
        usage["cache_read_input_tokens"] = s.cache_read
    usage["output_tokens"] = output_tokens
    return usage


def _message_content(s: Shape) -> list[dict[str, Any]]:
    if not s.calls:
        return [{"type": "text", "text": "".join(pieces(s.n))}]
    return [
        {
            "type": "tool_use",
            "id": call_id("toolu_", i, c.name),
            "name": c.name,
            "input": orjson.loads(c.arguments),
        }
        for i, c in enumerate(s.calls)
    ]


def message_body(s: Shape, rid: str) -> bytes:
    reason, sequence = _stop_reason(s)
    return _dumps(
        {
            "id": "msg_" + rid,
            "type": "message",
            "role": "assistant",
            "model": s.model,
            "content": _message_content(s),
            "stop_reason": reason,
            "stop_sequence": sequence,
            "usage": _message_usage(s, s.n),
        }
    )


def _block(index: int, block: dict[str, Any], deltas: list[dict[str, Any]]) -> list[bytes]:
    """content_block_start, one content_block_delta per delta, content_block_stop."""
    out = [
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": block},
        )
    ]
    out.extend(
        _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
        for d in deltas
    )
    out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    return out


def message_events(s: Shape, rid: str, first_extra: dict[str, Any] | None = None) -> list[bytes]:
    """message_start, content_block_start, content_block_delta x n, content_block_stop,
    message_delta, message_stop: Anthropic's event sequence.

    A tool-call answer has one block per call instead of the text block: its
    start carries the id, the name and ``"input": {}``, its deltas the
    arguments' JSON text in pieces (``input_json_delta``)."""
    start: dict[str, Any] = {
        "type": "message_start",
        "message": {
            "id": "msg_" + rid,
            "type": "message",
            "role": "assistant",
            "model": s.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _message_usage(s, 1),
        },
    }
    if first_extra:
        start.update(first_extra)
    out = [_event("message_start", start)]
    if s.calls:
        for i, c in enumerate(s.calls):
            tid = call_id("toolu_", i, c.name)
            block = {"type": "tool_use", "id": tid, "name": c.name, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": a}
                for a in split_arguments(c.arguments)
            ]
            out += _block(i, block, deltas)
    else:
        text_deltas = [{"type": "text_delta", "text": p} for p in pieces(s.n)]
        out += _block(0, {"type": "text", "text": ""}, text_deltas)
    reason, sequence = _stop_reason(s)
    out.append(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": {"output_tokens": s.n},
            },
        )
    )
    out.append(_event("message_stop", {"type": "message_stop"}))
    return out


# -- OpenAI Responses API ------------------------------------------------------------------


def _response_obj(s: Shape, rid: str, done: bool) -> dict[str, Any]:
    text = "".join(pieces(s.n))
    status = ("incomplete" if s.truncated else "completed") if done else "in_progress"
    return {
        "id": "resp_" + rid,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if done and s.truncated else None,
        "instructions": None,
        "max_output_tokens": None,
        "model": s.model,
        "output": [_response_item(rid, text, "completed")] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": s.all_prompt_tokens,
            "input_tokens_details": {"cached_tokens": s.cache_read},
            "output_tokens": s.n,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": s.all_prompt_tokens + s.n,
        }
        if done
        else None,
        "metadata": {},
    }


def _response_item(rid: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
    return {
        "type": "message",
        "id": "msg_" + rid,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def response_body(s: Shape, rid: str) -> bytes:
    return _dumps(_response_obj(s, rid, done=True))


def response_events(s: Shape, rid: str, first_extra: dict[str, Any] | None = None) -> list[bytes]:
    """response.created ... response.output_text.delta x n ... response.completed."""
    text = "".join(pieces(s.n))
    item_id = "msg_" + rid
    objs: list[dict[str, Any]] = [
        {"type": "response.created", "response": _response_obj(s, rid, done=False)},
        {"type": "response.in_progress", "response": _response_obj(s, rid, done=False)},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": _response_item(rid, None, "in_progress"),
        },
        {
            "type": "response.content_part.added",
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
    ]
    objs.extend(
        {
            "type": "response.output_text.delta",
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "delta": p,
            "logprobs": [],
        }
        for p in pieces(s.n)
    )
    objs.append(
        {
            "type": "response.output_text.done",
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "text": text,
            "logprobs": [],
        }
    )
    objs.append(
        {
            "type": "response.content_part.done",
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": text, "annotations": []},
        }
    )
    objs.append(
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": _response_item(rid, text, "completed"),
        }
    )
    final = "response.incomplete" if s.truncated else "response.completed"
    objs.append({"type": final, "response": _response_obj(s, rid, done=True)})
    if first_extra:
        objs[0].update(first_extra)
    for i, o in enumerate(objs):
        o["sequence_number"] = i
    return [_event(o["type"], o) for o in objs]


# -- per-route tables ----------------------------------------------------------------------

BODY = {
    CHAT: chat_body,
    COMPLETIONS: completion_body,
    MESSAGES: message_body,
    RESPONSES: response_body,
}
EVENTS = {
    CHAT: chat_events,
    COMPLETIONS: completion_events,
    MESSAGES: message_events,
    RESPONSES: response_events,
}
# Index of the first content-bearing event in EVENTS[route]'s list.
FIRST_CONTENT = {CHAT: 1, COMPLETIONS: 0, MESSAGES: 2, RESPONSES: 4}


# -- embeddings and models -----------------------------------------------------------------


def _vector(i: int, dim: int) -> list[float]:
    # Deterministic, exactly representable as float32 (so base64 round-trips).
    return [((i * 7 + k * 3) % 17 - 8) / 16.0 for k in range(dim)]


def embeddings_body(model: str, inputs: int, prompt_tokens: int, dim: int, b64: bool) -> bytes:
    data: list[dict[str, Any]] = []
    for i in range(inputs):
        vec = _vector(i, dim)
        emb: object = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return _dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


MODELS: Final = (
    "mock-model",
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "claude-3-5-haiku-latest",
)


def model_obj(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "fastgw-mock"}


def models_body() -> bytes:
    return _dumps({"object": "list", "data": [model_obj(m) for m in MODELS]})


# -- errors --------------------------------------------------------------------------------

_OPENAI_ERRORS: Final[dict[int, tuple[str, str | None, str]]] = {
    400: ("invalid_request_error", None, "The mock rejected this request (fault injection)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "permission_denied", "You may not use this resource."),
    404: ("invalid_request_error", "not_found", "Unknown path."),
    405: ("invalid_request_error", "method_not_allowed", "Method not allowed on this path."),
    408: ("timeout", "timeout", "Request timed out."),
    413: ("invalid_request_error", "request_too_large", "Request exceeds the maximum size."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests (mock)."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", "overloaded", "The engine is currently overloaded."),
    504: ("server_error", "timeout", "Gateway timeout."),
    529: ("server_error", "overloaded", "Overloaded."),
}
_ANTHROPIC_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}  # any other status: api_error


_CODE_MESSAGES: Final = {
    "anthropic_version_required": "anthropic-version: header is required",
    "invalid_json": "The request body is not a JSON object.",
}


def error_fields(status: int, code: str | None, prompt_tokens: int) -> tuple[str, str | None, str]:
    """(type, code, message) for an OpenAI-style error of this status."""
    if status == 400 and code == "context_length_exceeded":
        return (
            "invalid_request_error",
            code,
            "This model's maximum context length is 8192 tokens. However, your messages "
            f"resulted in {max(prompt_tokens, 8193)} tokens. Please reduce the length of the "
            "messages.",
        )
    etype, dcode, message = _OPENAI_ERRORS.get(
        status,
        (
            "server_error" if status >= 500 else "invalid_request_error",
            None,
            f"Mock error {status}.",
        ),
    )
    if code is None:
        return etype, dcode, message
    return etype, code, _CODE_MESSAGES.get(code, message)


def openai_error(status: int, code: str | None = None, prompt_tokens: int = 0) -> dict[str, Any]:
    etype, ecode, message = error_fields(status, code, prompt_tokens)
    param = "messages" if ecode == "context_length_exceeded" else None
    return {"error": {"message": message, "type": etype, "param": param, "code": ecode}}


def anthropic_error(status: int, code: str | None = None, prompt_tokens: int = 0) -> dict[str, Any]:
    _, ecode, message = error_fields(status, code, prompt_tokens)
    if ecode == "context_length_exceeded":
        message = f"prompt is too long: {max(prompt_tokens, 200001)} tokens > 200000 maximum"
    etype = _ANTHROPIC_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": etype, "message": message}}


def error_body(
    route: str | None, status: int, code: str | None = None, prompt_tokens: int = 0
) -> bytes:
    """The error envelope of the API the path belongs to."""
    if route == MESSAGES:
        return _dumps(anthropic_error(status, code, prompt_tokens))
    return _dumps(openai_error(status, code, prompt_tokens))


def error_event(route: str) -> bytes:
    """An in-band error event, as each API sends one mid-stream."""
    if route == MESSAGES:
        return _event("error", anthropic_error(529, "overloaded_error"))
    if route == RESPONSES:
        return _event(
            "error",
            {
                "type": "error",
                "code": "server_error",
                "message": "Mock in-band error.",
                "param": None,
            },
        )
    body = openai_error(500, "mock_error")
    body["error"]["message"] = "Mock in-band error."
    return _data(body)


def malformed_event(route: str) -> bytes:
    """An event whose data is cut off in the middle of its JSON."""
    if route == MESSAGES:
        return (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"broke\n\n'
        )
    if route == RESPONSES:
        return b'event: response.output_text.delta\ndata: {"type":"response.output_text.de\n\n'
    return b'data: {"id":"chatcmpl-malformed","choices":[{"index":0,"delta":{"content":"bro\n\n'
