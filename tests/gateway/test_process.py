"""The gateway as a process: demo mode, SIGHUP/admin reload, SIGTERM drain, workers."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from gwtest import (
    LoopThread,
    Reader,
    Response,
    chat,
    connect,
    http,
    http_json,
    recv_until_closed,
    wait_for,
)

from fastgw.mock import MockOptions, start_mock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def mock_upstream(**opts: object) -> Iterator[int]:
    lt = LoopThread()
    srv = lt.run(start_mock(MockOptions(**opts), "127.0.0.1", 0))  # type: ignore[arg-type]
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        lt.call(srv.close)
        lt.close()


def config_text(mock_port: int, models: str = "gpt-test", extra: str = "") -> str:
    out = f"""
providers:
  - {{name: mock, kind: openai-compatible, base_url: "http://127.0.0.1:{mock_port}/v1",
     api_key: sk-provider-secret}}
models:
"""
    for m in models.split(","):
        out += f"  - {{name: {m}, targets: [{{provider: mock, model: {m}-dep}}]}}\n"
    return out + extra


@contextmanager
def gateway_process(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "fastgw", "serve", "--port", str(port),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ok = wait_for(lambda: _healthy(port) or proc.poll() is not None, timeout=20)
        if not ok or proc.poll() is not None:
            _, err = proc.communicate(timeout=5)
            raise AssertionError(f"gateway did not start: {err.decode()[-2000:]}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def _refused(port: int) -> bool:
    try:
        connect(port, timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def start_stream(port: int, headers: bytes = b"",
                 timeout: float = 5) -> tuple[socket.socket, bytes]:
    """A streamed chat request on a raw connection: the socket and the first bytes of
    its 200 answer (``headers``: extra request lines, each ending with CRLF)."""
    s = connect(port)
    data = orjson.dumps(chat(stream=True))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + headers
              + b"content-length: %d\r\n\r\n%s" % (len(data), data))
    s.settimeout(timeout)
    first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    return s, first


def _healthy(port: int) -> bool:
    try:
        return http(port, "GET", "/healthz", timeout=1).status == 200
    except OSError:
        return False


def test_demo_mode_serves_chat_without_configuration() -> None:
    port = free_port()
    with gateway_process([], port):
        status, doc = http_json(port, "POST", "/v1/chat/completions", chat(model="gpt-4o-mini"))
        assert status == 200
        assert doc["choices"][0]["message"]["content"]
        status, doc = http_json(port, "GET", "/v1/models")
        assert {m["id"] for m in doc["data"]} == {"gpt-4o-mini", "gpt-4o"}


def test_sighup_reloads_and_a_bad_file_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    port = free_port()
    with mock_upstream() as mport:
        cfg.write_text(config_text(mport, "gpt-a"))
        with gateway_process(["--config", str(cfg)], port) as proc:
            assert http(port, "POST", "/v1/chat/completions", chat(model="gpt-b")).status == 404
            # A keep-alive connection and a stream in flight across the reload.
            kept = connect(port)
            kept_reader = Reader(kept, limit_s=10)
            assert _keepalive_post(kept, kept_reader, "gpt-a").status == 200
            streaming = connect(port)
            data = orjson.dumps(chat(model="gpt-a", stream=True))
            streaming.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                              b"x-mock-chunk-interval-ms: 50\r\nx-mock-chunks: 40\r\n"
                              b"content-length: %d\r\n\r\n%s" % (len(data), data))
            cfg.write_text(config_text(mport, "gpt-a,gpt-b"))
            proc.send_signal(signal.SIGHUP)
            assert wait_for(lambda: http(port, "POST", "/v1/chat/completions",
                                         chat(model="gpt-b")).status == 200, timeout=10)
            # The connection opened before the reload serves the new configuration.
            r = _keepalive_post(kept, kept_reader, "gpt-b")
            assert r.status == 200 and r.headers.get("connection") != "close"
            r = Reader(streaming, limit_s=20).next()
            assert r.status == 200 and r.body.endswith(b"data: [DONE]\n\n")
            kept.close()
            streaming.close()
            errors = _Stderr(proc)
            cfg.write_text("models: [{name: broken}]\nnonsense: 1\n")
            proc.send_signal(signal.SIGHUP)
            assert wait_for(lambda: "reload refused" in errors.read(), timeout=10)
            assert proc.poll() is None
            assert http(port, "POST", "/v1/chat/completions", chat(model="gpt-b")).status == 200


def _keepalive_post(s: socket.socket, reader: Reader, model: str) -> Response:
    data = orjson.dumps(chat(model=model))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
              b"content-length: %d\r\n\r\n%s" % (len(data), data))
    return reader.next()


class _Stderr:
    """What the process wrote on stderr so far (read without blocking)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self.fd = proc.stderr.fileno()
        os.set_blocking(self.fd, False)
        self.text = ""

    def read(self) -> str:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return self.text
            if not chunk:
                return self.text
            self.text += chunk.decode(errors="replace")


