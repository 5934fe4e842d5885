"""``server.state_dir``: local limits and budgets that survive a restart.

The local limits' table is then a file in the state directory
(``limits.table``) that every process maps (the same region ``--workers``
shares): the buckets live in the page cache while the gateway runs, a
process that crashes loses nothing, and the file is written to disk every
``state_flush_s`` seconds and at the end of a drain, so a crash of the machine
loses at most the last interval. At start the region is made usable again
(:meth:`SharedLimiterTable.recover`: a new lock, in-flight counters freed);
rate and budget buckets carry on where they were, and a budget whose period
has ended starts its new period as it would have anyway.

One gateway owns a state directory at a time: an exclusive ``flock`` on
``fastgw.lock`` is held for the process's (or the supervisor's) life.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from typing import Final

from fastgw._native import SharedLimiterTable
from fastgw.errors import StateDirError
from fastgw.limits.local import SHM_ENV

__all__ = ["LimitState"]

log = logging.getLogger("fastgw.limits")

TABLE_FILE: Final = "limits.table"
LOCK_FILE: Final = "fastgw.lock"


class LimitState:
    """The state directory, locked, and its limits table mapped and recovered."""

    def __init__(self, state_dir: str) -> None:
        self.dir = state_dir
        self.path = os.path.join(state_dir, TABLE_FILE)
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            self._lock_fd = os.open(os.path.join(state_dir, LOCK_FILE),
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateDirError(f"server.state_dir: cannot use {state_dir}: "
                                f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise StateDirError(
                f"server.state_dir: {state_dir} is in use by another fastgw process; "
                "give each gateway its own state_dir") from exc
        try:
            self.table = self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _open(self) -> SharedLimiterTable:
        try:
            table = SharedLimiterTable(self.path)
        except OSError as exc:
            if not os.path.exists(self.path):
                raise StateDirError(f"server.state_dir: cannot create {self.path}: {exc}") from exc
            # Not a limits table (damaged, or written by another version): kept
            # aside for inspection, and the limits start from zero.
            aside = f"{self.path}.unreadable-{int(time.time())}"
            os.replace(self.path, aside)
            log.error("server.state_dir: %s could not be read (%s); moved to %s, "
                      "limits and budgets start from zero", self.path, exc, aside)
            table = SharedLimiterTable(self.path)
        freed = table.recover()
        log.info("limits state read from %s (%d buckets; %d in-flight counters of the "
                 "previous run freed)", self.path, len(table), freed)
        return table

    def use(self) -> None:
        """Make every local limiter of this process and of the workers it forks
        map the state file (``limits.local.local_table``)."""
        os.environ[SHM_ENV] = self.path

    def flush(self) -> None:
        """Write the table's changed pages to disk now (blocking; no GIL held)."""
        try:
            self.table.flush()
        except OSError as exc:
            log.error("server.state_dir: writing %s failed: %s", self.path, exc)

    def start_flusher(self, interval_s: float) -> None:
        """Flush every ``interval_s`` seconds from a daemon thread (single process;
        the ``--workers`` supervisor calls :meth:`flush` from its own loop)."""
        def run() -> None:
            while not self._stop.wait(interval_s):
                self.flush()

        self._thread = threading.Thread(target=run, name="fastgw-state", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the flusher, flush a last time, release the directory."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()
        os.close(self._lock_fd)
