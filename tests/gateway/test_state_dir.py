"""server.state_dir: local limits and budgets that survive a restart of the gateway
process (SIGTERM, SIGKILL, --workers 2), and a state directory one gateway owns."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from gwtest import chat, http, wait_for
from test_process import _children, free_port, gateway_process, mock_upstream, start_stream

KEY_R, KEY_B, KEY_C = "sk-rate-0001", "sk-budget-0002", "sk-inflight-0003"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def config(mock_port: int, state_dir: Path | None) -> str:
    # rpm 3 refills one request every 20 s: a restart within seconds finds it empty.
    # The budget ($1.5) admits one request reserving $1 (max_tokens 1 at $1 a
    # token), which then spends at least $1: the next reservation does not fit.
    server = f"server: {{state_dir: {state_dir}, state_flush_s: 0.2}}\n" if state_dir else ""
    return server + f"""
providers:
  - {{name: mock, kind: openai-compatible, base_url: "http://127.0.0.1:{mock_port}/v1"}}
models:
  - name: gpt-test
    targets: [{{provider: mock, model: gpt-test-dep}}]
    price: {{input_per_mtok: 0, output_per_mtok: 1000000}}
auth:
  keys:
    - {{name: r, key_sha256: {sha(KEY_R)}, limits: {{rpm: 3}}}}
    - {{name: b, key_sha256: {sha(KEY_B)}, limits: {{budget_usd: {{amount: 1.5, period: month}}}}}}
    - {{name: c, key_sha256: {sha(KEY_C)}, limits: {{max_inflight: 1}}}}
observability: {{access_log: off}}
"""


def ask(port: int, key: str) -> int:
    body = chat()
    body["max_tokens"] = 1
    return http(port, "POST", "/v1/chat/completions", body,
                headers={"authorization": f"Bearer {key}"}).status


def spend(port: int) -> None:
    """Empty the rate bucket and the budget."""
    assert [ask(port, KEY_R) for _ in range(4)] == [200, 200, 200, 429]
    assert [ask(port, KEY_B) for _ in range(2)] == [200, 429]


@pytest.mark.parametrize("stop", ["sigterm", "sigkill", "none"])
def test_rate_and_budget_state_survives_a_restart(tmp_path: Path, stop: str) -> None:
    # "none": no state_dir, the control: a restart hands out fresh limits.
    state = tmp_path / "state" if stop != "none" else None
    cfg = tmp_path / "gw.yaml"
    with mock_upstream() as mport:
        cfg.write_text(config(mport, state))
        port = free_port()
        with gateway_process(["--config", str(cfg)], port) as proc:
            spend(port)
            if stop == "sigkill":
                # A crash of the process loses nothing: the table is in the page cache.
                proc.kill()
                assert proc.wait(timeout=10) == -signal.SIGKILL
            else:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=15) == 0
        port = free_port()
        with gateway_process(["--config", str(cfg)], port) as proc:
            expected = 200 if state is None else 429
            assert ask(port, KEY_R) == expected
            assert ask(port, KEY_B) == expected
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
    if state is not None:
        assert (state / "limits.table").exists()


def test_in_flight_counts_of_a_crashed_run_are_freed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "gw.yaml"
    with mock_upstream(chunks=50, chunk_interval_ms=200) as mport:
        cfg.write_text(config(mport, state))
        port = free_port()
        with gateway_process(["--config", str(cfg)], port) as proc:
            # A stream holds key c's only slot; a second request is refused.
            s, _ = start_stream(port, b"authorization: Bearer " + KEY_C.encode() + b"\r\n")
            assert ask(port, KEY_C) == 429
            proc.kill()  # the slot is never given back by this run
            assert proc.wait(timeout=10) == -signal.SIGKILL
            s.close()
        port = free_port()
        with gateway_process(["--config", str(cfg)], port) as proc:
            assert ask(port, KEY_C) == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0


def test_workers_share_and_keep_the_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "gw.yaml"
    with mock_upstream() as mport:
        cfg.write_text(config(mport, state))
        port = free_port()
        with gateway_process(["--config", str(cfg), "--workers", "2"], port) as proc:
            assert wait_for(lambda: len(_children(proc.pid)) == 2, timeout=10)
            spend(port)  # connections spread over both workers: one count
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        port = free_port()
        with gateway_process(["--config", str(cfg), "--workers", "2"], port) as proc:
            assert [ask(port, KEY_R) for _ in range(4)] == [429] * 4
            assert ask(port, KEY_B) == 429
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0


def test_a_state_dir_in_use_is_refused_and_a_damaged_table_set_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "gw.yaml"
    with mock_upstream() as mport:
        cfg.write_text(config(mport, state))
        port = free_port()
        with gateway_process(["--config", str(cfg)], port) as proc:
            second = subprocess.run(
                [sys.executable, "-m", "fastgw", "serve", "--config", str(cfg),
                 "--port", str(free_port())], capture_output=True, timeout=30, check=False)
            assert second.returncode == 1
            assert b"is in use by another fastgw process" in second.stderr
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        (state / "limits.table").write_bytes(b"not a table" * 100)
        port = free_port()
        with gateway_process(["--config", str(cfg)], port) as proc:
            assert ask(port, KEY_R) == 200  # started from zero
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            _, err = proc.communicate(timeout=5)
        aside = [p for p in os.listdir(state) if p.startswith("limits.table.unreadable-")]
        assert len(aside) == 1
        assert (state / aside[0]).read_bytes() == b"not a table" * 100
        assert b"could not be read" in err


def test_an_unusable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(config(1, blocker / "state"))
    r = subprocess.run([sys.executable, "-m", "fastgw", "serve", "--config", str(cfg),
                        "--port", str(free_port())], capture_output=True, timeout=30,
                       check=False)
    assert r.returncode == 1
    assert b"server.state_dir: cannot use" in r.stderr
    assert b"Traceback" not in r.stderr
