"""benchmarks/run.py: --scaling (what it needs, when it refuses to run, how its figure is
judged), the "vs nginx" refusal rule (direct >= 1.2x nginx), wrk as a requirement of
max_rps, and --rounds (which round is reported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import run  # type: ignore[import-not-found,unused-ignore]
import scaling  # type: ignore[import-not-found,unused-ignore]
from loadgen import LoadResult, Percentiles  # type: ignore[import-not-found,unused-ignore]


def _cpus(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))


def test_scaling_states_what_it_needs_and_refuses_with_too_few_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scaling, "WRK", "/usr/bin/wrk")
    _cpus(monkeypatch, 8)
    assert scaling.refusal(4, pin=True) is None
    assert scaling.refusal(3, pin=True) is None  # 3 + 2 + 2
    _cpus(monkeypatch, 2)  # this 2-core machine
    why = scaling.refusal(2, pin=True)
    assert why is not None and why.startswith("--scaling 2 needs 4 CPUs of its own")
    assert "2 for the proxies" in why and "1 for the upstream" in why
    assert "1 for the load generator (wrk, 1 thread(s))" in why
    assert "may run on 2 (CPUs 0,1, os.sched_getaffinity)" in why and "--no-pin" in why
    _cpus(monkeypatch, 7)
    assert "needs 8 CPUs" in (scaling.refusal(4, pin=True) or "")
    assert scaling.refusal(4, pin=False) is None  # unpinned: mechanics only
    assert "N >= 2" in (scaling.refusal(1, pin=False) or "")
    monkeypatch.setattr(scaling, "WRK", None)
    assert "needs wrk" in (scaling.refusal(2, pin=False) or "")


def test_scaling_gives_each_part_its_own_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3, 4, 5, 6, 7, 8, 9, 11})
    lay = scaling.layout(4, pin=True)
    assert (lay.proxy, lay.upstream, lay.client) == ([2, 3, 4, 5], [6, 7], [8, 9])
    assert lay.cpus(lay.proxy, 3) == "2,3,4" and lay.cpus(lay.client) == "8,9"
    assert lay.client_threads == 2 and lay.upstream_workers == 2
    free = scaling.layout(4, pin=False)
    assert free.cpus(free.proxy) is None and free.client_threads == 2


def test_scaling_figures_and_their_refusals() -> None:
    rate = {"direct": 200e3, "nginx": 100e3, "fastgw-1w": 30e3, "fastgw-2w": 55e3}
    fig = scaling.figures(rate, 2)
    assert fig["ratio"] == pytest.approx(55 / 60) and fig["vs_nginx"] == pytest.approx(0.55)
    assert fig["rows"]["fastgw-1w"]["vs_one_worker"] == 1.0
    assert fig["rows"]["direct"] == {"vs_one_worker": None, "vs_nginx": None}
    assert fig["refused"] is None and fig["vs_nginx_refused"] is None
    slow_client = scaling.figures({**rate, "direct": 60e3}, 2)
    assert slow_client["ratio"] is None and slow_client["vs_nginx"] is None
    assert "1.09x fastgw --workers 2's 55,000" in slow_client["refused"]
    assert "0.60x nginx's 100,000" in slow_client["vs_nginx_refused"]
    # The client outruns the gateway but not nginx: only the nginx ratio is refused.
    middle = scaling.figures({**rate, "direct": 100e3}, 2)
    assert middle["ratio"] == pytest.approx(55 / 60) and middle["vs_nginx"] is None


def test_the_cache_figure_is_refused_when_the_client_side_sets_its_pace() -> None:
    def check(direct: float | None, static: float | None) -> dict[str, object]:
        rows: dict[str, dict[str, float | None]] = {
            "fastgw": {"rate": 30e3, "vs_nginx": None, "cpu_vs_nginx": None},
            "fastgw-cache": {"rate": 45e3, "vs_nginx": None, "cpu_vs_nginx": None},
        }
        if direct is not None:
            rows["direct"] = {"rate": direct}
        if static is not None:
            rows["static"] = {"rate": static}
        checks = run.spec_checks({"max_rps": {"rows": rows}}, None)
        return next(c for c in checks if c["what"].startswith("max req/s, cache hits"))

    # The minimal row is bounded by the mock (direct), the hits only by the client (static).
    assert check(36e3, 54e3)["ok"] is True and check(36e3, 54e3)["note"] is None
    slow_mock = check(35e3, 90e3)
    assert slow_mock["ok"] is None and "1.17x fastgw's 30,000" in str(slow_mock["note"])
    slow_client = check(90e3, 50e3)
    assert slow_client["ok"] is None and "1.11x the cache hits' 45,000" in str(slow_client["note"])
    assert "no static row" in str(check(90e3, None)["note"])
    assert "no direct row" in str(check(None, 90e3)["note"])


def test_the_static_row_is_measured_only_where_it_answers_as_the_others() -> None:
    # nginx's fixed answer is a whole JSON body: it cannot stand for a stream.
    assert run.TARGETS["static"].scenarios == ("max_rps",)
    assert all(t.scenarios is None for n, t in run.TARGETS.items() if n != "static")


def test_the_driver_refuses_before_measuring_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _cpus(monkeypatch, 2)
    with pytest.raises(SystemExit) as e:
        run.main(["--scaling", "2", "--scaling-only"])
    assert e.value.code == 2
    assert "needs 4 CPUs" in capsys.readouterr().err


def test_scaling_refuses_on_a_two_cpu_process_as_a_command() -> None:
    """The real command, on 2 CPUs: it refuses at once, before starting any process."""
    script = Path(run.__file__)
    done = subprocess.run(
        [sys.executable, str(script), "--scaling", "2", "--scaling-only"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
        check=False,
    )
    assert done.returncode == 2
    assert "--scaling 2 needs 4 CPUs of its own" in done.stderr
    assert "may run on 1 " in done.stderr
    assert "fastgw benchmarks:" not in done.stdout  # nothing ran


def test_max_rps_needs_wrk_or_says_how_to_do_without(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(run, "WRK", None)
    with pytest.raises(SystemExit) as e:
        run.main(["--scenarios", "max_rps"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "wrk not found" in err and "--max-client loadgen" in err


def _rates(**rps: float) -> dict[str, run.Measured]:
    return {name: _measured("closed", r, 1.0) for name, r in rps.items()}


def test_no_ratio_to_nginx_unless_direct_is_well_above_it() -> None:
    assert run.vs_nginx_refusal(60_000.0, 50_000.0) is None  # exactly 1.2x
    why = run.vs_nginx_refusal(59_000.0, 50_000.0)
    assert why is not None and "1.18x nginx's 50,000" in why and "bottleneck" in why
    assert "no direct row" in (run.vs_nginx_refusal(None, 50_000.0) or "")
    assert run.vs_nginx_refusal(None, None) is None  # no nginx row: no ratio to refuse
    low = next(s for s in run.SCENARIOS if s.name == "open_low")
    open_rows = {n: _measured("open", 50.0, 0.5) for n in ("direct", "nginx", "fastgw")}
    assert run.ratio_refusal(open_rows, "req/s") is None  # open loop: no ratio at all
    assert all(r["vs_nginx"] is None for r in run.derive(low, open_rows).values())


def test_a_refused_ratio_is_left_out_of_the_table_and_the_spec_checks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    max_rps = run.SCENARIOS[0]
    measured = _rates(direct=23_495.0, nginx=23_435.0, fastgw=12_000.0)
    refused = run.ratio_refusal(measured, "req/s")
    assert refused is not None and "1.00x" in refused
    rows = run.derive(max_rps, measured, refused)
    assert all(r["vs_nginx"] is None for r in rows.values())
    run.print_table(max_rps, rows, _settings(), "wrk", refused)
    out = capsys.readouterr().out
    assert "closed loop, wrk" in out and f"no 'vs nginx' ratio: {refused}" in out
    results = {"max_rps": {"rows": rows, "vs_nginx_refused": refused}}
    checks = [c for c in run.spec_checks(results, None) if c["what"].endswith("vs nginx")]
    assert [c["ok"] for c in checks] == [None] and checks[0]["note"] == refused
    run.print_checks(checks)
    out = capsys.readouterr().out
    assert "refused (below)" in out and f"refused: {refused}" in out
    fine = _rates(direct=60_000.0, nginx=40_000.0, fastgw=30_000.0)
    assert run.ratio_refusal(fine, "req/s") is None
    assert run.derive(max_rps, fine)["fastgw"]["vs_nginx"] == 0.75


def _settings() -> run.Settings:
    return run.Settings(
        duration=1.0, low_duration=1.0, warmup=0.0, connections=4, high_rate=10.0, low_rate=5.0
    )


def _scaling(ratio: float, pinned: bool) -> dict[str, object]:
    return {"workers": 4, "pinned": pinned, "cpus": 8, "ratio": ratio, "refused": None}


def test_a_pinned_scaling_figure_is_checked_against_085() -> None:
    ok = [c for c in run.spec_checks({}, None, _scaling(0.9, True)) if "workers" in c["what"]]
    miss = [c for c in run.spec_checks({}, None, _scaling(0.8, True)) if "workers" in c["what"]]
    assert [c["ok"] for c in ok] == [True] and [c["ok"] for c in miss] == [False]
    assert ok[0]["target"] == 0.85 and ok[0]["value"] == 0.9


def test_a_refused_scaling_figure_is_not_judged_and_says_why() -> None:
    figure = {**_scaling(0.5, True), "refused": "direct reached 9 req/s"}
    checks = [c for c in run.spec_checks({}, None, figure) if "workers" in c["what"]]
    assert [c["ok"] for c in checks] == [None] and checks[0]["note"] == "direct reached 9 req/s"


def test_an_unpinned_scaling_figure_is_not_judged() -> None:
    checks = [c for c in run.spec_checks({}, None, _scaling(0.9, False)) if "workers" in c["what"]]
    assert len(checks) == 1 and checks[0]["ok"] is None and "unpinned" in checks[0]["what"]


def _measured(mode: str, rps: float, p50: float) -> run.Measured:
    lat = Percentiles(p50, p50, p50, p50, p50, p50, p50)
    result = LoadResult(mode, "u", False, 1, None, 1.0, 1, 1, {}, {}, rps, lat)
    return run.Measured(result, None, None, None)


def test_rounds_report_the_median_round_and_of_two_the_worse() -> None:
    closed = run.SCENARIOS[0]
    assert closed.name == "max_rps"
    three = [_measured("closed", r, 1.0) for r in (10.0, 30.0, 20.0)]
    assert run.median_run(closed, three).result.rps == 20.0
    two = [_measured("closed", r, 1.0) for r in (30.0, 10.0)]
    assert run.median_run(closed, two).result.rps == 10.0  # the lower rate
    low = next(s for s in run.SCENARIOS if s.name == "open_low")
    two = [_measured("open", 50.0, p) for p in (0.4, 0.9)]
    chosen = run.median_run(low, two).result.latency_ms
    assert chosen is not None and chosen.p50 == 0.9  # the higher latency


def test_steal_is_the_largest_share_taken_from_one_cpu() -> None:
    tick = run.CLK_TCK
    before = {"cpu0": 100, "cpu1": 50}
    after = {"cpu0": 100 + tick // 2, "cpu1": 50 + tick // 10}
    assert run.steal_share(before, after, 2.0) == (tick // 2) / tick / 2.0
    assert run.steal_share({}, after, 2.0) is None  # no /proc/stat: unknown, not zero
    assert set(run.steal_ticks()) >= {"cpu0"}  # this Linux machine has a cpu0 line


def test_scenarios_run_against_static_upstreams_except_the_paced_stream(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each upstream group starts its own upstream and rows, measures its scenarios and
    stops them before the next group starts."""
    events: list[tuple[str, ...]] = []

    def start_upstream(procs: object, kind: str, where: Path, cpu: object) -> tuple[int, ...]:
        events.append(("upstream", kind, where.name))
        return (1, 2, 3)

    def start_rows(*a: object) -> tuple[dict[str, str], dict[str, int]]:
        events.append(("rows",))
        return {}, {}

    def run_scenario(args: object, s: object, scenario: object, *rest: object) -> dict[str, str]:
        events.append(("measure", scenario.name, str(rest[-1])))  # type: ignore[attr-defined]
        return {"upstream": str(rest[-1])}

    monkeypatch.setattr(run, "start_upstream", start_upstream)
    monkeypatch.setattr(run, "start_rows", start_rows)
    monkeypatch.setattr(run, "run_scenario", run_scenario)
    monkeypatch.setattr(run.Processes, "stop", lambda self: events.append(("stop",)))
    monkeypatch.setattr(run, "pin_self", lambda cpu: None)

    def args(upstream: str, scenarios: list[str]) -> object:
        import argparse

        return argparse.Namespace(
            no_pin=True,
            gateway_cpu=0,
            client_cpu=1,
            rows=["direct"],
            scenarios=scenarios,
            upstream=upstream,
        )

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    out = run.run_rows(args("static", []), _settings(), tmp_path / "a")  # type: ignore[arg-type]
    assert events == [
        ("upstream", "static", "static"),
        ("rows",),
        ("measure", "max_rps", "static"),
        ("measure", "open_low", "static"),
        ("measure", "open_high", "static"),
        ("stop",),
        ("upstream", "static-sse", "static-sse"),
        ("rows",),
        ("measure", "streams", "static-sse"),
        ("stop",),
        ("upstream", "mock", "mock"),
        ("rows",),
        ("measure", "paced_ttfe", "mock"),
        ("stop",),
    ]
    assert out["results"]["open_high"] == {"upstream": "static"}
    events.clear()
    run.run_rows(args("mock", ["max_rps", "streams"]), _settings(), tmp_path / "b")  # type: ignore[arg-type]
    assert events == [
        ("upstream", "mock", "mock"),
        ("rows",),
        ("measure", "max_rps", "mock"),
        ("measure", "streams", "mock"),
        ("stop",),
    ]


