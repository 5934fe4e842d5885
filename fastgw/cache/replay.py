"""A cached answer in both forms: whole (a JSON body) and streamed (SSE).

An entry holds the whole answer; a streamed and an unstreamed request share it.

- :func:`to_stream` turns a whole answer into the stream its endpoint's client
  would have received: OpenAI ``chat`` and ``completions`` chunks ending with
  ``data: [DONE]`` (the usage chunk only when the client asked for it), or
  Anthropic's ``messages`` events, framed with ``event:`` lines as Anthropic
  frames them. Text goes out in pieces cut after whitespace (a few dozen
  characters each: a client's UI still sees it flow), tool-call arguments in
  slices.
- :class:`StreamRecorder` does the reverse: fed the SSE bytes a client
  received, cut anywhere, it builds the equivalent whole answer (what the SDKs'
  stream accumulators build), or None when the stream did not end well (no
  ``[DONE]`` / ``message_stop``, an error event, a chunk that is not JSON, a
  choice without a finish reason) or grew past its bound.
- :func:`with_id` gives a hit its own ``id``.

Embeddings and ``responses`` answers have no stream form here. Fields a stream
cannot carry (chat ``audio``, ``annotations``) are not replayed; a choice's
logprobs ride whole on one of its chunks.

Endpoints are named as in ``fastgw.providers.registry``: ``chat``,
``completions``, ``embeddings``, ``responses``, ``messages``.
"""

from __future__ import annotations

import re
from random import getrandbits as _bits
from typing import Any, Final

import orjson

from fastgw.types import Usage

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "MAX_RECORD_BYTES",
    "MESSAGES",
    "STREAM_ENDPOINTS",
    "ReplayError",
    "StreamRecorder",
    "fresh_id",
    "to_stream",
    "with_id",
]

CHAT: Final = "chat"
COMPLETIONS: Final = "completions"
MESSAGES: Final = "messages"
STREAM_ENDPOINTS: Final = frozenset({CHAT, COMPLETIONS, MESSAGES})
"""The endpoints whose answers :func:`to_stream` and :class:`StreamRecorder` handle."""

MAX_RECORD_BYTES: Final = 8 << 20
"""What a :class:`StreamRecorder` holds at most (the answer so far and an unfinished
event) before it gives up."""

DONE: Final = b"data: [DONE]\n\n"
_PIECE: Final = 48  # characters per replayed text piece, at least (cut after whitespace)
_MAX_PIECES: Final = 512  # longer texts get longer pieces
_ARG_PIECE: Final = 64  # characters per tool-argument slice, at least
_SPACE: Final = re.compile(r"\s+")
_REASONING: Final = ("reasoning_content", "reasoning")  # DeepSeek / vLLM, and OpenRouter
_ID_PREFIX: Final = {CHAT: "chatcmpl-", COMPLETIONS: "cmpl-", MESSAGES: "msg_",
                     "responses": "resp_"}


class ReplayError(ValueError):
    """A whole answer that is not of its endpoint's shape (cannot be streamed)."""


# ---------------------------------------------------------------- ids


def fresh_id(endpoint: str) -> str:
    """A new answer id in the endpoint's style (``chatcmpl-…``, ``cmpl-…``, ``msg_…``,
    ``resp_…``): 24 random hex digits after the prefix. Unique, not secret: drawn from
    the process's PRNG (``random``, reseeded in a forked worker), not from the system's
    (``os.urandom`` is a ``getrandom`` system call per id: more than the rest of a
    hit's work)."""
    return f"{_ID_PREFIX.get(endpoint, '')}{_bits(96):024x}"


# The top-level object's first key is "id" (OpenAI, Anthropic and this module all write
# it first) and its string has no escape: the id can be replaced in place.
_LEADING_ID: Final = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"([^"\\]*)"')


