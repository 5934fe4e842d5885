"""Habits of the gateway's own code that a review misses and a profile pays for."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastgw"


def _bytes_membership(tree: ast.AST) -> list[int]:
    """Lines with ``b"..." in x`` / ``not in``: on bytes, CPython 3.11 first tries the
    needle as an integer and makes and discards a TypeError (about 2,000 machine
    instructions per test); ``x.find(b"...") >= 0`` answers the same without it."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators, strict=True):
                if (isinstance(op, ast.In | ast.NotIn) and isinstance(left, ast.Constant)
                        and isinstance(left.value, bytes)):
                    lines.append(node.lineno)
                left = right
    return lines


def test_the_rule_finds_what_it_looks_for() -> None:
    tree = ast.parse('if b"x" in data or 10 in data or "s" in text:\n    pass\n'
                     'ok = 10 not in block and "a" in s\n')
    assert _bytes_membership(tree) == [1]
    assert _bytes_membership(ast.parse("ok = n < b'a' not in y\n")) == [1]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_bytes_substring_test_with_in(path: Path) -> None:
    found = _bytes_membership(ast.parse(path.read_text(), str(path)))
    assert not found, (f"{path.relative_to(PACKAGE.parent)}:{found}: write "
                       "`hay.find(needle) >= 0` (bytes `in` raises and discards a TypeError)")
