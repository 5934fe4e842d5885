"""Small shared types: the interfaces lower layers expose to higher ones."""

from __future__ import annotations

from typing import Any, Protocol


class StreamSink(Protocol):
    """Where a relayed stream's bytes go (the client's response)."""

    def write(self, data: bytes) -> None: ...


def usage_numbers(usage: Any) -> tuple[int, int] | None:
    """(input, output) tokens from an OpenAI or Anthropic usage object."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion
