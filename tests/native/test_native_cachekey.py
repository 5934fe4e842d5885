"""The native cache key is the reference's: the same key for the same document
however it is written, a different one for a different document, scope,
endpoint or model, and ValueError for what is not a JSON object."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
import xxhash
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import cachekey as ref

SCOPE, ENDPOINT, MODEL = b"team-a", b"/v1/chat/completions", b"gpt-4o-mini"


class Obj(list[tuple[str, Any]]):
    """An object's members in document order (a key may repeat: the last wins)."""


def _value(doc: Any) -> Any:
    """What the document means: objects as dicts (last value of a key)."""
    if isinstance(doc, Obj):
        return {k: _value(v) for k, v in doc}
    if isinstance(doc, list):
        return [_value(v) for v in doc]
    return doc


# ---------------------------------------------------------------- documents

_chars = st.characters(exclude_categories=["Cs"]) | st.sampled_from(
    '"\\/\x00\x01\x08\t\n\x0c\r\x1f\x7f\u00e9\u2028\ufeff\uffff\U0001f600\U0010ffff'
)
_text = st.text(_chars, max_size=12)
_ints = (
    st.integers(-(2**70), 2**70)
    | st.integers(-(2**200), 2**200)
    | st.sampled_from([0, 1, -1, 2**53, 2**53 + 1, -(2**53), 2**63 - 1, -(2**63), -(2**63) - 1,
                       2**64 - 1, 2**64, 10**30])
)
# Few fraction bits and a large magnitude: two shortest decimals as near (the even one is
# written, as Python's repr does; Rust's `{:e}` would pick the other).
_ties = st.builds(math.ldexp, st.integers(-(2**53), 2**53), st.integers(-60, 60))
_floats = st.floats(allow_nan=False, allow_infinity=False) | _ties | st.sampled_from(
    [0.0, -0.0, 1.0, -1.0, 0.5, 0.1, 1e300, -1e300, 5e-324, 2.2250738585072014e-308,
     1.7976931348623157e308, 9007199254740992.0, 9007199254740994.0, 1e16, 1e22, 1e23, 123.0,
     900719925474099.25]
)
_leaves = st.none() | st.booleans() | _ints | _floats | _text
_documents = st.recursive(
    _leaves,
    lambda kids: st.lists(kids, max_size=4)
    | st.lists(st.tuples(st.sampled_from(["a", "b", "é", "user", "stream"]) | _text, kids),
               max_size=5).map(Obj),
    max_leaves=25,
)
_bodies = st.lists(
    st.tuples(st.sampled_from(["model", "messages", "a", "stream", "user", "fastgw",
                               "stream_options"]) | _text, _documents),
    max_size=6,
).map(Obj)


def _ws(rnd: random.Random) -> str:
    return rnd.choice(["", "", "", " ", "\n  ", "\t", "\r\n"])


_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
          "\t": "\\t", "/": "\\/"}


def _char(c: str, rnd: random.Random) -> str:
    n = ord(c)
    if n >= 0x10000:  # as a surrogate pair
        hi, lo = divmod(n - 0x10000, 0x400)
        ways = [f"\\u{0xD800 + hi:04x}\\u{0xDC00 + lo:04X}"]
    else:
        ways = [f"\\u{n:04x}", f"\\u{n:04X}"]
    if c in _SHORT:
        ways.append(_SHORT[c])
    if c not in '"\\' and n >= 0x20:
        ways += [c] * 3
    return rnd.choice(ways)


def _number(v: int | float, rnd: random.Random) -> str:
    if isinstance(v, int):
        ways = [str(v)]
        if abs(v) <= 2**53:  # the same f64 exactly: the same number
            ways += [f"{v}.0", f"{v}e0", f"{v}.000E+0", f"{v * 10}e-1"]
        if v == 0:
            ways += ["-0", "-0.0", "0e-7"]
        return rnd.choice(ways)
    ways = [repr(v), f"{v:.17e}", f"{v:.25e}", f"{v:.17E}".replace("E+", "E")]
    if v.is_integer() and abs(v) <= 2**53:
        ways.append("-0" if math.copysign(1.0, v) < 0 and v == 0 else str(int(v)))
    return rnd.choice(ways)


def _render(doc: Any, rnd: random.Random) -> str:
    """``doc`` as JSON text, spelled one of many ways."""
    if doc is None:
        return "null"
    if doc is True or doc is False:
        return "true" if doc else "false"
    if isinstance(doc, int | float):
        return _number(doc, rnd)
    if isinstance(doc, str):
        return '"' + "".join(_char(c, rnd) for c in doc) + '"'
    if isinstance(doc, Obj):
        inner = ",".join(
            f"{_ws(rnd)}{_render(k, rnd)}{_ws(rnd)}:{_ws(rnd)}{_render(v, rnd)}{_ws(rnd)}"
            for k, v in doc
        )
        return "{" + (inner or _ws(rnd)) + "}"
    inner = ",".join(f"{_ws(rnd)}{_render(v, rnd)}{_ws(rnd)}" for v in doc)
    return "[" + (inner or _ws(rnd)) + "]"


