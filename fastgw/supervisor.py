"""``--workers N``: a parent that forks N workers on one port and looks after them.

Each worker binds its own SO_REUSEPORT socket, so the kernel spreads new
connections across them. The parent holds no event loop: it waits for
signals, restarts a worker that dies (with a growing delay if it keeps
crashing), forwards SIGHUP (reload) and SIGTERM/SIGINT (drain, then exit 0).
Metrics of all workers are aggregated through prometheus-client's
multiprocess mode, set up here before any worker imports it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from fastgw.config import Config

if TYPE_CHECKING:
    from fastgw.limits.state import LimitState

_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}


def supervise(cfg: Config, state: LimitState | None = None) -> int:
    """Run the workers until SIGTERM/SIGINT. With ``state`` (``server.state_dir``)
    the workers share its limits table, flushed here every ``state_flush_s``."""
    metrics_dir = tempfile.mkdtemp(prefix="fastgw-metrics-")
    # Must be set before prometheus_client is imported by any worker.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from prometheus_client import multiprocess

    # Local limits shared by the workers: each maps one file (limits/local.py),
    # the state directory's, or a temporary one in memory.
    shm_path: str | None = None
    if state is None:
        shm_dir = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        shm_path = os.path.join(shm_dir, f"fastgw-limits-{os.getpid()}")
        try:
            os.unlink(shm_path)  # left by an earlier process with our pid: start from zero
        except OSError:
            pass
        os.environ["FASTGW_LIMITS_SHM"] = shm_path
    next_flush = time.monotonic() + cfg.server.state_flush_s

    s = cfg.server
    # Reserve the port (and learn it when 0 was asked): a bound, non-listening
    # SO_REUSEPORT socket receives no connections but keeps the port ours.
    infos = socket.getaddrinfo(s.host, s.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(addr)
    port = holder.getsockname()[1]
    import dataclasses

    cfg = dataclasses.replace(cfg, server=dataclasses.replace(s, port=port))
    print(f"fastgw supervisor[{os.getpid()}]: {s.workers} workers on {s.host}:{port}",
          file=sys.stderr, flush=True)

    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    parent = os.getpid()
    children: dict[int, int] = {}
    crashes = [0] * s.workers
    started_at = [0.0] * s.workers
    restart_at: dict[int, float] = {}

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            holder.close()
            _die_with_parent(parent)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            code = 1
            try:
                from fastgw.app import run_worker
                from fastgw.pipeline.headers import reseed_request_ids

                reseed_request_ids()
                code = run_worker(cfg)
            except BaseException as exc:  # a worker must never fall back into the parent
                print(f"fastgw worker[{os.getpid()}] failed: {exc!r}", file=sys.stderr)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = slot
        started_at[slot] = time.monotonic()

    for slot in range(s.workers):
        spawn(slot)

    stopping = False
    try:
        while children or (restart_at and not stopping):
            info = signal.sigtimedwait(_SIGNALS, 0.5)
            now = time.monotonic()
            if info is not None:
                if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    if stopping:  # asked twice: stop waiting for the drain
                        _send(children, signal.SIGKILL)
                    else:
                        stopping = True
                        restart_at.clear()
                        _send(children, signal.SIGTERM)
                elif info.si_signo == signal.SIGHUP:
                    _send(children, signal.SIGHUP)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                dead: int | None = children.pop(pid, None)
                multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
                if dead is None or stopping:
                    continue
                code = os.waitstatus_to_exitcode(status)
                quick = now - started_at[dead] < 10.0
                crashes[dead] = crashes[dead] + 1 if quick else 1
                delay = min(0.1 * 2 ** (crashes[dead] - 1), 5.0)
                print(f"fastgw supervisor: worker {pid} exited ({code}); restarting in "
                      f"{delay:.1f} s", file=sys.stderr, flush=True)
                restart_at[dead] = now + delay
            for due, when in list(restart_at.items()):
                if when <= now and not stopping:
                    del restart_at[due]
                    spawn(due)
            if state is not None and now >= next_flush:
                state.flush()
                next_flush = now + cfg.server.state_flush_s
    finally:
        holder.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if shm_path is not None:
            try:
                os.unlink(shm_path)
            except OSError:
                pass
    return 0


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """A worker gets SIGTERM (and drains) if the supervisor dies, even by SIGKILL,
    instead of serving on as an orphan nobody supervises."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent check below still runs
        pass
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(0)


def _send(children: dict[int, int], sig: signal.Signals) -> None:
    for pid in list(children):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
