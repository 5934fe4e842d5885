"""Configuration of transforms and guardrails: a working one loads, and
``check-config`` refuses what cannot work, each error with its YAML path (a regex
it cannot compile, transforms of the wrong shape, webhooks without a usable URL)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastgw.config import parse_config
from fastgw.errors import ConfigError

HEAD = """
providers:
  - {name: up, kind: openai, base_url: "https://api.openai.com/v1", api_key: sk-x}
models:
  - name: m
    targets: [{provider: up, model: gpt-4o-mini}]
"""

GOOD = HEAD + """
    transform:
      request:
        set: {temperature: 0.2, metadata: {team: blue, tags: [a, 1, 2.5, true, null]}}
        default: {max_tokens: 256}
        cap: {max_tokens: 1024}
        drop: [logit_bias]
        prepend_system: "Answer in English."
      headers: {add: {x-team: blue}, remove: [x-debug]}
    guardrails:
      - {kind: regex, pattern: '\\b\\d{3}-\\d{2}-\\d{4}\\b', action: redact}
      - {kind: regex, apply_to: output, pattern: 'sk-[A-Za-z0-9]{20,}', action: deny,
         name: leaked-key, window_chars: 64}
      - {kind: webhook, url: "https://guard.example/check", apply_to: input,
         timeout_ms: 500, on_error: allow}
"""


def errors_of(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return dict(info.value.errors)


def test_a_working_policy_loads() -> None:
    m = parse_config(GOOD).models[0]
    assert m.transform is not None
    assert m.transform.request.set == {"temperature": 0.2,
                                       "metadata": {"team": "blue",
                                                    "tags": ["a", 1, 2.5, True, None]}}
    assert type(m.transform.request.set["temperature"]) is float
    assert m.transform.request.cap == {"max_tokens": 1024.0}
    assert [g.kind for g in m.guardrails] == ["regex", "regex", "webhook"]
    assert m.guardrails[0].replacement == "[REDACTED]" and m.guardrails[0].window_chars == 256
    assert m.guardrails[2].on_error == "allow"


def test_a_pattern_that_does_not_compile_is_refused_with_its_path() -> None:
    errs = errors_of(HEAD + """
    guardrails:
      - {kind: regex, pattern: 'ok'}
      - {kind: regex, pattern: '(unclosed', action: deny}
      - {kind: regex, pattern: '(?<=x)y'}
      - {kind: regex}
""")
    assert "unclosed group" in errs["models[0].guardrails[1].pattern"]
    assert "look-around" in errs["models[0].guardrails[2].pattern"]
    assert errs["models[0].guardrails[3].pattern"] == "required with kind: regex"
    assert not any(k.startswith("models[0].guardrails[0]") for k in errs)


def test_bad_transform_shapes_are_refused_with_their_paths() -> None:
    errs = errors_of(HEAD + """
    transform:
      request:
        set: [temperature, 0]
        cap: {max_tokens: lots, model: 3, top_p: -1}
        drop: stream
        prepend_system: ""
      headers:
        add: {"bad name": x, Authorization: "Bearer y"}
        remove: [x-ok, host]
      body: {}
""")
    assert "expected a mapping" in errs["models[0].transform.request.set"]
    assert "expected a number" in errs["models[0].transform.request.cap.max_tokens"]
    assert "expected a list" in errs["models[0].transform.request.drop"]
    assert errs["models[0].transform.body"].startswith("unknown key")
    assert "valid header name" in errs['models[0].transform.headers.add["bad name"]']
    assert "written by the gateway" in errs["models[0].transform.headers.add.Authorization"]
    assert "written by the gateway" in errs["models[0].transform.headers.remove[1]"]
    errs = errors_of(HEAD + """
    transform:
      request: {set: {model: other}, cap: {top_p: -1}, drop: [stream], prepend_system: ""}
""")
    assert "cannot be transformed" in errs["models[0].transform.request.set.model"]
    assert "cannot be transformed" in errs["models[0].transform.request.drop[0]"]
    assert ">= 0" in errs["models[0].transform.request.cap.top_p"]
    assert "non-empty" in errs["models[0].transform.request.prepend_system"]


def test_bad_webhooks_and_kinds_are_refused() -> None:
    errs = errors_of(HEAD + """
    guardrails:
      - {kind: webhook}
      - {kind: webhook, url: "ftp://x", timeout_ms: 0, pattern: 'a'}
      - {kind: lasso, pattern: 'a'}
      - {kind: regex, pattern: 'a', action: block, window_chars: 0, name: "a b"}
""")
    assert errs["models[0].guardrails[0].url"] == "required with kind: webhook"
    assert "http:// or https://" in errs["models[0].guardrails[1].url"]
    assert "greater than 0" in errs["models[0].guardrails[1].timeout_ms"]
    assert errs["models[0].guardrails[1].pattern"] == "only with kind: regex"
    assert "'regex', 'webhook'" in errs["models[0].guardrails[2].kind"]
    assert "'redact', 'deny'" in errs["models[0].guardrails[3].action"]


def test_check_config_prints_the_pattern_error(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(HEAD + "    guardrails: [{kind: regex, pattern: 'a{2,1}'}]\n")
    r = subprocess.run([sys.executable, "-m", "fastgw", "check-config", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "models[0].guardrails[0].pattern: does not compile" in r.stdout + r.stderr
    f.write_text(GOOD)
    r = subprocess.run([sys.executable, "-m", "fastgw", "check-config", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
