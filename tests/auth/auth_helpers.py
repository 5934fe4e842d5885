"""Helpers for access-control tests: key hashes, tokens made with PyJWT and
cryptography (never with the gateway's own code), and a JWKS server on a free
port whose keys a test can rotate, break or stop."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    doc: dict[str, Any] = {"sub": "alice", "iss": "https://idp.test/", "aud": "fastgw",
                           "iat": now, "exp": now + 300}
    doc.update(extra)
    return {k: v for k, v in doc.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token built by hand: HS256 over ``key`` (algorithm confusion) or no signature."""
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    sig = b"" if key is None else hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64(sig)


class EcKey:
    """An ES256 key pair with a kid."""

    def __init__(self, kid: str | None = None) -> None:
        self.kid = kid or uuid.uuid4().hex[:8]
        self.private = ec.generate_private_key(ec.SECP256R1())

    def jwk(self) -> dict[str, Any]:
        doc = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        doc.update(kid=self.kid, use="sig", alg="ES256")
        return dict(doc)

    def token(self, **extra: Any) -> str:
        return jwt.encode(claims(**extra), self.private, algorithm="ES256",
                          headers={"kid": self.kid})


class RsaKey:
    """An RS256 key pair."""

    def __init__(self, kid: str | None = None) -> None:
        self.kid = kid or uuid.uuid4().hex[:8]
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def public_pem(self) -> str:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def jwk(self) -> dict[str, Any]:
        doc = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        doc.update(kid=self.kid, use="sig", alg="RS256")
        return dict(doc)

    def token(self, headers: dict[str, Any] | None = None, **extra: Any) -> str:
        return jwt.encode(claims(**extra), self.private, algorithm="RS256", headers=headers)


class JwksServer:
    """Serves ``/jwks.json`` from a thread; ``keys`` can change, ``status`` can be set
    to answer errors, ``stop()`` takes it away entirely."""

    def __init__(self, keys: list[dict[str, Any]] | None = None) -> None:
        self.keys = list(keys or [])
        self.status = 200
        self.hits = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server.lock:
                    server.hits += 1
                    body = json.dumps({"keys": server.keys}).encode()
                    status = server.status
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def set_keys(self, keys: list[dict[str, Any]]) -> None:
        with self.lock:
            self.keys = list(keys)

    def count(self) -> int:
        with self.lock:
            return self.hits

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def __enter__(self) -> JwksServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
