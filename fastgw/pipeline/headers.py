"""Which headers cross the gateway, in each direction.

Requests: everything the client sent except hop-by-hop headers, framing,
credentials (the provider's key replaces the client's) and the gateway's own
controls (``forwarded``, native; the server's whole-request parser computes
it already, ``Cycle.forwarded``). Responses: a short allow-list of upstream
headers (``response_block``, native, with the rest of an answer's header block),
so provider account details (organisation, quotas, cookies) never reach clients.
"""

from __future__ import annotations

import os
import re
from itertools import count

from fastgw._native import forwarded
from fastgw.types import HeaderPairs

__all__ = ["content_type", "forwarded", "new_request_id", "request_id_for",
           "reseed_request_ids", "valid_request_id"]


_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def request_id_for(headers: HeaderPairs) -> bytes:
    """The client's x-request-id when it is usable, else a new one."""
    for name, value in headers:
        if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            return value
    return new_request_id()


def valid_request_id(value: bytes) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


def content_type(headers: HeaderPairs, default: bytes) -> bytes:
    for name, value in headers:
        if name == b"content-type":
            return value
    return default


_PREFIX = b"req_" + os.urandom(6).hex().encode()
_COUNTER = count(1)


def new_request_id() -> bytes:
    """Unique per process and cheap: a random process prefix and a counter."""
    return b"%s%08x" % (_PREFIX, next(_COUNTER))


def reseed_request_ids() -> None:
    """After fork: give this worker its own prefix."""
    global _PREFIX, _COUNTER
    _PREFIX = b"req_" + os.urandom(6).hex().encode()
    _COUNTER = count(1)
