"""Errors the server answers before any proxying (framing, size, method) reach a
Messages client in Anthropic's envelope, an OpenAI client in OpenAI's."""

from __future__ import annotations

import orjson
from gwtest import connect, http, minimal_yaml, read_response, running


def test_a_too_large_messages_request_gets_anthropics_envelope() -> None:
    with running(lambda p: minimal_yaml(p, server=", max_body_bytes: 64")) as gw:
        body = orjson.dumps({"model": "gpt-test", "max_tokens": 5,
                             "messages": [{"role": "user", "content": "x" * 200}]})
        for path, anthropic in ((b"/v1/messages", True), (b"/v1/chat/completions", False)):
            with connect(gw.port) as s:
                s.sendall(b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
                          % len(body) + body)
                r = read_response(s)
            assert r.status == 413
            doc = orjson.loads(r.body)
            if anthropic:
                assert doc["type"] == "error"
                assert doc["error"]["type"] == "request_too_large"
            else:
                assert doc["error"]["type"] == "invalid_request_error"


def test_a_get_on_messages_is_a_405_in_anthropics_envelope() -> None:
    with running() as gw:
        r = http(gw.port, "GET", "/v1/messages")
        assert r.status == 405
        doc = orjson.loads(r.body)
        assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
        assert "POST" in doc["error"]["message"]


def test_an_unknown_model_on_messages_is_anthropics_not_found() -> None:
    with running() as gw:
        r = http(gw.port, "POST", "/v1/messages",
                 {"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
        assert r.status == 404
        doc = orjson.loads(r.body)
        assert doc == {"type": "error", "error": {"type": "not_found_error",
                                                  "message": doc["error"]["message"]}}
        assert "'nope'" in doc["error"]["message"]
