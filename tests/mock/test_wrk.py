"""benchmarks/wrk.py: reading wrk's result line, failing on errors and non-2xx
answers, and (when wrk is installed) one short run against a recorder and the mock."""

from __future__ import annotations

import http.server
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from mock_helpers import CHAT, MockThread

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import wrk  # type: ignore[import-not-found,unused-ignore]

HUMAN = """Running 3s test @ http://127.0.0.1:9000/v1/chat/completions
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   580.12us  120.40us   3.87ms   91.02%
    Req/Sec    49.28k     1.20k   51.00k    70.00%
  147850 requests in 3.00s, 98.20MB read
Requests/sec:  49283.33
Transfer/sec:     32.73MB
"""


def result_line(**changes: object) -> str:
    doc: dict[str, object] = {
        "duration_us": 3_000_000,
        "requests": 147_850,
        "bytes": 102_970_000,
        "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0},
        "non_2xx": {},
        "latency_us": {
            "min": 120,
            "max": 3870,
            "mean": 580.125,
            "stdev": 120.4,
            "p50": 560,
            "p90": 731,
            "p99": 1283,
            "p999": 2823,
        },
    }
    doc.update(changes)
    return wrk.MARK + json.dumps(doc)


def test_the_result_line_is_read_among_wrks_own_report() -> None:
    r = wrk.parse_output(HUMAN + result_line() + "\n", "http://x/v1", 32)
    assert r.mode == "closed" and r.url == "http://x/v1" and r.connections == 32
    assert r.requests == r.ok == 147_850 and r.elapsed == 3.0
    assert r.rps == pytest.approx(147_850 / 3.0)
    assert r.errors == {} and r.non_2xx == {}
    lat = r.latency_ms
    assert lat is not None
    assert (lat.min, lat.p50, lat.p90, lat.p99, lat.p999, lat.max) == (
        0.12,
        0.56,
        0.731,
        1.283,
        2.823,
        3.87,
    )
    wrk.check(r)  # a clean run passes


def test_non_2xx_answers_and_socket_errors_fail_the_run() -> None:
    errors = {"connect": 0, "read": 2, "write": 0, "status": 7, "timeout": 1}
    r = wrk.parse_output(result_line(errors=errors, non_2xx={"429": 7, "302": 3}))
    assert r.non_2xx == {429: 7, 302: 3} and r.ok == 147_850 - 10
    assert r.errors == {"read": 2, "timeout": 1}  # wrk's status count is in non_2xx
    with pytest.raises(wrk.WrkError) as e:
        wrk.check(r)
    assert "non-2xx answers {429: 7, 302: 3}" in str(e.value)
    assert "'read': 2" in str(e.value) and "not a figure" in str(e.value)


def test_a_status_count_the_script_did_not_see_is_an_error() -> None:
    errors = {"connect": 0, "read": 0, "write": 0, "status": 5, "timeout": 0}
    r = wrk.parse_output(result_line(errors=errors))
    assert r.errors == {"status": 5}
    with pytest.raises(wrk.WrkError):
        wrk.check(r)


def test_a_run_without_answers_fails() -> None:
    r = wrk.parse_output(result_line(requests=0))
    assert r.latency_ms is None and r.rps == 0
    with pytest.raises(wrk.WrkError, match="no answer at all"):
        wrk.check(r)


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        (HUMAN, "0 result lines"),  # a script without our done(), or wrk died early
        ("PANIC: unprotected error in call to Lua API (attempt to call a nil value)\n", "0 result"),
        (result_line() + "\n" + result_line(), "2 result lines"),
        (wrk.MARK + '{"requests": 5,', "not JSON"),
        (wrk.MARK + "[1, 2]", "not an object"),
        (result_line(requests="many"), "requests is 'many'"),
        (result_line(latency_us=None), "latency_us is None"),
        (result_line(non_2xx={"x": 1}), "non_2xx is"),
        (result_line(duration_us=0), "duration 0"),
    ],
)
def test_output_that_is_not_a_result_is_refused(stdout: str, message: str) -> None:
    with pytest.raises(wrk.WrkError, match=message):
        wrk.parse_output(stdout)


def test_the_command_takes_whole_seconds_and_needs_wrk(tmp_path: Path) -> None:
    spec = wrk.WrkSpec("http://127.0.0.1:1/v1", duration=2.2, timeout=0.5, connections=8)
    cmd = wrk.command(spec, tmp_path / "s.lua", wrk="/usr/bin/wrk")
    assert cmd[:9] == ["/usr/bin/wrk", "-t", "1", "-c", "8", "-d", "3s", "--timeout", "1s"]
    assert cmd[-1] == "http://127.0.0.1:1/v1"
    with pytest.raises(wrk.WrkError, match="one connection per thread"):
        wrk.command(wrk.WrkSpec("u", threads=4, connections=2), tmp_path / "s.lua", "wrk")


def test_lua_literals_escape_every_byte_that_is_not_plain_ascii() -> None:
    assert wrk._lua_string(b'a"b\\c\nd\xc3\xa9') == '"a\\034b\\092c\\010d\\195\\169"'
    script = wrk.lua_script(b"{}", {"Authorization": "Bearer k"})
    assert 'wrk.method = "POST"' in script and "function done(" in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    assert '"Content-Type"' not in wrk.lua_script(b"{}", {"content-type": "text/plain"})


# -- with wrk itself (skipped where Debian's wrk package is not installed) --------------

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


class _Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not self.seen:
            self.seen.append((self.command, self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[int, type[_Recorder]]]:
    handler = type("Recorder", (_Recorder,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


@needs_wrk
def test_wrk_sends_the_exact_body_and_headers(
    recorder: tuple[int, type[_Recorder]], tmp_path: Path
) -> None:
    port, handler = recorder
    body = '{"content":"quote \\" backslash \\\\ newline \\n é"}'.encode()
    spec = wrk.WrkSpec(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        body=body,
        headers={"Authorization": "Bearer sk-\"odd\\key"},
        connections=1,
        duration=1,
    )
    r = wrk.run_wrk(spec, tmp_path)
    assert r.requests > 0 and r.ok == r.requests
    method, path, headers, seen = handler.seen[0]
    assert (method, path, seen) == ("POST", "/v1/chat/completions", body)
    assert headers["Authorization"] == "Bearer sk-\"odd\\key"
    assert headers["Content-Type"] == "application/json"


@needs_wrk
def test_wrk_against_the_mock_counts_and_refuses_error_answers(
    mock: MockThread, tmp_path: Path
) -> None:
    url = mock.base + "/v1/chat/completions"
    spec = wrk.WrkSpec(url, body=orjson.dumps(CHAT), connections=4, duration=1)
    r = wrk.run_wrk(spec, tmp_path)
    assert r.requests > 0 and r.ok == r.requests and r.errors == {}
    assert mock.stats()["requests"] >= r.requests
    assert r.latency_ms is not None and 0 < r.latency_ms.p50 <= r.latency_ms.p99
    failing = wrk.WrkSpec(
        url,
        body=orjson.dumps(CHAT),
        headers={"x-mock-fault": "503"},
        connections=2,
        duration=1,
    )
    with pytest.raises(wrk.WrkError, match=r"non-2xx answers \{503: \d+\}"):
        wrk.run_wrk(failing, tmp_path)
