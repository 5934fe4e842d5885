"""Small shared types: the interfaces lower layers expose to higher ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

HeaderPairs = Sequence[tuple[bytes, bytes]]
"""A message's headers as ``(name, value)`` pairs, names lowercase: a list, or the
native parser's :class:`~fastgw._native.Headers` (made on demand from the bytes)."""


class StreamSink(Protocol):
    """Where a relayed stream's bytes go (the client's response)."""

    def write(self, data: bytes) -> None: ...


Usage = dict[str, int]
"""Token counts: ``prompt_tokens`` (cached ones included), ``completion_tokens``,
``total_tokens``, and when known ``cached_tokens``, ``cache_creation_tokens``,
``reasoning_tokens`` (the keys of :attr:`fastgw._native.SseScanner.usage`)."""


class StreamScanner(Protocol):
    """What reads a relayed stream: the native pass-through scanner
    (:class:`~fastgw._native.SseScanner`) or a dialect translator. ``feed``
    returns the bytes to pass on and the scanner's flags."""

    def feed(self, chunk: bytes) -> tuple[bytes, int]: ...
    def finish(self) -> bytes: ...
    @property
    def usage(self) -> dict[str, int] | None: ...
    @property
    def done(self) -> bool: ...


def usage_asked(doc: dict[str, Any]) -> bool | None:
    """What a request's ``stream_options`` asks of the usage chunk: True when its
    ``include_usage`` is true, False when the request has no ``stream_options``
    member, None otherwise (present, and not asking for it)."""
    opts = doc.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage") is True:
        return True
    return False if "stream_options" not in doc else None


def usage_numbers(usage: Any) -> tuple[int, int] | None:
    """(input, output) tokens from an OpenAI or Anthropic usage object."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion


def cache_counts(usage: dict[str, int] | None) -> tuple[int, int] | None:
    """(prompt-cache reads, writes) of a usage dict (:data:`Usage`)."""
    if usage is None:
        return None
    return usage.get("cached_tokens", 0), usage.get("cache_creation_tokens", 0)
