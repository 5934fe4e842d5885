"""benchmarks/phases.py: reading perf trace's lines and matching each proxied
request's four calls (client read, upstream write, upstream read, client write)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import phases  # type: ignore[import-not-found,unused-ignore]

# perf trace's output for one request (client connection 45, upstream 46), a turn
# of polling after the upstream write, and the next request's read cut short.
TRACE = """\
     0.000 syscalls:sys_enter_epoll_pwait(epfd: 3, maxevents: 1024, timeout: 355, sigsetsize: 8)
    20.000 syscalls:sys_exit_epoll_pwait(__syscall_nr: 281, ret: 1)
    20.030 syscalls:sys_enter_read(fd: 45<socket:[923567]>, buf: 0x5607, count: 256000)
    20.052 syscalls:sys_exit_read(ret: 235)
    20.152 syscalls:sys_enter_write(fd: 46<socket:[923454]>, buf: 0x7f5a, count: 275)
    20.212 syscalls:sys_exit_write(ret: 275)
    20.220 syscalls:sys_enter_epoll_pwait(epfd: 3, maxevents: 1024, sigsetsize: 8)
    20.230 syscalls:sys_exit_epoll_pwait(__syscall_nr: 281)
    20.400 syscalls:sys_enter_read(fd: 46<socket:[923454]>, buf: 0x5607, count: 256000)
    20.412 syscalls:sys_exit_read(ret: 447)
    20.482 syscalls:sys_enter_write(fd: 45<socket:[923567]>, buf: 0x5607, count: 628)
    20.532 syscalls:sys_exit_write(ret: 628)
    20.540 syscalls:sys_enter_epoll_pwait(epfd: 3, maxevents: 1024, timeout: 346, sigsetsize: 8)
    40.000 syscalls:sys_exit_epoll_pwait(__syscall_nr: 281, ret: 1)
    40.020 syscalls:sys_enter_read(fd: 45<socket:[923567]>, buf: 0x5607, count: 256000)
"""


def test_one_request_is_timed_phase_by_phase() -> None:
    calls = phases.parse(TRACE)
    assert [c.name for c in calls][:4] == ["epoll_pwait", "read", "write", "epoll_pwait"]
    got = phases.phases("fastgw", calls, {46})
    assert got.requests == 1
    expect = {"wake": 30.0, "request": 100.0, "up write": 60.0, "upstream": 200.0,
              "response": 70.0, "client write": 50.0}
    for phase, us in expect.items():
        assert got.median(phase) == pytest.approx(us, abs=0.01), phase


def test_the_answer_then_the_next_request_is_not_a_request() -> None:
    # read(46) write(45) read(45) write(46) has the same shape with the roles swapped:
    # only a write to an upstream connection begins a match.
    text = TRACE + """\
    40.042 syscalls:sys_exit_read(ret: 235)
    40.142 syscalls:sys_enter_write(fd: 46<socket:[923454]>, buf: 0x7f5a, count: 275)
    40.202 syscalls:sys_exit_write(ret: 275)
"""
    assert phases.phases("fastgw", phases.parse(text), {46}).requests == 1


def test_an_unfinished_call_is_left_out() -> None:
    cut = TRACE.split("    20.532")[0]  # the client write never returned
    assert phases.phases("fastgw", phases.parse(cut), {46}).requests == 0


def test_upstream_connections_are_found_by_their_remote_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as up, \
                socket.create_connection(("127.0.0.1", port)) as up2:
            accepted, _ = server.accept()
            with accepted:
                fds = phases.upstream_fds(os.getpid(), port)
                # our two connections to the port; not the listener, not the accepted end
                assert fds == {up.fileno(), up2.fileno()}
