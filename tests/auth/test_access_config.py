"""Configuration checks for auth, limits and redis: every error with its YAML path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from auth_helpers import sha
from gwtest import minimal_yaml

from fastgw.config import parse_config
from fastgw.errors import ConfigError


def errors_of(extra: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(minimal_yaml(1, extra))
    return dict(info.value.errors)


def test_a_full_access_section_is_accepted() -> None:
    cfg = parse_config(minimal_yaml(1, f"""
auth:
  keys:
    - {{name: team-a, key_sha256: "{sha('k1')}", models: ["gpt-*"], tier: free,
       limits: {{rpm: 600, tpm: 100000, max_inflight: 20,
                 budget_usd: {{amount: 50, period: month}}}},
       metadata: {{team: search}}}}
  jwt: {{issuer: "https://idp/", audience: fastgw, algorithms: [RS256, ES256],
         jwks_url: "https://idp/.well-known/jwks.json", leeway_s: 30,
         claims: {{subject: sub, models: fastgw_models, tier: tier}}}}
  ip_allow: [127.0.0.0/8, "::1/128"]
  ip_deny: []
limits:
  - {{match: {{model: "gpt-4o*"}}, rpm: 1000, tpm: 200000}}
  - {{match: {{tier: free}}, rpm: 20, per: rule}}
limits_backend: redis
redis: {{url: "redis://127.0.0.1:6379/0", cluster: false, on_error: local, timeout_s: 0.1}}
"""))
    assert cfg.auth.keys[0].limits is not None
    assert cfg.auth.keys[0].limits.budget_usd is not None
    assert cfg.limits[1].per == "rule"
    assert cfg.redis.on_error == "local"


def test_key_errors() -> None:
    errs = errors_of(f"""
auth:
  keys:
    - {{name: a, key_sha256: "{sha('x').upper()}"}}
    - {{name: a, key_sha256: "{sha('y')}", models: []}}
    - {{name: c, key_sha256: "{sha('y')}", limits: {{rpm: 0, budget_usd: {{amount: 0}}}}}}
    - {{name: "", key_sha256: "sk-raw-key"}}
""")
    assert "64 lowercase hex" in errs["auth.keys[0].key_sha256"]
    assert "duplicate key name" in errs["auth.keys[1].name"]
    assert "at least one model" in errs["auth.keys[1].models"]
    assert "configured twice" in errs["auth.keys[2].key_sha256"]
    assert errs["auth.keys[2].limits.rpm"] == "must be at least 1"
    assert "greater than 0" in errs["auth.keys[2].limits.budget_usd.amount"]
    assert "must not be empty" in errs["auth.keys[3].name"]
    assert "never the key itself" in errs["auth.keys[3].key_sha256"]


def test_jwt_errors() -> None:
    errs = errors_of('auth: {jwt: {secret: s, jwks_url: "https://x/jwks", '
                     'algorithms: [HS256, none, RS257]}}')
    assert "exactly one of" in errs["auth.jwt"]
    assert "never accepted" in errs["auth.jwt.algorithms[1]"]
    assert "did you mean 'RS256'" in errs["auth.jwt.algorithms[2]"]
    errs = errors_of("auth: {jwt: {algorithms: [RS256]}}")
    assert "exactly one of" in errs["auth.jwt"]
    errs = errors_of("auth: {jwt: {secret: s, algorithms: [HS256, ES256], leeway_s: -1}}")
    assert "HS256/HS384/HS512 tokens only" in errs["auth.jwt.algorithms"]
    assert errs["auth.jwt.leeway_s"] == "must be 0 or more"
    errs = errors_of('auth: {jwt: {public_key_pem: "abc", jwks_cache_s: 0}}')
    assert "PEM" in errs["auth.jwt.public_key_pem"]
    assert "greater than 0" in errs["auth.jwt.jwks_cache_s"]
    errs = errors_of('auth: {jwt: {jwks_url: "ftp://idp/jwks", claims: {subject: ""}}}')
    assert "http://" in errs["auth.jwt.jwks_url"]
    assert "must name a claim" in errs["auth.jwt.claims.subject"]
    errs = errors_of('auth: {jwt: {jwks_url: "https://idp/jwks", claim: {}}}')
    assert "unknown key" in errs["auth.jwt.claim"]


def test_limit_and_redis_errors() -> None:
    errs = errors_of("""
limits:
  - {match: {modle: x}, rpm: 5}
  - {rpm: 5, per: everyone}
  - {match: {tier: free}, budget_usd: {amount: 5, period: fortnight}}
limits_backend: memcached
redis: {url: "redis://127.0.0.1", on_error: ignore}
""")
    assert "did you mean 'model'" in errs["limits[0].match.modle"]
    assert "'key', 'rule'" in errs["limits[1].per"]
    assert "fortnight" in errs["limits[2].budget_usd.period"]
    assert "memcached" in errs["limits_backend"]
    assert "ignore" in errs["redis.on_error"]
    errs = errors_of('limits:\n  - {match: {model: "gpt*"}}')
    assert "at least one of rpm" in errs["limits[0]"]
    errs = errors_of("limits:\n  - {rpm: 5, tpm: 0, max_inflight: -1}\n"
                     "limits_backend: redis\n"
                     'redis: {url: "http://127.0.0.1", timeout_s: 0, key_prefix: "a{b}"}')
    assert errs["limits[0].tpm"] == "must be at least 1"
    assert errs["limits[0].max_inflight"] == "must be at least 1"
    assert "redis://" in errs["redis.url"]
    assert "greater than 0" in errs["redis.timeout_s"]
    assert "braces" in errs["redis.key_prefix"]
    errs = errors_of('limits:\n  - {match: {tier: ""}, rpm: 1}')
    assert "must not be empty" in errs["limits[0].match.tier"]


def test_check_config_prints_access_errors_with_paths(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(minimal_yaml(1, 'auth: {keys: [{name: a, key_sha256: "oops"}]}'))
    out = subprocess.run([sys.executable, "-m", "fastgw", "check-config", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "auth.keys[0].key_sha256" in out.stdout + out.stderr


def test_bad_public_key_is_refused_at_start() -> None:
    from gwtest import running

    pem = "-----BEGIN PUBLIC KEY-----\\nAAAA\\n-----END PUBLIC KEY-----\\n"
    with pytest.raises(ConfigError) as info, \
            running(lambda p: minimal_yaml(p, f'auth: {{jwt: {{algorithms: [RS256], '
                                              f'public_key_pem: "{pem}"}}}}')):
        pass
    assert dict(info.value.errors)["auth.jwt.public_key_pem"].startswith("cannot be used")
