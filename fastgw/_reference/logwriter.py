"""Pure-Python reference of the native access-log writer (``rust/src/logwriter.rs``):
the same API, a Python thread that writes each batch whole and counts its lines
as written (failed writes included). Slower under load than the native one: it
needs the interpreter's lock after every write, and waits for it while the event
loop runs."""

from __future__ import annotations

import os
import queue
import threading

__all__ = ["LogWriter"]


class LogWriter:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._queue: queue.SimpleQueue[tuple[bytes, int] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._submitted = 0
        self._written = 0
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="fastgw-access-log", daemon=True)
        self._thread.start()

    def submit(self, data: bytes | bytearray, lines: int) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._queue.put((bytes(data), lines))
            self._submitted += lines
            return True

    @property
    def written(self) -> int:
        return self._written

    @property
    def pending(self) -> int:
        return max(0, self._submitted - self._written)

    def close(self, timeout_s: float = 5.0) -> bool:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, timeout_s))
            if thread.is_alive():
                return False  # still blocked in a write
            self._thread = None
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            data, lines = item
            view = memoryview(data)
            try:
                while view:
                    n = os.write(self._fd, view)
                    if n == 0:
                        break
                    view = view[n:]
            except OSError:
                pass  # a closed stdout must not take the gateway down
            self._written += lines
