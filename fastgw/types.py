"""Small shared types: the interfaces lower layers expose to higher ones."""

from __future__ import annotations

from typing import Protocol


class StreamSink(Protocol):
    """Where a relayed stream's bytes go (the client's response)."""

    def write(self, data: bytes) -> None: ...
