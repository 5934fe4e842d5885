"""Configuration: strict validation with YAML paths, env substitution, check-config."""

from __future__ import annotations

import re
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


def test_otlp_settings_are_accepted() -> None:
    cfg = parse_config("observability: {otlp_endpoint: 'http://collector:4318', "
                       "otlp_headers: {authorization: Bearer t}, trace_sample_ratio: 0.25}")
    obs = cfg.observability
    assert obs.otlp_endpoint == "http://collector:4318"
    assert dict(obs.otlp_headers) == {"authorization": "Bearer t"}
    assert obs.trace_sample_ratio == 0.25


def test_bad_otlp_settings_are_refused_with_their_path() -> None:
    errs = errors_of("observability: {otlp_endpoint: 'collector:4318', trace_sample_ratio: 2, "
                     "otlp_headers: {'bad name': x}}")
    assert "http://" in errs["observability.otlp_endpoint"]
    assert "between 0 and 1" in errs["observability.trace_sample_ratio"]
    assert "header name" in errs["observability.otlp_headers.bad name"]


def test_busy_poll_is_bounded_and_may_be_off() -> None:
    assert parse_config("server: {busy_poll_us: 0}").server.busy_poll_us == 0
    assert parse_config("server: {}").server.busy_poll_us == 250
    for bad in ("-1", "10001"):
        errs = errors_of(f"server: {{busy_poll_us: {bad}}}")
        assert "between 0 (off) and 10000" in errs["server.busy_poll_us"]
    assert "integer" in errors_of("server: {busy_poll_us: 0.5}")["server.busy_poll_us"]


# -- YAML 1.1 traps: what a user writes is what the gateway reads ---------------------


def test_bad_feedback_settings_are_refused_with_their_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY", "k")
    cfg = parse_config(GOOD + "feedback: {names: [score, thumbs_up], backend: redis}\n")
    assert cfg.feedback.names == ("score", "thumbs_up") and cfg.feedback.backend == "redis"
    assert parse_config(GOOD).feedback.names == ("score",)
    errs = errors_of(GOOD + "feedback: {names: [Score, ok, ok, 'a b'], ttl_s: 0, "
                            "max_entries: 0}\n")
    assert "not a valid score name" in errs["feedback.names[0]"]
    assert "not a valid score name" in errs["feedback.names[3]"]
    assert "unique" in errs["feedback.names"]
    assert {"feedback.ttl_s", "feedback.max_entries"} <= set(errs)
    assert "feedback.backend" in errors_of(GOOD + "feedback: {backend: disk}\n")
    assert "at least one" in errors_of(GOOD + "feedback: {names: []}\n")["feedback.names"]
    both = """
  - name: bot
    variants: [{model: gpt-4o-mini, name: a}, {model: gpt-4o-mini, name: a}]
"""
    assert "unique name" in errors_of(GOOD + both)["models[1].variants[1].name"]


def test_retry_on_takes_unquoted_status_codes() -> None:
    cfg = parse_config(GOOD.replace("targets: [{provider: openai, model: gpt-4o-mini}]",
                                    "targets: [{provider: openai, model: gpt-4o-mini}]\n"
                                    "    retry: {attempts: 3, retry_on: [connect, timeout, 429, "
                                    "5xx, 408, '409']}").replace("${KEY}", "k"))
    assert cfg.models[0].retry.retry_on == ("connect", "timeout", "429", "5xx", "408", "409")


@pytest.mark.parametrize(("status", "hint"), [(404, "client's own error"), (503, "'5xx'")])
def test_a_status_that_cannot_be_retried_says_why(status: int, hint: str) -> None:
    errs = errors_of(GOOD.replace("targets: [{provider: openai, model: gpt-4o-mini}]",
                                  "targets: [{provider: openai, model: gpt-4o-mini}]\n"
                                  f"    retry: {{retry_on: [connect, {status}]}}")
                     .replace("${KEY}", "k"))
    msg = errs["models[0].retry.retry_on[1]"]
    assert f"status {status} is not accepted here" in msg and hint in msg


def test_scalars_are_read_as_written_not_as_yaml_1_1() -> None:
    text = """
providers:
  - {name: az, kind: azure, base_url: "https://x.openai.azure.com", api_version: 2024-10-21,
     headers: {x-flag: on, x-other: no, x-version: 3.10, x-mode: 0755}}
models:
  - {name: 3.10, targets: [{provider: az, model: 1:30}]}
redis: {cluster: yes}
observability: {access_log: off}
"""
    cfg = parse_config(text)
    p = cfg.providers[0]
    assert p.api_version == "2024-10-21"  # not a date
    assert dict(p.headers) == {"x-flag": "on", "x-other": "no", "x-version": "3.10",
                               "x-mode": "0755"}
    assert cfg.models[0].name == "3.10"
    assert cfg.models[0].targets[0].model == "1:30"  # not sexagesimal 90
    assert cfg.redis.cluster is True  # a boolean field takes yes/no/on/off
    assert cfg.observability.access_log == "off"
    assert parse_config("server: {port: 0x1F90}").server.port == 8080