def _respelled(doc: Any, rnd: random.Random) -> Any:
    """The same document: repeated keys resolved, members shuffled."""
    if isinstance(doc, Obj):
        members = [(k, _respelled(v, rnd)) for k, v in dict(doc).items()]
        rnd.shuffle(members)
        return Obj(members)
    if isinstance(doc, list):
        return [_respelled(v, rnd) for v in doc]
    return doc


def _both(body: bytes, scope: bytes = SCOPE, endpoint: bytes = ENDPOINT,
          model: bytes = MODEL) -> bytes | None:
    """The key (None when refused), the same from the native code and the reference."""
    try:
        got: bytes | None = native.cache_key(body, scope, endpoint, model)
    except ValueError:
        got = None
    try:
        want: bytes | None = ref.cache_key(body, scope, endpoint, model)
    except ValueError:
        want = None
    assert got == want, body
    return got


# ---------------------------------------------------------------- native == reference


@settings(max_examples=500, deadline=None)
@given(body=_bodies, rnd=st.randoms(use_true_random=False),
       scope=st.binary(max_size=8), endpoint=st.binary(max_size=8), model=st.binary(max_size=8))
@example(body=Obj([("a", 1), ("a", 2)]), rnd=random.Random(0), scope=b"", endpoint=b"", model=b"")
def test_native_matches_the_reference(body: Obj, rnd: random.Random, scope: bytes,
                                      endpoint: bytes, model: bytes) -> None:
    text = _ws(rnd) + _render(body, rnd) + _ws(rnd)
    key = _both(text.encode("utf-8"), scope, endpoint, model)
    assert key is not None and len(key) == 16


_damage = st.sampled_from(b'{}[],:"\\ u0-.eE1\x00\x7f\xff\xc3') | st.integers(0, 255)


@settings(max_examples=500, deadline=None)
@given(body=_bodies, rnd=st.randoms(use_true_random=False), data=st.data())
def test_damaged_documents_get_the_same_verdict(body: Obj, rnd: random.Random, data: Any
                                                ) -> None:
    raw = bytearray(_render(body, rnd).encode("utf-8"))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        what = data.draw(st.sampled_from(["delete", "insert", "replace"]))
        byte = data.draw(_damage)
        if what == "delete":
            del raw[at : at + 1]
        elif what == "insert":
            raw[at:at] = bytes([byte])
        else:
            raw[at : at + 1] = bytes([byte])
    _both(bytes(raw))


@pytest.mark.parametrize("text", [
    '{"a":1.7976931348623157e308}', '{"a":1.7976931348623159e308}', '{"a":1e309}',
    '{"a":' + "1" * 400 + "}", '{"a":-' + "9" * 310 + "}", '{"a":0.' + "0" * 400 + "1}",
    '{"a":1e-400}', '{"a":-1e-400}', '{"a":2.4703282292062328e-324}',
    '{"a":2.4703282292062327e-324}', '{"a":9007199254740993}', '{"a":9007199254740993.0}',
    '{"a":0.1000000000000000055511151231257827021181583404541015625}',
    '{"a":900719925474099.2}', '{"a":900719925474099.25}', '{"a":900719925474099.3}',
    '{"a":18446744073709551615}', '{"a":18446744073709551616}', '{"a":-9223372036854775808}',
    '{"a":-9223372036854775809}', '{"a":"\\ud83d\\ude00"}', '{"a":"\\ud83d"}',
    '{"a":"\\ude00"}', '{"a":"\\ud83d\\u0041"}', '{"\\udfff":1}', '{"user":"\\ud800"}',
    '{"a":"\\ud800","a":1}', '{"a":1,}', '{"a":01}', '{"a":-}', '{"a":.5}', '{"a":5.}',
    '{"a":+1}', '{"a":0x10}', '{"a":NaN}', '{"a":Infinity}', '{"a":tru}', "{'a':1}",
    '{"a":"\\x41"}', '{"a":"\\U0041"}', "{\"a\":\"\x01\"}", '{"a":"\x7f"}', '{"a":1}}',
    '{"a":1} {}', '{"a":1}\x00', "\ufeff{}", "{\"a\":1}\u00a0", "\x0c{}", "{}\x0b",
])
def test_edge_documents_match_the_reference(text: str) -> None:
    _both(text.encode("utf-8"))


