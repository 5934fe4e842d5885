"""An OpenAI chat client served by an Anthropic Messages backend.

Four pure translations (no I/O), one per direction and kind of body:

- :func:`translate_request`: ``/v1/chat/completions`` request document ->
  ``/v1/messages`` JSON body;
- :func:`translate_response`: a Messages answer -> a ``chat.completion``;
- :class:`ChatFromMessagesStream`: Anthropic SSE in, OpenAI chat SSE out, event
  by event (a drop-in for the native ``SseScanner`` in the relay). This class is
  the pure-Python reference of ``fastgw._native.ChatFromMessagesStream``, which
  gives the same bytes and flags for any input cut anywhere and is what the
  registry plans (``tests/native/test_native_translate.py`` holds them equal);
- :func:`translate_error`: Anthropic's error body -> OpenAI's envelope.

Normalisations and choices (all deliberate, all tested):

- ``system`` and ``developer`` messages, wherever they stand, become the
  top-level ``system``: their strings joined with a blank line, or, when any of
  them gave content parts, a list of text blocks (one per string or part).
- Consecutive messages of the same role are merged into one turn (Anthropic
  needs alternation); a merged turn's string contents become text blocks. In a
  user turn the ``tool_result`` blocks go first, in order (Anthropic requires
  them before any other content).
- An assistant message's empty text is dropped when it has tool calls; an
  assistant message with neither content nor tool calls is dropped.
- ``image_url`` parts: a ``data:<media>;base64,<data>`` URL becomes a base64
  source, an http(s) URL a URL source; ``detail`` is dropped. A ``refusal`` part
  in an assistant message becomes a text block.
- Tool call arguments must parse to a JSON object (an empty string counts as
  ``{}``); the function's ``strict`` flag is dropped.
- ``parallel_tool_calls: false`` sets ``disable_parallel_tool_use`` on the tool
  choice (``{"type": "auto"}`` when the client gave none but gave tools).
- ``max_completion_tokens`` wins over ``max_tokens``; absent both, the model's
  ``default_max_tokens``, else 4096. ``temperature`` is passed as it is (Anthropic
  takes 0..1 and answers 400 above).
- ``user`` (or else ``safety_identifier``) -> ``metadata.user_id``.
- Dropped silently: ``n: 1``, ``stream_options``, the gateway's ``fastgw`` key,
  ``metadata`` (OpenAI's stored-completion tags; the gateway reads it for its
  own rules), ``prompt_cache_key`` (a hint), ``store: false``,
  ``service_tier: auto|default``, ``modalities: ["text"]``,
  ``response_format: {"type": "text"}``, no-op values (``logprobs: false``,
  zero penalties, ``top_logprobs: 0``, an empty ``logit_bias``) and any ``null``
  value; ``name``, ``audio`` and ``refusal`` on messages.
- Everything else Anthropic cannot express (``n`` > 1, ``logprobs``,
  penalties, ``seed``, ``response_format`` other than text, ``audio``,
  ``reasoning_effort``, legacy ``functions``, unknown keys, content parts other
  than text and images...) is a 400 naming the parameter
  (``code: unsupported_parameter``), or dropped with ``drop_unsupported``.

Answers: text blocks joined into ``content`` (null when only tool calls),
``tool_use`` -> ``tool_calls`` (ids kept, arguments the compact JSON of the
input), thinking blocks -> ``reasoning_content`` (the vLLM/DeepSeek field);
``redacted_thinking`` and server-tool blocks (``server_tool_use``,
``web_search_tool_result``...) are left out: they ran at Anthropic and have no
OpenAI form.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from fastgw._native import SseScanner
from fastgw.errors import UpstreamProtocolError
from fastgw.providers.sse_events import (
    CONTENT,
    DEFAULT_MAX_EVENT,
    DONE_EVENT,
    StreamTranslator,
)
from fastgw.providers.translate_helpers import (
    Usage,
    bad_request,
    finish_reason,
    json_list,
    json_object,
    json_str,
    openai_error_from_anthropic,
    openai_usage,
    unsupported,
    usage_from_anthropic,
)

__all__ = [
    "ChatFromMessagesStream",
    "translate_error",
    "translate_request",
    "translate_response",
]

BACKEND = "Anthropic (Messages API)"
DEFAULT_MAX_TOKENS = 4096

_DONE = SseScanner.DONE
_ERROR = SseScanner.ERROR
_USAGE = SseScanner.USAGE

# ---------------------------------------------------------------- request

_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}

# Keys consumed silently whatever their value (beyond the ones handled below).
_SILENT = frozenset({"model", "messages", "stream", "stream_options", "fastgw", "metadata",
                     "prompt_cache_key"})

# Keys Anthropic cannot express, with the value that means "not used" (accepted), and
# what to tell the client.
_NOOP: dict[str, tuple[tuple[object, ...], str]] = {
    "n": ((1,), "Anthropic returns one choice; send n requests"),
    "logprobs": ((False,), "Anthropic does not return log probabilities"),
    "top_logprobs": ((0,), "Anthropic does not return log probabilities"),
    "logit_bias": (({},), "Anthropic has no logit bias"),
    "presence_penalty": ((0, 0.0), "Anthropic has no presence penalty"),
    "frequency_penalty": ((0, 0.0), "Anthropic has no frequency penalty"),
    "store": ((False,), "Anthropic does not store completions"),
    "service_tier": (("auto", "default"), "Anthropic's service tiers differ"),
    "modalities": ((["text"],), "Anthropic answers with text only"),
    "response_format": (({"type": "text"},),
                        "ask for JSON in the prompt, or use a tool for structured output"),
    "seed": ((), "Anthropic has no seed"),
    "audio": ((), "Anthropic answers with text only"),
    "prediction": ((), "Anthropic has no predicted outputs"),
    "reasoning_effort": ((), "Anthropic's thinking is configured differently"),
    "verbosity": ((), "Anthropic has no verbosity setting"),
    "web_search_options": ((), "use Anthropic's web search tool through a Messages client"),
    "functions": ((), "use 'tools'"),
    "function_call": ((), "use 'tool_choice'"),
}


def translate_request(doc: dict[str, Any], *, deployment: str, stream: bool,
                      default_max_tokens: int | None, drop_unsupported: bool) -> bytes:
    """The Anthropic ``/v1/messages`` body for an OpenAI chat request document, with
    ``model`` = ``deployment``. Raises :class:`~fastgw.errors.BadRequest` (400 with the
    parameter's path) for a request of the wrong shape, and for a parameter Anthropic
    cannot express unless ``drop_unsupported``."""
    if not isinstance(doc, dict):
        bad_request("The request body must be a JSON object.", "body")
    drop = drop_unsupported
    system, turns = _messages(doc.get("messages"), drop)
    out: dict[str, Any] = {"model": deployment}
    if system:
        out["system"] = system
    out["messages"] = turns
    max_tokens: dict[str, int] = {}
    stop: list[str] | None = None
    user: str | None = None
    safety: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    parallel = True
    sampling: dict[str, Any] = {}
    for key, value in doc.items():
        if value is None or key in _SILENT:
            continue  # null is "not given" in OpenAI's API
        if key in ("temperature", "top_p", "top_k"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                bad_request(f"'{key}' must be a number.", key)
            sampling[key] = value
        elif key in ("max_tokens", "max_completion_tokens"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                bad_request(f"'{key}' must be a non-negative integer.", key)
            max_tokens[key] = value
        elif key == "stop":
            stop = _stop(value)
        elif key == "user":
            user = json_str(value, "'user'", "user")
        elif key == "safety_identifier":
            safety = json_str(value, "'safety_identifier'", "safety_identifier")
        elif key == "tools":
            tools = _tools(value, drop)
        elif key == "tool_choice":
            tool_choice = _tool_choice(value, drop)
        elif key == "parallel_tool_calls":
            if not isinstance(value, bool):
                bad_request("'parallel_tool_calls' must be true or false.", key)
            parallel = value
        elif key in _NOOP:
            noop, hint = _NOOP[key]
            if not _is_noop(value, noop):
                unsupported(key, BACKEND, drop, hint)
        else:
            unsupported(key, BACKEND, drop, "unknown parameter")
    out["max_tokens"] = max_tokens.get("max_completion_tokens", max_tokens.get(
        "max_tokens", default_max_tokens if default_max_tokens is not None
        else DEFAULT_MAX_TOKENS))
    if stop:
        out["stop_sequences"] = stop
    out.update(sampling)
    if user is not None or safety is not None:
        out["metadata"] = {"user_id": user if user is not None else safety}
    if tools:
        out["tools"] = tools
    if not parallel:
        if tool_choice is None and tools:
            tool_choice = {"type": "auto"}
        if tool_choice is not None and tool_choice["type"] != "none":
            tool_choice["disable_parallel_tool_use"] = True
    if tool_choice is not None:
        out["tool_choice"] = tool_choice
    if stream:
        out["stream"] = True
    return orjson.dumps(out)


def _is_noop(value: object, noop: tuple[object, ...]) -> bool:
    """``value`` is one of the values that mean "not used" (``False`` is not ``0``)."""
    return any((type(value) is bool) == (type(v) is bool) and value == v for v in noop)


def _stop(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    bad_request("'stop' must be a string or an array of strings.", "stop")


def _messages(value: object, drop: bool) -> tuple[str | list[dict[str, Any]], list[Any]]:
    msgs = json_list(value, "'messages'", "messages")
    if not msgs:
        bad_request("'messages' must hold at least one message.", "messages")
    system_texts: list[str] = []
    system_blocks: list[dict[str, Any]] = []
    system_parts = False
    turns: list[list[Any]] = []  # [role, content], content a string or a list of blocks
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            bad_request(f"messages[{i}] must be an object with a 'role'.", f"messages[{i}]")
        role = m.get("role")
        if role == "user":
            content: Any = _user_content(m.get("content"), i, drop)
        elif role == "assistant":
            content = _assistant_content(m, i, drop)
            if content is None:
                continue  # nothing to say: neither text nor tool calls
        elif role == "tool":
            content = [_tool_result(m, i, drop)]
            role = "user"
        elif role in ("system", "developer"):
            c = m.get("content")
            if isinstance(c, str):
                system_texts.append(c)
                system_blocks.append({"type": "text", "text": c})
            else:
                system_parts = True
                system_blocks.extend(_text_blocks(c, f"messages[{i}].content", drop))
            continue
        elif role == "function":
            unsupported(f"messages[{i}].role", BACKEND, drop,
                        "legacy 'function' messages: use 'tool' messages")
            continue
        elif role is None:
            bad_request(f"messages[{i}] has no 'role'.", f"messages[{i}].role")
        else:
            bad_request(f"messages[{i}].role must be one of system, developer, user, "
                        f"assistant, tool; got {role!r}.", f"messages[{i}].role")
        if turns and turns[-1][0] == role:
            prev = turns[-1]
            if isinstance(prev[1], str):
                prev[1] = [{"type": "text", "text": prev[1]}]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            prev[1].extend(content)
        else:
            turns.append([role, content])
    out: list[dict[str, Any]] = []
    for role, content in turns:
        if role == "user" and isinstance(content, list):
            content = _tool_results_first(content)
        out.append({"role": role, "content": content})
    system: str | list[dict[str, Any]] = (
        system_blocks if system_parts else "\n\n".join(system_texts))
    return system, out


def _tool_results_first(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen_other = False
    for b in blocks:
        if b.get("type") == "tool_result":
            if seen_other:
                break
        else:
            seen_other = True
    else:
        return blocks  # already in order (the usual case)
    results = [b for b in blocks if b.get("type") == "tool_result"]
    return results + [b for b in blocks if b.get("type") != "tool_result"]


def _text_blocks(value: object, param: str, drop: bool) -> list[dict[str, Any]]:
    """Content parts that may only be text (system, tool results)."""
    parts = json_list(value, f"{param}", param) if not isinstance(value, str) else None
    if parts is None:
        return [{"type": "text", "text": value}]
    out: list[dict[str, Any]] = []
    for j, p in enumerate(parts):
        if not isinstance(p, dict):
            bad_request(f"{param}[{j}] must be a content part object.", f"{param}[{j}]")
        if p.get("type") == "text":
            out.append({"type": "text", "text": json_str(p.get("text"), f"{param}[{j}].text",
                                                          f"{param}[{j}].text")})
        else:
            unsupported(f"{param}[{j}].type", BACKEND, drop,
                        f"only text parts are allowed here, got {p.get('type')!r}")
    return out


def _user_content(value: object, i: int, drop: bool) -> str | list[dict[str, Any]]:
    if isinstance(value, str):
        return value
    param = f"messages[{i}].content"
    if value is None:
        bad_request(f"{param} is required for a user message.", param)
    parts = json_list(value, param, param)
    out: list[dict[str, Any]] = []
    for j, p in enumerate(parts):
        pp = f"{param}[{j}]"
        if not isinstance(p, dict):
            bad_request(f"{pp} must be a content part object.", pp)
        t = p.get("type")
        if t == "text":
            out.append({"type": "text", "text": json_str(p.get("text"), f"{pp}.text",
                                                          f"{pp}.text")})
        elif t == "image_url":
            out.append(_image(p.get("image_url"), f"{pp}.image_url"))
        else:
            unsupported(f"{pp}.type", BACKEND, drop,
                        f"content parts of type {t!r}; text and image_url are supported")
    return out


def _image(value: object, param: str) -> dict[str, Any]:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        bad_request(f"{param}.url must be a string (an http(s) or data: URL).", f"{param}.url")
    if url.startswith("data:"):
        head, comma, data = url.partition(",")
        media, _, enc = head[5:].partition(";")
        if not comma or enc != "base64" or not media:
            bad_request(f"{param}.url: a data URL must look like "
                        "'data:<media type>;base64,<data>'.", f"{param}.url")
        return {"type": "image", "source": {"type": "base64", "media_type": media,
                                            "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    bad_request(f"{param}.url must be an http(s) URL or a base64 data: URL.", f"{param}.url")


def _assistant_content(m: dict[str, Any], i: int,
                       drop: bool) -> str | list[dict[str, Any]] | None:
    param = f"messages[{i}]"
    value = m.get("content")
    calls = m.get("tool_calls")
    if m.get("function_call") is not None:
        unsupported(f"{param}.function_call", BACKEND, drop, "legacy function calls: "
                    "use 'tool_calls'")
    if not calls:
        if value is None:
            return None
        if isinstance(value, str):
            return value
    blocks: list[dict[str, Any]] = []
    if isinstance(value, str):
        if value:
            blocks.append({"type": "text", "text": value})
    elif value is not None:
        for j, p in enumerate(json_list(value, f"{param}.content", f"{param}.content")):
            pp = f"{param}.content[{j}]"
            if not isinstance(p, dict):
                bad_request(f"{pp} must be a content part object.", pp)
            t = p.get("type")
            if t in ("text", "refusal"):
                text = json_str(p.get(t), f"{pp}.{t}", f"{pp}.{t}")
                if text or not calls:
                    blocks.append({"type": "text", "text": text})
            else:
                unsupported(f"{pp}.type", BACKEND, drop,
                            f"assistant content parts of type {t!r}")
    if calls:
        for j, c in enumerate(json_list(calls, f"{param}.tool_calls", f"{param}.tool_calls")):
            blocks.append(_tool_use(c, f"{param}.tool_calls[{j}]", drop))
    return blocks


def _tool_use(c: object, param: str, drop: bool) -> dict[str, Any]:
    call = json_object(c, param, param)
    if call.get("type", "function") != "function":
        unsupported(f"{param}.type", BACKEND, False, "only function tool calls")
    fn = json_object(call.get("function"), f"{param}.function", f"{param}.function")
    args = fn.get("arguments")
    if args is None or args == "":
        parsed: object = {}
    else:
        try:
            parsed = orjson.loads(json_str(args, f"{param}.function.arguments",
                                           f"{param}.function.arguments"))
        except orjson.JSONDecodeError:
            parsed = None
    if not isinstance(parsed, dict):
        bad_request(f"{param}.function.arguments must be a JSON object (as a string): "
                    "Anthropic needs the tool input as an object.",
                    f"{param}.function.arguments")
    return {"type": "tool_use",
            "id": json_str(call.get("id"), f"{param}.id", f"{param}.id"),
            "name": json_str(fn.get("name"), f"{param}.function.name",
                             f"{param}.function.name"),
            "input": parsed}


def _tool_result(m: dict[str, Any], i: int, drop: bool) -> dict[str, Any]:
    param = f"messages[{i}]"
    tool_id = m.get("tool_call_id")
    if not isinstance(tool_id, str):
        bad_request(f"{param}.tool_call_id is required for a tool message (the id of the "
                    "tool call it answers).", f"{param}.tool_call_id")
    value = m.get("content")
    content: str | list[dict[str, Any]]
    if isinstance(value, str):
        content = value
    elif value is None:
        content = ""
    else:
        content = _text_blocks(value, f"{param}.content", drop)
    return {"type": "tool_result", "tool_use_id": tool_id, "content": content}


def _tools(value: object, drop: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for j, t in enumerate(json_list(value, "'tools'", "tools")):
        param = f"tools[{j}]"
        tool = json_object(t, param, param)
        if tool.get("type", "function") != "function":
            unsupported(f"{param}.type", BACKEND, drop,
                        f"tools of type {tool.get('type')!r}; only function tools")
            continue
        fn = json_object(tool.get("function"), f"{param}.function", f"{param}.function")
        spec: dict[str, Any] = {"name": json_str(fn.get("name"), f"{param}.function.name",
                                                 f"{param}.function.name")}
        desc = fn.get("description")
        if desc is not None:
            spec["description"] = json_str(desc, f"{param}.function.description",
                                           f"{param}.function.description")
        params = fn.get("parameters")
        spec["input_schema"] = _EMPTY_SCHEMA if params is None else json_object(
            params, f"{param}.function.parameters", f"{param}.function.parameters")
        out.append(spec)
    return out


def _tool_choice(value: object, drop: bool) -> dict[str, Any] | None:
    if value == "auto":
        return {"type": "auto"}
    if value == "none":
        return {"type": "none"}
    if value == "required":
        return {"type": "any"}
    if isinstance(value, dict):
        if value.get("type") == "function":
            fn = json_object(value.get("function"), "tool_choice.function",
                             "tool_choice.function")
            return {"type": "tool", "name": json_str(fn.get("name"), "tool_choice.function.name",
                                                     "tool_choice.function.name")}
        unsupported("tool_choice.type", BACKEND, drop,
                    f"tool_choice of type {value.get('type')!r}")
        return None
    bad_request("'tool_choice' must be 'auto', 'none', 'required' or "
                '{"type": "function", "function": {"name": ...}}.', "tool_choice")


# ---------------------------------------------------------------- response


def _not_messages(what: str) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"the Anthropic upstream's answer is not a Messages "
                                 f"answer ({what})", sent=True)


def translate_response(body: bytes) -> tuple[bytes, Usage]:
    """The OpenAI ``chat.completion`` for an Anthropic Messages answer, and its usage.
    Raises :class:`~fastgw.errors.UpstreamProtocolError` (``sent=True``) when ``body``
    is not a Messages answer."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _not_messages("not JSON") from None
    if not isinstance(doc, dict) or doc.get("type", "message") != "message":
        raise _not_messages("no message object")
    content = doc.get("content")
    if not isinstance(content, list):
        raise _not_messages("no content list")
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        t = block.get("type")
        if t == "text":
            text = block.get("text")
            if isinstance(text, str):
                texts.append(text)
        elif t == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"),
                                       "arguments": orjson.dumps(block.get("input", {}))
                                       .decode()}})
        elif t == "thinking":
            th = block.get("thinking")
            if isinstance(th, str):
                thinking.append(th)
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    reasoning = "".join(thinking)
    if reasoning:
        message["reasoning_content"] = reasoning
    raw_usage = doc.get("usage")
    usage = usage_from_anthropic(raw_usage if isinstance(raw_usage, dict) else {})
    out = {
        "id": doc.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": doc.get("model"),
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(doc.get("stop_reason"))}],
        "usage": openai_usage(usage),
    }
    return orjson.dumps(out), usage


