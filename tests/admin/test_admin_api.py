"""The admin API on a real gateway: the admin key, secrets never shown, and figures
(targets, keys, stats) that follow known traffic."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from gwtest import Gateway, chat, http, http_json, minimal_yaml, running, wait_for

from fastgw.admin.stats import quantile
from fastgw.metrics import COST, KEY_REQUESTS, TOKENS, Recorder

ADMIN = "admin-key-7f3a9c"
KEY_A = "sk-alice-0c1d2e"
KEY_B = "sk-bob-9a8b7c"
ENDPOINTS = ["/admin/config", "/admin/targets", "/admin/stats", "/admin/keys/alice"]

# Values that must never appear in any admin answer.
SECRETS = {
    "provider api key": "sk-provider-secret",
    "provider header": "hdr-token-55aa66bb",
    "url password": "urlpass-31415",
    "url query": "qtoken-27182",
    "redis password": "redispass-16180",
    "jwt secret": "jwt-hmac-secret-0123456789abcdef",
    "key metadata": "meta-cost-center-4242",
    "admin hash": hashlib.sha256(ADMIN.encode()).hexdigest(),
    "key hash a": hashlib.sha256(KEY_A.encode()).hexdigest(),
    "key hash b": hashlib.sha256(KEY_B.encode()).hexdigest(),
    "admin key": ADMIN,
    "api key a": KEY_A,
}


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def admin_yaml(port: int) -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - name: mock
    kind: openai-compatible
    base_url: http://127.0.0.1:{port}/v1
    api_key: sk-provider-secret
    headers: {{x-extra-auth: hdr-token-55aa66bb}}
  - name: dead
    kind: openai-compatible
    base_url: http://someone:urlpass-31415@127.0.0.1:9/v1?token=qtoken-27182
    timeouts: {{connect_s: 0.5}}
models:
  - name: gpt-test
    targets: [{{provider: mock, model: mock-deployment}}]
    price: {{input_per_mtok: 1000.0, output_per_mtok: 2000.0}}
  - name: flaky
    targets: [{{provider: dead, model: nowhere}}]
    retry: {{attempts: 1}}
health: {{consecutive_failures: 1, base_ejection_s: 30}}
observability: {{access_log: off, key_labels: true}}
admin: {{key_sha256: {sha(ADMIN)}}}
redis: {{url: "redis://:redispass-16180@127.0.0.1:6390/0"}}
auth:
  keys:
    - name: alice
      key_sha256: {sha(KEY_A)}
      metadata: {{cost_center: meta-cost-center-4242}}
      limits: {{rpm: 50, budget_usd: {{amount: 2.0, period: day}}}}
    - {{name: bob, key_sha256: {sha(KEY_B)}}}
  jwt: {{secret: jwt-hmac-secret-0123456789abcdef, algorithms: [HS256]}}
limits:
  - {{match: {{model: gpt-test}}, tpm: 100000}}
"""


def get(gw: Gateway, path: str) -> Any:
    status, doc = http_json(gw.port, "GET", path, headers=bearer(ADMIN))
    assert status == 200, (path, doc)
    return doc


def send(gw: Gateway, key: str, model: str = "gpt-test") -> tuple[int, str]:
    r = http(gw.port, "POST", "/v1/chat/completions", chat(model), bearer(key))
    return r.status, r.headers["x-request-id"]


@pytest.fixture(scope="module")
def gw() -> Any:
    with running(admin_yaml) as g:
        yield g


def test_admin_endpoints_refuse_without_or_with_a_wrong_key(gw: Gateway) -> None:
    for path in [*ENDPOINTS, "/admin/keys/nobody"]:
        for headers in (
            {},
            bearer("wrong-key"),
            bearer(KEY_A),
            {"x-api-key": "wrong"},
            {"authorization": "Basic " + ADMIN},
        ):
            r = http(gw.port, "GET", path, headers=headers)
            assert r.status == 401, (path, headers, r.status)
            err = orjson.loads(r.body)["error"]
            assert err["type"] and err["message"], err
            assert b"alice" not in r.body and b"gpt-test" not in r.body
        assert http(gw.port, "GET", path, headers=bearer(ADMIN)).status in (200, 404)
    # The admin key also works as x-api-key, as it does for /metrics.
    assert http(gw.port, "GET", "/admin/targets", headers={"x-api-key": ADMIN}).status == 200
    # The page itself is public; it holds no data.
    page = http(gw.port, "GET", "/ui")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b"/admin/stats" in page.body
    assert http(gw.port, "POST", "/admin/stats", body=b"{}").status == 405