def test_invalid_utf8_is_refused_alike() -> None:
    for body in [b'{"a":"\xff"}', b'{"\xc3":1}', b'{"user":"\xed\xa0\x80"}', b'{"a":"\xc0\xaf"}',
                 b'{"a":"\xf4\x90\x80\x80"}']:
        assert _both(body) is None


@pytest.mark.parametrize("levels", [126, 127, 128, 129, 1100])
def test_nesting_is_limited_alike(levels: int) -> None:
    arrays = "[" * (levels - 1) + "]" * (levels - 1)
    for body in ('{"a":' + arrays + "}",
                 '{"a":' * levels + "0" + "}" * levels,
                 '{"s":"[[[{{{","a":' + arrays + ',"t":"]]]}}}"}'):  # brackets in strings
        key = _both(body.encode())
        assert (key is not None) == (levels <= 127), body[:40]


# ---------------------------------------------------------------- equal and different


@settings(max_examples=300, deadline=None)
@given(body=_bodies, rnd=st.randoms(use_true_random=False),
       left_out=st.lists(st.tuples(st.sampled_from(sorted(ref.LEFT_OUT)), _documents),
                         max_size=3))
def test_equal_documents_give_equal_keys(body: Obj, rnd: random.Random,
                                         left_out: list[tuple[str, Any]]) -> None:
    key = _both(_render(body, rnd).encode("utf-8"))
    assert key is not None
    other = _respelled(Obj([(k, v) for k, v in body if k not in ref.LEFT_OUT]), rnd)
    other[rnd.randint(0, len(other)):0] = left_out
    assert _both(_render(other, rnd).encode("utf-8")) == key


@settings(max_examples=300, deadline=None)
@given(a=_bodies, b=_bodies, rnd=st.randoms(use_true_random=False))
def test_different_documents_give_different_keys(a: Obj, b: Obj, rnd: random.Random) -> None:
    def meaning(doc: Obj) -> str:
        return ref.canonical({k: v for k, v in _value(doc).items() if k not in ref.LEFT_OUT})

    ka = _both(_render(a, rnd).encode("utf-8"))
    kb = _both(_render(b, rnd).encode("utf-8"))
    assert ka is not None and kb is not None
    assert (ka == kb) == (meaning(a) == meaning(b))


@pytest.mark.parametrize(("a", "b"), [
    ('{"a":1,"b":2}', '{ "b" : 2 ,\n "a" : 1 }'),
    ('{"t":1}', '{"t":1.0}'),
    ('{"t":1}', '{"t":1e0}'),
    ('{"t":100}', '{"t":1E2}'),
    ('{"t":0}', '{"t":-0.0}'),
    ('{"t":0}', '{"t":-0}'),
    ('{"t":0.5}', '{"t":5e-1}'),
    ('{"t":18446744073709551616}', '{"t":18446744073709551616.0}'),
    ('{"s":"\\u00e9"}', '{"s":"é"}'),
    ('{"s":"\\u00E9\\/"}', '{"s":"é/"}'),
    ('{"s":"\\ud83d\\ude00"}', '{"s":"😀"}'),
    ('{"s":"\\u000a\\u0009"}', '{"s":"\\n\\t"}'),
    ('{"\\u0061":1}', '{"a":1}'),
    ('{"a":1,"a":2}', '{"a":2}'),
    ('{"m":[]}', '{"m":[],"stream":true,"stream_options":{"include_usage":true}}'),
    ('{"m":[]}', '{"user":"u-1","m":[],"fastgw":{"metadata":{"x":1}}}'),
    ('{"m":[]}', '{"stream":1,"m":[],"stream":2}'),
])
def test_equal_documents_written_differently(a: str, b: str) -> None:
    ka = _both(a.encode())
    assert ka is not None
    assert ka == _both(b.encode())


@pytest.mark.parametrize(("a", "b"), [
    ('{"a":1}', '{"a":2}'),
    ('{"a":1}', '{"a":"1"}'),
    ('{"a":1}', '{"a":[1]}'),
    ('{"a":1}', '{"b":1}'),
    ('{"a":null}', "{}"),
    ('{"a":[1,2]}', '{"a":[2,1]}'),
    ('{"a":{"user":1}}', '{"a":{}}'),  # left out at the top only
    ('{"a":0.1}', '{"a":0.1000000000000001}'),
    ('{"a":9007199254740993}', '{"a":9007199254740992}'),
    ('{"a":"x"}', '{"a":"x "}'),
    ('{"a":"é"}', '{"a":"e\\u0301"}'),  # no Unicode normalization
    ('{"a":true}', '{"a":1}'),
    ('{"a":false}', '{"a":0}'),
    ('{"a":null}', '{"a":0}'),
    ('{"a":[]}', '{"a":{}}'),
    ('{"ab":1}', '{"a":1,"b":1}'),
])
def test_different_documents(a: str, b: str) -> None:
    ka = _both(a.encode())
    assert ka is not None
    assert ka != _both(b.encode())


