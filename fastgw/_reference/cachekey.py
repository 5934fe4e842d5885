"""Pure-Python reference of the response cache's key (``rust/src/cachekey.rs``).

The key is XXH3-128 (big-endian digest) of ``scope``, ``endpoint`` and ``model``,
each as its length (8 bytes, little-endian) then its bytes, followed by the
canonical JSON of ``body`` without its top-level members ``fastgw``, ``stream``,
``stream_options`` and ``user``. Canonical JSON: object members sorted by their
key's UTF-8 bytes, a repeated key's last value kept; strings with only ``"``,
``\\`` and control characters escaped (``\\b \\f \\n \\r \\t``, else ``\\u00xx``);
integers in ``[-2**63, 2**64)`` as integers, any other number as the nearest
float, written as an integer when integral and within ``2**53`` (``-0.0`` as
``0``), else in the shortest scientific form that reads back as it (``1.5e0``,
``1e300``); no whitespace. Documents are read as serde_json reads them: orjson
refuses what it refuses (lone surrogate escapes, numbers out of float range...)
except nesting deeper than 127 levels, checked here.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

__all__ = ["cache_key"]

LEFT_OUT = frozenset({"fastgw", "stream", "stream_options", "user"})
_EXACT = 2**53  # integral floats up to this magnitude are written as integers
_MAX_LEVELS = 127  # serde_json's recursion limit
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')  # a JSON string literal (in a valid document)
_ESCAPES = {c: f"\\u{c:04x}" for c in range(0x20)} | {
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    0x08: "\\b",
    0x0C: "\\f",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def cache_key(body: bytes, scope: bytes, endpoint: bytes, model: bytes, /) -> bytes:
    """The 16-byte key; ValueError when ``body`` is not a JSON object."""
    import xxhash  # a test dependency: this module serves the tests only

    if body.lstrip(b" \t\n\r")[:1] != b"{":
        raise ValueError("the body is not a JSON object")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from None
    if _levels(body) > _MAX_LEVELS:
        raise ValueError("the body is not valid JSON: recursion limit exceeded")
    framed = b"".join(len(part).to_bytes(8, "little") + part for part in (scope, endpoint, model))
    kept = {k: v for k, v in doc.items() if k not in LEFT_OUT}
    return xxhash.xxh3_128_digest(framed + canonical(kept).encode("utf-8"))


def zero_temperature(body: bytes) -> bool:
    """Whether a body (a valid JSON object) asks for ``temperature`` zero: a number
    equal to zero, never ``false``."""
    t = orjson.loads(body).get("temperature")
    return type(t) in (int, float) and t == 0


def _levels(body: bytes) -> int:
    """How deeply arrays and objects nest in a valid document."""
    depth = most = 0
    for c in _STRING.sub(b'""', body):
        if c in b"[{":
            depth += 1
            most = max(most, depth)
        elif c in b"]}":
            depth -= 1
    return most


def canonical(value: Any) -> str:
    """The canonical JSON of a value as orjson reads it."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value) if -(2**63) <= value < 2**64 else _float(float(value))
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        members = sorted(value.items(), key=lambda kv: kv[0].encode("utf-8"))
        return "{" + ",".join(_string(k) + ":" + canonical(v) for k, v in members) + "}"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _string(s: str) -> str:
    return '"' + s.translate(_ESCAPES) + '"'


def _float(x: float) -> str:
    if x.is_integer() and abs(x) <= _EXACT:
        return str(int(x))  # -0.0 too: "0"
    # repr gives the shortest digits that read back as x; rewrite them as
    # Rust's `{:e}` does: one digit, the rest after a point, then the exponent.
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    significant = digits.rstrip("0")
    # x = int(significant) * 10**scale
    scale = int(exp or "0") - len(frac) + (len(digits) - len(significant))
    point = f"{significant[0]}.{significant[1:]}" if len(significant) > 1 else significant
    return f"{'-' if x < 0 else ''}{point}e{scale + len(significant) - 1}"
