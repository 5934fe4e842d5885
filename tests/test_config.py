"""Configuration: strict validation with YAML paths, env substitution, check-config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastgw.config import load_config, parse_config
from fastgw.errors import ConfigError

GOOD = """
server: {port: 9999}
providers:
  - {name: openai, kind: openai, base_url: "https://api.openai.com/v1", api_key: "${KEY}"}
models:
  - name: gpt-4o-mini
    targets: [{provider: openai, model: gpt-4o-mini}]
"""


def errors_of(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return dict(info.value.errors)


def test_env_substitution_with_and_without_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY", "sk-live")
    monkeypatch.delenv("PORT", raising=False)
    cfg = parse_config(GOOD.replace("port: 9999", 'port: "${PORT:-7070}"'))
    assert cfg.providers[0].api_key == "sk-live"
    assert cfg.server.port == 7070
    monkeypatch.setenv("PORT", "7171")
    assert parse_config(GOOD.replace("port: 9999", 'port: "${PORT:-7070}"')).server.port == 7171


def test_missing_env_var_is_an_error_with_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEY", raising=False)
    errs = errors_of(GOOD)
    assert "KEY" in errs["providers[0].api_key"]


def test_every_error_is_reported_with_its_yaml_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY", "x")
    text = """
server: {port: 80, workerz: 2}
providers:
  - {name: openai, kind: opnai, base_url: "https://api.openai.com/v1"}
models:
  - name: a
    targets: [{provider: openai, model: x}]
  - name: b
    targets: [{provider: opnai, model: x}]
    balance: wieghted
"""
    errs = errors_of(text)
    assert errs["server.workerz"] == "unknown key (did you mean 'workers'?)"
    assert "opnai" in errs["providers[0].kind"] and "'openai'" in errs["providers[0].kind"]
    assert errs["models[1].targets[0].provider"].startswith("unknown provider 'opnai'")
    assert "wieghted" in errs["models[1].balance"]


def test_semantic_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY", "x")
    text = GOOD + """
  - name: gpt-4o-mini
    targets: []
""" + """
admin: {key_sha256: "nothex"}
"""
    errs = errors_of(text.replace("https://api.openai.com/v1", "ftp://x"))
    assert "duplicate model name" in errs["models[1].name"]
    assert "at least one target" in errs["models[1].targets"]
    assert "http" in errs["providers[0].base_url"]
    assert "64 lowercase hex" in errs["admin.key_sha256"]


def test_wrong_types_say_what_was_expected() -> None:
    errs = errors_of("server: {port: eighty, max_body_bytes: [1]}")
    assert errs["server.port"] == "expected an integer, got 'eighty'"
    assert errs["server.max_body_bytes"] == "expected an integer, got a list"


def test_invalid_yaml_reports_line() -> None:
    errs = errors_of("server: {port: 1\nproviders: [")
    (where, msg), = errs.items()
    assert where.startswith("line ")
    assert "invalid YAML" in msg


def test_access_log_off_is_accepted_bare() -> None:
    assert parse_config("observability: {access_log: off}").observability.access_log == "off"


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastgw", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={"KEY": "x", "PATH": "/usr/bin:/bin"})


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    r = _check_config(good)
    assert r.returncode == 0, r.stderr
    assert "1 providers, 1 models" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("provider: openai,", "provider: opnai,"))
    r = _check_config(bad)
    assert r.returncode == 1
    assert "models[0].targets[0].provider: unknown provider 'opnai'" in r.stderr
    r = _check_config(tmp_path / "missing.yaml")
    assert r.returncode == 1
    assert "cannot read" in r.stderr


def test_load_config_records_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY", "x")
    f = tmp_path / "c.yaml"
    f.write_text(GOOD)
    assert load_config(str(f)).source == str(f)


def test_otlp_endpoint_is_refused_until_supported() -> None:
    errs = errors_of("observability: {otlp_endpoint: 'http://collector:4318'}")
    assert "not available" in errs["observability.otlp_endpoint"]
