"""Pure-Python references of the native hot paths in ``fastgw._native``.

Each module has the same API as its native counterpart and gives the same
answers; tests run both on the same inputs. They are slow and exist to be
read and compared against, not to serve traffic:

- ``limiter``: ``Limit``, ``Scope``, ``Reservation``, ``LimiterTable``, ``Admission``;
- ``ring``: ``HashRing`` and ``hash64`` (XXH3-64);
- ``jwt``: ``JwtKeySet``, ``JwtVerifier`` and the ``JwtError`` family
  (needs PyJWT and cryptography, imported when used);
- ``sse``: ``SseScanner``;
- ``accesslog``: ``access_line`` (one JSON access-log line);
- ``keys``: ``KeyIndex`` (API keys by the SHA-256 of what is presented);
- ``logwriter``: ``LogWriter`` (the access log's writer thread, in Python);
- ``cachekey``: ``cache_key`` (the response cache's key; needs xxhash);
- ``memcache``: ``MemoryCache`` (the response cache's in-process LRU store);
- ``guard``: ``RegexGuard`` and ``RedactWindow`` (guardrails' redaction, whole
  and streamed);
- ``http``: ``parse_request``, ``parse_response``, ``forwarded`` and ``usage``
  (the parsers: what llhttp reads, which the native ones match or leave to it);
- ``otlp``: ``encode`` (a batch of traces as OTLP protobuf, built field by field
  with the Python opentelemetry-proto classes), the reference of ``OtlpEncoder.encode``
  (with the Rust opentelemetry-proto crate's messages).
"""

from __future__ import annotations

__all__ = ["accesslog", "cachekey", "guard", "http", "jwt", "keys", "limiter", "logwriter",
           "memcache", "otlp", "ring", "sse"]
