"""``fastgw check-config`` on broken configurations: it exits 0 or 1, never a traceback.

Hypothesis puts random YAML values at random places of a valid configuration
(wrong types, unknown keys, deep nesting, huge numbers, removed keys), and
mangles the file's text (anchors and aliases, cut-off text, bytes that are
not UTF-8, empty files). ``check_config`` runs in-process for speed; a few
files go through the real command too. Every error line starts with where
it is: a YAML path (``models[0].targets[1].weight``) or, for text that is not
YAML, a line and column.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw.cli import check_config

VALID: dict[str, Any] = yaml.safe_load("""
server: {host: 127.0.0.1, port: 8080, max_body_bytes: 1048576, header_timeout_s: 10}
providers:
  - {name: openai, kind: openai, base_url: "https://api.openai.com/v1", api_key: sk-x,
     timeouts: {connect_s: 5, first_byte_s: 60}, limits: {rpm: 100}}
  - {name: claude, kind: anthropic, base_url: "https://api.anthropic.com", api_key: sk-y}
models:
  - name: gpt-4o-mini
    targets: [{provider: openai, model: gpt-4o-mini, weight: 3}]
    balance: weighted
    fallbacks: [haiku]
    retry: {attempts: 2, retry_on: [connect, 429, 5xx], backoff_ms: 50}
    price: {input_per_mtok: 0.15, output_per_mtok: 0.6}
  - name: haiku
    targets: [{provider: claude, model: claude-3-5-haiku-latest}]
  - name: ab
    variants: [{model: gpt-4o-mini, weight: 90, name: v1}, {model: haiku, weight: 10, name: v2}]
auth:
  keys:
    - {name: team-a, key_sha256: 8879f6a4ae35c420a15d35fed3b8dd07577207803d404f6d4cc4fa829dafa910,
       models: ["gpt-4o*"], limits: {rpm: 600, budget_usd: {amount: 50, period: month}}}
  ip_allow: [127.0.0.0/8]
limits:
  - {match: {model: "gpt-4o*"}, rpm: 1000, tpm: 200000}
