"""wrk (Debian's ``wrk`` package) as the closed-loop load generator of the benchmarks.

wrk is a client made for the job: C on epoll, one pre-built request, and
Lua only for a status count per answer, with no interpreter or event loop
of ours on the client core. The driver uses it for the maximum-rate rows;
open-loop latency and SSE timing stay with ``loadgen.py``, which schedules
requests (wrk's closed loop cannot) and reads events. Whether the client
side outran the proxies in a given run is not assumed: the driver's
``direct`` row shows it, and run.vs_nginx_refusal withholds the ratios when
it did not.

The request (method, body, headers) is set once in a generated Lua script,
so wrk sends the same pre-built bytes on every connection. The script's
``response()`` counts answers outside 2xx by status (wrk itself counts only
status >= 400), and its ``done()`` prints one line, :data:`MARK` followed by
JSON: duration, requests, bytes, wrk's socket errors, the non-2xx counts and
the latency percentiles. :func:`parse_output` reads that line and nothing
else of wrk's human report; :func:`check` raises when wrk saw any error or
any non-2xx answer, so a failing row never reads as a rate.

Library: ``run_wrk(WrkSpec(url, body, headers, ...), workdir) -> LoadResult``
(the Python load generator's result type, so the driver's tables take both).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen import LoadResult, Percentiles

WRK = shutil.which("wrk")
MARK = "FASTGW-WRK-RESULT "
SOCKET_ERRORS = ("connect", "read", "write", "timeout")


class WrkError(RuntimeError):
    """wrk could not run, its output had no result line, or it saw errors."""


@dataclass
class WrkSpec:
    url: str  # http://host:port/path
    body: bytes | None = None  # POST body; None = GET
    headers: dict[str, str] = field(default_factory=dict)
    connections: int = 32
    threads: int = 1  # one per load-generator CPU
    duration: float = 10.0  # seconds; wrk takes whole seconds, so this is rounded up
    timeout: float = 10.0  # seconds per request; a later answer counts as a timeout


def _lua_string(value: str | bytes) -> str:
    """A quoted Lua literal holding value byte for byte: printable ASCII as is,
    every other byte (and the quote and backslash) as a 3-digit decimal escape."""
    data = value.encode() if isinstance(value, str) else value
    out = []
    for b in data:
        if 0x20 <= b < 0x7F and b not in (0x22, 0x5C):
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return '"' + "".join(out) + '"'


LUA_TAIL = """
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = {}
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx[status] = (non2xx[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local bad = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("non2xx")
    if counts then
      for status, n in pairs(counts) do
        bad[#bad + 1] = string.format('"%d":%d', status, n)
      end
    end
  end
  local e = summary.errors
  io.write(string.format(
    '%s{"duration_us":%d,"requests":%d,"bytes":%d,'
    .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
    .. '"non_2xx":{%s},'
    .. '"latency_us":{"min":%d,"max":%d,"mean":%.3f,"stdev":%.3f,'
    .. '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\\n',
    MARK, summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(bad, ","),
    latency.min, latency.max, latency.mean, latency.stdev,
    latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


def lua_script(body: bytes | None, headers: dict[str, str]) -> str:
    """The wrk script that sends this request and reports as :func:`parse_output` reads."""
    lines = [f"MARK = {_lua_string(MARK)}"]
    if body is not None:
        lines.append('wrk.method = "POST"')
        lines.append(f"wrk.body = {_lua_string(body)}")
        if "content-type" not in {k.lower() for k in headers}:
            lines.append('wrk.headers["Content-Type"] = "application/json"')
    for name, value in headers.items():
        lines.append(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}")
    return "\n".join(lines) + "\n" + LUA_TAIL


def whole_seconds(seconds: float) -> int:
    """wrk reads -d and --timeout as whole seconds (at least 1)."""
    return max(1, math.ceil(seconds))


def command(spec: WrkSpec, script: Path, wrk: str | None = None) -> list[str]:
    exe = wrk or WRK
    if exe is None:
        raise WrkError("wrk not found: install Debian's wrk package (apt-get install wrk)")
    if spec.threads < 1 or spec.connections < spec.threads:
        raise WrkError(
            f"wrk needs at least one connection per thread "
            f"({spec.connections} connections, {spec.threads} threads)"
        )
    return [
        exe,
        "-t",
        str(spec.threads),
        "-c",
        str(spec.connections),
        "-d",
        f"{whole_seconds(spec.duration)}s",
        "--timeout",
        f"{whole_seconds(spec.timeout)}s",
        "-s",
        str(script),
        spec.url,
    ]


def _number(obj: dict[str, Any], key: str, where: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WrkError(f"wrk result: {where}{key} is {value!r}, not a number")
    return float(value)


def parse_output(stdout: str, url: str = "", connections: int = 0) -> LoadResult:
    """The result line of :func:`lua_script`'s ``done()`` in wrk's stdout, as a
    LoadResult (latencies in ms). Raises WrkError when the line is missing or
    malformed (a Lua error, a wrk that died, a script that is not ours)."""
    lines = [line for line in stdout.splitlines() if line.startswith(MARK)]
    if len(lines) != 1:
        tail = stdout.strip()[-400:]
        raise WrkError(f"wrk printed {len(lines)} result lines, expected 1; its output: {tail!r}")
    try:
        data = json.loads(lines[0][len(MARK) :])
    except ValueError as e:
        raise WrkError(f"wrk's result line is not JSON ({e}): {lines[0][:300]!r}") from None
    if not isinstance(data, dict):
        raise WrkError(f"wrk's result is not an object: {lines[0][:300]!r}")
    errors_in = data.get("errors")
    latency = data.get("latency_us")
    non_2xx_in = data.get("non_2xx")
    for name, part in (("errors", errors_in), ("latency_us", latency), ("non_2xx", non_2xx_in)):
        if not isinstance(part, dict):
            raise WrkError(f"wrk result: {name} is {part!r}, not an object")
    assert isinstance(errors_in, dict) and isinstance(latency, dict)
    assert isinstance(non_2xx_in, dict)
    duration_s = _number(data, "duration_us", "") / 1e6
    requests = int(_number(data, "requests", ""))
    if duration_s <= 0:
        raise WrkError(f"wrk result: duration {duration_s} s")
    errors = {k: int(_number(errors_in, k, "errors.")) for k in SOCKET_ERRORS}
    errors = {k: v for k, v in errors.items() if v}
    try:
        non_2xx = {int(k): int(v) for k, v in non_2xx_in.items()}
    except (TypeError, ValueError):
        raise WrkError(f"wrk result: non_2xx is {non_2xx_in!r}") from None
    # wrk counts status >= 400 itself; the script counts everything outside 2xx.
    status = int(_number(errors_in, "status", "errors."))
    if status > sum(v for k, v in non_2xx.items() if k >= 400):
        errors["status"] = status
    lat = None
    if requests:
        ms = {
            k: _number(latency, k, "latency_us.") / 1000
            for k in ("min", "max", "mean", "p50", "p90", "p99", "p999")
        }
        lat = Percentiles(
            p50=ms["p50"],
            p90=ms["p90"],
            p99=ms["p99"],
            p999=ms["p999"],
            min=ms["min"],
            max=ms["max"],
            mean=ms["mean"],
        )
    bad = sum(non_2xx.values())
    return LoadResult(
        mode="closed",
        url=url,
        stream=False,
        connections=connections,
        target_rate=None,
        elapsed=duration_s,
        requests=requests,
        ok=requests - bad,
        non_2xx=non_2xx,
        errors=errors,
        rps=requests / duration_s,
        latency_ms=lat,
    )


def check(result: LoadResult, what: str = "wrk") -> None:
    """Raise WrkError when the run saw an error, a non-2xx answer or no answer at all."""
    problems = []
    if result.errors:
        problems.append(f"socket errors {result.errors}")
    if result.non_2xx:
        problems.append(f"non-2xx answers {result.non_2xx}")
    if not result.requests:
        problems.append("no answer at all")
    if problems:
        raise WrkError(
            f"{what}: {'; '.join(problems)} out of {result.requests:,} requests "
            f"to {result.url}: its rate is not a figure"
        )


def run_wrk(spec: WrkSpec, workdir: Path, cpus: int | str | None = None) -> LoadResult:
    """Run wrk once (pinned to ``cpus`` with taskset when given) and return its
    checked result; raises WrkError on any failure, error or non-2xx answer."""
    script = workdir / "wrk-request.lua"
    script.write_text(lua_script(spec.body, spec.headers))
    cmd = command(spec, script)
    if cpus is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpus), *cmd]
    limit = whole_seconds(spec.duration) + whole_seconds(spec.timeout) + 30
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish within {limit} s: {' '.join(cmd)}") from None
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr.strip()[-400:]}")
    result = parse_output(done.stdout, spec.url, spec.connections)
    check(result)
    return result