def test_no_admin_answer_shows_a_secret(gw: Gateway) -> None:
    send(gw, KEY_A)
    send(gw, KEY_A, "flaky")
    bodies = {
        path: http(gw.port, "GET", path, headers=bearer(ADMIN)).body
        for path in [*ENDPOINTS, "/admin/keys/bob", "/ui", "/metrics"]
    }
    for path, body in bodies.items():
        for what, secret in SECRETS.items():
            assert secret.encode() not in body, f"{what} leaked in {path}"
    cfg = orjson.loads(bodies["/admin/config"])
    # Structure kept, values masked.
    p = {x["name"]: x for x in cfg["providers"]}
    assert p["mock"]["api_key"] == "***"
    assert p["mock"]["headers"] == {"x-extra-auth": "***"}
    assert p["dead"]["base_url"] == "http://***@127.0.0.1:9/v1?token=***"
    assert cfg["redis"]["url"] == "redis://***@127.0.0.1:6390/0"
    assert cfg["auth"]["jwt"]["secret"] == "***"
    assert cfg["admin"]["key_sha256"] == "***"
    assert [k["key_sha256"] for k in cfg["auth"]["keys"]] == ["***", "***"]
    # Public settings stay readable.
    assert [m["name"] for m in cfg["models"]] == ["gpt-test", "flaky"]
    assert cfg["auth"]["keys"][0]["limits"]["rpm"] == 50
    assert cfg["health"]["consecutive_failures"] == 1


def test_redaction_is_structural_a_new_string_field_is_masked() -> None:
    import dataclasses

    from fastgw.admin.redact import redact_config
    from fastgw.config import parse_config

    @dataclasses.dataclass(frozen=True)
    class FutureWebhook:  # a field nobody listed as public
        url: str
        signing_token: str

    cfg = parse_config(minimal_yaml(1))
    out = redact_config(cfg)
    assert out["providers"][0]["api_key"] == "***"
    from fastgw.admin import redact

    hidden: set[str] = set()
    got = redact._value(FutureWebhook("https://h/x?sig=abc123", "tok-zzz-999"), "X.y", Any, hidden)
    assert got == {"url": "***", "signing_token": "***"}
    assert "tok-zzz-999" in hidden
    # A hidden value reused under a public field is masked there too.
    reused = dataclasses.replace(
        cfg, models=(dataclasses.replace(cfg.models[0], name="sk-provider-secret"),)
    )
    assert b"sk-provider-secret" not in orjson.dumps(redact_config(reused))


def test_targets_follow_traffic_and_ejections(gw: Gateway) -> None:
    def row(model: str) -> dict[str, Any]:
        rows = [t for t in get(gw, "/admin/targets")["targets"] if t["model"] == model]
        assert len(rows) == 1
        found: dict[str, Any] = rows[0]
        return found

    before = row("gpt-test")
    for _ in range(4):
        assert send(gw, KEY_A)[0] == 200
    after = row("gpt-test")
    assert after["samples"] - before["samples"] == 4
    assert after["state"] == "healthy" and after["healthy"] and after["inflight"] == 0
    assert after["latency_ewma_s"] is not None and 0 < after["latency_ewma_s"] < 1
    assert after["provider"] == "mock" and after["target"] == "mock-deployment"

    status, _ = send(gw, KEY_A, "flaky")  # connection refused: one failure ejects
    assert status in (502, 503)
    dead = row("flaky")
    assert dead["state"] == "ejected" and not dead["healthy"]
    assert dead["ejections"] >= 1
    assert 0 < dead["cooldown_left_s"] <= 30


