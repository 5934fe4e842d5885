"""Pure-Python reference of the native SSE scanner (``fastgw._native.SseScanner``).

Same API and the same answers: line splitting on ``\\n``, ``\\r\\n`` and ``\\r``
across chunks, events dispatched at blank lines, the same flags, usage and
commit point, and in ``drop_usage`` mode the same bytes forwarded. The rules
are written out in ``rust/src/sse.rs``.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["SseScanner"]

_DEFAULT_MAX_EVENT = 16 << 20
_USAGE_OBJECT = re.compile(rb'"usage"[ \t\r\n]*:[ \t\r\n]*\{')
_LINE_END = re.compile(rb"[\r\n]")
_DONE_EVENTS = {b"message_stop", b"response.completed", b"response.incomplete"}
_U64 = 1 << 64


def _uint(obj: dict[str, Any], key: str) -> int | None:
    v = obj.get(key)
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _U64:
        return v
    return None


def _nested_uint(obj: dict[str, Any], key: str, inner: str) -> int | None:
    v = obj.get(key)
    return _uint(v, inner) if isinstance(v, dict) else None


def _non_empty_str(obj: dict[str, Any], key: str) -> bool:
    v = obj.get(key)
    return isinstance(v, str) and v != ""


def _has_content(obj: dict[str, Any]) -> bool:
    choices = obj.get("choices")
    if isinstance(choices, list):
        for c in choices:
            if not isinstance(c, dict):
                continue
            if _non_empty_str(c, "text"):
                return True
            d = c.get("delta")
            if isinstance(d, dict):
                if any(
                    _non_empty_str(d, k)
                    for k in ("content", "refusal", "reasoning_content", "reasoning")
                ):
                    return True
                tc = d.get("tool_calls")
                if isinstance(tc, list) and tc:
                    return True
                if isinstance(d.get("function_call"), dict):
                    return True
    ty = obj.get("type")
    if not isinstance(ty, str):
        return False
    if ty == "content_block_delta":
        d = obj.get("delta")
        return isinstance(d, dict) and any(
            _non_empty_str(d, k) for k in ("text", "partial_json", "thinking")
        )
    if ty == "content_block_start":
        b = obj.get("content_block")
        return isinstance(b, dict) and (
            b.get("type") in ("tool_use", "server_tool_use") or _non_empty_str(b, "text")
        )
    return ty.endswith(".delta") and _non_empty_str(obj, "delta")


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')  # a JSON string literal (in a valid document)


def _no_constants(name: str) -> Any:
    raise ValueError(name)


def _finite_float(text: str) -> float:
    v = float(text)
    if v in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return v


def _json_int(text: str) -> int | float:
    # serde_json keeps 64-bit integers and reads larger ones as floats.
    v = int(text)
    return v if -(2**63) <= v < 2**64 else _finite_float(text)


class _Usage:
    __slots__ = ("cache_creation", "cache_read", "cached", "input", "output", "seen", "total")

    def __init__(self) -> None:
        self.seen = False
        self.input: int | None = None
        self.cache_creation: int | None = None
        self.cache_read: int | None = None
        self.output: int | None = None
        self.total: int | None = None
        self.cached: int | None = None

    def openai(self, u: dict[str, Any]) -> None:
        self.seen = True
        self.input = _pick(_uint(u, "prompt_tokens"), self.input)
        self.output = _pick(_uint(u, "completion_tokens"), self.output)
        self.total = _pick(_uint(u, "total_tokens"), self.total)
        self.cached = _pick(_nested_uint(u, "prompt_tokens_details", "cached_tokens"), self.cached)

    def responses(self, u: dict[str, Any]) -> None:
        self.seen = True
        self.input = _pick(_uint(u, "input_tokens"), self.input)
        self.output = _pick(_uint(u, "output_tokens"), self.output)
        self.total = _pick(_uint(u, "total_tokens"), self.total)
        self.cached = _pick(_nested_uint(u, "input_tokens_details", "cached_tokens"), self.cached)

    def anthropic(self, u: dict[str, Any]) -> None:
        self.seen = True
        self.input = _pick(_uint(u, "input_tokens"), self.input)
        self.cache_creation = _pick(_uint(u, "cache_creation_input_tokens"), self.cache_creation)
        self.cache_read = _pick(_uint(u, "cache_read_input_tokens"), self.cache_read)
        self.cached = _pick(_uint(u, "cache_read_input_tokens"), self.cached)
        self.output = _pick(_uint(u, "output_tokens"), self.output)

    def get(self) -> dict[str, int] | None:
        if not self.seen:
            return None
        m = _U64 - 1
        prompt = min(m, (self.input or 0) + (self.cache_creation or 0) + (self.cache_read or 0))
        completion = self.output or 0
        total = self.total if self.total is not None else min(m, prompt + completion)
        out = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
        if self.cached is not None:
            out["cached_tokens"] = self.cached
        if self.cache_creation is not None:
            out["cache_creation_tokens"] = self.cache_creation
        return out


def _pick(new: int | None, old: int | None) -> int | None:
    return old if new is None else new


class SseScanner:
    """Scans one upstream SSE stream, chunk by chunk (reference)."""

    DONE = 1
    ERROR = 2
    COMMIT = 4
    USAGE = 8
    DROPPED = 16

    __slots__ = (
        "_after_cr",
        "_boundaries",
        "_committed",
        "_data",
        "_done",
        "_drop_usage",
        "_error",
        "_event",
        "_events",
        "_has_data",
        "_held",
        "_line",
        "_max",
        "_pending_lf",
        "_usage",
    )

    def __init__(
        self, *, drop_usage: bool = False, max_event_size: int = _DEFAULT_MAX_EVENT
    ) -> None:
        self._drop_usage = drop_usage
        self._max = max_event_size
        self._line = bytearray()
        self._after_cr = False
        self._pending_lf: bool | None = None
        self._data = bytearray()
        self._has_data = False
        self._event = b""
        self._held = bytearray()
        self._committed = False
        self._done = False
        self._error = False
        self._usage = _Usage()
        self._events = 0
        self._boundaries: list[int] = []

    @property
    def committed(self) -> bool:
        """True once the commit point has passed."""
        return self._committed

    @property
    def done(self) -> bool:
        """True once an end-of-stream marker was seen."""
        return self._done

    @property
    def error(self) -> bool:
        """True once an in-band error was seen."""
        return self._error

    @property
    def events(self) -> int:
        """Events with data so far."""
        return self._events

    @property
    def boundaries(self) -> list[int]:
        """Offsets in the last chunk just past each event's blank line."""
        return list(self._boundaries)

    @property
    def usage(self) -> dict[str, int] | None:
        """Token counts once usage was read, else None."""
        return self._usage.get()

    def finish(self) -> bytes:
        """Bytes still held back at the end of the stream."""
        out = bytes(self._held)
        self._held.clear()
        return out

    def _field(self, line: bytes) -> None:
        if line[:1] == b":":
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            if self._has_data:
                self._data += b"\n"
            self._data += value
            self._has_data = True
        elif name == b"event":
            self._event = bytes(value)

    def _classify(self, data: bytes, event: bytes) -> tuple[int, bool]:
        if data == b"[DONE]":
            self._done = True
            return self.DONE, False
        flags = 0
        if event == b"error":
            flags |= self.ERROR
        elif event in _DONE_EVENTS:
            flags |= self.DONE
        elif event == b"response.failed":
            flags |= self.DONE | self.ERROR
        usage_candidate = _USAGE_OBJECT.search(data) is not None
        usage_only = False
        if not self._committed or usage_candidate or data.find(b'"error"') >= 0:
            try:
                text = data.decode("utf-8")
                obj = json.loads(
                    text,
                    parse_constant=_no_constants,
                    parse_float=_finite_float,
                    parse_int=_json_int,
                )
                # serde_json refuses a \uXXXX escape of half a surrogate pair anywhere
                # (even in a value a repeated key replaces); Python keeps it as a lone
                # surrogate, which UTF-8 cannot encode.
                for literal in _STRING.findall(text):
                    json.loads(literal).encode("utf-8")
            except (UnicodeDecodeError, UnicodeEncodeError, ValueError, RecursionError):
                obj = None
            if isinstance(obj, dict):
                if obj.get("error") is not None or obj.get("type") == "error":
                    flags |= self.ERROR
                if usage_candidate:
                    u = obj.get("usage")
                    msg = obj.get("message")
                    resp = obj.get("response")
                    if isinstance(u, dict):
                        if "input_tokens" in u or "output_tokens" in u:
                            self._usage.anthropic(u)
                        else:
                            self._usage.openai(u)
                            choices = obj.get("choices")
                            usage_only = isinstance(choices, list) and not choices
                        flags |= self.USAGE
                    elif isinstance(msg, dict) and isinstance(msg.get("usage"), dict):
                        self._usage.anthropic(msg["usage"])
                        flags |= self.USAGE
                    elif isinstance(resp, dict) and isinstance(resp.get("usage"), dict):
                        self._usage.responses(resp["usage"])
                        flags |= self.USAGE
                if not self._committed and _has_content(obj):
                    self._committed = True
                    flags |= self.COMMIT
        if flags & self.DONE:
            self._done = True
        if flags & self.ERROR:
            self._error = True
        return flags, usage_only

    def _dispatch(self) -> tuple[int, bool]:
        result = (0, False)
        if self._has_data:
            self._events += 1
            result = self._classify(bytes(self._data), self._event)
        self._data.clear()
        self._has_data = False
        self._event = b""
        return result[0], result[1] and self._drop_usage

    def feed(self, chunk: bytes) -> tuple[bytes, int]:
        """Scans ``chunk``; returns ``(bytes_to_forward, flags)``."""
        if not isinstance(chunk, bytes):
            raise TypeError("chunk must be bytes")
        self._boundaries = []
        n = len(chunk)
        flags = 0
        i = 0
        kept: list[tuple[int, int]] = []
        seg_start = 0
        first_done = False
        held_kept = False
        dropped = False
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n":
                i = 1
                if self._pending_lf is not None:
                    if self._pending_lf:
                        dropped = True
                    else:
                        kept.append((0, 1))
                    seg_start = 1
        self._pending_lf = None
        while i < n:
            m = _LINE_END.search(chunk, i)
            if m is None:
                if len(self._line) + (n - i) > self._max:
                    raise ValueError(f"SSE line larger than {self._max} bytes")
                self._line += chunk[i:]
                break
            j = m.start()
            if chunk[j] == 0x0A:
                end = j + 1
            elif j + 1 < n:
                end = j + 2 if chunk[j + 1] == 0x0A else j + 1
            else:
                self._after_cr = True
                end = j + 1
            if not self._line:
                if j > i:
                    self._field(chunk[i:j])
                blank = j == i
            else:
                if len(self._line) + (j - i) > self._max:
                    raise ValueError(f"SSE line larger than {self._max} bytes")
                self._line += chunk[i:j]
                self._field(bytes(self._line))
                self._line.clear()
                blank = False
            if len(self._data) > self._max:
                raise ValueError(f"SSE event larger than {self._max} bytes")
            if blank:
                f, drop = self._dispatch()
                flags |= f
                self._boundaries.append(end)
                if self._drop_usage:
                    if drop:
                        dropped = True
                    else:
                        if not first_done:
                            held_kept = True
                        kept.append((seg_start, end))
                    first_done = True
                    if end == n and self._after_cr:
                        self._pending_lf = drop
                seg_start = end
            i = end
        if dropped:
            flags |= self.DROPPED
        if not self._drop_usage or (not self._held and not dropped and seg_start == n):
            return chunk, flags
        out = bytearray(self._held) if held_kept else bytearray()
        for a, b in kept:
            out += chunk[a:b]
        if first_done:
            self._held.clear()
        if len(self._held) + (n - seg_start) > self._max:
            raise ValueError(f"SSE event larger than {self._max} bytes")
        self._held += chunk[seg_start:]
        return bytes(out), flags