cache: {enabled: true, backend: memory, ttl_s: 60}
observability: {access_log: off, log_format: json}
""")

# An error line: "  WHERE: message", WHERE a YAML path or "line N, column M".
# (A key that is not a plain name is quoted: server["a b"].)
_SEGMENT = r'(?:\[\d+\]|\["(?:[^"\\]|\\.)*"\])'
PATH = re.compile(rf"(?:[A-Za-z0-9_\-]+|{_SEGMENT})(?:\.[A-Za-z0-9_\-]+|{_SEGMENT})*")
LINE_COLUMN = re.compile(r"line \d+, column \d+")
# Errors about the file as a whole, with no path to give.
WHOLE_FILE = ("the configuration must be a YAML mapping", "invalid YAML", "cannot read")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["", "-1", "0x10", "1e999", ".inf", "${UNSET_FASTGW_FUZZ}", "${X:-3}",
                     "yes", "on", "~", "127.0.0.1/99", "sk-\x00", "\u202e", "é" * 3]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8) | st.integers(), inner,
                                            max_size=4)),
    max_leaves=12,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


@st.composite
def mutated_configs(draw: st.DrawFn) -> Any:
    cfg = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(paths(cfg)))
        if not where:
            if draw(st.booleans()):
                return draw(values)  # a whole configuration that is not a mapping
            continue
        parent: Any = cfg
        for step in where[:-1]:
            parent = parent[step]
        last = where[-1]
        action = draw(st.sampled_from(["replace", "remove", "add", "deep"]))
        if action == "replace":
            parent[last] = draw(values)
        elif action == "remove":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10) | st.integers())] = draw(values)
        elif action == "add":
            parent.append(draw(values))
        else:
            nested: Any = draw(values)
            for _ in range(draw(st.integers(5, 60))):
                nested = [nested] if draw(st.booleans()) else {"k": nested}
            parent[last] = nested
    return cfg


def assert_check_config_answers(path: Path, capsys: pytest.CaptureFixture[str]) -> int:
    code = check_config(str(path))  # raises on a crash: the test fails with its traceback
    out, err = capsys.readouterr()
    assert code in (0, 1)
    if code == 0:
        assert out.startswith(f"{path}: OK, ") and not err
        return code
    lines = err.splitlines()
    assert re.fullmatch(rf"{re.escape(str(path))}: \d+ error\(s\)", lines[0]), lines[0]
    assert len(lines) > 1
    for line in lines[1:]:
        assert line.startswith("  "), line
        body = line[2:]
        if body.startswith(WHOLE_FILE):
            continue
        where, sep, message = body.partition(": ")
        assert sep and message, line
        assert LINE_COLUMN.fullmatch(where) or PATH.fullmatch(where), line
    return code


def test_the_valid_configuration_passes(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text(yaml.safe_dump(VALID))
    assert assert_check_config_answers(f, capsys) == 0


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cfg=mutated_configs())
def test_random_values_at_random_paths_get_errors_with_paths(
        cfg: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "fuzz.yaml"
    f.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert_check_config_answers(f, capsys)


def _aliases(n: int) -> bytes:
    # "billion laughs": each anchor is a list of nine of the one before
    text = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    for prev, cur in zip("abcdefghijklmnop", "bcdefghijklmnopq", strict=False):
        if cur > "abcdefghijklmnopq"[n]:
            break
        text += f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]\n"
    return text.encode()


TEXTS: dict[str, bytes] = {
    "empty": b"",
    "only-a-comment": b"# nothing\n",
    "not-utf-8": b"server: {host: \xff\xfe}\n",
    "latin-1": "server: {host: caf\u00e9}\n".encode("latin-1"),
    "utf-16": "server: {port: 1}\n".encode("utf-16"),
    "nul-bytes": b"server:\x00 {port: 1}\n",
    "deep-flow-nesting": b"server: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "deep-block-nesting": b"".join(b"  " * i + b"k:\n" for i in range(3000)),
    "alias-inside-itself": b"models: &m [{name: a, targets: *m}]\n",
    "self-alias": b"a: &x [*x]\n",
    "alias-bomb": _aliases(12),
    "merge-key": b"base: &b {port: 1}\nserver: {<<: *b, host: x}\n",
    "unknown-tag": b"server: {host: !!python/object:os.system [ls]}\n",
    "binary-tag": b"server: {port: !!binary aGVsbG8=}\n",
    "set-tag": b"providers: !!set {a, b}\n",
    "complex-key": b"? [a, b]\n: 1\n",
    "non-string-keys": b"1: 2\nnull: 3\n1.5: 4\n",
    "huge-integer": b"server: {port: 1" + b"0" * 5000 + b"}\n",
    "huge-float": b"server: {keepalive_timeout_s: 1e99999}\n",
    "top-level-list": b"- server\n- models\n",
    "top-level-scalar": b"just text\n",
    "tab-indentation": b"server:\n\tport: 1\n",
    "unclosed-quote": b'server: {host: "127.0.0.1}\n',
    "duplicate-keys": b"server: {port: 1}\nserver: {port: 2}\n",
    "bom": b"\xef\xbb\xbfserver: {port: 1}\n",
    "cut-off": yaml.safe_dump(VALID).encode()[:301],
}


@pytest.mark.parametrize("data", list(TEXTS.values()), ids=list(TEXTS))
def test_odd_files_get_an_answer_not_a_traceback(
        data: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "odd.yaml"
    f.write_bytes(data)
    assert_check_config_answers(f, capsys)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_bytes_get_an_answer_not_a_traceback(
        data: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bytes.yaml"
    f.write_bytes(data)
    assert_check_config_answers(f, capsys)


@pytest.mark.parametrize("name", ["not-utf-8", "alias-bomb", "deep-flow-nesting",
                                  "alias-inside-itself"])
def test_the_real_command_exits_1_with_paths(name: str, tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_bytes(TEXTS[name])
    proc = subprocess.run([sys.executable, "-m", "fastgw", "check-config", str(f)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"{f}: {len(lines) - 1} error(s)"