def test_a_boolean_where_a_string_is_expected_asks_for_quotes() -> None:
    errs = errors_of("models: [{name: true, targets: []}]")
    assert "quote" in errs["models[0].name"]


# -- check-config reports every error at once -------------------------------------------


def test_name_and_reference_errors_are_reported_beside_shape_errors() -> None:
    text = """
providers:
  - {name: p, kind: openai, base_url: "https://api.openai.com/v1"}
  - {name: p, kind: openai, base_url: "https://api.openai.com/v1"}
models:
  - {name: a, targets: [{provider: p, model: x}], balance: randomish}
  - {name: b, targets: [{provider: q, model: x}], retry: {attempts: 0}, fallbacks: [zz]}
  - {name: b, targets: [{provider: p, model: x, weight: -1}]}
"""
    errs = errors_of(text)
    assert "randomish" in errs["models[0].balance"]
    assert errs["providers[1].name"] == "duplicate provider name 'p' (also providers[0])"
    assert errs["models[1].targets[0].provider"].startswith("unknown provider 'q'")
    assert "at least 1" in errs["models[1].retry.attempts"]
    assert errs["models[1].fallbacks[0]"].startswith("unknown model 'zz'")
    assert "duplicate model name 'b'" in errs["models[2].name"]
    assert "greater than 0" in errs["models[2].targets[0].weight"]


def _readme_configs() -> list[tuple[str, str]]:
    """Every ```yaml block of the README: (where, text)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = []
    for i, part in enumerate(readme.split("```yaml\n")[1:]):
        text = part.split("```", 1)[0]
        blocks.append((f"README yaml block {i + 1}", text))
    return blocks


@pytest.mark.parametrize(("where", "text"), _readme_configs(), ids=lambda v: v[:24])
def test_every_configuration_in_the_readme_passes_check_config(
        where: str, text: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    for name in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)):
        env[name] = "example-value"
    f = tmp_path / "c.yaml"
    f.write_text(text)
    r = subprocess.run([sys.executable, "-m", "fastgw", "check-config", str(f)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, f"{where} is refused:\n{r.stderr}\n{text}"


def test_cascade_and_shadow_errors_name_their_yaml_paths() -> None:
    text = """
providers: [{name: p, kind: openai, base_url: http://127.0.0.1:9/v1}]
models:
  - {name: a, targets: [{provider: p, model: a}]}
  - name: smart
    cascade:
      - {model: a, accept_if: {judge: {model: loop, prompt: "{input}", accept: "(x"}}}
      - {model: zz}
      - {model: a, accept_if: {max_prompt_tokens: 0}, escalate_on: [length]}
    shadow: {model: smart, percent: 0}
  - name: loop
    cascade:
      - {model: a, accept_if: {judge: {model: smart, prompt: "no input", accept: x}}}
      - {model: smart}
  - name: both
    targets: [{provider: p, model: a}]
    cascade: [{model: a}]
"""
    errs = errors_of(text)
    assert "not a valid regular expression" in errs["models[1].cascade[0].accept_if.judge.accept"]
    assert errs["models[1].cascade[1].model"].startswith("unknown model 'zz'")
    assert "no accept_if" in errs["models[1].cascade[2].accept_if"]
    assert "no next step" in errs["models[1].cascade[2].escalate_on"]
    assert "at least 1" in errs["models[1].cascade[2].accept_if.max_prompt_tokens"]
    assert "greater than 0" in errs["models[1].shadow.percent"]
    assert "cannot shadow itself" in errs["models[1].shadow.model"]
    assert "{input}" in errs["models[2].cascade[0].accept_if.judge.prompt"]
    assert "has no targets" in errs["models[2].cascade[1].model"]
    assert "smart -> loop -> smart" in errs["models[1].cascade"]
    assert "targets, variants or cascade" in errs["models[3]"]


def test_a_valid_cascade_and_shadow_load() -> None:
    cfg = parse_config("""
providers: [{name: p, kind: openai, base_url: http://127.0.0.1:9/v1}]
models:
  - {name: a, targets: [{provider: p, model: a}], shadow: {model: b, percent: 5}}
  - {name: b, targets: [{provider: p, model: b}]}
  - name: smart
    cascade:
      - model: a
        accept_if: {max_prompt_tokens: 100, header: {x-tier: "free*"}, metadata: {t: "x*"},
                    judge: {model: b, prompt: "Simple? {input}", accept: "^YES"}}
        escalate_on: [length, content_filter, error]
      - {model: b}
""")
    smart = cfg.models[2]
    assert smart.cascade[0].accept_if is not None
    assert smart.cascade[0].accept_if.judge is not None
    assert smart.cascade[0].accept_if.judge.on_error == "escalate"
    assert cfg.models[0].shadow is not None and cfg.models[0].shadow.max_inflight == 16