@pytest.mark.skipif(not Path(run.NGINX).exists(), reason="nginx is not installed")
def test_the_static_upstream_serves_the_mocks_answer_to_every_row(tmp_path: Path) -> None:
    procs = run.Processes(tmp_path)
    try:
        up_port, up_pid, mock_port = run.start_upstream(procs, "static", tmp_path, None)
        assert up_port != mock_port
        assert Path(f"/proc/{up_pid}/exe").resolve().name == "nginx"
        failed: dict[str, str] = {}
        urls, pids = run.start_rows(
            procs,
            ["direct", "nginx", "fastgw"],
            tmp_path,
            (up_port, up_pid, mock_port),
            None,
            failed,
        )
        assert failed == {} and urls["direct"] == f"http://127.0.0.1:{up_port}"
        assert pids["direct"] == up_pid
        answer = run.mock_answer(mock_port)
        for name in ("direct", "nginx", "fastgw"):
            status, body = run.post(
                urls[name] + "/v1/chat/completions", {"model": run.MODEL, "messages": []}, {}
            )
            assert status == 200, (name, body)
            # The same answer whatever was asked (a static body), through each row.
            assert json.loads(body)["choices"] == json.loads(answer)["choices"], name
    finally:
        procs.stop()


def test_the_p99_bound_is_never_stricter_than_nginxs_own() -> None:
    def check(ours: float, nginx: float) -> bool | None:
        rows = {
            "fastgw": {"added_p50_ms": 0.0, "added_p99_ms": ours},
            "nginx": {"added_p50_ms": 0.0, "added_p99_ms": nginx},
        }
        results = {"open_low": {"rows": rows, "raw": {"fastgw": {"target_rate": 50.0}}}}
        (c,) = [c for c in run.spec_checks(results, None) if "p99" in c["what"]]
        return c["ok"]  # type: ignore[no-any-return]

    assert check(0.5, 0.3) is True and check(0.7, 0.3) is False  # 2x nginx's
    assert check(-0.45, -0.4) is True and check(-0.3, -0.4) is False  # nginx's own