def test_admin_reload_needs_admin_key(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    port = free_port()
    digest = hashlib.sha256(b"admin-secret").hexdigest()
    extra = f"admin: {{key_sha256: {digest}}}\n"
    with mock_upstream() as mport:
        cfg.write_text(config_text(mport, "gpt-a", extra))
        with gateway_process(["--config", str(cfg)], port):
            assert http(port, "POST", "/admin/reload").status == 401
            assert http(port, "GET", "/metrics").status == 401
            bad = {"authorization": "Bearer wrong"}
            assert http(port, "POST", "/admin/reload", headers=bad).status == 401
            cfg.write_text(config_text(mport, "gpt-a,gpt-c", extra))
            ok = {"authorization": "Bearer admin-secret"}
            r = http(port, "POST", "/admin/reload", headers=ok)
            assert r.status == 200, r.body
            assert b"2 models" in r.body
            assert http(port, "POST", "/v1/chat/completions", chat(model="gpt-c")).status == 200
            cfg.write_text("models: 3\n")
            r = http(port, "POST", "/admin/reload", headers=ok)
            assert r.status == 400
            assert b"previous one keeps serving" in r.body
            assert http(port, "POST", "/v1/chat/completions", chat(model="gpt-c")).status == 200
            assert http(port, "GET", "/metrics", headers=ok).status == 200


def test_sigterm_drains_in_flight_stream_then_exits_zero(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    port = free_port()
    # A stream of about 5 s: long enough to observe the drain while it is in flight.
    with mock_upstream(chunks=50, chunk_interval_ms=100) as mport:
        cfg.write_text(config_text(mport))
        with gateway_process(["--config", str(cfg)], port) as proc:
            s, first = start_stream(port)
            proc.send_signal(signal.SIGTERM)
            # While the stream is in flight (the process is still alive, draining), a new
            # connection is refused: the listener is closed at once, not at exit.
            assert wait_for(lambda: _refused(port), timeout=10)
            assert proc.poll() is None
            reader = Reader(s, limit_s=30)
            reader.buf = first
            r = reader.next()
            assert r.body.endswith(b"data: [DONE]\n\n")
            assert r.body.count(b'"content"') >= 40  # every event of the stream arrived
            # The head went out before SIGTERM; after the stream the server closes.
            s.settimeout(5)
            assert s.recv(1) == b""
            s.close()
            assert proc.wait(timeout=10) == 0
            with pytest.raises(OSError):
                connect(port, timeout=1).close()


def _closed_by_peer(s: socket.socket) -> bool:
    s.settimeout(0.2)
    try:
        return s.recv(65536) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_readiness_during_a_drain_is_a_closed_connection_not_an_answer(tmp_path: Path) -> None:
    """``/readyz`` answers 200 while serving. On SIGTERM the listener closes and so do idle
    keep-alive connections, at once, while a stream in flight goes on: a readiness check
    sent afterwards on a connection opened before gets no answer, and a new one is
    refused."""
    cfg = tmp_path / "gw.yaml"
    port = free_port()
    with mock_upstream(chunks=50, chunk_interval_ms=100) as mport:
        cfg.write_text(config_text(mport))
        with gateway_process(["--config", str(cfg)], port) as proc:
            probe = connect(port)
            probe.sendall(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
            r = Reader(probe, limit_s=10).next()
            assert r.status == 200 and "connection" not in r.headers  # kept alive
            stream, first = start_stream(port, timeout=10)
            proc.send_signal(signal.SIGTERM)
            assert wait_for(lambda: _refused(port), timeout=10)
            # The idle keep-alive connection is closed by the gateway, not kept for a check.
            assert wait_for(lambda: _closed_by_peer(probe), timeout=10)
            try:
                probe.sendall(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
                answer = recv_until_closed(probe, 2)
            except (BrokenPipeError, ConnectionResetError):
                answer = b""
            assert answer == b""
            probe.close()
            assert proc.poll() is None  # still draining: the stream is in flight
            reader = Reader(stream, limit_s=30)
            reader.buf = first
            assert reader.next().body.endswith(b"data: [DONE]\n\n")
            stream.close()
            assert proc.wait(timeout=30) == 0


def test_sigterm_waits_at_most_drain_timeout_s_for_a_stream(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    port = free_port()
    # A stream of about 20 s against a drain bound of 1 s.
    with mock_upstream(chunks=200, chunk_interval_ms=100) as mport:
        cfg.write_text(config_text(mport, extra="server: {drain_timeout_s: 1}\n"))
        with gateway_process(["--config", str(cfg)], port) as proc:
            s, first = start_stream(port)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            # Well before the stream's end (generous for a loaded machine).
            assert time.monotonic() - t0 < 12
            rest = first + recv_until_closed(s, 10)
            s.close()
            assert b"data: [DONE]" not in rest  # cut at the bound, not finished
            assert rest.count(b'"content"') < 190


def test_access_log_line_has_the_fields_and_no_secret(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    log = tmp_path / "access.log"
    port = free_port()
    with mock_upstream() as mport:
        cfg.write_text(config_text(mport, extra=f"observability: {{access_log: {log}}}\n"))
        with gateway_process(["--config", str(cfg)], port) as proc:
            r = http(port, "POST", "/v1/chat/completions", chat(),
                     headers={"x-request-id": "my-req-1", "authorization": "Bearer sk-client"})
            assert r.headers["x-request-id"] == "my-req-1"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
    text = log.read_text()
    line = orjson.loads(text.splitlines()[-1])
    for k in ("time", "request_id", "key", "client_ip", "model", "served_model", "provider",
              "status", "attempts", "latency_ms", "ttfb_ms", "tokens_in", "tokens_out",
              "cost_usd", "cache"):
        assert k in line, k
    assert line["request_id"] == "my-req-1"
    assert line["served_model"] == "gpt-test-dep"
    assert line["status"] == 200
    assert line["tokens_out"] > 0
    assert "sk-provider-secret" not in text and "sk-client" not in text


def test_workers_share_port_aggregate_metrics_and_restart(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    port = free_port()
    with mock_upstream() as mport:
        cfg.write_text(config_text(mport, extra="observability: {access_log: off}\n"))
        with gateway_process(["--config", str(cfg), "--workers", "2"], port) as proc:
            n = 40
            for _ in range(n):
                assert http(port, "POST", "/v1/chat/completions", chat()).status == 200

            def total() -> float:
                body = http(port, "GET", "/metrics").body.decode()
                return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                           if line.startswith("fastgw_requests_total{")
                           and 'model="gpt-test"' in line)

            # Each worker pushes its figures into the shared store every second.
            assert wait_for(lambda: total() == n, timeout=3), total()
            pids = _children(proc.pid)
            assert len(pids) == 2
            os.kill(pids[0], signal.SIGKILL)
            assert wait_for(lambda: len(_children(proc.pid)) == 2
                            and pids[0] not in _children(proc.pid), timeout=10)
            assert wait_for(lambda: _healthy(port), timeout=5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return [int(x) for x in out.split()]


def test_workers_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    port = free_port()
    with mock_upstream() as mport:
        cfg.write_text(config_text(mport, extra="observability: {access_log: off}\n"))
        with gateway_process(["--config", str(cfg), "--workers", "2"], port) as proc:
            pids = _children(proc.pid)
            assert len(pids) == 2
            proc.kill()
            proc.wait(timeout=5)

            def gone() -> bool:
                alive = []
                for pid in pids:
                    try:
                        os.kill(pid, 0)
                        with open(f"/proc/{pid}/stat") as fh:
                            if fh.read().split()[2] != "Z":
                                alive.append(pid)
                    except (ProcessLookupError, FileNotFoundError):
                        pass
                return not alive

            assert wait_for(gone, timeout=10)
