"""Reference of ``RegexGuard`` and ``RedactWindow`` (``rust/src/guard.rs``), on
Python's ``re`` for the patterns both engines read the same way.

The reference window holds back the last ``chars`` characters always (the
native one holds back only what may still begin a match, found with a DFA);
joined, what both give out is the same text: ``RegexGuard.redact`` of the
whole, as long as no match is longer than the window.
"""

from __future__ import annotations

import re


class RegexGuard:
    def __init__(self, pattern: str, replacement: str = "[REDACTED]") -> None:
        try:
            self._re = re.compile(pattern)
        except re.error as exc:
            raise ValueError(str(exc)) from None
        self.pattern = pattern
        self.replacement = replacement

    def matches(self, text: str) -> bool:
        return any(m.end() > m.start() for m in self._re.finditer(text))

    def redact(self, text: str) -> tuple[str, int]:
        out, end, n = self._redact(text, 0, len(text))
        return (out + text[end:], n) if n else (text, 0)

    def _redact(self, text: str, start: int, cut: int) -> tuple[str, int, int]:
        """The text from ``start`` with the matches that begin before ``cut``
        replaced: (that text, where it ends, how many matches)."""
        out: list[str] = []
        at = copied = start
        n = 0
        while at <= len(text):
            m = self._re.search(text, at)
            if m is None or m.start() >= cut:
                break
            if m.end() == m.start():
                at = m.end() + 1
                continue
            out.append(text[copied:m.start()])
            out.append(self.replacement)
            copied = at = m.end()
            n += 1
        end = max(copied, cut)
        out.append(text[copied:end])
        return "".join(out), end, n

    def window(self, chars: int) -> RedactWindow:
        return RedactWindow(self, chars)


class RedactWindow:
    def __init__(self, guard: RegexGuard, chars: int) -> None:
        self._guard = guard
        self._chars = chars
        self._buf = ""  # the last character given out, then the text held
        self._base = 0
        self.matches = 0

    @property
    def held(self) -> int:
        return len(self._buf[self._base:].encode())

    def push(self, piece: str) -> str:
        self._buf += piece
        return self._give(max(self._base, len(self._buf) - self._chars))

    def finish(self) -> str:
        return self._give(len(self._buf))

    def _give(self, cut: int) -> str:
        if cut <= self._base:
            return ""
        out, end, n = self._guard._redact(self._buf, self._base, cut)
        self.matches += n
        keep = max(end - 1, 0)
        self._buf = self._buf[keep:]
        self._base = end - keep
        return out