def test_the_gateways_interpreter_is_described_and_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "GATEWAY_PYTHON", run.GATEWAY_PYTHON)  # main() sets it
    facts = run.interpreter_facts(sys.executable)
    assert facts["version"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(facts["shared_libpython"], bool)
    text = run.describe_interpreter(facts)
    assert facts["executable"] in text and ("shared" in text or "static" in text)
    # An interpreter without fastgw is refused before anything starts, saying what to do.
    bare = tmp_path / "bare-python"
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    bare.chmod(0o755)
    with pytest.raises(SystemExit):
        run.main(["--python", str(bare), "--scenarios", "max_rps"])
    err = capsys.readouterr().err
    assert "--python" in err and "cannot run fastgw" in err and "pip install" in err
    with pytest.raises(SystemExit):
        run.main(["--python", str(tmp_path / "missing"), "--scenarios", "max_rps"])
    assert "--python" in capsys.readouterr().err


@pytest.mark.skipif(not Path(run.NGINX).exists(), reason="nginx is not installed")
def test_the_static_stream_upstream_serves_the_mocks_events(tmp_path: Path) -> None:
    procs = run.Processes(tmp_path)
    try:
        upstream = run.start_upstream(procs, "static-sse", tmp_path, None)
        failed: dict[str, str] = {}
        urls, _ = run.start_rows(
            procs, ["direct", "nginx", "fastgw"], tmp_path, upstream, None, failed
        )
        assert failed == {}
        events = {}
        for name in ("direct", "nginx", "fastgw"):
            status, body = run.post(
                urls[name] + "/v1/chat/completions", json.loads(run.chat_body(True)), {}
            )
            assert status == 200, (name, body[:200])
            datas = [ln for ln in body.split(b"\n") if ln.startswith(b"data: ")]
            assert datas[-1] == b"data: [DONE]", name
            events[name] = len(datas) - 1
        # 50 events and the usage chunk; the gateway drops the usage chunk it asked for.
        assert events == {
            "direct": run.STREAM_CHUNKS + 3,
            "nginx": run.STREAM_CHUNKS + 3,
            "fastgw": run.STREAM_CHUNKS + 2,
        }
    finally:
        procs.stop()
