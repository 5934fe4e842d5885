"""Pure-Python reference of the native access-log line (``rust/src/accesslog.rs``):
the same fields, in the same order, as a dict rendered by orjson."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["access_line"]


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
