"""No secret ever leaves the gateway: every byte it writes is searched for them.

The gateway runs as a real process (``python -m fastgw serve``) with every
logger at DEBUG and the access log in a file, in front of an upstream that
is hostile on request: it echoes the provider key it received into error
bodies, error headers, success headers and in-band stream errors, or stalls.
Traffic uses every kind of credential (client keys as Bearer and x-api-key,
HS256 and RS256 JWTs, provider keys for OpenAI-, Azure- and Anthropic-kind
providers, the admin key), right and wrong, and goes through 401s, upstream
4xx and 5xx, timeouts, and a SIGHUP reload of a bad file then of a good one.
Then the process's stdout and stderr, the access log, ``/metrics``, the admin
API and every answer (head and body) are searched: no secret value, nor its
random core, appears anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gwtest import chat, connect, recv_until_closed, wait_for


def _secret(kind: str) -> str:
    # A random core that can be searched for on its own (a truncated leak shows it).
    return f"{kind}-S3CR3T{os.urandom(12).hex()}"


OPENAI_KEY = _secret("sk-openai")
AZURE_KEY = _secret("azure")
ANTHROPIC_KEY = _secret("sk-ant")
CLIENT_BEARER = _secret("sk-client-a")
CLIENT_XAPI = _secret("sk-client-b")
WRONG_CLIENT_KEY = _secret("sk-client-wrong")
ADMIN_KEY = _secret("admin")
WRONG_ADMIN_KEY = _secret("admin-wrong")
JWT_SECRET = _secret("jwt-hs")
PROVIDER_KEYS = (OPENAI_KEY, AZURE_KEY, ANTHROPIC_KEY)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
RSA_PRIVATE_PEM = RSA_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption()).decode()


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "aud": "fastgw", "iat": now, "exp": now + 300,
            "models": "*", **extra}


HS_TOKEN = jwt.encode(claims(), JWT_SECRET, algorithm="HS256")
HS_EXPIRED = jwt.encode(claims(exp=int(time.time()) - 3600), JWT_SECRET, algorithm="HS256")
HS_FORGED = jwt.encode(claims(), "not-" + JWT_SECRET, algorithm="HS256")
RS_TOKEN = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
RS_WRONG_AUDIENCE = jwt.encode(claims(aud="other"), RSA_KEY, algorithm="RS256")


# -- the hostile upstream ---------------------------------------------------------------------


def credential(headers: Any) -> str:
    """What the upstream received as its key, however the provider kind sends it."""
    for name in ("authorization", "api-key", "x-api-key"):
        value = headers.get(name)
        if value:
            return str(value)
    return ""


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        key = credential(self.headers)
        mode = self.headers.get("x-hostile", "")
        anthropic = self.path.startswith("/v1/messages")
        if mode == "stall":
            time.sleep(1.5)  # past first_byte_s
            self.close_connection = True
            return
        if mode.startswith("echo-"):
            status = int(mode[5:])
            text = f"Incorrect API key provided: {key}; you sent {key.split()[-1]}"
            if anthropic:
                doc: Any = {"type": "error",
                            "error": {"type": "authentication_error", "message": text}}
            else:
                doc = {"error": {"message": text, "type": "invalid_request_error",
                                 "param": key, "code": "invalid_api_key"}}
            self._send(status, orjson.dumps(doc), [("x-echo-key", key),
                                                   ("www-authenticate", f"Bearer {key}"),
                                                   ("retry-after", "0")])
            return
        if mode == "stream-error" and body.get("stream"):
            self._stream_error(key)
            return
        content = "hello"
        if anthropic:
            doc = {"id": "msg_1", "type": "message", "role": "assistant",
                   "model": body.get("model"), "stop_reason": "end_turn",
                   "stop_sequence": None, "content": [{"type": "text", "text": content}],
                   "usage": {"input_tokens": 3, "output_tokens": 1}}
        else:
            doc = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                   "model": body.get("model"),
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": content}}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
        # A success that carries the key in headers the gateway must not pass on.
        self._send(200, orjson.dumps(doc), [("x-echo-key", key), ("set-cookie", f"k={key}")])

    def _send(self, status: int, data: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream_error(self, key: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        for delta in ({"role": "assistant", "content": ""}, {"content": "hi"}):
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            self.wfile.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        error = {"error": {"message": f"key {key} was revoked", "type": "server_error"}}
        self.wfile.write(b"event: error\ndata: " + orjson.dumps(error) + b"\n\n")
        self.wfile.flush()


@pytest.fixture(scope="module")
def hostile_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# -- the gateway process ------------------------------------------------------------------------


def config(up: int, access_log: Path, jwt_section: str) -> str:
    timeouts = "{connect_s: 1, first_byte_s: 0.5, idle_s: 1, total_s: 3}"
    return f"""
