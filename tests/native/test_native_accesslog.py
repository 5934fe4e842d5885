"""The native access-log line says what the reference's dict says; the native
buffer of lines holds, drops and hands over what the reference's does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import accesslog as ref

# Sockets leaked by other tests' servers can be collected while these run;
# pytest would blame the test that happens to trigger the collection.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
)

_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
_name = st.none() | _text
_seconds = st.floats(-1.0, 1e4, allow_nan=False) | st.sampled_from([0.0, 1e-7, 0.0012345678])


@settings(max_examples=800, deadline=None)
@given(
    time=st.floats(0, 2e9),
    request_id=st.binary(max_size=20),
    key=_name, client_ip=_text, path=st.binary(max_size=30), model=_name, served=_name,
    route=_name, variant=_name, provider=_name,
    status=st.integers(100, 599), stream=st.booleans(), attempts=st.integers(0, 9),
    latency=_seconds, ttfb=_seconds, overhead=_seconds,
    usage=st.none() | st.tuples(st.integers(0, 10**9), st.integers(0, 10**9),
                                st.floats(0, 1e3, allow_nan=False)
                                | st.sampled_from([1.234567891e-6, 5e-9, 0.1 + 0.2])),
    error=_name,
    cache=st.none() | st.sampled_from(["hit", "miss", "bypass"]),
)
def test_the_native_line_matches_the_reference(**kw: Any) -> None:
    args = (kw["time"], kw["request_id"], kw["key"], kw["client_ip"], kw["path"], kw["model"],
            kw["served"], kw["route"], kw["variant"], kw["provider"], kw["status"], kw["stream"],
            kw["attempts"], kw["latency"], kw["ttfb"], kw["overhead"], kw["usage"], kw["error"],
            kw["cache"])
    line = native.access_line(*args)
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    got = orjson.loads(line)
    want = orjson.loads(ref.access_line(*args))
    assert list(got) == list(want)  # the same fields in the same order
    assert got == want


def test_escapes_are_written_as_json_escapes() -> None:
    line = native.access_line(1.0, b"r", 'k"\\\n\r\t\x08\x0c\x01\x1fé€', "ip", b"/p\xff\"\x7f",
                              None, None, None, None, None, 200, False, 1, 0.0, 0.0, 0.0, None,
                              None)
    assert b'"key":"k\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u001f\xc3\xa9\xe2\x82\xac"' in line
    assert b'"path":"/p\xc3\xbf\\"\x7f"' in line
    assert orjson.loads(line)["key"] == 'k"\\\n\r\t\x08\x0c\x01\x1fé€'


class _SlowWriter:
    """A writer whose lines stay unwritten until told: what is pending (and so
    what is dropped) is the test's to say."""

    def __init__(self) -> None:
        self.batches: list[tuple[bytes, int]] = []
        self.pending = 0

    def submit(self, data: bytes | bytearray, lines: int) -> bool:
        self.batches.append((bytes(data), lines))
        self.pending += lines
        return True


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.sampled_from(["access", "line", "flush", "written"]), max_size=60),
       max_pending=st.integers(0, 6))
def test_the_native_buffer_holds_drops_and_flushes_as_the_reference(ops: list[str],
                                                                   max_pending: int) -> None:
    """The same operations on both buffers, each before its own slow writer: the
    same answers, counts and batches (the dropped count after the lines)."""
    writers = _SlowWriter(), _SlowWriter()
    nat = native.LogBuffer(writers[0], max_pending)
    reference = ref.LogBuffer(writers[1], max_pending)
    for i, op in enumerate(ops):
        if op == "access":
            args = (1.5e9 + i, b"req_%d" % i, "team", "10.0.0.1", b"/v1/chat/completions",
                    "gpt", "gpt-d", "gpt", None, "p", 200, False, 1, 0.01, 0.005, 0.0001,
                    (3, 4, 1e-6), None, None)
            assert nat.access(*args) == reference.access(*args)
        elif op == "line":
            line = b'{"event":"x","i":%d}\n' % i
            assert nat.line(line) == reference.line(line)
        elif op == "flush":
            assert nat.flush() == reference.flush()
        else:  # the writers catch up
            writers[0].pending = writers[1].pending = 0
        assert (nat.lines, nat.dropped) == (reference.lines, reference.dropped)
    assert writers[0].batches == writers[1].batches


def test_a_native_writer_gets_the_batch_and_the_dropped_count(tmp_path: Path) -> None:
    """Before the native writer (the batch handed over without a copy): lines past
    max_pending dropped, then counted after the next batch's lines."""
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    writer = native.LogWriter(fd)
    try:
        buf = native.LogBuffer(writer, 2)
        assert buf.line(b'{"i":1}\n') is True  # the first since a flush
        assert buf.line(b'{"i":2}\n') is False
        assert buf.line(b'{"i":3}\n') is False and buf.dropped == 1  # 2 pending: dropped
        buf.flush()
        assert writer.close(5.0)
    finally:
        os.close(fd)
    assert path.read_bytes() == (b'{"i":1}\n{"i":2}\n'
                                 b'{"event":"access_log_dropped","lines":1}\n')
    assert buf.lines == 0 and buf.dropped == 0
