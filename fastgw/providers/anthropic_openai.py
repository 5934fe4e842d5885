"""An Anthropic Messages client (``POST /v1/messages``) served by an OpenAI chat backend.

Four pure translations (no I/O), one per direction and kind of body:

- :func:`translate_request`: a Messages request document -> an OpenAI
  ``/chat/completions`` JSON body;
- :func:`translate_response`: a ``chat.completion`` -> a Messages ``message``;
- :class:`MessagesFromChatStream`: OpenAI chat SSE in, Anthropic SSE out (with
  the ``event:`` lines Anthropic sends), event by event, a drop-in for the
  native ``SseScanner`` in the relay;
- :func:`translate_error`: OpenAI's error envelope -> Anthropic's error body.

Normalisations and choices (all deliberate, all tested):

- ``system`` -> a first ``system`` message (a string stays a string, text blocks
  become text parts).
- A user turn's ``tool_result`` blocks become ``tool`` messages, one per
  result, in order, before a user message with the turn's other content (none
  when there is none). A result's content is a string or text parts; a result
  with ``is_error: true`` is marked for the model: ``"Error: "`` before a string,
  or a first text part ``"Error: "``.
- An assistant turn's text blocks are joined into one string (OpenAI-compatible
  servers read assistant strings best); ``tool_use`` -> ``tool_calls`` (ids
  kept, ``arguments`` the compact JSON of ``input``), content null when there
  is no text; ``thinking`` and ``redacted_thinking`` blocks are dropped (OpenAI
  chat has no way to send reasoning back); a turn left empty is dropped.
- Images: a base64 source -> a ``data:<media>;base64,<data>`` URL, a URL source
  -> the URL.
- ``tool_choice``: ``auto`` -> ``"auto"``, ``any`` -> ``"required"``, ``tool`` ->
  the named function, ``none`` -> ``"none"``; ``disable_parallel_tool_use: true``
  -> ``parallel_tool_calls: false``. A tool's ``strict`` becomes the function's.
- ``max_tokens`` -> ``max_tokens`` (absent: the model's ``default_max_tokens``
  when set, else none is sent); ``stop_sequences`` -> ``stop``;
  ``metadata.user_id`` -> ``user``; ``stream`` -> ``stream`` with
  ``stream_options: {"include_usage": true}`` (the gateway always counts).
- Dropped silently: ``cache_control`` anywhere (a hint), the gateway's
  ``fastgw`` key, ``thinking: {"type": "disabled"}``, ``service_tier: auto``,
  ``null`` values.
- 400 naming the parameter (``code: unsupported_parameter``), or dropped with
  ``drop_unsupported``: ``top_k``, ``thinking`` (enabled), ``document`` and other
  block types, images inside tool results, server tools, other
  ``service_tier`` values and unknown keys.

Answers: ``reasoning_content`` (or ``reasoning``) -> a first ``thinking`` block
with an empty ``signature`` (there is none to give; such a block sent back
through this gateway is dropped, above); text -> a text block (none when
empty; a ``refusal`` stands in for missing text); tool calls -> ``tool_use``
blocks whose ``input`` is the parsed ``arguments`` (arguments that do not parse
to a JSON object give ``{}``: the answer is still delivered). The message id is
the upstream's id as it is.
"""

from __future__ import annotations

from typing import Any

import orjson

from fastgw._native import SseScanner
from fastgw.errors import UpstreamProtocolError
from fastgw.providers.sse_events import CONTENT, DEFAULT_MAX_EVENT, StreamTranslator
from fastgw.providers.translate_helpers import (
    Usage,
    anthropic_error_from_openai,
    anthropic_usage_fields,
    bad_request,
    json_list,
    json_object,
    json_str,
    stop_reason,
    unsupported,
    usage_from_openai,
)

__all__ = [
    "MessagesFromChatStream",
    "translate_error",
    "translate_request",
    "translate_response",
]

BACKEND = "an OpenAI-compatible chat API"

_DONE = SseScanner.DONE
_ERROR = SseScanner.ERROR
_USAGE = SseScanner.USAGE

