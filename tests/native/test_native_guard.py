"""The native regex guardrail is the reference's: the same redaction of a whole
text, and the same text given out by a stream's window for any split of the text
into pieces (the native window holding back only what may still begin a match)."""

from __future__ import annotations

import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import guard as ref

# Patterns both engines read the same way; no match longer than WINDOW characters.
PATTERNS = [
    r"secret-\d{4}",
    r"\d{3}-\d{2}-\d{4}",
    r"[A-Z]{2,5}",
    r"ab|abc|b",
    r"x*",
    r"\bcat\b",
    r"é+ü?",
    r"(?i)mock\s+response",
    r"a[^a]{0,3}a",
]
WINDOW = 16

_alphabet = st.sampled_from([*"abcxAB01-23 étüsecr\n", "secret-", "cat", "mock ", "response",
                             "123-45-6789"])
_text = st.lists(_alphabet, max_size=40).map("".join)


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(text[prev:p])
        prev = p
    out.append(text[prev:])
    return out


def _stream(guard: native.RegexGuard | ref.RegexGuard, pieces: list[str],
            chars: int = WINDOW) -> tuple[str, int]:
    w = guard.window(chars)
    out = [w.push(p) for p in pieces]
    out.append(w.finish())
    return "".join(out), w.matches


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(PATTERNS), _text, st.lists(st.integers(0, 200), max_size=8))
@example(r"secret-\d{4}", "the secret-1234 ok", [9, 12])
@example(r"(?i)mock\s+response", "This is a mock response from", [10, 14, 15])
def test_streamed_redaction_is_whole_redaction(pattern: str, text: str,
                                               cuts: list[int]) -> None:
    fast, slow = native.RegexGuard(pattern, "#"), ref.RegexGuard(pattern, "#")
    whole, n = fast.redact(text)
    assert (whole, n) == slow.redact(text)
    pieces = _split(text, cuts)
    assert _stream(fast, pieces) == (whole, n)
    assert _stream(slow, pieces) == (whole, n)
    assert fast.matches(text) == slow.matches(text) == (n > 0)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PATTERNS), st.lists(_alphabet, max_size=30))
def test_the_native_window_never_holds_more_than_the_reference(
        pattern: str, pieces: list[str]) -> None:
    fast = native.RegexGuard(pattern).window(WINDOW)
    slow = ref.RegexGuard(pattern).window(WINDOW)
    for p in pieces:
        fast.push(p)
        slow.push(p)
        assert fast.held <= slow.held


def test_free_text_is_not_held_and_a_split_match_is_caught() -> None:
    w = native.RegexGuard(r"secret-\d{4}").window(256)
    assert w.push("the word is secr") == "the word is "
    assert w.push("et-1234 ok") == "[REDACTED] ok"
    assert w.held == 0
    assert w.push(" bye") == " bye"
    assert w.finish() == ""
    assert w.matches == 1


def test_a_pattern_that_does_not_compile_says_why() -> None:
    for bad in ("(unclosed", "[z-a]", "a{5,2}"):
        with pytest.raises(ValueError):
            native.RegexGuard(bad)
        with pytest.raises(ValueError):
            ref.RegexGuard(bad)
    with pytest.raises(ValueError, match="look-around"):
        native.RegexGuard(r"(?<=a)b")  # no backtracking engine: no look-around


def test_a_pathological_pattern_is_linear() -> None:
    g = native.RegexGuard(r"(a+)+$")
    text = "a" * 100_000 + "!"
    t0 = time.perf_counter()
    assert g.redact(text) == (text, 0)
    w = g.window(256)
    for i in range(0, len(text), 1000):
        w.push(text[i:i + 1000])
    w.finish()
    assert time.perf_counter() - t0 < 1.0