def test_scope_endpoint_and_model_are_part_of_the_key() -> None:
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    keys = {
        _both(body, b"team-a", ENDPOINT, MODEL),
        _both(body, b"team-b", ENDPOINT, MODEL),
        _both(body, b"", ENDPOINT, MODEL),
        _both(body, b"team-a", b"/v1/completions", MODEL),
        _both(body, b"team-a", ENDPOINT, b"gpt-4o"),
        _both(body, b"team-a", ENDPOINT, b""),
    }
    assert len(keys) == 6 and None not in keys


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.binary(max_size=6), min_size=3, max_size=3),
       other=st.lists(st.binary(max_size=6), min_size=3, max_size=3))
@example(parts=[b"ab", b"c", b""], other=[b"a", b"bc", b""])
@example(parts=[b"", b"ab", b"c"], other=[b"", b"a", b"bc"])
@example(parts=[b"a", b"", b""], other=[b"", b"", b"a"])
@example(parts=[b"\x01" + b"\x00" * 7, b"", b""], other=[b"", b"\x01", b""])
def test_the_framing_is_unambiguous(parts: list[bytes], other: list[bytes]) -> None:
    body = b'{"a":1}'
    assert (_both(body, *parts) == _both(body, *other)) == (parts == other)


def test_the_hashed_bytes_spelled_out() -> None:
    body = b' { "b" : [1.0, "\\u00e9\\n"], "a": -0.0, "stream": true } '
    framed = b"".join(len(p).to_bytes(8, "little") + p for p in (b"s", b"/e", b"mm"))
    hashed = framed + '{"a":0,"b":[1,"é\\n"]}'.encode()
    assert native.cache_key(body, b"s", b"/e", b"mm") == xxhash.xxh3_128_digest(hashed)
    assert native.cache_key(b"{}", b"", b"", b"") == xxhash.xxh3_128_digest(bytes(24) + b"{}")


def test_canonical_numbers() -> None:
    for x, want in [(1.5, "1.5e0"), (-0.25, "-2.5e-1"), (0.1, "1e-1"), (1e300, "1e300"),
                    (5e-324, "5e-324"), (1e16, "1e16"), (2.0**53, "9007199254740992"),
                    (2.0**53 + 2, "9.007199254740994e15"), (-0.0, "0"), (1e-5, "1e-5"),
                    (123456.789, "1.23456789e5"), (2**64, "1.8446744073709552e19"),
                    (2**63, "9223372036854775808"), (-(2**63) - 1, "-9.223372036854776e18"),
                    (900719925474099.25, "9.007199254740992e14")]:
        assert ref.canonical(x) == want, x


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "not a JSON object"),
    (b"  \n", "not a JSON object"),
    (b"[]", "not a JSON object"),
    (b'[{"a":1}]', "not a JSON object"),
    (b"1", "not a JSON object"),
    (b'"{}"', "not a JSON object"),
    (b"null", "not a JSON object"),
    (b"\xef\xbb\xbf{}", "not a JSON object"),
    (b"{", "not valid JSON"),
    (b'{"a":1', "not valid JSON"),
    (b'{"a":1} {}', "not valid JSON"),
    (b'{"a":"\\ud800"}', "not valid JSON"),
    (b'{"a":"\xff"}', "not valid JSON"),
    (b'{"a":1e400}', "not valid JSON"),
    (b'{"a":NaN}', "not valid JSON"),
])
def test_what_is_not_a_json_object_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        native.cache_key(body, SCOPE, ENDPOINT, MODEL)
    with pytest.raises(ValueError, match=reason):
        ref.cache_key(body, SCOPE, ENDPOINT, MODEL)


def test_arguments_are_bytes() -> None:
    with pytest.raises(TypeError):
        native.cache_key("{}", SCOPE, ENDPOINT, MODEL)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        native.cache_key(b"{}", "team-a", ENDPOINT, MODEL)  # type: ignore[arg-type]
    assert len(native.cache_key(b"{}" + b" " * 100_000, SCOPE, ENDPOINT, MODEL)) == 16


def test_a_long_body_is_read_without_the_gil_alike() -> None:
    # 16 KiB and more is read with the GIL released: the same answers.
    turns = [{"role": "user" if i % 2 else "assistant", "content": f"turn {i} é\n" * 40}
             for i in range(40)]
    body = '{"model":"m","messages":' + json.dumps(turns) + ',"stream":true}'
    assert len(body) > 16 * 1024
    key = _both(body.encode())
    assert key is not None
    assert _both(body.replace('"stream":true', '"stream":false').encode()) == key
    assert _both((body[:-1] + ",}").encode()) is None