providers:
  - {{name: oai, kind: openai, base_url: "http://127.0.0.1:{up}/v1", api_key: "{OPENAI_KEY}",
     timeouts: {timeouts}}}
  - {{name: az, kind: azure, base_url: "http://127.0.0.1:{up}", api_key: "{AZURE_KEY}",
     api_version: "2024-06-01", timeouts: {timeouts}}}
  - {{name: ant, kind: anthropic, base_url: "http://127.0.0.1:{up}", api_key: "{ANTHROPIC_KEY}",
     timeouts: {timeouts}}}
models:
  - {{name: m-openai, targets: [{{provider: oai, model: gpt-x}}], retry: {{attempts: 1}}}}
  - {{name: m-azure, targets: [{{provider: az, model: dep-x}}], retry: {{attempts: 1}}}}
  - {{name: m-anthropic, targets: [{{provider: ant, model: claude-x}}], retry: {{attempts: 1}}}}
auth:
  keys:
    - {{name: team-a, key_sha256: {sha(CLIENT_BEARER)}, models: ["*"]}}
    - {{name: team-b, key_sha256: {sha(CLIENT_XAPI)}, models: ["*"]}}
{jwt_section}
admin: {{key_sha256: {sha(ADMIN_KEY)}}}
observability: {{access_log: "{access_log}"}}
"""


HS_JWT = f"""  jwt: {{algorithms: [HS256], secret: "{JWT_SECRET}", audience: fastgw,
         claims: {{subject: sub, models: models}}}}"""
RS_JWT = ("  jwt:\n    algorithms: [RS256]\n    audience: fastgw\n"
          "    claims: {subject: sub, models: models}\n    public_key_pem: |\n"
          + "".join(f"      {line}\n" for line in RSA_PUBLIC_PEM.splitlines()))
# Every logger of the process at DEBUG, to stderr, before the gateway sets up its own.
VERBOSE = ("import logging, sys; logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, "
           "format='%(asctime)s %(name)s %(levelname)s %(message)s'); "
           "logging.getLogger('fastgw').addHandler(logging.NullHandler()); "
           "logging.getLogger('fastgw.verbose').debug('every logger at DEBUG'); "
           "from fastgw.cli import main; sys.exit(main(sys.argv[1:]))")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Traffic:
    """Requests on raw sockets; every byte received is kept."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[bytes] = []

    def send(self, method: str, path: str, body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> bytes:
        data = orjson.dumps(body) if body is not None else b""
        lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", "connection: close",
                 f"content-length: {len(data)}", "content-type: application/json"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        with connect(self.port, 10) as s:
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
            raw = recv_until_closed(s, 10)
        self.received.append(raw)
        return raw

    def status(self, *args: Any, **kwargs: Any) -> int:
        raw = self.send(*args, **kwargs)
        return int(raw.split(b" ", 2)[1]) if raw else 0


def test_no_secret_appears_in_anything_the_gateway_writes(hostile_port: int,
                                                          tmp_path: Path) -> None:
    access_log = tmp_path / "access.log"
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(config(hostile_port, access_log, HS_JWT))
    port = free_port()
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", VERBOSE, "serve", "--config", str(cfg),
                                 "--port", str(port)], stdout=out, stderr=err)
    t = Traffic(port)
    try:
        assert wait_for(lambda: _healthy(port) or proc.poll() is not None, timeout=20)
        assert proc.poll() is None, err_path.read_text()[-2000:]
        statuses = run_traffic(t, proc, cfg, hostile_port, access_log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    written = {
        "stdout": out_path.read_bytes(),
        "stderr": err_path.read_bytes(),
        "access log": access_log.read_bytes(),
        **{f"answer {i}": raw for i, raw in enumerate(t.received)},
    }
    secrets = [OPENAI_KEY, AZURE_KEY, ANTHROPIC_KEY, CLIENT_BEARER, CLIENT_XAPI,
               WRONG_CLIENT_KEY, ADMIN_KEY, WRONG_ADMIN_KEY, JWT_SECRET, HS_TOKEN, HS_EXPIRED,
               HS_FORGED, RS_TOKEN, RS_WRONG_AUDIENCE, RSA_PRIVATE_PEM.splitlines()[1]]
    cores = {s.split("-S3CR3T")[1][:12] for s in secrets if "-S3CR3T" in s}
    leaks = [(where, s[:24]) for where, data in written.items()
             for s in [*secrets, *(f"Bearer {s}" for s in secrets), *cores]
             if s.encode() in data]
    assert not leaks, leaks
    # The traffic did what it was meant to: each kind of answer happened, and was logged.
    assert {200, 401, 400, 429, 502, 504} <= statuses, statuses
    assert written["access log"].count(b"\n") >= 20
    assert b"fastgw.verbose DEBUG every logger at DEBUG" in written["stderr"]
    assert b"fastgw INFO fastgw listening" in written["stderr"]
    assert b"reload refused" in written["stderr"]
    assert b"fastgw_requests_total" in b"".join(t.received)


def _healthy(port: int) -> bool:
    try:
        with connect(port, 1) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            return recv_until_closed(s, 1).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def run_traffic(t: Traffic, proc: subprocess.Popen[bytes], cfg: Path, up: int,
                access_log: Path) -> set[int]:
    statuses: set[int] = set()

    def req(model: str, auth: dict[str, str], stream: bool = False,
            hostile: str | None = None) -> None:
        headers = dict(auth)
        if hostile:
            headers["x-hostile"] = hostile
        statuses.add(t.status("POST", "/v1/chat/completions", chat(model, stream=stream),
                              headers))

    bearer = {"authorization": f"Bearer {CLIENT_BEARER}"}
    xapi = {"x-api-key": CLIENT_XAPI}
    models = ("m-openai", "m-azure", "m-anthropic")
    for model in models:
        for auth in (bearer, xapi, {"authorization": f"Bearer {HS_TOKEN}"}):
            req(model, auth)
            req(model, auth, stream=True)
        for mode in ("echo-400", "echo-401", "echo-429", "echo-500", "echo-503", "stall"):
            req(model, bearer, hostile=mode)
            req(model, bearer, stream=True, hostile=mode)
    req("m-openai", bearer, stream=True, hostile="stream-error")
    # Refused credentials: wrong keys and tokens, in both places.
    for auth in ({"authorization": f"Bearer {WRONG_CLIENT_KEY}"}, {"x-api-key": WRONG_CLIENT_KEY},
                 {"authorization": WRONG_CLIENT_KEY}, {"authorization": f"Bearer {HS_EXPIRED}"},
                 {"authorization": f"Bearer {HS_FORGED}"}, {"x-api-key": HS_FORGED}, {}):
        req("m-openai", auth)
    t.send("POST", "/v1/messages", {"model": "m-anthropic", "max_tokens": 5,
                                    "messages": [{"role": "user", "content": "hi"}]},
           {"x-api-key": CLIENT_XAPI, "x-hostile": "echo-401"})
    t.send("GET", "/v1/models", headers=bearer)
    t.send("GET", "/v1/models", headers={"authorization": f"Bearer {WRONG_CLIENT_KEY}"})

    # A bad file on SIGHUP: refused, the old configuration keeps serving. Its
    # mistakes sit beside secrets (a raw key where its hash belongs, a key given
    # where a number is expected).
    good = cfg.read_text()
    bad = (good.replace(sha(CLIENT_XAPI), CLIENT_XAPI)
           .replace("api_version: \"2024-06-01\"", f"api_version: [\"{AZURE_KEY}\"]")
           .replace("retry: {attempts: 1}", f"retry: {{attempts: \"{OPENAI_KEY}\"}}", 1))
    cfg.write_text(bad)
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    cfg.write_text(good + f"  bad: \"{ANTHROPIC_KEY}\n")  # invalid YAML too
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert proc.poll() is None
    req("m-openai", bearer)
    # A good file with the RS256 key instead of the HS256 secret.
    cfg.write_text(config(up, access_log, RS_JWT))
    proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: t.status("POST", "/v1/chat/completions", chat("m-openai"),
                                     {"authorization": f"Bearer {RS_TOKEN}"}) == 200, 5)
    req("m-azure", {"authorization": f"Bearer {RS_WRONG_AUDIENCE}"})
    req("m-anthropic", {"authorization": f"Bearer {HS_TOKEN}"})  # HS256 no longer accepted

    # Admin: with the key, without, with a wrong one; the metrics.
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    for path in ("/admin/config", "/admin/targets", "/admin/keys/team-a", "/admin/stats",
                 "/metrics", "/ui"):
        t.send("GET", path, headers=admin)
        t.send("GET", path, headers={"authorization": f"Bearer {WRONG_ADMIN_KEY}"})
        t.send("GET", path, headers={"x-api-key": CLIENT_BEARER})
    t.send("POST", "/admin/reload", headers=admin)
    return statuses
