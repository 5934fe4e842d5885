"""One HTTP exchange with an upstream on a pooled connection.

:func:`exchange` writes a pre-rendered request, waits for the response head
(or the whole response) and hands back the connection; the caller reads
``status``/``headers``/``body()`` or sets a sink for a stream, then gives the
connection back with ``pool.release(conn, reuse)``. A pooled connection that
fails before any response byte (closed by the upstream while idle) is retried
once on a fresh connection: that is the only retry at this level.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastgw.config import TimeoutsConfig
from fastgw.errors import UpstreamProtocolError
from fastgw.upstream.connection import UpstreamConnection
from fastgw.upstream.pool import PeerKey, Pool

# The upstream client takes the provider's timeouts as configured.
Timeouts = TimeoutsConfig


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed base URL: where to connect and the path prefix to put in front."""

    key: PeerKey
    host_header: bytes
    path_prefix: bytes

    @classmethod
    def parse(cls, base_url: str) -> Endpoint:
        url = urlsplit(base_url)
        tls = url.scheme == "https"
        host = url.hostname or ""
        port = url.port or (443 if tls else 80)
        default_port = port == (443 if tls else 80)
        host_header = host if default_port else f"{host}:{port}"
        if ":" in host and not default_port:
            host_header = f"[{host}]:{port}"
        return cls(PeerKey(host, port, tls), host_header.encode("idna"),
                   url.path.rstrip("/").encode())


def start_pooled(pool: Pool, request: bytes, timeouts: Timeouts, *, whole: bool
                 ) -> tuple[UpstreamConnection, asyncio.Future[None] | None] | None:
    """The pooled fast path of :func:`exchange`, with no coroutine of its own: send
    on an idle connection and return it with the future to await (None: the
    answer is already in). None when no idle connection is free. A failure of
    the awaited future goes to :func:`recover`."""
    conn = pool.take_idle()
    if conn is None:
        return None
    conn.send(request, timeouts.first_byte_s, timeouts.idle_s, timeouts.total_s)
    try:
        return conn, conn.waiter(whole)
    except BaseException:
        pool.release(conn, reuse=False)
        raise


async def recover(pool: Pool, conn: UpstreamConnection, exc: BaseException, request: bytes,
                  timeouts: Timeouts, *, whole: bool) -> UpstreamConnection:
    """After ``conn`` failed with ``exc``: release it; when it was a pooled connection
    that died before answering (closed by the upstream while idle), send once more
    on a fresh one, else re-raise."""
    stale = (isinstance(exc, UpstreamProtocolError) and conn.exchanges > 1
             and not conn.received_any)
    pool.release(conn, reuse=False)
    if not stale:
        raise exc
    fresh = await pool.connect()
    try:
        fresh.send(request, timeouts.first_byte_s, timeouts.idle_s, timeouts.total_s)
        fut = fresh.waiter(whole)
        if fut is not None:
            await fut
    except BaseException:
        pool.release(fresh, reuse=False)
        raise
    return fresh


async def exchange(pool: Pool, request: bytes, timeouts: Timeouts, *,
                   whole: bool) -> UpstreamConnection:
    """Send ``request``; return the connection once the head (or, with ``whole``,
    the full response) has arrived. On error the connection is already released."""
    conn = pool.take_idle()
    if conn is None:
        conn = await pool.acquire()
    try:
        conn.send(request, timeouts.first_byte_s, timeouts.idle_s, timeouts.total_s)
        fut = conn.waiter(whole)
        if fut is not None:
            await fut
    except BaseException as exc:
        return await recover(pool, conn, exc, request, timeouts, whole=whole)
    return conn


class UpstreamClient:
    """All pools of this process, one per peer and TLS setting."""

    __slots__ = ("_pools", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pools: dict[tuple[PeerKey, int, float, float], Pool] = {}

    def pool(self, endpoint: Endpoint, *, max_connections: int, idle_s: float,
             connect_s: float, ssl_context: ssl.SSLContext | None = None) -> Pool:
        k = (endpoint.key, max_connections, idle_s, connect_s)
        p = self._pools.get(k)
        if p is None or p.closed:
            p = Pool(endpoint.key, max_connections=max_connections, idle_s=idle_s,
                     connect_s=connect_s, loop=self.loop, ssl_context=ssl_context)
            self._pools[k] = p
        return p

    def retire_unused(self, keep: set[Pool]) -> None:
        """After a reload: close pools no provider uses any more."""
        for k, p in list(self._pools.items()):
            if p not in keep:
                p.close()
                del self._pools[k]

    def close(self) -> None:
        for p in self._pools.values():
            p.close()
        self._pools.clear()
