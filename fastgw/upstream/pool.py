"""Keep-alive connection pool for one upstream (host, port, TLS).

Idle connections wait in a deque with the time they went idle; expiry is
checked lazily when one is taken (and by an occasional sweep). At most
``max_connections`` exist at once; callers beyond that wait in FIFO order and
a released connection is handed straight to the first live waiter, so nobody
starves. A slot is booked before any await and given back on every failure
path (cancel included).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from typing import NamedTuple

from fastgw.errors import UpstreamConnectError, UpstreamTimeout
from fastgw.upstream.connection import UpstreamConnection
from fastgw.upstream.writes import batch_for


class PeerKey(NamedTuple):
    """What identifies a pool: the same key shares connections."""

    host: str
    port: int
    tls: bool


class Pool:
    __slots__ = (
        "_idle",
        "_sweeper",
        "_waiters",
        "batch",
        "closed",
        "connect_s",
        "generation",
        "idle_s",
        "key",
        "loop",
        "max_connections",
        "name",
        "opened",
        "ssl_context",
        "total",
    )

    def __init__(self, key: PeerKey, *, max_connections: int, idle_s: float, connect_s: float,
                 loop: asyncio.AbstractEventLoop,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.key = key
        self.name = f"{key.host}:{key.port}"
        self.max_connections = max_connections
        self.idle_s = idle_s
        self.connect_s = connect_s
        self.loop = loop
        self.batch = batch_for(loop)  # requests written at the end of the loop's turn
        self.ssl_context = ssl_context if ssl_context is not None or not key.tls else \
            ssl.create_default_context()
        self._idle: deque[UpstreamConnection] = deque()
        self._waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self.total = 0  # open connections plus booked slots (connects in progress)
        self.opened = 0  # connections ever opened (tests and metrics)
        self.generation = 0
        self.closed = False
        self._sweeper: asyncio.TimerHandle | None = None

    # -- taking ---------------------------------------------------------------------

    def take_idle(self) -> UpstreamConnection | None:
        """A live idle connection, or None. Never awaits (the pooled fast path)."""
        idle = self._idle
        if not idle:
            return None
        now = self.loop.time()
        while idle:
            conn = idle.pop()  # most recently used first: warmest, least likely stale
            if (conn.closed or now - conn.idle_since > self.idle_s
                    or conn.pool_generation != self.generation):
                self._discard(conn)
                continue
            return conn
        return None

    async def acquire(self) -> UpstreamConnection:
        """An idle connection, a new one, or wait (FIFO) for one to free up."""
        conn = self.take_idle()
        if conn is not None:
            return conn
        if self.closed:
            raise UpstreamConnectError(f"upstream {self.name}: pool closed")
        while True:
            if self.total < self.max_connections:
                return await self.connect()
            waiter: asyncio.Future[UpstreamConnection | None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                got = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # Handed a connection (or a slot) just as we were cancelled: pass it on.
                    handed = waiter.result()
                    if handed is not None:
                        self._keep(handed)  # already reset: release() would close it
                    else:
                        self.total -= 1  # unbook the slot handed to us
                        self._slot_freed()
                else:
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        pass
                raise
            if got is not None:
                return got
            # Handed a free slot: connect ourselves (the slot is already booked).
            self.total -= 1

    async def connect(self) -> UpstreamConnection:
        """Open a new connection on a booked slot; the slot is freed on any failure."""
        self.total += 1  # book the slot before the await
        try:
            host, port, tls = self.key
            try:
                _, conn = await asyncio.wait_for(
                    self.loop.create_connection(
                        lambda: UpstreamConnection(self.loop, self.name, self.generation,
                                                   self.batch),
                        host, port, ssl=self.ssl_context if tls else None,
                        server_hostname=host if tls else None),
                    self.connect_s)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"could not connect to upstream {self.name} within connect_s "
                    f"({self.connect_s:g} s)") from None
            except ssl.SSLError as exc:
                raise UpstreamConnectError(
                    f"TLS handshake with upstream {self.name} failed: {exc.reason}") from None
            except OSError as exc:
                raise UpstreamConnectError(
                    f"could not connect to upstream {self.name}: "
                    f"{exc.strerror or exc.__class__.__name__}") from None
        except BaseException:
            self.total -= 1
            self._slot_freed()
            raise
        self.opened += 1
        transport = conn.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    # -- giving back --------------------------------------------------------------------

    def put_back(self, conn: UpstreamConnection) -> None:
        """An idle connection :meth:`take_idle` gave that was not used after all."""
        self._keep(conn)

    def release(self, conn: UpstreamConnection, reuse: bool) -> None:
        """Return a connection after an exchange; it is closed unless reusable."""
        if reuse and conn.recycle():
            self._keep(conn)
            return
        self._discard(conn)

    def _keep(self, conn: UpstreamConnection) -> None:
        """A clean, reset connection: to the first live waiter, else idle."""
        if self.closed or conn.closed or conn.pool_generation != self.generation:
            self._discard(conn)
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_s, self._sweep)

    def _discard(self, conn: UpstreamConnection) -> None:
        conn.abort()
        self.total -= 1
        self._slot_freed()

    def _slot_freed(self) -> None:
        """A slot opened up: let the first live waiter connect."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self.total += 1  # book it for the waiter; it unbooks before connecting
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close connections idle past ``idle_s`` (so idle sockets do not pile up)."""
        self._sweeper = None
        now = self.loop.time()
        keep: deque[UpstreamConnection] = deque()
        for conn in self._idle:
            if conn.closed or now - conn.idle_since > self.idle_s:
                self._discard(conn)
            else:
                keep.append(conn)
        self._idle = keep
        if keep:
            self._sweeper = self.loop.call_later(self.idle_s, self._sweep)

    def expire(self) -> None:
        """Retire every idle connection now; busy ones close when released (O(1))."""
        self.generation += 1
        while self._idle:
            self._discard(self._idle.pop())

    def close(self) -> None:
        self.closed = True
        self.expire()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamConnectError(f"upstream {self.name}: pool closed"))

    @property
    def idle_count(self) -> int:
        return len(self._idle)
