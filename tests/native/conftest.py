"""Fixtures for the native-extension tests: signing keys and real SSE streams.

Every test here runs the native implementation and its pure-Python reference
(``fastgw._reference``) on the same inputs; keys are made with
``cryptography`` and tokens with PyJWT, independently of both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

HMAC_SECRET = b"s3cret-" * 10  # 70 bytes: long enough for HS512 without warnings


@dataclass(frozen=True)
class SigningKey:
    """A private key for PyJWT and its public half as PEM and JWK."""

    alg: str
    kid: str
    private: Any
    public_pem: bytes
    jwk: dict[str, Any]


def _public_jwk(alg: str, kid: str, public: Any) -> dict[str, Any]:
    from jwt.algorithms import get_default_algorithms

    jwk = json.loads(get_default_algorithms()[alg].to_jwk(public))
    jwk["kid"] = kid
    return dict(jwk)


def _make(alg: str, kid: str, private: Any) -> SigningKey:
    public = private.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return SigningKey(alg, kid, private, pem, _public_jwk(alg, kid, public))


@pytest.fixture(scope="session")
def rsa_key() -> SigningKey:
    return _make("RS256", "rsa-1", rsa.generate_private_key(65537, 2048))


@pytest.fixture(scope="session")
def p256_key() -> SigningKey:
    return _make("ES256", "ec-256", ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="session")
def p384_key() -> SigningKey:
    return _make("ES384", "ec-384", ec.generate_private_key(ec.SECP384R1()))


@pytest.fixture(scope="session")
def ed_key() -> SigningKey:
    return _make("EdDSA", "ed-1", ed25519.Ed25519PrivateKey.generate())


@pytest.fixture(scope="session")
def all_keys(
    rsa_key: SigningKey, p256_key: SigningKey, p384_key: SigningKey, ed_key: SigningKey
) -> list[SigningKey]:
    return [rsa_key, p256_key, p384_key, ed_key]


@pytest.fixture(scope="session")
def jwks_json(all_keys: list[SigningKey]) -> str:
    hmac_jwk = {
        "kty": "oct",
        "kid": "hmac-1",
        "k": __import__("base64").urlsafe_b64encode(HMAC_SECRET).rstrip(b"=").decode(),
    }
    return json.dumps({"keys": [k.jwk for k in all_keys] + [hmac_jwk]})


def _sse(*events: str, nl: str = "\n") -> bytes:
    return "".join(e.replace("\n", nl) + nl + nl for e in events).encode()


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": None,
    }
    return "data: " + json.dumps(body, separators=(",", ":"))


OPENAI_USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


def openai_stream(n: int = 5, *, nl: str = "\n", usage: bool = True) -> bytes:
    """An OpenAI chat stream: role chunk, ``n`` content chunks, finish, usage, [DONE]."""
    events = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": f"tok{i} "}) for i in range(n)]
    events.append(_chunk({}, "stop"))
    if usage:
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {**OPENAI_USAGE, "prompt_tokens_details": {"cached_tokens": 4}},
        }
        events.append("data: " + json.dumps(body))  # default separators: ": " and ", "
    events.append("data: [DONE]")
    return _sse(*events, nl=nl)


TOOL_STREAM = _sse(
    ": keep-alive comment",
    _chunk({"role": "assistant", "content": None}),
    _chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f"}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}),
    _chunk({}, "tool_calls"),
    "data: [DONE]",
)

ANTHROPIC_STREAM = _sse(
    "event: message_start\ndata: "
    + json.dumps(
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "role": "assistant",
                "usage": {
                    "input_tokens": 25,
                    "cache_creation_input_tokens": 3,
                    "cache_read_input_tokens": 7,
                    "output_tokens": 1,
                },
            },
        }
    ),
    'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    '"content_block":{"type":"text","text":""}}',
    'event: ping\ndata: {"type": "ping"}',
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    '"delta":{"type":"text_delta","text":"Hello"}}',
    'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}',
    'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    '"usage":{"output_tokens":15}}',
    'event: message_stop\ndata: {"type":"message_stop"}',
)

RESPONSES_STREAM = _sse(
    'event: response.created\ndata: {"type":"response.created",'
    '"response":{"id":"r1","usage":null}}',
    'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}',
    'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r1",'
    '"usage":{"input_tokens":9,"input_tokens_details":{"cached_tokens":2},'
    '"output_tokens":3,"total_tokens":12}}}',
)

ERROR_STREAM = _sse(
    _chunk({"role": "assistant", "content": ""}),
    'data: {"error": {"message": "overloaded", "type": "server_error"}}',
)

MULTILINE_STREAM = (
    b'retry: 1000\nid: 7\nevent: message\ndata: {"choices":[{"delta":\ndata: '
    b'{"content":"x"}}]}\n\n'
    b"data\n\ndata:[DONE]\n\n"
)

STREAMS: dict[str, bytes] = {
    "openai": openai_stream(),
    "openai_crlf": openai_stream(nl="\r\n"),
    "openai_cr": openai_stream(nl="\r"),
    "openai_no_usage": openai_stream(usage=False),
    "tools": TOOL_STREAM,
    "anthropic": ANTHROPIC_STREAM,
    "anthropic_crlf": ANTHROPIC_STREAM.replace(b"\n", b"\r\n"),
    "responses": RESPONSES_STREAM,
    "error": ERROR_STREAM,
    "multiline": MULTILINE_STREAM,
}
