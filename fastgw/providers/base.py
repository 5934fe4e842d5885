"""What a provider adapter and a dialect translation are.

A *dialect* is a wire format of requests and answers: ``openai`` (chat,
completions, embeddings, responses) or ``anthropic`` (Messages). A client
speaks one (its endpoint says which), a provider another, or the same.

* When they are the same, bytes pass through: the body keeps the client's
  bytes with only the model spliced in (:mod:`fastgw.providers.openai`), the
  answer and the stream go back unchanged. Nothing below runs.
* When they differ, a :class:`Translation` for the pair (client endpoint,
  provider dialect) turns the request into the provider's, and the answer, the
  stream (event by event) and the error bodies into the client's. One module
  per pair (``openai_anthropic``, ``anthropic_openai``), pure, no I/O.

:class:`ProviderAdapter` says how a request looks on a provider's wire (the
constant prefix: request line, host, credentials) and which endpoints it
serves. Everything here is pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastgw.config import ProviderConfig
from fastgw.types import StreamScanner, Usage

OPENAI = "openai"
ANTHROPIC = "anthropic"


class RequestTranslator(Protocol):
    def __call__(self, doc: dict[str, Any], *, deployment: str, stream: bool,
                 default_max_tokens: int | None, drop_unsupported: bool) -> bytes: ...


class StreamFactory(Protocol):
    def __call__(self, *, include_usage: bool, created: int) -> StreamScanner: ...


@dataclass(frozen=True, slots=True)
class Translation:
    """A client dialect on a provider of another one (one per pair)."""

    name: str  # "openai->anthropic": the client's dialect, then the provider's
    request: RequestTranslator  # the client's parsed request -> the provider's body
    response: Callable[[bytes], tuple[bytes, Usage]]  # a whole answer -> the client's
    stream: StreamFactory  # a translator of the provider's stream, per request
    error: Callable[[int, bytes], bytes]  # a provider error body -> the client's


class ProviderAdapter(Protocol):
    """How requests look on one kind of provider."""

    dialect: str

    def request_prefix(self, provider: ProviderConfig, host_header: bytes, path_prefix: bytes,
                       endpoint: str, deployment: str) -> bytes | None:
        """The constant start of every request to (provider, endpoint, deployment):
        request line, host, credentials, content type. None: the provider does
        not serve ``endpoint``."""
        ...