# ---------------------------------------------------------------- request

_SILENT = frozenset({"model", "messages", "stream", "fastgw", "cache_control"})
_HINTS: dict[str, str] = {
    "top_k": "OpenAI has no top_k",
    "thinking": "OpenAI chat has no thinking budget",
    "service_tier": "OpenAI's service tiers differ",
}


def translate_request(doc: dict[str, Any], *, deployment: str, stream: bool,
                      default_max_tokens: int | None, drop_unsupported: bool) -> bytes:
    """The OpenAI ``/chat/completions`` body for an Anthropic Messages request document,
    with ``model`` = ``deployment``. Raises :class:`~fastgw.errors.BadRequest` (400 with
    the parameter's path) for a request of the wrong shape, and for a parameter the
    backend cannot express unless ``drop_unsupported``."""
    if not isinstance(doc, dict):
        bad_request("The request body must be a JSON object.", "body")
    drop = drop_unsupported
    messages: list[dict[str, Any]] = []
    system = doc.get("system")
    if system is not None:
        if isinstance(system, str):
            messages.append({"role": "system", "content": system})
        else:
            messages.append({"role": "system",
                             "content": _text_parts(system, "system", drop)})
    messages.extend(_messages(doc.get("messages"), drop))
    out: dict[str, Any] = {"model": deployment, "messages": messages}
    max_tokens = default_max_tokens
    for key, value in doc.items():
        if value is None or key in _SILENT or key == "system":
            continue
        if key == "max_tokens":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                bad_request("'max_tokens' must be a non-negative integer.", key)
            max_tokens = value
        elif key in ("temperature", "top_p"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                bad_request(f"'{key}' must be a number.", key)
            out[key] = value
        elif key == "stop_sequences":
            stops = json_list(value, "'stop_sequences'", key)
            if not all(isinstance(s, str) for s in stops):
                bad_request("'stop_sequences' must be an array of strings.", key)
            if stops:
                out["stop"] = stops
        elif key == "metadata":
            user = json_object(value, "'metadata'", key).get("user_id")
            if user is not None:
                out["user"] = json_str(user, "'metadata.user_id'", "metadata.user_id")
        elif key == "tools":
            tools = _tools(value, drop)
            if tools:
                out["tools"] = tools
        elif key == "tool_choice":
            _tool_choice(value, out, drop)
        elif _is_noop(key, value):
            continue
        else:
            unsupported(key, BACKEND, drop, _HINTS.get(key, "unknown parameter"))
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return orjson.dumps(out)


def _is_noop(key: str, value: object) -> bool:
    """Values of parameters the backend lacks that ask for nothing."""
    if key == "thinking":
        return isinstance(value, dict) and value.get("type") == "disabled"
    return key == "service_tier" and value == "auto"


def _text_parts(value: object, param: str, drop: bool) -> list[dict[str, Any]]:
    """Text blocks (``system``, tool results) as OpenAI text parts."""
    out: list[dict[str, Any]] = []
    for j, b in enumerate(json_list(value, param, param)):
        p = f"{param}[{j}]"
        block = json_object(b, p, p)
        if block.get("type") == "text":
            out.append({"type": "text", "text": json_str(block.get("text"), f"{p}.text",
                                                          f"{p}.text")})
        else:
            unsupported(f"{p}.type", BACKEND, drop,
                        f"only text blocks are allowed here, got {block.get('type')!r}")
    return out


def _messages(value: object, drop: bool) -> list[dict[str, Any]]:
    msgs = json_list(value, "'messages'", "messages")
    if not msgs:
        bad_request("'messages' must hold at least one message.", "messages")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(msgs):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            bad_request(f"{param} must be an object with a 'role'.", param)
        role = m.get("role")
        content = m.get("content")
        if role not in ("user", "assistant"):
            if role is None:
                bad_request(f"{param} has no 'role'.", f"{param}.role")
            bad_request(f"{param}.role must be 'user' or 'assistant', got {role!r} (a system "
                        "prompt goes in the top-level 'system').", f"{param}.role")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            bad_request(f"{param}.content must be a string or an array of content blocks.",
                        f"{param}.content")
        blocks = content
        if role == "user":
            _user_turn(blocks, param, out, drop)
        else:
            _assistant_turn(blocks, param, out, drop)
    return out


def _image_url(block: dict[str, Any], param: str, drop: bool) -> dict[str, Any] | None:
    source = json_object(block.get("source"), f"{param}.source", f"{param}.source")
    st = source.get("type")
    if st == "base64":
        media = json_str(source.get("media_type"), f"{param}.source.media_type",
                         f"{param}.source.media_type")
        data = json_str(source.get("data"), f"{param}.source.data", f"{param}.source.data")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if st == "url":
        url = json_str(source.get("url"), f"{param}.source.url", f"{param}.source.url")
        return {"type": "image_url", "image_url": {"url": url}}
    unsupported(f"{param}.source.type", BACKEND, drop,
                f"image sources of type {st!r}; base64 and url are supported")
    return None


def _user_turn(blocks: list[Any], param: str, out: list[dict[str, Any]], drop: bool) -> None:
    parts: list[dict[str, Any]] = []
    for j, b in enumerate(blocks):
        p = f"{param}.content[{j}]"
        block = json_object(b, p, p)
        t = block.get("type")
        if t == "text":
            parts.append({"type": "text", "text": json_str(block.get("text"), f"{p}.text",
                                                            f"{p}.text")})
        elif t == "image":
            part = _image_url(block, p, drop)
            if part is not None:
                parts.append(part)
        elif t == "tool_result":
            out.append(_tool_message(block, p, drop))
        elif t in ("thinking", "redacted_thinking"):
            continue
        else:
            unsupported(f"{p}.type", BACKEND, drop,
                        f"content blocks of type {t!r}; text, image and tool_result are "
                        "supported in a user turn")
    if parts:
        out.append({"role": "user", "content": parts})


def _tool_message(block: dict[str, Any], p: str, drop: bool) -> dict[str, Any]:
    tool_id = json_str(block.get("tool_use_id"), f"{p}.tool_use_id", f"{p}.tool_use_id")
    value = block.get("content")
    content: str | list[dict[str, Any]]
    if value is None:
        content = ""
    elif isinstance(value, str):
        content = value
    else:
        content = _text_parts(value, f"{p}.content", drop)
    if block.get("is_error") is True:
        if isinstance(content, str):
            content = "Error: " + content
        else:
            content = [{"type": "text", "text": "Error: "}, *content]
    return {"role": "tool", "tool_call_id": tool_id, "content": content}


def _assistant_turn(blocks: list[Any], param: str, out: list[dict[str, Any]],
                    drop: bool) -> None:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, b in enumerate(blocks):
        p = f"{param}.content[{j}]"
        block = json_object(b, p, p)
        t = block.get("type")
        if t == "text":
            texts.append(json_str(block.get("text"), f"{p}.text", f"{p}.text"))
        elif t == "tool_use":
            calls.append({"id": json_str(block.get("id"), f"{p}.id", f"{p}.id"),
                          "type": "function",
                          "function": {"name": json_str(block.get("name"), f"{p}.name",
                                                        f"{p}.name"),
                                       "arguments": orjson.dumps(block.get("input", {}))
                                       .decode()}})
        elif t in ("thinking", "redacted_thinking"):
            continue  # OpenAI chat cannot take reasoning back
        else:
            unsupported(f"{p}.type", BACKEND, drop,
                        f"content blocks of type {t!r}; text and tool_use are supported in "
                        "an assistant turn")
    if not texts and not calls:
        return
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    out.append(msg)


_TOOL_KEYS_SILENT = frozenset({"cache_control"})


def _tools(value: object, drop: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for j, t in enumerate(json_list(value, "'tools'", "tools")):
        p = f"tools[{j}]"
        tool = json_object(t, p, p)
        tt = tool.get("type")
        if tt not in (None, "custom"):
            unsupported(f"{p}.type", BACKEND, drop,
                        f"server tools ({tt!r}) run at Anthropic only")
            continue
        fn: dict[str, Any] = {"name": json_str(tool.get("name"), f"{p}.name", f"{p}.name")}
        for key, v in tool.items():
            if v is None or key in ("type", "name") or key in _TOOL_KEYS_SILENT:
                continue
            if key == "description":
                fn["description"] = json_str(v, f"{p}.description", f"{p}.description")
            elif key == "input_schema":
                fn["parameters"] = json_object(v, f"{p}.input_schema", f"{p}.input_schema")
            elif key == "strict":
                fn["strict"] = v
            else:
                unsupported(f"{p}.{key}", BACKEND, drop, "unknown tool field")
        if "parameters" not in fn:
            bad_request(f"{p}.input_schema is required (a JSON schema object).",
                        f"{p}.input_schema")
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(value: object, out: dict[str, Any], drop: bool) -> None:
    choice = json_object(value, "'tool_choice'", "tool_choice")
    t = choice.get("type")
    if t == "auto":
        out["tool_choice"] = "auto"
    elif t == "any":
        out["tool_choice"] = "required"
    elif t == "none":
        out["tool_choice"] = "none"
    elif t == "tool":
        name = json_str(choice.get("name"), "tool_choice.name", "tool_choice.name")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        bad_request("tool_choice.type must be one of auto, any, tool, none.", "tool_choice.type")
    if choice.get("disable_parallel_tool_use") is True and t != "none":
        out["parallel_tool_calls"] = False


# ---------------------------------------------------------------- response


def _not_chat(what: str) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"the OpenAI-compatible upstream's answer is not a chat "
                                 f"completion ({what})", sent=True)


def _tool_input(arguments: object) -> dict[str, Any]:
    """Parsed tool-call arguments; ``{}`` when they are not a JSON object."""
    if isinstance(arguments, str) and arguments:
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return {}
        if isinstance(parsed, dict):
            return parsed
    return {}


def _message_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers answer with text parts
        return "".join(p["text"] for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def translate_response(body: bytes) -> tuple[bytes, Usage]:
    """The Anthropic ``message`` for an OpenAI ``chat.completion``, and its usage. Raises
    :class:`~fastgw.errors.UpstreamProtocolError` (``sent=True``) when ``body`` is not a
    chat completion."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _not_chat("not JSON") from None
    if not isinstance(doc, dict):
        raise _not_chat("not an object")
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _not_chat("no choices")
    choice = choices[0]
    msg = choice.get("message")
    if not isinstance(msg, dict):
        raise _not_chat("no message")
    blocks: list[dict[str, Any]] = []
    reasoning = msg.get("reasoning_content")
    if not isinstance(reasoning, str):
        reasoning = msg.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _message_text(msg.get("content"))
    if not text and isinstance(msg.get("refusal"), str):
        text = msg["refusal"]
    if text:
        blocks.append({"type": "text", "text": text})
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        for c in calls:
            if not isinstance(c, dict):
                continue
            fn = c.get("function")
            fn = fn if isinstance(fn, dict) else {}
            blocks.append({"type": "tool_use", "id": c.get("id"), "name": fn.get("name"),
                           "input": _tool_input(fn.get("arguments"))})
    raw_usage = doc.get("usage")
    usage = usage_from_openai(raw_usage if isinstance(raw_usage, dict) else {})
    out = {
        "id": doc.get("id"),
        "type": "message",
        "role": "assistant",
        "model": doc.get("model"),
        "content": blocks,
        "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": anthropic_usage_fields(usage),
    }
    return orjson.dumps(out), usage


def translate_error(status: int, body: bytes) -> bytes:
    """Anthropic's error body for an OpenAI error answer (``status``, ``body``), its type
    from the status; a body that is not OpenAI's envelope becomes the message."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    return anthropic_error_from_openai(doc, status, body)


# ---------------------------------------------------------------- stream

_BLOCK_STOP = (b'event: content_block_stop\ndata: {"type":"content_block_stop","index":',
               b"}\n\n")
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_NONE, _TEXT, _THINKING, _TOOL = 0, 1, 2, 3


def _delta_prefix(index: int, kind: bytes, field: bytes) -> bytes:
    return (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
            + str(index).encode() + b',"delta":{"type":"' + kind + b'","' + field + b'":')


def _block_start(index: int, block: bytes) -> bytes:
    return (b'event: content_block_start\ndata: {"type":"content_block_start","index":'
            + str(index).encode() + b',"content_block":' + block + b"}\n\n")


class MessagesFromChatStream(StreamTranslator):
    """OpenAI chat-completion chunks in, Anthropic Messages SSE out.

    The first chunk -> ``message_start`` (empty content, zero usage: OpenAI tells
    the usage at the end). Content opens a block only with its first delta
    (``content_block_start`` and the delta go out together): text -> a ``text``
    block, ``reasoning_content`` (or ``reasoning``) -> a ``thinking`` block, a tool
    call's first delta -> a ``tool_use`` block (``input: {}``) and its argument
    pieces -> ``input_json_delta``. A block is closed (``content_block_stop``)
    when another kind of content starts or the finish reason arrives. The finish
    reason and the usage chunk are remembered; ``[DONE]`` (or, without it, a
    clean end: :meth:`finish`) -> ``message_delta`` (stop reason, usage) and
    ``message_stop``. An error event, or a chunk carrying ``error``, -> an
    Anthropic ``event: error``. Only choice 0 is read; ``refusal`` deltas count
    as text; argument pieces for a tool call whose block was closed (servers
    that interleave parallel calls) go to that block's index all the same. A
    chunk that is not JSON, or not of a chunk's shape, is skipped.
    """

    __slots__ = ("_delta", "_finish", "_kind", "_next", "_open", "_raw_usage", "_started",
                 "_tool_blocks")

    def __init__(self, *, include_usage: bool, created: int,
                 max_event_size: int = DEFAULT_MAX_EVENT) -> None:
        super().__init__(include_usage=include_usage, created=created,
                         max_event_size=max_event_size)
        self._started = False  # message_start sent
        self._open = -1  # the open block's index, -1 when none is open
        self._kind = _NONE  # what the open block holds
        self._delta = b""  # the open text/thinking block's delta prefix
        self._next = 0  # the next block's index
        self._tool_blocks: dict[int, tuple[int, bytes]] = {}  # call index -> (block, prefix)
        self._finish: object = None
        self._raw_usage: dict[str, Any] | None = None

    @property
    def usage(self) -> Usage | None:
        """The usage read from the usage chunk, once it came."""
        raw = self._raw_usage
        return None if raw is None else usage_from_openai(raw)

    def _start(self, obj: dict[str, Any], out: list[bytes]) -> None:
        self._started = True
        msg_id, model = obj.get("id"), obj.get("model")
        message: dict[str, Any] = {"id": msg_id if isinstance(msg_id, str) else "",
                                   "type": "message", "role": "assistant",
                                   "model": model if isinstance(model, str) else "",
                                   "content": [], "stop_reason": None, "stop_sequence": None,
                                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        out.append(b"event: message_start\ndata: "
                   + orjson.dumps({"type": "message_start", "message": message}) + b"\n\n")

    def _close(self, out: list[bytes]) -> None:
        if self._open >= 0:
            out.append(_BLOCK_STOP[0] + str(self._open).encode() + _BLOCK_STOP[1])
            self._open = -1
            self._kind = _NONE

    def _open_block(self, kind: int, out: list[bytes]) -> None:
        self._close(out)
        index = self._next
        self._next = index + 1
        self._open = index
        self._kind = kind
        if kind == _TEXT:
            out.append(_block_start(index, b'{"type":"text","text":""}'))
            self._delta = _delta_prefix(index, b"text_delta", b"text")
        else:
            out.append(_block_start(index, b'{"type":"thinking","thinking":"","signature":""}'))
            self._delta = _delta_prefix(index, b"thinking_delta", b"thinking")

    def _event(self, event: bytes, data: bytes, out: list[bytes]) -> int:
        if data == b"[DONE]":
            if not self._started:
                self._start({}, out)
            self._end(out)
            return _DONE
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return 0  # not JSON: skipped
        if type(obj) is not dict:
            return 0
        choices = obj.get("choices")
        if not choices or event == b"error":  # a usage chunk, an error, or neither
            if (event == b"error" or obj.get("error") is not None
                    or obj.get("object") == "error"):
                self._error = True
                out.append(b"event: error\ndata: "
                           + anthropic_error_from_openai(obj, None, data) + b"\n\n")
                return _ERROR
            flags = 0
        else:
            if not self._started:
                self._start(obj, out)
            try:
                choice = choices[0]
                delta = choice["delta"]
                text = delta.get("content")
                # The hot path: {"content": "..."} in the open text block.
                if (len(delta) == 1 and self._kind == _TEXT and type(text) is str and text
                        and choice.get("finish_reason") is None and choice.get("index", 0) == 0):
                    out.append(self._delta + orjson.dumps(text) + b"}}\n\n")
                    flags = CONTENT
                elif choice.get("index", 0) == 0:
                    flags = self._delta_event(delta, out)
                    finish = choice.get("finish_reason")
                    if finish is not None:
                        self._finish = finish
                        self._close(out)
                else:
                    flags = 0
            except (KeyError, TypeError, AttributeError, IndexError):
                return 0  # not a chunk's shape: the rest of it is skipped
        if not self._started:
            self._start(obj, out)
        u = obj.get("usage")
        if u and type(u) is dict:
            self._raw_usage = u
            flags |= _USAGE
        return flags

    def _delta_event(self, delta: dict[str, Any], out: list[bytes]) -> int:
        flags = 0
        text = delta.get("content")
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning and type(reasoning) is str:
            if self._kind != _THINKING:
                self._open_block(_THINKING, out)
            out.append(self._delta + orjson.dumps(reasoning) + b"}}\n\n")
            flags = CONTENT
        if not text:
            text = delta.get("refusal")
        if text and type(text) is str:
            if self._kind != _TEXT:
                self._open_block(_TEXT, out)
            out.append(self._delta + orjson.dumps(text) + b"}}\n\n")
            flags = CONTENT
        calls = delta.get("tool_calls")
        if calls:
            for call in calls:
                flags |= self._tool_delta(call, out)
        return flags

    def _tool_delta(self, call: dict[str, Any], out: list[bytes]) -> int:
        k = call.get("index", 0)
        fn = call.get("function") or {}
        known = self._tool_blocks.get(k)
        flags = 0
        if known is None:
            self._close(out)
            index = self._next
            self._next = index + 1
            self._open = index
            self._kind = _TOOL
            tool_id = call.get("id") or f"call_{k}"
            block: dict[str, Any] = {"type": "tool_use", "id": tool_id,
                                     "name": fn.get("name") or "", "input": {}}
            out.append(_block_start(index, orjson.dumps(block)))
            known = self._tool_blocks[k] = (index, _delta_prefix(index, b"input_json_delta",
                                                                 b"partial_json"))
            flags = CONTENT
        args = fn.get("arguments")
        if args and type(args) is str:
            out.append(known[1] + orjson.dumps(args) + b"}}\n\n")
            flags = CONTENT
        return flags

    def _end(self, out: list[bytes]) -> None:
        self._done = True
        self._close(out)
        raw = self._raw_usage
        fields: dict[str, int] = (anthropic_usage_fields(usage_from_openai(raw))
                                  if raw is not None else {"output_tokens": 0})
        usage = {"output_tokens": fields.pop("output_tokens"), **fields}
        delta = {"type": "message_delta",
                 "delta": {"stop_reason": stop_reason(self._finish), "stop_sequence": None},
                 "usage": usage}
        out.append(b"event: message_delta\ndata: " + orjson.dumps(delta) + b"\n\n")
        out.append(_MESSAGE_STOP)

    def _owed(self, out: list[bytes]) -> None:
        """Without ``[DONE]``: the open block's ``content_block_stop``, ``message_delta``
        and ``message_stop``; nothing when the stream never started."""
        if self._started:
            self._end(out)