def with_id(endpoint: str, body: bytes, new_id: str) -> bytes:
    """``body`` with its top-level ``id`` replaced by ``new_id``, nothing else changed:
    a splice of the bytes when the id is the first key and needs no unescaping, else a
    re-encode. A body without an ``id`` (embeddings) or not JSON comes back as it is."""
    m = _LEADING_ID.match(body)
    if m is not None:
        return body[:m.start(1) - 1] + orjson.dumps(new_id) + body[m.end(1) + 1:]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if type(doc) is not dict or "id" not in doc:
        return body
    doc["id"] = new_id  # an existing key keeps its place
    return orjson.dumps(doc)


# ---------------------------------------------------------------- whole -> stream


def to_stream(endpoint: str, body: bytes, *, include_usage: bool) -> bytes:
    """The SSE stream a client of ``endpoint`` would have received for the whole answer
    ``body``. ``include_usage`` (OpenAI's ``stream_options.include_usage``) adds the
    usage chunk; Anthropic streams always carry usage. :class:`ReplayError` when
    ``endpoint`` has no stream form or ``body`` is not of its shape."""
    if endpoint not in STREAM_ENDPOINTS:
        raise ReplayError(f"answers of {endpoint!r} have no stream form")
    try:
        doc = orjson.loads(body)
        if type(doc) is not dict:
            raise ReplayError(f"a {endpoint} answer is a JSON object")
        if endpoint == CHAT:
            return _chat_stream(doc, include_usage)
        if endpoint == COMPLETIONS:
            return _completion_stream(doc, include_usage)
        return _message_stream(doc)
    except ReplayError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReplayError(f"not a whole {endpoint} answer: {exc!r}") from None


