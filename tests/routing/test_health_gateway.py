"""Target health through a real gateway and the mock upstream: the error-ratio rule
with its ``min_requests`` floor, the cooldown doubling up to ``max_ejection_s``, and
client errors from the upstream never counting as failures. The state is read from
``GET /admin/targets`` and the ``fastgw_target_healthy`` gauge."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from gwtest import Gateway, chat, http, http_json, running, wait_for

from fastgw.metrics import TARGET_HEALTHY

ADMIN = "admin-key-health-5e1d"


def health_yaml(health: str) -> Any:
    def yaml(port: int) -> str:
        return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - {{name: up, kind: openai-compatible, base_url: 'http://127.0.0.1:{port}/v1', api_key: k}}
models:
  - {{name: ratio, retry: {{attempts: 1}}, targets: [{{provider: up, model: t-ratio}}]}}
  - {{name: floor, retry: {{attempts: 1}}, targets: [{{provider: up, model: t-floor}}]}}
  - {{name: client, retry: {{attempts: 1}}, targets: [{{provider: up, model: t-client}}]}}
health: {health}
admin: {{key_sha256: {hashlib.sha256(ADMIN.encode()).hexdigest()}}}
observability: {{access_log: off}}
"""
    return yaml


def target(gw: Gateway, name: str) -> dict[str, Any]:
    status, doc = http_json(gw.port, "GET", "/admin/targets",
                            headers={"authorization": f"Bearer {ADMIN}"})
    assert status == 200, doc
    rows = [r for r in doc["targets"] if r["target"] == name]
    assert len(rows) == 1, doc
    row: dict[str, Any] = rows[0]
    return row


def send(gw: Gateway, model: str, fault: str | None = None) -> int:
    headers = {"x-mock-fault": fault} if fault else {}
    r = http(gw.port, "POST", "/v1/chat/completions", chat(model), headers)
    if r.status != 503:  # 503: no healthy target, nothing went upstream
        assert r.headers["x-fastgw-attempts"] == "1", r.headers
    return r.status


def healthy_gauge(gw: Gateway, name: str) -> float:
    return gw.metric(TARGET_HEALTHY, "up", name)


# Only the error ratio can eject here (consecutive failures never reach 1000).
RATIO = ("{consecutive_failures: 1000, error_ratio: 0.5, min_requests: 6, window_s: 60, "
         "base_ejection_s: 30, max_ejection_s: 60}")


def test_error_ratio_ejects_only_once_reached_with_min_requests() -> None:
    with running(health_yaml(RATIO)) as gw:
        # 4 successes, then failures: 2/6 and 3/7 stay under 0.5; 4/8 reaches it.
        for _ in range(4):
            assert send(gw, "ratio") == 200
        for n in range(1, 4):
            assert send(gw, "ratio", "500") == 502
            row = target(gw, "t-ratio")
            assert row["state"] == "healthy", (n, row)
            assert row["consecutive_failures"] == n
        assert healthy_gauge(gw, "t-ratio") == 1
        assert send(gw, "ratio", "500") == 502
        row = target(gw, "t-ratio")
        assert row["state"] == "ejected" and row["ejections"] == 1, row
        assert 0 < row["cooldown_left_s"] <= 30
        assert healthy_gauge(gw, "t-ratio") == 0
        assert send(gw, "ratio") == 503  # out: nothing is sent upstream

        # Every request failing, but fewer than min_requests of them: no ejection.
        for n in range(1, 6):
            assert send(gw, "floor", "502") == 502
            row = target(gw, "t-floor")
            assert row["state"] == "healthy", (n, row)
        assert healthy_gauge(gw, "t-floor") == 1
        assert send(gw, "floor", "502") == 502  # the 6th: min_requests reached
        assert target(gw, "t-floor")["state"] == "ejected"
        assert healthy_gauge(gw, "t-floor") == 0


def test_failures_spread_over_more_than_the_window_do_not_eject() -> None:
    health = ("{consecutive_failures: 1000, error_ratio: 0.5, min_requests: 4, window_s: 0.5, "
              "base_ejection_s: 30, max_ejection_s: 60}")
    with running(health_yaml(health)) as gw:
        for _ in range(3):
            assert send(gw, "ratio", "500") == 502
        time.sleep(0.7)  # the window starting at the first failure is over
        for _ in range(3):
            assert send(gw, "ratio", "500") == 502
        assert target(gw, "t-ratio")["state"] == "healthy"
        assert send(gw, "ratio", "500") == 502  # 4 failures in this window
        assert target(gw, "t-ratio")["state"] == "ejected"


def test_client_errors_from_the_upstream_never_count_as_failures() -> None:
    health = ("{consecutive_failures: 2, error_ratio: 0.5, min_requests: 2, window_s: 60, "
              "base_ejection_s: 30, max_ejection_s: 60}")
    with running(health_yaml(health)) as gw:
        for fault in ["400", "401", "403", "404", "422", "400:context_length_exceeded"] * 2:
            assert send(gw, "client", fault) == int(fault[:3])
        row = target(gw, "t-client")
        assert row["state"] == "healthy" and row["consecutive_failures"] == 0, row
        assert healthy_gauge(gw, "t-client") == 1
        assert send(gw, "client") == 200
        # The same configuration does eject on upstream faults.
        assert send(gw, "client", "500") == 502
        assert send(gw, "client", "503") == 502
        assert target(gw, "t-client")["state"] == "ejected"


def test_cooldown_doubles_per_ejection_in_a_row_up_to_max_ejection_s() -> None:
    base, cap = 0.8, 2.0
    health = (f"{{consecutive_failures: 1, min_requests: 1000, base_ejection_s: {base}, "
              f"max_ejection_s: {cap}}}")
    expected = [base, 2 * base, cap, cap]  # 0.8, 1.6, then 3.2 and 6.4 capped at 2
    with running(health_yaml(health)) as gw:
        for n, cooldown in enumerate(expected, start=1):
            if n > 1:
                # Wait out the cooldown; the next request is the half-open probe.
                assert wait_for(lambda: target(gw, "t-ratio")["cooldown_left_s"] == 0,
                                timeout=cap + 30, interval=0.05)
                assert target(gw, "t-ratio")["state"] == "ejected"
            t0 = time.monotonic()
            assert send(gw, "ratio", "500") == 502
            row = target(gw, "t-ratio")
            spent = time.monotonic() - t0
            assert row["state"] == "ejected" and row["ejections"] == n, (n, row)
            # The cooldown started between t0 and now.
            assert cooldown - spent - 0.05 <= row["cooldown_left_s"] <= cooldown + 0.05, (
                n, row, spent)
            assert healthy_gauge(gw, "t-ratio") == 0
            assert send(gw, "ratio") == 503
        # A successful probe makes it healthy and starts the doubling again.
        assert wait_for(lambda: target(gw, "t-ratio")["cooldown_left_s"] == 0,
                        timeout=cap + 30, interval=0.05)
        assert send(gw, "ratio") == 200
        row = target(gw, "t-ratio")
        assert row["state"] == "healthy" and row["ejections"] == 0, row
        assert healthy_gauge(gw, "t-ratio") == 1
        t0 = time.monotonic()
        assert send(gw, "ratio", "500") == 502
        row = target(gw, "t-ratio")
        assert base - (time.monotonic() - t0) - 0.05 <= row["cooldown_left_s"] <= base + 0.05
