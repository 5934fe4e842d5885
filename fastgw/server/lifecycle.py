"""Listening sockets and graceful shutdown.

Shutdown (SIGTERM) drains: stop accepting, close idle keep-alive connections,
let requests and streams in flight finish (answers go out with
``connection: close``), and after ``drain_timeout_s`` close whatever is left.
"""

from __future__ import annotations

import asyncio
import socket

from fastgw.server.protocol import Handler, ServerSettings, ServerState, make_factory


def listen_socket(host: str, port: int, *, reuse_port: bool, backlog: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (SO_REUSEPORT when asked)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def start_server(handler: Handler, settings: ServerSettings, state: ServerState,
                       sock: socket.socket, backlog: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(make_factory(handler, settings, state, loop), sock=sock,
                                    backlog=backlog)


async def drain(server: asyncio.Server, state: ServerState, timeout_s: float) -> bool:
    """Stop accepting, finish in-flight work; True when everything finished in time."""
    state.draining = True
    server.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        for conn in list(state.connections):
            conn.close_if_idle()
        if not state.connections:
            return True
        if loop.time() >= deadline:
            break
        await asyncio.sleep(0.05)
    for conn in list(state.connections):
        if conn.transport is not None:
            conn.transport.abort()
    return False