def _pieces(text: str) -> list[str]:
    """``text`` in pieces of about ``_PIECE`` characters, each cut after a run of
    whitespace when one comes soon enough; joined they are ``text``."""
    n = len(text)
    size = max(_PIECE, n // _MAX_PIECES)
    if n <= size:
        return [text] if text else []
    out = []
    start = 0
    while start < n:
        end = start + size
        if end >= n:
            out.append(text[start:])
            break
        m = _SPACE.search(text, end, min(n, end + 2 * size))
        cut = m.end() if m is not None else end
        out.append(text[start:cut])
        start = cut
    return out


def _slices(text: str) -> list[str]:
    """``text`` in slices of ``_ARG_PIECE`` characters (or more, for long texts)."""
    size = max(_ARG_PIECE, len(text) // _MAX_PIECES)
    return [text[i:i + size] for i in range(0, len(text), size)]


def _choices(doc: dict[str, Any]) -> list[dict[str, Any]]:
    choices = doc["choices"]
    if type(choices) is not list or any(type(c) is not dict for c in choices):
        raise ReplayError("'choices' is a list of objects")
    return sorted(choices, key=lambda c: c.get("index", 0))


def _openai_head(doc: dict[str, Any], obj: str, extra: tuple[str, ...]) -> dict[str, Any]:
    head = {"id": doc["id"], "object": obj, "created": doc["created"], "model": doc["model"]}
    for k in extra:
        v = doc.get(k)
        if v is not None:
            head[k] = v
    return head


def _chat_stream(doc: dict[str, Any], include_usage: bool) -> bytes:
    head = _openai_head(doc, "chat.completion.chunk", ("service_tier", "system_fingerprint"))
    out: list[bytes] = []

    def chunk(choice: dict[str, Any]) -> None:
        obj = head.copy()
        obj["choices"] = [choice]
        if include_usage:
            obj["usage"] = None  # as OpenAI writes every chunk but the usage chunk
        out.append(b"data: " + orjson.dumps(obj) + b"\n\n")

    for ch in _choices(doc):
        i = ch.get("index", 0)
        msg = ch["message"]
        content = msg.get("content")
        if content is not None and type(content) is not str:
            raise ReplayError("a chat message's content is a string or null")

        # The choice's logprobs ride whole on its first chunk after the role chunk (where
        # OpenAI sends them: a new choice's first chunk carrying them is counted twice by
        # the OpenAI SDK's accumulator), the finish chunk when there is no other.
        logprobs = ch.get("logprobs")

        def delta(d: dict[str, Any], i: object = i) -> None:
            nonlocal logprobs
            chunk({"index": i, "delta": d, "logprobs": logprobs, "finish_reason": None})
            logprobs = None

        chunk({"index": i, "delta": {"role": msg.get("role") or "assistant",
                                     "content": "" if content is not None else None},
               "logprobs": None, "finish_reason": None})
        for key in _REASONING:
            text = msg.get(key)
            if type(text) is str:
                for p in _pieces(text) or [""]:  # "" too: the recorder tells "" from null
                    delta({key: p})
        if content:
            for p in _pieces(content):
                delta({"content": p})
        refusal = msg.get("refusal")
        if type(refusal) is str:
            for p in _pieces(refusal) or [""]:
                delta({"refusal": p})
        fc = msg.get("function_call")
        if type(fc) is dict:  # the legacy single function call
            delta({"function_call": {"name": fc.get("name") or "", "arguments": ""}})
            for p in _slices(fc.get("arguments") or ""):
                delta({"function_call": {"arguments": p}})
        calls = msg.get("tool_calls") or ()
        for k, call in enumerate(calls):
            fn = call.get("function")
            if type(fn) is dict:
                delta({"tool_calls": [{"index": k, "id": call.get("id"),
                                       "type": call.get("type") or "function",
                                       "function": {"name": fn.get("name") or "",
                                                    "arguments": ""}}]})
                for p in _slices(fn.get("arguments") or ""):
                    delta({"tool_calls": [{"index": k, "function": {"arguments": p}}]})
            else:  # another kind of call: whole, in one delta
                delta({"tool_calls": [{"index": k, **call}]})
        chunk({"index": i, "delta": {}, "logprobs": logprobs,
               "finish_reason": ch.get("finish_reason")})
    usage = doc.get("usage")
    if include_usage and type(usage) is dict:
        obj = head.copy()
        obj["choices"] = []
        obj["usage"] = usage
        out.append(b"data: " + orjson.dumps(obj) + b"\n\n")
    out.append(DONE)
    return b"".join(out)


def _completion_stream(doc: dict[str, Any], include_usage: bool) -> bytes:
    head = _openai_head(doc, "text_completion", ("system_fingerprint",))
    out: list[bytes] = []

    def chunk(choice: dict[str, Any]) -> None:
        obj = head.copy()
        obj["choices"] = [choice]
        if include_usage:
            obj["usage"] = None
        out.append(b"data: " + orjson.dumps(obj) + b"\n\n")

    for ch in _choices(doc):
        i = ch.get("index", 0)
        text = ch["text"]
        if type(text) is not str:
            raise ReplayError("a completion choice's text is a string")
        logprobs = ch.get("logprobs")  # whole, on the choice's first chunk
        for p in _pieces(text):
            chunk({"text": p, "index": i, "logprobs": logprobs, "finish_reason": None})
            logprobs = None
        chunk({"text": "", "index": i, "logprobs": logprobs,
               "finish_reason": ch.get("finish_reason")})
    usage = doc.get("usage")
    if include_usage and type(usage) is dict:
        obj = head.copy()
        obj["choices"] = []
        obj["usage"] = usage
        out.append(b"data: " + orjson.dumps(obj) + b"\n\n")
    out.append(DONE)
    return b"".join(out)


_TOOL_BLOCKS: Final = frozenset({"tool_use", "server_tool_use"})  # input as input_json_delta
# message_delta's usage: the counts that are final only at the end (Anthropic's order).
_DELTA_USAGE: Final = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                       "output_tokens", "server_tool_use", "output_tokens_details")
_DELTA_FIELDS: Final = ("stop_details", "container")  # message_delta fields besides the stop


def _event(out: list[bytes], name: bytes, obj: dict[str, Any]) -> None:
    out.append(b"event: " + name + b"\ndata: " + orjson.dumps(obj) + b"\n\n")


def _message_stream(doc: dict[str, Any]) -> bytes:
    content = doc["content"]
    if type(content) is not list or any(type(b) is not dict for b in content):
        raise ReplayError("a message's content is a list of objects")
    usage = doc.get("usage")
    usage = usage if type(usage) is dict else {}
    out: list[bytes] = []
    # message_start: the message without its content and stop, the output count not yet
    # known (message_delta carries the final counts).
    start = dict(doc)
    start["content"] = []
    start["stop_reason"] = None
    start["stop_sequence"] = None
    if "stop_details" in start:
        start["stop_details"] = None
    start["usage"] = {**usage, "output_tokens": 0}
    _event(out, b"message_start", {"type": "message_start", "message": start})
    for index, block in enumerate(content):
        _block_events(out, index, block)
    delta: dict[str, Any] = {"stop_reason": doc.get("stop_reason"),
                             "stop_sequence": doc.get("stop_sequence")}
    for k in _DELTA_FIELDS:
        if doc.get(k) is not None:
            delta[k] = doc[k]
    final = {k: usage[k] for k in _DELTA_USAGE if k in usage}
    final.setdefault("output_tokens", 0)
    _event(out, b"message_delta", {"type": "message_delta", "delta": delta, "usage": final})
    _event(out, b"message_stop", {"type": "message_stop"})
    return b"".join(out)


def _block_events(out: list[bytes], index: int, block: dict[str, Any]) -> None:
    kind = block["type"]
    deltas: list[dict[str, Any]] = []
    if kind == "text":
        text = block["text"]
        if type(text) is not str:
            raise ReplayError("a text block's text is a string")
        start = {**block, "text": ""}
        deltas += ({"type": "text_delta", "text": p} for p in _pieces(text))
        citations = block.get("citations")
        if citations:  # after the text, one delta each (the accumulators append them)
            start["citations"] = []
            deltas += ({"type": "citations_delta", "citation": c} for c in citations)
    elif kind == "thinking":
        thinking = block["thinking"]
        if type(thinking) is not str:
            raise ReplayError("a thinking block's thinking is a string")
        start = {**block, "thinking": "", "signature": ""}
        deltas += ({"type": "thinking_delta", "thinking": p} for p in _pieces(thinking))
        signature = block.get("signature")
        if signature:
            deltas.append({"type": "signature_delta", "signature": signature})
    elif kind in _TOOL_BLOCKS:
        start = {**block, "input": {}}
        args = block.get("input")
        if args:  # an empty input has no delta: the start's {} stands
            deltas += ({"type": "input_json_delta", "partial_json": p}
                       for p in _slices(orjson.dumps(args).decode()))
    else:  # redacted_thinking, tool results...: whole in the start, no delta
        start = block
    _event(out, b"content_block_start",
           {"type": "content_block_start", "index": index, "content_block": start})
    for d in deltas:
        _event(out, b"content_block_delta",
               {"type": "content_block_delta", "index": index, "delta": d})
    _event(out, b"content_block_stop", {"type": "content_block_stop", "index": index})


# ---------------------------------------------------------------- stream -> whole

_OPEN, _DONE, _FAILED = 0, 1, 2  # a recorder's states


class StreamRecorder:
    """Builds the whole answer of a stream from the bytes its client received.

    ``feed`` takes the bytes as relayed, cut anywhere; ``result`` gives the whole
    answer (an OpenAI ``chat.completion`` or ``text_completion``, an Anthropic
    ``message``) once the stream has ended well, else None. Events are read as
    they complete: what is held is the answer so far and at most one unfinished
    event, together bounded by ``max_bytes`` (past it the recorder gives up and
    forgets everything). After the end, or after giving up, ``feed`` does nothing.
    """

    __slots__ = ("_acc", "_after_cr", "_buf", "_max", "_scan", "_state", "endpoint")

    def __init__(self, endpoint: str, *, max_bytes: int = MAX_RECORD_BYTES) -> None:
        if endpoint not in STREAM_ENDPOINTS:
            raise ValueError(f"answers of {endpoint!r} have no stream form")
        self.endpoint = endpoint
        self._acc: _Accumulator = (_ChatAnswer() if endpoint == CHAT else
                                   _CompletionAnswer() if endpoint == COMPLETIONS else
                                   _MessageAnswer())
        self._max = max_bytes
        self._buf = bytearray()  # the unfinished event, line ends made "\n"
        self._scan = 0  # where in _buf a boundary can start (it was searched up to here)
        self._after_cr = False  # the last feed ended in "\r": a leading "\n" is its pair
        self._state = _OPEN

    @property
    def done(self) -> bool:
        """The stream ended well (the end marker was read)."""
        return self._state == _DONE

    @property
    def failed(self) -> bool:
        """The stream cannot give a whole answer (error, bad JSON, over the bound)."""
        return self._state == _FAILED

    def feed(self, data: bytes) -> None:
        if self._state != _OPEN or not data:
            return
        if self._after_cr:
            self._after_cr = False
            if data[:1] == b"\n":
                data = data[1:]
        if 13 in data:  # b"\r": normalise CRLF and CR line ends to LF
            self._after_cr = data[-1] == 13
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf
        buf += data
        end = buf.rfind(b"\n\n", max(self._scan - 1, 0))
        if end < 0:
            self._scan = len(buf)
            if len(buf) + self._acc.held > self._max:
                self._fail()
            return
        blocks = bytes(buf[:end])
        del buf[:end + 2]
        self._scan = len(buf)  # what is left holds no boundary
        for block in blocks.split(b"\n\n"):
            ev = _parse_event(block)
            if ev is None:
                continue
            try:
                state = self._acc.event(ev[0], ev[1])
            except (ValueError, KeyError, TypeError, AttributeError, IndexError):
                state = _FAILED  # not JSON, or not of the shape its type promises
            if state != _OPEN:
                self._state = state
                self._buf = bytearray()
                if state == _FAILED:
                    self._acc = _NOTHING
                return
        if len(buf) + self._acc.held > self._max:
            self._fail()

    def _fail(self) -> None:
        self._state = _FAILED
        self._buf = bytearray()
        self._acc = _NOTHING

    def result(self, usage: Usage | None = None) -> bytes | None:
        """The whole answer, or None when the stream has not ended well. ``usage``
        (:data:`fastgw.types.Usage`, as the relay's scanner read it) stands in for an
        OpenAI usage chunk the client did not receive (dropped when it did not ask for
        usage); a usage chunk in the stream wins."""
        if self._state != _DONE:
            return None
        try:
            doc = self._acc.whole(usage)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            return None
        return None if doc is None else orjson.dumps(doc)


def _parse_event(block: bytes) -> tuple[bytes, bytes] | None:
    """``(event type or b"", data)`` of one event block; None without a data field."""
    if block[:6] == b"data: " and 10 not in block:  # the usual one-line event
        return b"", block[6:]
    event = b""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[:1] == b":":
            continue  # a leading blank line, or a comment
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
    if not data:
        return None
    return event, data[0] if len(data) == 1 else b"\n".join(data)


class _Accumulator:
    """One endpoint's answer being built from its events."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = 0  # characters kept so far (the memory bound's measure)

    def event(self, event: bytes, data: bytes) -> int:
        """Take one event; the recorder's next state."""
        return _FAILED

    def whole(self, usage: Usage | None) -> dict[str, Any] | None:
        return None


_NOTHING: Final = _Accumulator()  # what a recorder that gave up holds


def _openai_usage(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object for a :data:`Usage` (as ``providers.translate_helpers``
    writes it)."""
    prompt = usage.get("prompt_tokens", 0)
    completion = usage.get("completion_tokens", 0)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": usage.get("total_tokens", prompt + completion)}
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


class _OpenAIAnswer(_Accumulator):
    """What OpenAI chat and completions streams share: the head fields of the first
    chunk, the usage chunk, ``[DONE]``, error chunks."""

    __slots__ = ("choices", "head", "usage")
    _HEAD_FIELDS: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.head: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.choices: dict[int, Any] = {}

    def event(self, event: bytes, data: bytes) -> int:
        if data == b"[DONE]":
            return _DONE
        obj = orjson.loads(data)
        if type(obj) is not dict or event == b"error" or obj.get("error") is not None:
            return _FAILED
        head = self.head
        if head is None:
            head = self.head = {"id": obj["id"], "created": obj["created"],
                                "model": obj["model"]}
        for k in self._HEAD_FIELDS:  # the first value seen (some come only later)
            if head.get(k) is None and obj.get(k) is not None:
                head[k] = obj[k]
        usage = obj.get("usage")
        if type(usage) is dict:
            self.usage = usage
        for choice in obj.get("choices") or ():
            self.choice(choice, data)
        return _OPEN

    def choice(self, choice: dict[str, Any], data: bytes) -> None:
        raise NotImplementedError

    def finished(self) -> bool:
        return bool(self.choices) and all(c.finish is not None for c in self.choices.values())

    def tail(self, doc: dict[str, Any], usage: Usage | None) -> dict[str, Any]:
        if self.usage is not None:
            doc["usage"] = self.usage
        elif usage is not None:
            doc["usage"] = _openai_usage(usage)
        assert self.head is not None
        for k in self._HEAD_FIELDS:
            if self.head.get(k) is not None:
                doc[k] = self.head[k]
        return doc


def _merge_logprobs(held: dict[str, Any] | None, new: object) -> dict[str, Any] | None:
    """Logprobs of one more chunk appended to those held (every list field extended)."""
    if type(new) is not dict:
        return held
    if held is None:
        return {k: (list(v) if type(v) is list else v) for k, v in new.items()}
    for k, v in new.items():
        if type(v) is list:
            have = held.get(k)
            if type(have) is list:
                have.extend(v)
            else:
                held[k] = list(v)
        elif k not in held or held[k] is None:
            held[k] = v
    return held


class _ChatChoice:
    __slots__ = ("content", "finish", "function", "logprobs", "reasoning", "refusal", "role",
                 "tools")

    def __init__(self) -> None:
        self.role: str | None = None
        self.content: list[str] | None = None  # None: no content string seen
        self.refusal: list[str] | None = None
        self.reasoning: dict[str, list[str]] = {}
        self.tools: dict[int, _ToolCall] = {}
        self.function: _ToolCall | None = None  # the legacy function_call
        self.logprobs: dict[str, Any] | None = None
        self.finish: str | None = None


class _ToolCall:
    __slots__ = ("args", "id", "name", "type")

    def __init__(self) -> None:
        self.id: str | None = None
        self.type: str | None = None
        self.name = ""
        self.args: list[str] = []

    def take(self, call: dict[str, Any]) -> int:
        """Fold one delta in (id, type, name: the first given; arguments appended);
        the characters kept."""
        if not self.id and call.get("id"):
            self.id = call["id"]
        if not self.type and call.get("type"):
            self.type = call["type"]
        fn = call.get("function")
        if type(fn) is not dict:  # a function_call delta holds its fields itself
            fn = call
        if not self.name and fn.get("name"):
            self.name = fn["name"]
        args = fn.get("arguments")
        if type(args) is str and args:
            self.args.append(args)
            return len(args)
        return 0


class _ChatAnswer(_OpenAIAnswer):
    """OpenAI chat-completion chunks -> a ``chat.completion`` (as the OpenAI SDK's
    ``ChatCompletionStreamState`` builds it)."""

    __slots__ = ()
    _HEAD_FIELDS = ("service_tier", "system_fingerprint")

    def choice(self, choice: dict[str, Any], data: bytes) -> None:
        idx = choice.get("index", 0)
        st = self.choices.get(idx)
        if st is None:
            st = self.choices[idx] = _ChatChoice()
        delta = choice.get("delta") or {}
        held = 0
        role = delta.get("role")
        if role and st.role is None:
            st.role = role
        content = delta.get("content")
        if type(content) is str:
            if st.content is None:
                st.content = []
            if content:
                st.content.append(content)
                held += len(content)
        refusal = delta.get("refusal")
        if type(refusal) is str:
            if st.refusal is None:
                st.refusal = []
            st.refusal.append(refusal)
            held += len(refusal)
        for key in _REASONING:
            text = delta.get(key)
            if type(text) is str:
                st.reasoning.setdefault(key, []).append(text)
                held += len(text)
        for n, call in enumerate(delta.get("tool_calls") or ()):
            k = call.get("index", n)
            tool = st.tools.get(k)
            if tool is None:
                tool = st.tools[k] = _ToolCall()
            held += tool.take(call)
        fc = delta.get("function_call")
        if type(fc) is dict:
            if st.function is None:
                st.function = _ToolCall()
            held += st.function.take(fc)
        logprobs = choice.get("logprobs")
        if logprobs is not None:
            st.logprobs = _merge_logprobs(st.logprobs, logprobs)
            held += len(data)
        finish = choice.get("finish_reason")
        if finish is not None:
            st.finish = finish
        self.held += held

    def whole(self, usage: Usage | None) -> dict[str, Any] | None:
        if not self.finished():
            return None
        assert self.head is not None
        choices = []
        for idx in sorted(self.choices):
            st = self.choices[idx]
            msg: dict[str, Any] = {
                "role": st.role or "assistant",
                "content": None if st.content is None else "".join(st.content),
                "refusal": None if st.refusal is None else "".join(st.refusal)}
            for key, parts in st.reasoning.items():
                msg[key] = "".join(parts)
            if st.function is not None:
                msg["function_call"] = {"name": st.function.name,
                                        "arguments": "".join(st.function.args)}
            if st.tools:
                msg["tool_calls"] = [
                    {"id": t.id or "", "type": t.type or "function",
                     "function": {"name": t.name, "arguments": "".join(t.args)}}
                    for _, t in sorted(st.tools.items())]
            choices.append({"index": idx, "message": msg, "logprobs": st.logprobs,
                            "finish_reason": st.finish})
        doc = {"id": self.head["id"], "object": "chat.completion",
               "created": self.head["created"], "model": self.head["model"],
               "choices": choices}
        return self.tail(doc, usage)


class _TextChoice:
    __slots__ = ("finish", "logprobs", "text")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.logprobs: dict[str, Any] | None = None
        self.finish: str | None = None


class _CompletionAnswer(_OpenAIAnswer):
    """OpenAI (legacy) completion chunks -> a ``text_completion``."""

    __slots__ = ()
    _HEAD_FIELDS = ("system_fingerprint",)

    def choice(self, choice: dict[str, Any], data: bytes) -> None:
        idx = choice.get("index", 0)
        st = self.choices.get(idx)
        if st is None:
            st = self.choices[idx] = _TextChoice()
        text = choice.get("text")
        if type(text) is str and text:
            st.text.append(text)
            self.held += len(text)
        logprobs = choice.get("logprobs")
        if logprobs is not None:
            st.logprobs = _merge_logprobs(st.logprobs, logprobs)
            self.held += len(data)
        finish = choice.get("finish_reason")
        if finish is not None:
            st.finish = finish

    def whole(self, usage: Usage | None) -> dict[str, Any] | None:
        if not self.finished():
            return None
        assert self.head is not None
        choices = [{"text": "".join(st.text), "index": idx, "logprobs": st.logprobs,
                    "finish_reason": st.finish}
                   for idx, st in sorted(self.choices.items())]
        doc = {"id": self.head["id"], "object": "text_completion",
               "created": self.head["created"], "model": self.head["model"],
               "choices": choices}
        return self.tail(doc, usage)


class _Block:
    """One content block being streamed: its start, and the pieces of the field its
    deltas extend (text, thinking, or the tool input's JSON)."""

    __slots__ = ("block", "closed", "parts")

    def __init__(self, block: dict[str, Any]) -> None:
        self.block = block
        self.parts: list[str] = []
        self.closed = False

    def close(self) -> None:
        block = self.block
        kind = block.get("type")
        if kind in _TOOL_BLOCKS:
            if self.parts:  # as the SDK: the deltas' JSON replaces the start's input
                block["input"] = orjson.loads("".join(self.parts))
        elif self.parts:
            field = "thinking" if kind == "thinking" else "text"
            block[field] = (block.get(field) or "") + "".join(self.parts)
        self.parts = []
        self.closed = True


class _MessageAnswer(_Accumulator):
    """Anthropic Messages events -> a ``message`` (as the Anthropic SDK's
    ``accumulate_event`` builds it): ``message_start`` gives the message, each block
    is built from its start and deltas, ``message_delta`` sets the stop and the final
    usage (counts it carries replace those of ``message_start``)."""

    __slots__ = ("blocks", "message", "stopped")

    def __init__(self) -> None:
        super().__init__()
        self.message: dict[str, Any] | None = None
        self.blocks: dict[int, _Block] = {}
        self.stopped = False  # message_delta seen

    def event(self, event: bytes, data: bytes) -> int:
        obj = orjson.loads(data)
        if type(obj) is not dict:
            return _FAILED
        t = obj.get("type")
        if t == "error" or event == b"error":
            return _FAILED
        if t == "content_block_delta":
            blk = self.blocks[obj["index"]]
            if blk.closed:
                return _FAILED
            delta = obj["delta"]
            dt = delta["type"]
            if dt == "text_delta":
                piece = delta["text"]
            elif dt == "input_json_delta":
                piece = delta["partial_json"]
            elif dt == "thinking_delta":
                piece = delta["thinking"]
            elif dt == "signature_delta":
                blk.block["signature"] = delta["signature"]
                return _OPEN
            elif dt == "citations_delta":
                cites = blk.block.get("citations")
                if type(cites) is not list:
                    cites = blk.block["citations"] = []
                cites.append(delta["citation"])
                self.held += len(data)
                return _OPEN
            else:
                return _OPEN  # a delta kind not known here: nothing to keep
            if type(piece) is not str:
                return _FAILED
            blk.parts.append(piece)
            self.held += len(piece)
            return _OPEN
        if t == "content_block_start":
            index = obj["index"]
            block = obj["content_block"]
            if type(block) is not dict or type(index) is not int or index in self.blocks:
                return _FAILED
            self.blocks[index] = _Block(dict(block))
            self.held += len(data)
            return _OPEN
        if t == "content_block_stop":
            self.blocks[obj["index"]].close()
            return _OPEN
        if t == "message_start":
            message = obj["message"]
            if type(message) is not dict or self.message is not None:
                return _FAILED
            self.message = dict(message)
            usage = message.get("usage")
            self.message["usage"] = dict(usage) if type(usage) is dict else {}
            self.held += len(data)
            return _OPEN
        if t == "message_delta":
            msg = self.message
            if msg is None:
                return _FAILED
            delta = obj.get("delta") or {}
            msg["stop_reason"] = delta.get("stop_reason")
            msg["stop_sequence"] = delta.get("stop_sequence")
            for k in _DELTA_FIELDS:
                if delta.get(k) is not None:
                    msg[k] = delta[k]
            usage = obj.get("usage")
            if type(usage) is dict:
                for k, v in usage.items():
                    if v is not None:  # absent or null: the start's count stands
                        msg["usage"][k] = v
            self.stopped = True
            return _OPEN
        if t == "message_stop":
            return _DONE if self.message is not None else _FAILED
        return _OPEN  # ping, and events not known here

    def whole(self, usage: Usage | None) -> dict[str, Any] | None:
        msg = self.message
        if (msg is None or not self.stopped or msg.get("stop_reason") is None
                or any(not b.closed for b in self.blocks.values())):
            return None
        if sorted(self.blocks) != list(range(len(self.blocks))):
            return None  # a block index missing
        msg["content"] = [self.blocks[i].block for i in range(len(self.blocks))]
        return msg
