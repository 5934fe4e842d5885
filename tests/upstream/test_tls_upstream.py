"""https base URLs: TLS through ``ssl``, verified against a CA bundle."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gwtest import LoopThread, chat, http, running

BODY = b'{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,' \
       b'"completion_tokens":2,"total_tokens":3}}'


def make_cert(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fastgw-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path = tmp / "cert.pem"
    key_path = tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[tuple[LoopThread, int, Path]]:
    cert, key = make_cert(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head)
                n = next((int(x.split(b":")[1]) for x in head.split(b"\r\n")
                          if x.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(n)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError,
                asyncio.CancelledError):
            writer.close()

    lt = LoopThread()
    srv = lt.run(asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx))
    try:
        yield lt, srv.sockets[0].getsockname()[1], cert
    finally:
        lt.call(srv.close)
        lt.close()


def _yaml(port: int, extra: str) -> str:
    return f"""
providers:
  - {{name: secure, kind: openai, base_url: 'https://127.0.0.1:{port}/v1', api_key: k{extra}}}
models:
  - {{name: m, targets: [{{provider: secure, model: x}}]}}
observability: {{access_log: off}}
"""


def test_https_upstream_verified_with_ca_file(tls_upstream: tuple[LoopThread, int, Path]) -> None:
    lt, port, cert = tls_upstream
    with running(lambda _p: _yaml(port, f", ca_file: '{cert}'"), lt=lt) as gw:
        r = http(gw.port, "POST", "/v1/chat/completions", chat("m"))
        assert r.status == 200, r.body
        assert r.body == BODY
        # Keep-alive over TLS: the second request reuses the pooled connection.
        assert http(gw.port, "POST", "/v1/chat/completions", chat("m")).status == 200
        pool = gw.app.gateway.state.snapshot.providers["secure"].pool  # type: ignore[union-attr]
        assert pool.opened == 1


def test_https_upstream_with_unknown_ca_is_refused(
        tls_upstream: tuple[LoopThread, int, Path]) -> None:
    lt, port, _ = tls_upstream
    with running(lambda _p: _yaml(port, ""), lt=lt) as gw:
        r = http(gw.port, "POST", "/v1/chat/completions", chat("m"))
        assert r.status == 502
        assert b"TLS handshake" in r.body


def test_https_upstream_without_verification(tls_upstream: tuple[LoopThread, int, Path]) -> None:
    lt, port, _ = tls_upstream
    with running(lambda _p: _yaml(port, ", tls_verify: false"), lt=lt) as gw:
        assert http(gw.port, "POST", "/v1/chat/completions", chat("m")).status == 200