def test_key_limits_remaining_and_budget_spent_follow_requests(gw: Gateway) -> None:
    def limits() -> dict[str, dict[str, Any]]:
        doc = get(gw, "/admin/keys/alice")
        assert doc["name"] == "alice" and doc["backend"] == "local"
        return {f"{x['scope']}:{x['limit']}": x for x in doc["limits"]}

    def cost() -> float:
        return gw.metric(COST, "gpt-test", "alice")

    first = limits()
    assert set(first) == {"key:rpm", "key:budget", "model:tpm"}
    cost0 = cost()
    for _ in range(3):
        assert send(gw, KEY_A)[0] == 200
    second = limits()
    # rpm refills continuously (50/min): 3 taken, a little given back meanwhile.
    taken = first["key:rpm"]["remaining"] - second["key:rpm"]["remaining"]
    assert 2.5 < taken <= 3.0, taken
    spent = second["key:budget"]["spent_usd"] - first["key:budget"]["spent_usd"]
    assert spent == pytest.approx(cost() - cost0, rel=1e-6) and spent > 0
    assert second["key:budget"]["value"] == 2.0 and second["key:budget"]["period"] == "day"
    assert second["key:budget"]["remaining"] == pytest.approx(
        2.0 - second["key:budget"]["spent_usd"]
    )
    assert 0 < second["key:budget"]["reset_s"] <= 86400
    # Bob has no limits of his own, only the model's rule.
    bob = get(gw, "/admin/keys/bob")
    assert [(x["scope"], x["limit"]) for x in bob["limits"]] == [("model", "tpm")]


def test_unknown_key_is_404_in_the_openai_envelope(gw: Gateway) -> None:
    for name in ("nobody", "ali", "alice%00", "%2e%2e"):
        status, doc = http_json(gw.port, "GET", f"/admin/keys/{name}", headers=bearer(ADMIN))
        assert status == 404, name
        assert doc["error"]["code"] == "key_not_found" and doc["error"]["type"]


def test_stats_follow_known_traffic(gw: Gateway) -> None:
    s0 = get(gw, "/admin/stats")
    ok, failed = 5, 2
    failed_ids = []
    for _ in range(ok):
        assert send(gw, KEY_B)[0] == 200
    for _ in range(failed):
        status, rid = send(gw, KEY_B, "no-such-model")
        assert status == 404
        failed_ids.append(rid)
    s1 = get(gw, "/admin/stats")
    t0, t1 = s0["totals"], s1["totals"]
    assert t1["requests"] - t0["requests"] == ok + failed
    assert t1["client_errors"] - t0["client_errors"] == failed
    assert t1["errors"] == t0["errors"]  # no 5xx in between
    # Per model and per key, as /metrics counts them.
    models = {m["model"]: m for m in s1["models"]}
    assert models["gpt-test"]["tokens_in"] == gw.metric(TOKENS, "gpt-test", "input")
    assert models["gpt-test"]["tokens_out"] == gw.metric(TOKENS, "gpt-test", "output")
    keys0 = {k["key"]: k for k in s0["keys"]}
    keys = {k["key"]: k for k in s1["keys"]}
    assert keys["bob"]["requests"] - keys0.get("bob", {"requests": 0})["requests"] == ok + failed
    assert keys["bob"]["requests"] == gw.metric(KEY_REQUESTS, "bob")
    assert keys["alice"]["cost_usd"] == pytest.approx(gw.metric(COST, "gpt-test", "alice"))
    assert t1["cost_usd"] == pytest.approx(sum(m["cost_usd"] for m in s1["models"]))
    # Latency percentiles exist and are ordered.
    lat = s1["latency_s"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] < 5
    # A rate over the window between the two readings.
    rate = s1["rate"]
    assert rate["window_s"] and rate["window_s"] > 0
    assert rate["requests_per_s"] > 0
    # The failures, newest first, with their request ids.
    recent = [e["request_id"] for e in s1["recent_errors"]]
    assert recent[:failed] == failed_ids[::-1]
    assert s1["recent_errors"][0]["status"] == 404
    assert s1["recent_errors"][0]["key"] == "bob"
    assert any(t["model"] == "gpt-test" for t in s1["targets"])


