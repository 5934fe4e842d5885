"""Pure-Python references of the native access log's line (``rust/src/accesslog.rs``:
the same fields, in the same order, as a dict rendered by orjson) and of its
buffer (``LogBuffer``, ``rust/src/py/accesslog.rs``): lines held between two
flushes, dropped and counted past ``max_pending`` pending lines."""

from __future__ import annotations

from typing import Any, Protocol

import orjson

__all__ = ["LogBuffer", "access_line"]


def _ms(seconds: float) -> float:
    return int(seconds * 1_000_000.0) / 1000.0


def access_line(time: float, request_id: bytes, key: str | None, client_ip: str, path: bytes,
                model: str | None, served_model: str | None, route: str | None,
                variant: str | None, provider: str | None, status: int, stream: bool,
                attempts: int, latency_s: float, ttfb_s: float, overhead_s: float,
                usage: tuple[int, int, float] | None, error: str | None,
                cache: str | None = None) -> bytes:
    """One JSON line (newline included)."""
    record: dict[str, Any] = {
        "time": time,
        "request_id": request_id.decode("latin-1"),
        "key": key,
        "client_ip": client_ip,
        "method": "POST",
        "path": path.decode("latin-1"),
        "model": model,
        "served_model": served_model,
        "route": route,
        "variant": variant,
        "provider": provider,
        "status": status,
        "stream": stream,
        "attempts": attempts,
        "latency_ms": _ms(latency_s),
        "ttfb_ms": _ms(ttfb_s) if ttfb_s >= 0 else None,
        "overhead_ms": _ms(overhead_s),
        "tokens_in": usage[0] if usage else None,
        "tokens_out": usage[1] if usage else None,
        "cost_usd": round(usage[2], 8) if usage else None,
        "cache": cache,
    }
    if error is not None:
        record["error"] = error
    return orjson.dumps(record, None, orjson.OPT_APPEND_NEWLINE)


class _Writer(Protocol):
    def submit(self, data: bytes | bytearray, lines: int) -> bool: ...
    @property
    def pending(self) -> int: ...


class LogBuffer:
    def __init__(self, writer: _Writer, max_pending: int) -> None:
        self._writer = writer
        self._buf = bytearray()
        self._behind = 0  # the writer's unwritten lines at the last flush
        self._max_pending = max_pending
        self.lines = 0
        self.dropped = 0

    def access(self, *args: Any) -> bool:
        return self.line(access_line(*args))

    def line(self, line: bytes) -> bool:
        if self.lines + self._behind >= self._max_pending:
            self.dropped += 1
            return False
        self._buf += line
        self.lines += 1
        return self.lines == 1

    def flush(self) -> bool:
        if self.lines:
            batch, self._buf = self._buf, bytearray()
            if self.dropped:
                batch += orjson.dumps({"event": "access_log_dropped", "lines": self.dropped},
                                      None, orjson.OPT_APPEND_NEWLINE)
                self.dropped = 0
            self._writer.submit(batch, self.lines)
            self.lines = 0
        self._behind = self._writer.pending
        return self._behind > 0
