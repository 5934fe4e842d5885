"""OpenAI-shaped providers: ``openai``, ``openai-compatible`` and ``azure`` (the
``openai`` dialect).

The request body is forwarded as the client sent it. Only two edits are ever
made, both without re-encoding the JSON when it can be avoided: the ``model``
value is replaced by the deployment name (a byte splice when the value occurs
exactly once), and ``stream_options.include_usage`` is asked for on streams.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from fastgw._native import splice_model, usage
from fastgw.config import ProviderConfig
from fastgw.types import usage_asked

# Endpoint name -> path below the provider's base URL.
OPENAI_PATHS: dict[str, str] = {
    "chat": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
    "responses": "/responses",
    "models": "/models",
}


def request_prefix(provider: ProviderConfig, host_header: bytes, path_prefix: bytes,
                   endpoint: str, deployment: str, method: bytes = b"POST") -> bytes | None:
    """The constant start of every request to (provider, endpoint, deployment):
    request line, host, credentials and content type. Built once per target.
    None for an endpoint OpenAI's API does not have."""
    if endpoint not in OPENAI_PATHS:
        return None
    if provider.kind == "azure":
        path = (f"/openai/deployments/{deployment}{OPENAI_PATHS[endpoint]}"
                f"?api-version={provider.api_version}").encode()
        if endpoint == "models":
            path = f"/openai/models?api-version={provider.api_version}".encode()
        auth = b"api-key: " + provider.api_key.encode() + b"\r\n" if provider.api_key else b""
    else:
        path = OPENAI_PATHS[endpoint].encode()
        auth = (b"authorization: Bearer " + provider.api_key.encode() + b"\r\n"
                if provider.api_key else b"")
    extra = b"".join(f"{k}: {v}\r\n".encode() for k, v in provider.headers.items())
    ctype = b"content-type: application/json\r\n" if method == b"POST" else b""
    return (method + b" " + path_prefix + path + b" HTTP/1.1\r\nhost: " + host_header + b"\r\n"
            + auth + ctype + extra)


def _model_pattern(value: str) -> re.Pattern[bytes]:
    encoded = orjson.dumps(value)  # the JSON string literal, quotes included
    return re.compile(rb'"model"\s*:\s*' + re.escape(encoded))


_PATTERNS: dict[str, re.Pattern[bytes]] = {}
_STRINGS: dict[str, bytes] = {}


def json_string(value: str) -> bytes:
    """``value`` as a JSON string literal (model names repeat: encoded once)."""
    encoded = _STRINGS.get(value)
    if encoded is None:
        if len(_STRINGS) > 4096:
            _STRINGS.clear()
        encoded = _STRINGS[value] = orjson.dumps(value)
    return encoded


def rewrite_model(body: bytes, doc: dict[str, Any] | None, asked: str,
                  deployment: str) -> bytes:
    """``body`` with the top-level ``model`` set to ``deployment`` (``doc``: the
    body parsed, None when it was not: parsed here if needed).

    When ``"model": "<asked>"`` occurs exactly once in the raw bytes it must be
    the top-level key (the parsed document has it), so the value is spliced in
    place. Otherwise (escapes written differently, a nested copy) the document
    is re-encoded.
    """
    if asked == deployment:
        return body
    # Fast path (native): the two spellings JSON encoders produce, found exactly once.
    spliced = splice_model(body, json_string(asked), json_string(deployment))
    if spliced is not None:
        return spliced
    pat = _PATTERNS.get(asked)
    if pat is None:
        if len(_PATTERNS) > 4096:
            _PATTERNS.clear()
        pat = _PATTERNS[asked] = _model_pattern(asked)
    found = pat.findall(body, 0, len(body))
    if len(found) == 1:
        return pat.sub(b'"model":' + orjson.dumps(deployment), body, count=1)
    doc = dict(orjson.loads(body) if doc is None else doc)
    doc["model"] = deployment
    return orjson.dumps(doc)


_INCLUDE_USAGE = b'"stream_options":{"include_usage":true},'


def ask_for_usage(body: bytes, doc: dict[str, Any] | None,
                  asked: bool | None = None) -> tuple[bytes, bool]:
    """Make a streaming request ask for the usage chunk.

    Returns (new body, whether the client asked for usage itself). ``doc``: the
    client's document (its ``stream_options`` read there; the body may have been
    rewritten since, its model above all); None when it was not parsed, and then
    ``asked`` is what ``peek_request`` read of ``stream_options`` (True: usage
    asked; False: no such member; None: unknown). Without a ``stream_options``
    member the field is inserted after the opening brace; otherwise the body is
    re-encoded with ``include_usage`` set.
    """
    if doc is not None:
        asked = usage_asked(doc)
    if asked is True:
        return body, True
    if asked is False:
        inserted = usage_inserted(body)
        if inserted is not None:
            return inserted, False
    current = orjson.loads(body)  # the body as it now is (the deployment's model in it)
    opts = current.get("stream_options")
    new_opts = dict(opts) if isinstance(opts, dict) else {}
    new_opts["include_usage"] = True
    current["stream_options"] = new_opts
    return orjson.dumps(current), False


def usage_inserted(body: bytes) -> bytes | None:
    """``body`` (a JSON object without ``stream_options``) asking for the usage
    chunk: the member inserted after the opening brace (None: no brace)."""
    start = body.find(b"{")
    if start < 0:
        return None
    rest = body[start + 1:].lstrip()
    if rest.startswith(b"}"):
        return body[: start + 1] + _INCLUDE_USAGE[:-1] + rest
    return body[: start + 1] + _INCLUDE_USAGE + body[start + 1:]


extract_usage = usage
"""``(prompt_tokens, completion_tokens)`` from a complete JSON answer, cheaply: the
two counters are read after the last ``"usage"`` key, no full decode (native;
``fastgw._reference.http.usage`` is the reference)."""


_CACHE_READ = re.compile(rb'"(?:cached_tokens|cache_read_input_tokens)"\s*:\s*(\d+)')
_CACHE_WRITE = re.compile(rb'"cache_creation_input_tokens"\s*:\s*(\d+)')


def cache_usage(body: bytes) -> tuple[int, int]:
    """(prompt-cache reads, writes) after the last ``"usage"`` key of a whole answer
    in either dialect (OpenAI's ``prompt_tokens_details.cached_tokens``,
    Anthropic's ``cache_read_input_tokens`` / ``cache_creation_input_tokens``);
    0 when absent. Only read for routes that price or count them."""
    i = body.rfind(b'"usage"')
    if i < 0:
        return 0, 0
    read = _CACHE_READ.search(body, i)
    write = _CACHE_WRITE.search(body, i)
    return (int(read.group(1)) if read else 0), (int(write.group(1)) if write else 0)
