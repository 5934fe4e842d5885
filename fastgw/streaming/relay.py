"""Relay of one upstream SSE stream to one client, chunk by chunk.

Two modes:

* **holding** (before the commit point): complete events are kept back and
  looked at, until one carries content (a text or tool-call delta, a finish
  reason, ``[DONE]``). That is the commit point: ``on_commit()`` sends the
  response head and returns the sink, the held events go out in one write, and
  the relay switches to passing. An in-band error event before it calls
  ``on_error`` instead, so the caller can fail over with nothing sent.
* **passing**: complete events go to the client as they arrive, unmodified and
  undecoded. Only when the gateway itself asked for the usage chunk (the
  client did not) is that one event cut out. Usage is recorded either way.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson

from fastgw.errors import GatewayError
from fastgw.streaming.sse import error_event
from fastgw.types import StreamSink, usage_numbers

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
MAX_HELD = 256 * 1024  # past this much held back, commit anyway

HOLD = 0
COMMIT = 1
ERROR = 2


class StreamRelay:
    __slots__ = ("_drop_usage", "_held", "_held_size", "_on_commit", "_on_error", "_pending",
                 "_sink", "done", "error_payload", "usage")

    def __init__(self, *, drop_usage: bool, on_commit: Callable[[], StreamSink],
                 on_error: Callable[[], None]) -> None:
        self._drop_usage = drop_usage
        self._on_commit = on_commit
        self._on_error = on_error
        self._sink: StreamSink | None = None  # None while holding
        self._pending = b""
        self._held: list[bytes] = []
        self._held_size = 0
        self.usage: tuple[int, int] | None = None
        self.done = False
        self.error_payload: bytes | None = None

    @property
    def committed(self) -> bool:
        return self._sink is not None

    def feed(self, chunk: bytes) -> None:
        if self.error_payload is not None:
            return  # failed before the commit point: the rest is of no use
        data = self._pending + chunk if self._pending else chunk
        end = _last_boundary(data)
        if end < 0:
            self._pending = data
            return
        if end < len(data):
            complete, self._pending = data[:end], data[end:]
        else:
            complete, self._pending = data, b""
        if self._sink is None:
            complete = self._hold(complete)
            if self._sink is None:
                return
        if _USAGE_OBJECT.search(complete) is not None:
            complete = self._take_usage(complete)
        if not self.done and b"[DONE]" in complete:
            self.done = True
        if complete:
            self._sink.write(complete)

    def _hold(self, complete: bytes) -> bytes:
        """Keep events back until the commit point; return what follows it."""
        pos = 0
        for m in _BOUNDARY.finditer(complete):
            event = complete[pos:m.end()]
            pos = m.end()
            verdict = classify(event)
            if verdict == ERROR:
                self.error_payload = event
                self._on_error()
                return b""
            if _USAGE_OBJECT.search(event) is not None:
                event = self._take_usage(event)
            self._held.append(event)
            self._held_size += len(event)
            if verdict == COMMIT or self._held_size > MAX_HELD:
                self.commit()
                return complete[pos:]
        return b""

    def commit(self) -> None:
        """Send the head and everything held back; pass from now on."""
        if self._sink is not None:
            return
        sink = self._sink = self._on_commit()
        held = b"".join(self._held)
        self._held = []
        if not self.done and b"[DONE]" in held:
            self.done = True
        if held:
            sink.write(held)

    def _take_usage(self, complete: bytes) -> bytes:
        kept: list[bytes] = []
        pos = 0
        for m in _BOUNDARY.finditer(complete):
            event = complete[pos:m.end()]
            pos = m.end()
            if _USAGE_OBJECT.search(event) is None:
                kept.append(event)
                continue
            usage_only = self._read_usage(event)
            if not (self._drop_usage and usage_only):
                kept.append(event)
        return b"".join(kept)

    def _read_usage(self, event: bytes) -> bool:
        """Record the usage in ``event``; True when it is a usage-only chunk."""
        doc = _event_json(event)
        if not isinstance(doc, dict):
            return False
        numbers = usage_numbers(doc.get("usage"))
        if numbers is not None:
            self.usage = numbers
        choices = doc.get("choices")
        return numbers is not None and isinstance(choices, list) and not choices

    def finish(self) -> None:
        """The upstream ended cleanly: commit if still holding, forward any tail."""
        if self._sink is None:
            self.commit()
        if self._pending and self._sink is not None:
            self._sink.write(self._pending)
        self._pending = b""

    def fail(self, exc: GatewayError) -> None:
        """End a committed stream with a typed SSE error event (no fake [DONE])."""
        self._pending = b""
        if self._sink is not None:
            self._sink.write(error_event(exc))


def classify(event: bytes) -> int:
    """HOLD, COMMIT or ERROR for one complete SSE event (used before the commit point)."""
    data_lines = []
    event_name = b""
    for line in event.splitlines():
        if line.startswith(b"data:"):
            data_lines.append(line[5:].lstrip())
        elif line.startswith(b"event:"):
            event_name = line[6:].strip()
    if event_name == b"error":
        return ERROR
    if not data_lines:
        return HOLD  # a comment or keep-alive
    data = b"\n".join(data_lines)
    if data == b"[DONE]":
        return COMMIT
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return COMMIT  # not ours to judge: pass it on
    if not isinstance(doc, dict):
        return COMMIT
    if doc.get("error") is not None:
        return ERROR
    choices = doc.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason") is not None:
                return COMMIT
            if choice.get("text"):
                return COMMIT
            delta = choice.get("delta")
            if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")
                                            or delta.get("function_call")
                                            or delta.get("refusal")):
                return COMMIT
        return HOLD
    kind = doc.get("type")
    if isinstance(kind, str):  # Responses API and Anthropic-style events
        if kind in ("error", "response.failed") or kind.endswith(".error"):
            return ERROR
        if "delta" in kind or kind.endswith((".done", ".completed")) or kind == "message_stop":
            return COMMIT
        return HOLD
    return COMMIT


def _event_json(event: bytes) -> object:
    lines = [ln[5:].lstrip() for ln in event.splitlines() if ln.startswith(b"data:")]
    try:
        return orjson.loads(b"\n".join(lines))
    except orjson.JSONDecodeError:
        return None


def error_message(event: bytes) -> str:
    """The message inside an in-band error event, for logs and the final error."""
    doc = _event_json(event)
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return "error event"


def _last_boundary(data: bytes) -> int:
    """Index just past the last complete event in ``data``, or -1."""
    i = data.rfind(b"\n\n")
    best = i + 2 if i >= 0 else -1
    j = data.rfind(b"\r\n\r\n")
    if j >= 0 and j + 4 > best:
        best = j + 4
    k = data.rfind(b"\r\r")
    if k >= 0 and k + 2 > best:
        best = k + 2
    return best
