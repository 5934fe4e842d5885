"""Anthropic providers (``kind: anthropic``, the ``anthropic`` dialect).

``base_url`` is the host root, as in Anthropic's SDK
(``https://api.anthropic.com``); requests go to ``/v1/messages`` with the
provider's key in ``x-api-key`` and ``anthropic-version``. A Messages client's
request passes through (model spliced in, as for OpenAI); an OpenAI chat
client's is translated (:mod:`fastgw.providers.openai_anthropic`).
"""

from __future__ import annotations

import re

from fastgw._native import usage
from fastgw.config import ProviderConfig

ANTHROPIC_VERSION = b"2023-06-01"

# Endpoint name -> path below the host root.
ANTHROPIC_PATHS: dict[str, str] = {
    "messages": "/v1/messages",
    "models": "/v1/models",
}


def request_prefix(provider: ProviderConfig, host_header: bytes, path_prefix: bytes,
                   endpoint: str, deployment: str, method: bytes = b"POST") -> bytes | None:
    """The constant start of every request to (provider, endpoint): request line,
    host, credentials, API version and content type. None for an endpoint
    Anthropic's API does not have."""
    path = ANTHROPIC_PATHS.get(endpoint)
    if path is None:
        return None
    if path_prefix.endswith(b"/v1"):  # a base URL given with /v1, as for OpenAI
        path_prefix = path_prefix[:-3]
    auth = b"x-api-key: " + provider.api_key.encode() + b"\r\n" if provider.api_key else b""
    extra = b"".join(f"{k}: {v}\r\n".encode() for k, v in provider.headers.items()
                     if k.lower() != "anthropic-version")
    version = provider.headers.get("anthropic-version")
    ctype = b"content-type: application/json\r\n" if method == b"POST" else b""
    return (method + b" " + path_prefix + path.encode() + b" HTTP/1.1\r\nhost: " + host_header
            + b"\r\n" + auth + b"anthropic-version: "
            + (version.encode() if version else ANTHROPIC_VERSION) + b"\r\n" + ctype + extra)


_CACHE_TOKENS = re.compile(rb'"cache_(?:read|creation)_input_tokens"\s*:\s*(\d+)')


def extract_usage(body: bytes) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` of a whole Messages answer passed
    through: the native read after the last ``"usage"`` key, plus the cache reads
    and writes, which Anthropic counts outside ``input_tokens`` (the stream scanner
    and the translators count them in the prompt too)."""
    counts = usage(body)
    if counts is None:
        return None
    cached = sum(int(m.group(1)) for m in _CACHE_TOKENS.finditer(body, body.rfind(b'"usage"')))
    return (counts[0] + cached, counts[1]) if cached else counts