def translate_error(status: int, body: bytes) -> bytes:
    """OpenAI's error envelope for an Anthropic error answer (``status``, ``body``); a
    body that is not Anthropic's error becomes the message."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    return openai_error_from_anthropic(doc, status, body)


# ---------------------------------------------------------------- stream


class ChatFromMessagesStream(StreamTranslator):
    """Anthropic Messages SSE in, OpenAI chat-completion chunks out.

    ``message_start`` -> the role chunk; text, thinking and tool-input deltas ->
    ``content``, ``reasoning_content`` and ``tool_calls`` chunks (tool calls
    numbered 0, 1... in the order their blocks start); ``message_delta`` -> the
    finish chunk; ``message_stop`` -> the usage chunk (only with
    ``include_usage``) and ``data: [DONE]``; an ``error`` event -> an OpenAI
    ``event: error`` with the envelope. ``ping``, ``content_block_stop``,
    ``signature_delta``, blocks other than text/thinking/tool_use and unknown
    events give nothing; an event that is not JSON, or not of the shape its type
    promises, is skipped. The commit point is the first text, reasoning or tool
    call, or the finish chunk (an empty answer is an answer). Every chunk is built
    from byte templates made at ``message_start``: one ``orjson.dumps`` of the
    varying string per event; a text delta written as Anthropic writes it (compact
    JSON) has its string checked with ``orjson.loads`` and copied as it came.
    """

    __slots__ = ("_finish_sent", "_head", "_prefix", "_raw_usage", "_started", "_tail",
                 "_text_prefix", "_tool_index", "_tools")

    def __init__(self, *, include_usage: bool, created: int,
                 max_event_size: int = DEFAULT_MAX_EVENT) -> None:
        super().__init__(include_usage=include_usage, created=created,
                         max_event_size=max_event_size)
        self._tools = 0  # tool-use blocks started so far
        self._tool_index: dict[int, int] = {}  # content block index -> tool call index
        self._raw_usage: dict[str, Any] | None = None  # Anthropic's fields, merged
        self._text_prefix = b"\0"  # the open text block's compact delta prefix (see _event)
        self._started = False  # message_start seen
        self._finish_sent = False  # message_delta seen
        self._set_templates(None, None)

    def _set_templates(self, msg_id: object, model: object) -> None:
        self._prefix = (b'data: {"id":' + orjson.dumps(msg_id)
                        + b',"object":"chat.completion.chunk","created":'
                        + str(self._created).encode() + b',"model":' + orjson.dumps(model))
        self._head = self._prefix + b',"choices":[{"index":0,"delta":{'
        self._tail = b'},"finish_reason":null}]}\n\n'

    @property
    def usage(self) -> Usage | None:
        """The usage read so far (``message_start`` and ``message_delta`` merged)."""
        raw = self._raw_usage
        return None if raw is None else usage_from_anthropic(raw)

    def _merge_usage(self, u: object) -> int:
        if not isinstance(u, dict):
            return 0
        raw = self._raw_usage
        if raw is None:
            self._raw_usage = {k: v for k, v in u.items() if v is not None}
        else:
            for k, v in u.items():
                if v is not None:  # message_delta omits (or nulls) what did not change
                    raw[k] = v
        return _USAGE

    def _event(self, event: bytes, data: bytes, out: list[bytes]) -> int:
        # The hot path: a text delta of the open text block, written as Anthropic writes
        # it. Its JSON string is copied as it came (after checking it is one string).
        prefix = self._text_prefix
        if data.startswith(prefix) and data.endswith(b"}}"):
            literal = data[len(prefix):-2]
            try:
                text = orjson.loads(literal)
            except orjson.JSONDecodeError:
                text = None
            if type(text) is str:
                if not text:
                    return 0
                out.append(self._head + b'"content":' + literal + self._tail)
                return CONTENT
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return 0  # not JSON: skipped
        if type(obj) is not dict:
            return 0
        t = obj.get("type")
        try:
            if t == "content_block_delta":
                delta = obj["delta"]
                dt = delta["type"]
                if dt == "text_delta":
                    text = delta["text"]
                    if type(text) is str and text:
                        out.append(self._head + b'"content":' + orjson.dumps(text) + self._tail)
                        return CONTENT
                elif dt == "input_json_delta":
                    part = delta["partial_json"]
                    k = self._tool_index.get(obj["index"])
                    if k is not None and type(part) is str and part:
                        out.append(self._head + b'"tool_calls":[{"index":' + str(k).encode()
                                   + b',"function":{"arguments":' + orjson.dumps(part)
                                   + b"}}]" + self._tail)
                        return CONTENT
                elif dt == "thinking_delta":
                    text = delta["thinking"]
                    if type(text) is str and text:
                        out.append(self._head + b'"reasoning_content":' + orjson.dumps(text)
                                   + self._tail)
                        return CONTENT
                return 0
            if t == "content_block_start":
                return self._block_start(obj["index"], obj["content_block"], out)
            if t == "message_start":
                msg = obj["message"]
                self._set_templates(msg.get("id"), msg.get("model"))
                self._started = True
                out.append(self._head + b'"role":"assistant","content":""' + self._tail)
                return self._merge_usage(msg.get("usage"))
            if t == "message_delta":
                reason = finish_reason(obj["delta"].get("stop_reason")).encode()
                self._finish_sent = True
                out.append(self._head + b'},"finish_reason":"' + reason + b'"}]}\n\n')
                return CONTENT | self._merge_usage(obj.get("usage"))
            if t == "message_stop":
                self._done = True
                if self._include_usage and self._raw_usage is not None:
                    out.append(self._usage_chunk())
                out.append(DONE_EVENT)
                return _DONE
            if t == "error" or event == b"error":
                self._error = True
                out.append(b"event: error\ndata: " + openai_error_from_anthropic(obj, None, data)
                           + b"\n\n")
                return _ERROR
        except (KeyError, TypeError, AttributeError):
            return 0  # not the shape its type promises: skipped
        return 0  # ping, content_block_stop, unknown events

    def _block_start(self, index: object, block: Any, out: list[bytes]) -> int:
        bt = block["type"]
        if bt == "tool_use":
            k = self._tools
            self._tools = k + 1
            if isinstance(index, int):
                self._tool_index[index] = k
            args = block.get("input")
            arguments = orjson.dumps(orjson.dumps(args).decode()) if args else b'""'
            out.append(self._head + b'"tool_calls":[{"index":' + str(k).encode() + b',"id":'
                       + orjson.dumps(block["id"]) + b',"type":"function","function":{"name":'
                       + orjson.dumps(block["name"]) + b',"arguments":' + arguments + b"}}]"
                       + self._tail)
            return CONTENT
        if bt == "text":
            if isinstance(index, int):
                self._text_prefix = (b'{"type":"content_block_delta","index":'
                                     + str(index).encode()
                                     + b',"delta":{"type":"text_delta","text":')
            text = block.get("text")
            if type(text) is str and text:
                out.append(self._head + b'"content":' + orjson.dumps(text) + self._tail)
                return CONTENT
        elif bt == "thinking":
            text = block.get("thinking")
            if type(text) is str and text:
                out.append(self._head + b'"reasoning_content":' + orjson.dumps(text)
                           + self._tail)
                return CONTENT
        return 0

    def _usage_chunk(self) -> bytes:
        usage = usage_from_anthropic(self._raw_usage or {})
        return (self._prefix + b',"choices":[],"usage":' + orjson.dumps(openai_usage(usage))
                + b"}\n\n")

    def _owed(self, out: list[bytes]) -> None:
        """Without ``message_stop``: the finish chunk if none was sent (``stop``), the
        usage chunk when asked, ``[DONE]``; nothing when the stream never started."""
        if not self._started:
            return
        self._done = True
        if not self._finish_sent:
            out.append(self._head + b'},"finish_reason":"stop"}]}\n\n')
        if self._include_usage and self._raw_usage is not None:
            out.append(self._usage_chunk())
        out.append(DONE_EVENT)
