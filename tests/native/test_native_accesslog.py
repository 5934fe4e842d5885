"""The native access-log line says what the reference's dict says."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import accesslog as ref

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