def test_stats_rate_is_the_change_over_the_window() -> None:
    from fastgw.admin.stats import StatsReader

    reader = StatsReader()

    class S:
        def __init__(self, labels: dict[str, str], value: float) -> None:
            self.name, self.labels, self.value = "fastgw_requests_total", labels, value

    class F:
        def __init__(self, n200: float, n500: float) -> None:
            self.samples = [
                S({"model": "m", "provider": "p", "status": "200"}, n200),
                S({"model": "m", "provider": "p", "status": "500"}, n500),
            ]

    assert reader.read(100.0, [F(10, 0)])["rate"]["requests_per_s"] is None
    r = reader.read(110.0, [F(40, 10)])["rate"]
    assert r["requests_per_s"] == pytest.approx(4.0)
    assert r["errors_per_s"] == pytest.approx(1.0)
    assert r["error_rate"] == pytest.approx(0.25)
    # Readings older than the window are forgotten.
    r = reader.read(200.0, [F(100, 10)])["rate"]
    assert r["window_s"] == pytest.approx(90.0)


def test_quantile_matches_prometheus_histogram_quantile() -> None:
    inf = float("inf")
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (inf, 40.0)]
    assert quantile(0.25, buckets) == pytest.approx(0.1)
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)
    assert quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * (39.6 - 30) / 10)
    assert quantile(0.99, [(0.1, 0.0), (inf, 5.0)]) == pytest.approx(0.1)
    assert quantile(0.5, [(0.1, 0.0), (inf, 0.0)]) is None


def test_the_error_ring_is_bounded_and_skips_successes() -> None:
    from fastgw.pipeline.outcome import Responder

    rec = Recorder(recent_errors=3)
    assert rec.errors.maxlen == 3
    for i in range(5):
        rec.errors.append((0.0, f"r{i}", 500, "m", "p", None, None))
    assert [e[1] for e in rec.errors] == ["r2", "r3", "r4"]
    # Only the log phase of a failure appends (a success costs one comparison).
    import inspect

    src = inspect.getsource(Responder.logging)
    assert "if ctx.status >= 400:" in src


def test_admin_api_open_without_an_admin_key() -> None:
    with running() as g:
        assert http(g.port, "GET", "/admin/targets").status == 200
        assert wait_for(lambda: http(g.port, "GET", "/admin/stats").status == 200, timeout=5)
        cfg = orjson.loads(http(g.port, "GET", "/admin/config").body)
        assert cfg["providers"][0]["api_key"] == "***"


def test_key_figures_come_from_redis_with_the_redis_backend() -> None:
    import importlib

    # tests/limits' real redis-server helper (by name: mypy knows it as limits_helpers)
    helpers = importlib.import_module("limits.limits_helpers")
    with helpers.redis_server() as srv:

        def yaml_for(port: int) -> str:
            return minimal_yaml(
                port,
                f"""
admin: {{key_sha256: {sha(ADMIN)}}}
limits_backend: redis
redis: {{url: "{srv.url}"}}
auth:
  keys:
    - name: alice
      key_sha256: {sha(KEY_A)}
      limits: {{rpm: 20, budget_usd: {{amount: 1.0, period: day}}}}
""",
            ).replace(
                "input_per_mtok: 1.0, output_per_mtok: 2.0",
                "input_per_mtok: 1000.0, output_per_mtok: 2000.0",
            )

        with running(yaml_for) as g:

            def figures() -> dict[str, dict[str, Any]]:
                doc = get(g, "/admin/keys/alice")
                assert doc["backend"] == "redis"
                return {x["limit"]: x for x in doc["limits"]}

            first = figures()
            for _ in range(4):
                assert send(g, KEY_A)[0] == 200
            second = figures()
            assert 3.5 < first["rpm"]["remaining"] - second["rpm"]["remaining"] <= 4.0
            spent = second["budget"]["spent_usd"] - first["budget"]["spent_usd"]
            assert spent > 0
            # The count lives in Redis: a direct look at its keys agrees.
            assert any("budget" in k for k in srv.stored_keys())
            # Reading changes nothing.
            assert figures()["budget"]["spent_usd"] == pytest.approx(second["budget"]["spent_usd"])
