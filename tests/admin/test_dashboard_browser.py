"""The dashboard in a real headless browser (Debian's chromium and chromedriver,
driven by selenium): after known traffic, the numbers on the page are the ones
``/metrics`` shows. Skipped only when chromium is absent outside CI; in CI
(``CI=true``) a missing browser fails the test."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gwtest import Gateway, chat, http, running
from prometheus_client.parser import text_string_to_metric_families

ADMIN = "dash-admin-key-41"
N_MODELS = 50
N_KEYS = 500
ROOT = Path(__file__).resolve().parents[2]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
IN_CI = os.environ.get("CI", "").lower() == "true"

if not (CHROMIUM and CHROMEDRIVER) and IN_CI:
    # In CI the browser is installed by scripts/test: its absence is a failure.
    def test_chromium_is_installed_in_ci() -> None:
        pytest.fail(
            "chromium and chromedriver are missing: scripts/test installs them "
            "(apt-get install chromium chromium-driver)"
        )


pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not IN_CI,
    reason="chromium and chromedriver are not installed (apt-get install chromium "
    "chromium-driver); CI runs this test",
)


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def key_of(i: int) -> str:
    return f"sk-dash-{i:04d}"


def dash_yaml(port: int) -> str:
    models = "\n".join(
        f"  - {{name: model-{i:02d}, targets: [{{provider: mock, model: m{i}}}], "
        f"price: {{input_per_mtok: {i + 1}.0, output_per_mtok: {2 * i + 1}.0}}}}"
        for i in range(N_MODELS)
    )
    keys = "\n".join(
        f"    - {{name: team-{i:03d}, key_sha256: {sha(key_of(i))}}}" for i in range(N_KEYS)
    )
    return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - {{name: mock, kind: openai-compatible, base_url: "http://127.0.0.1:{port}/v1",
     api_key: sk-provider-secret}}
  - {{name: dead, kind: openai-compatible, base_url: "http://127.0.0.1:9/v1"}}
models:
{models}
  - name: flaky
    targets: [{{provider: dead, model: nowhere}}]
    retry: {{attempts: 1}}
health: {{consecutive_failures: 1, base_ejection_s: 60}}
observability: {{access_log: off, key_labels: true, max_key_labels: 1000}}
admin: {{key_sha256: {sha(ADMIN)}}}
auth:
  keys:
{keys}
"""


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1400",
        "--no-first-run",
        "--disable-extensions",
    ):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    d.set_page_load_timeout(20)
    try:
        yield d
    finally:
        d.quit()


