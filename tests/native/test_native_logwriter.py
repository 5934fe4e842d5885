"""The access log's writer thread: the native one and its reference write the same
bytes in the same order and count the same lines; the native one never wakes
for the interpreter's lock while the event loop runs."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import logwriter as ref

_batches = st.lists(st.tuples(st.binary(max_size=3000), st.integers(0, 50)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(batches=_batches)
def test_native_and_reference_write_the_same(
    tmp_path_factory: pytest.TempPathFactory, batches: list[tuple[bytes, int]]
) -> None:
    outputs = []
    for cls in (native.LogWriter, ref.LogWriter):
        path = tmp_path_factory.mktemp("log") / "out"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            writer = cls(fd)
            for data, lines in batches:
                assert writer.submit(bytearray(data), lines)
            writer.close()
            writer.close()  # idempotent
            assert not writer.submit(b"late\n", 1)
            assert writer.written == sum(n for _, n in batches)
            assert writer.pending == 0
        finally:
            os.close(fd)
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1] == b"".join(d for d, _ in batches)


@pytest.mark.parametrize("cls", [native.LogWriter, ref.LogWriter], ids=["native", "reference"])
def test_a_writer_behind_counts_pending_lines_until_written(cls: type[native.LogWriter]) -> None:
    r, w = os.pipe()
    os.set_blocking(r, True)
    writer = cls(w)
    try:
        big = b"x" * (1 << 20)  # more than the pipe holds: the thread blocks on it
        assert writer.submit(big, 1)
        assert writer.submit(b"y\n", 3)
        time.sleep(0.05)
        assert writer.written == 0 and writer.pending == 4
        got = 0
        deadline = time.monotonic() + 10
        while got < len(big) + 2 and time.monotonic() < deadline:
            got += len(os.read(r, 1 << 16))
        assert got == len(big) + 2
    finally:
        writer.close()
        os.close(r)
        os.close(w)
    assert writer.written == 4 and writer.pending == 0


def test_a_failed_write_counts_its_lines_and_does_not_stop_the_thread() -> None:
    r, w = os.pipe()
    os.close(r)  # EPIPE (Python ignores SIGPIPE)
    writer = native.LogWriter(w)
    try:
        assert writer.submit(b"lost\n", 1) and writer.submit(b"lost too\n", 2)
    finally:
        writer.close()
        os.close(w)
    assert writer.written == 3


def _tasks() -> set[int]:
    return {int(p.name) for p in Path("/proc/self/task").iterdir()}


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("cls", [native.LogWriter, ref.LogWriter], ids=["native", "reference"])
def test_only_the_reference_thread_runs_python(tmp_path: Path, cls: type[native.LogWriter]) -> None:
    """A thread that runs Python needs the interpreter's lock after every write, and
    waits for it while the event loop runs (under load, woken at each of the loop's
    releases of the lock: thousands of wake-ups a second). The native writer is an
    OS thread without an interpreter state: it never asks for the lock."""
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    before = _tasks()
    writer = cls(fd)
    try:
        writer.submit(b"line\n", 1)
        deadline = time.monotonic() + 10
        while writer.written < 1 and time.monotonic() < deadline:
            time.sleep(0.001)  # the thread has run (and named itself)
        (tid,) = _tasks() - before  # the writer's thread
        python_threads = {t.native_id for t in threading.enumerate()}
        assert (tid in python_threads) == (cls is not native.LogWriter)
        if cls is native.LogWriter:
            assert Path(f"/proc/self/task/{tid}/comm").read_text().strip() == "fastgw-access-l"
    finally:
        writer.close()
        os.close(fd)
    assert writer.written == 1 and (tmp_path / "log").read_bytes() == b"line\n"


@pytest.mark.parametrize("cls", [native.LogWriter, ref.LogWriter], ids=["native", "reference"])
def test_closing_a_writer_blocked_in_a_write_gives_up_after_the_timeout(
    cls: type[native.LogWriter],
) -> None:
    r, w = os.pipe()
    writer = cls(w)
    try:
        assert writer.submit(b"x" * (1 << 20), 1)  # more than the pipe holds: blocked
        start = time.monotonic()
        assert writer.close(0.1) is False  # still blocked in its write
        assert time.monotonic() - start < 5
        os.close(r)  # the write fails (EPIPE): the thread ends
        r = -1
        assert writer.close(10.0) is True
        assert writer.written == 1
    finally:
        if r >= 0:
            os.close(r)
        os.close(w)
