"""deploy/grafana: every metric the dashboard and the alert rules use exists in the
gateway's /metrics after traffic that touches every feature they draw."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import yaml
from gwtest import chat, http, running
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
ADMIN = "grafana-admin-key"
KEY = "sk-grafana-0001"
METRIC = re.compile(r"\bfastgw_[a-z0-9_]+\b")


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def exprs() -> dict[str, str]:
    """Where -> PromQL expression, from the dashboard's panels and the alert rules."""
    out: dict[str, str] = {}
    dash = json.loads((DEPLOY / "fastgw-dashboard.json").read_text())
    for panel in dash["panels"]:
        for target in panel["targets"]:
            out[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            out[f"alert {rule['alert']}"] = rule["expr"]
    return out


def test_dashboard_and_rules_are_well_formed() -> None:
    found = exprs()
    assert len([w for w in found if w.startswith("alert")]) >= 4
    alerts = " ".join(found)
    for needed in ("HighErrorRate", "TargetEjected", "BudgetNearlySpent", "HighOverhead"):
        assert needed in alerts
    for where, expr in found.items():
        assert METRIC.search(expr), f"{where} uses no fastgw metric"
        assert expr.count("(") == expr.count(")"), where
        assert "{{" not in expr, where


def yaml_for(port: int) -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - {{name: mock, kind: openai-compatible, base_url: "http://127.0.0.1:{port}/v1"}}
  - {{name: dead, kind: openai-compatible, base_url: "http://127.0.0.1:9/v1"}}
models:
  - name: gpt-test
    targets: [{{provider: mock, model: mock-deployment}}]
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
    cache: true
  - name: flaky
    targets: [{{provider: dead, model: nowhere}}]
    retry: {{attempts: 1}}
    fallbacks: [gpt-test]
health: {{consecutive_failures: 1, base_ejection_s: 60}}
observability: {{access_log: off, key_labels: true}}
admin: {{key_sha256: {sha(ADMIN)}}}
auth:
  keys:
    - name: grafana
      key_sha256: {sha(KEY)}
      limits: {{rpm: 3, budget_usd: {{amount: 1.0, period: day}}}}
"""


def test_every_metric_used_exists_in_metrics_after_traffic() -> None:
    with running(yaml_for) as gw:
        auth = {"authorization": f"Bearer {KEY}"}
        statuses = [
            http(gw.port, "POST", "/v1/chat/completions", chat(temperature=0), auth).status,
            http(gw.port, "POST", "/v1/chat/completions", chat("flaky"), auth).status,
            http(gw.port, "POST", "/v1/chat/completions", chat(), auth).status,
            http(gw.port, "POST", "/v1/chat/completions", chat(), auth).status,  # rpm 3: 429
        ]
        assert statuses == [200, 200, 200, 429], statuses
        body = http(
            gw.port, "GET", "/metrics", headers={"authorization": f"Bearer {ADMIN}"}
        ).body.decode()
    names = {s.name for fam in text_string_to_metric_families(body) for s in fam.samples}
    missing = {where: sorted(set(METRIC.findall(expr)) - names) for where, expr in exprs().items()}
    missing = {w: m for w, m in missing.items() if m}
    assert not missing, missing