def scrape(gw: Gateway) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = http(gw.port, "GET", "/metrics", headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status == 200
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(r.body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(m: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float:
    return sum(
        v
        for labels, v in m.get(name, ())
        if all(labels.get(k) == want for k, want in match.items())
    )


def wait_until(pred: Any, timeout: float = 15.0) -> Any:
    """Poll ``pred`` until it returns something truthy (bounded in time and count)."""
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
    return pred()


def test_dashboard_shows_what_metrics_counts(driver: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with running(dash_yaml) as gw:
        # Known traffic: each key one request on a model (spread over the 50), the
        # first keys more; three failures (unknown model, and a dead target).
        before = total(scrape(gw), "fastgw_requests_total")  # other tests' counts too
        failed_ids = []
        for i in range(N_KEYS):
            model = f"model-{i % N_MODELS:02d}"
            for _ in range(1 + (5 if i < 3 else 0)):
                r = http(
                    gw.port,
                    "POST",
                    "/v1/chat/completions",
                    chat(model),
                    {"authorization": f"Bearer {key_of(i)}"},
                )
                assert r.status == 200
        for model in ("no-such-model", "flaky", "no-such-model"):
            r = http(
                gw.port,
                "POST",
                "/v1/chat/completions",
                chat(model),
                {"authorization": f"Bearer {key_of(7)}"},
            )
            assert r.status >= 400
            failed_ids.append(r.headers["x-request-id"])

        driver.get(gw.url + "/ui")
        # The page asks for the admin key once, then keeps it for the tab.
        login = driver.find_element(By.ID, "login")
        assert wait_until(login.is_displayed), "the page did not ask for the admin key"
        driver.find_element(By.ID, "login-key").send_keys("not-the-key")
        driver.find_element(By.CSS_SELECTOR, "#login button").click()
        assert wait_until(lambda: "refused" in driver.find_element(By.ID, "login-error").text)
        driver.find_element(By.ID, "login-key").send_keys(ADMIN)
        driver.find_element(By.CSS_SELECTOR, "#login button").click()
        body = driver.find_element(By.TAG_NAME, "body")
        assert wait_until(lambda: int(body.get_attribute("data-updates") or 0) >= 1)
        assert driver.execute_script("return sessionStorage.getItem('fastgw.adminKey')") == ADMIN

        m = scrape(gw)

        def value(el_id: str) -> float:
            return float(
                driver.execute_script(f"return document.getElementById('{el_id}').dataset.value")
            )

        requests = total(m, "fastgw_requests_total")
        assert requests - before == N_KEYS + 3 * 5 + 3
        assert value("requests-total") == requests
        assert value("tokens-in") == total(m, "fastgw_tokens_total", direction="input")
        assert value("tokens-out") == total(m, "fastgw_tokens_total", direction="output")
        assert value("cost-total") == pytest.approx(total(m, "fastgw_cost_usd_total"))
        assert value("client-errors") == sum(
            v for labels, v in m["fastgw_requests_total"] if labels["status"].startswith("4")
        )
        assert value("lat-p99") > 0

        def rows(table: str) -> dict[str, dict[str, float]]:
            # One script call: the page re-renders on every refresh.
            got: dict[str, dict[str, str]] = driver.execute_script(
                "const out = {};"
                f"for (const tr of document.querySelectorAll('#{table} tbody tr')) {{"
                "  const cells = {};"
                "  for (const td of tr.querySelectorAll('td[data-value]'))"
                "    cells[td.dataset.col] = td.dataset.value;"
                "  out[tr.dataset.name] = cells; }"
                "return out;"
            )
            return {
                name: {k: float(v) for k, v in cells.items() if v not in (None, "")}
                for name, cells in got.items()
            }

        def first_row(table: str) -> tuple[str, str]:
            name, text = driver.execute_script(
                f"const tr = document.querySelector('#{table} tbody tr');"
                "return [tr.dataset.name, tr.textContent];"
            )
            return str(name), str(text)

        # Models: the top 20 by requests, the other 31 summed in one row.
        models = rows("models")
        assert len(models) == 21 and "_rest" in models
        for name, row in models.items():
            if name == "_rest":
                continue
            assert row["requests"] == total(m, "fastgw_requests_total", model=name), name
            assert row["tokens_in"] == total(
                m, "fastgw_tokens_total", model=name, direction="input"
            ), name
            assert row["cost_usd"] == pytest.approx(
                total(m, "fastgw_cost_usd_total", model=name)
            ), name
        assert sum(r["requests"] for r in models.values()) == requests
        # Keys: 500, the top 20 by cost and the rest summed; all add up to /metrics.
        keys = rows("keys")
        assert len(keys) == 21
        # (requests without a key, e.g. other tests' in this process, have no key row)
        keyed_cost = sum(v for labels, v in m["fastgw_cost_usd_total"] if labels.get("key"))
        assert sum(r["cost_usd"] for r in keys.values()) == pytest.approx(keyed_cost)
        assert sum(r["requests"] for r in keys.values()) == total(m, "fastgw_key_requests_total")
        for name, row in keys.items():
            if name != "_rest":
                assert row["requests"] == total(m, "fastgw_key_requests_total", key=name)
                assert row["cost_usd"] == pytest.approx(total(m, "fastgw_cost_usd_total", key=name))
        # The costliest key tops the table.
        costs: dict[str, float] = {}
        for labels, v in m["fastgw_cost_usd_total"]:
            if labels["key"]:
                costs[labels["key"]] = costs.get(labels["key"], 0.0) + v
        assert costs[first_row("keys")[0]] == max(costs.values())
        # The filter narrows the table to matching keys.
        driver.find_element(By.ID, "keys-filter").send_keys("team-12")
        filtered = rows("keys")
        assert set(filtered) == {f"team-12{i}" for i in range(10)}
        driver.find_element(By.ID, "keys-filter").clear()
        driver.execute_script(
            "document.getElementById('keys-filter').dispatchEvent(new Event('input'))"
        )

        # Targets: the dead one ejected, first in its table.
        name, text = first_row("targets")
        assert name.startswith("flaky") and "ejected" in text, (name, text)
        assert total(m, "fastgw_target_healthy", model="nowhere") == 0
        # The last errors with their request ids, newest first.
        errors = driver.execute_script("return document.getElementById('errors').textContent")
        positions = [errors.find(rid) for rid in failed_ids]
        assert all(p >= 0 for p in positions), (failed_ids, errors)
        assert positions == sorted(positions, reverse=True)

        # No request left this page for another host.
        hosts = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).host)"
        )
        assert set(hosts) <= {f"127.0.0.1:{gw.port}"}, hosts

        # A second reading gives requests/s (over the time between the two).
        assert wait_until(lambda: int(body.get_attribute("data-updates") or 0) >= 2, 10)
        assert value("rps") >= 0

        shot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("FASTGW_UPDATE_SCREENSHOT") == "1":
            shutil.copy(shot, ROOT / "docs" / "dashboard.png")
