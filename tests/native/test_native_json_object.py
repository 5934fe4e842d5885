"""``is_json_object``: the native check agrees with its reference (``orjson.loads``
gives a dict) on JSON documents, on their corruptions and on odd bytes."""

from __future__ import annotations

import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import cachekey as ref

_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_values, st.integers(0, 400), st.integers(0, 255), st.sampled_from(["keep", "cut", "flip"]))
@example(True, 0, 0, "keep")
def test_native_agrees_with_the_reference(value: object, at: int, byte: int, how: str) -> None:
    data = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if how == "cut":
        data = data[: at % (len(data) + 1)]
    elif how == "flip" and data:
        i = at % len(data)
        data = data[:i] + bytes([byte]) + data[i + 1:]
    assert native.is_json_object(data) == ref.is_json_object(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_agree(data: bytes) -> None:
    assert native.is_json_object(data) == ref.is_json_object(data)


def test_examples() -> None:
    yes = [b'{}', b' {"a": [1, 2.5, "x", null, true]} ', b'{"a":1,"a":2}',
           b'{"big": 18446744073709551615}', b'{"s": "\\ud83d\\ude00"}']
    no = [b'', b'[]', b'1', b'"x"', b'{"a":', b'{"a":1}{}', b'{"a":1,}', b'\xef\xbb\xbf{}',
          b'{"n": NaN}', b'{"s": "\\ud83d"}', b'{"big": 1e400}', b'{"c": "\x01"}',
          b'[' * 2000 + b']' * 2000]
    for data in yes:
        assert native.is_json_object(data) and ref.is_json_object(data), data
    for data in no:
        assert not native.is_json_object(data) and not ref.is_json_object(data), data[:20]
