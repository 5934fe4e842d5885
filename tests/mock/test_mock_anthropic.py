"""Anthropic shapes of the mock upstream on /v1/messages: errors, credentials, echo.

The official anthropic SDK talks straight to the mock over real sockets; raw
sockets check the bytes themselves.
"""

from __future__ import annotations

import argparse
from typing import Any

import anthropic
import orjson
import pytest
from mock_helpers import CHAT, MockThread, http, sse_data

from fastgw.mock import add_arguments, options_from_args

MESSAGES: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


def claude(m: MockThread, key: str = "sk-ant") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=m.base, api_key=key, max_retries=0, timeout=10)


# -- Anthropic errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (413, anthropic.ContentTooLargeError, "request_too_large"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.InternalServerError, "overloaded_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_fault_statuses_use_anthropic_errors(
    mock: MockThread, status: int, error_class: type[Exception], error_type: str, stream: bool
) -> None:
    kwargs: Any = {
        "model": "c",
        "max_tokens": 100,
        "messages": MESSAGES,
        "extra_headers": {"x-mock-fault": str(status)},
    }
    with claude(mock) as client, pytest.raises(error_class) as info:
        if stream:
            with client.messages.stream(**kwargs) as s:
                s.get_final_message()
        else:
            client.messages.create(**kwargs)
    err = info.value
    assert isinstance(err, anthropic.APIStatusError)
    assert err.status_code == status
    body: Any = err.body
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_529_has_a_reason_phrase(mock: MockThread) -> None:
    body = {"model": "c", "max_tokens": 5, "messages": MESSAGES}
    resp = http(mock.port, b"POST", b"/v1/messages", body, {"x-mock-fault": "529"})
    assert resp.raw.startswith(b"HTTP/1.1 529 Overloaded\r\n")
    assert orjson.loads(resp.body)["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize("fault", ["error-event", "error-first"])
def test_anthropic_in_band_error_event_raises_in_the_sdk(mock: MockThread, fault: str) -> None:
    seen: list[str] = []
    with (
        claude(mock) as client,
        pytest.raises(anthropic.APIStatusError) as info,
        client.messages.stream(
            model="c",
            max_tokens=100,
            messages=MESSAGES,
            extra_headers={"x-mock-fault": fault},
        ) as stream,
    ):
        seen.extend(event.type for event in stream)
    assert ("message_start" in seen) == (fault == "error-event")
    assert "message_stop" not in seen
    body: Any = info.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "overloaded_error"
    raw = http(
        mock.port,
        b"POST",
        b"/v1/messages",
        {"model": "c", "max_tokens": 100, "messages": MESSAGES, "stream": True},
        {"x-mock-fault": fault},
    )
    last = raw.chunks[-1]
    assert last.startswith(b"event: error\ndata: ")
    assert orjson.loads(sse_data([last])[0]) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded."},
    }


def test_api_key_accepts_x_api_key_and_bearer_on_messages(mock_factory: Any) -> None:
    m = mock_factory(api_key="provider-key")
    with claude(m, key="provider-key") as client:
        ok = client.messages.create(model="c", max_tokens=5, messages=MESSAGES)
    assert ok.stop_reason == "max_tokens"
    with claude(m, key="wrong") as client, pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(model="c", max_tokens=5, messages=MESSAGES)
    body: Any = info.value.body
    assert body["error"]["type"] == "authentication_error"
    req = {"model": "c", "max_tokens": 5, "messages": MESSAGES}
    bearer = {"Authorization": "Bearer provider-key"}
    assert http(m.port, b"POST", b"/v1/messages", req, bearer).status == 200
    assert http(m.port, b"POST", b"/v1/messages", req, {"x-api-key": "provider-key"}).status == 200
    assert http(m.port, b"POST", b"/v1/messages", req, {"x-api-key": "nope"}).status == 401
    resp = http(m.port, b"POST", b"/v1/messages", req)
    assert resp.status == 401
    assert orjson.loads(resp.body)["type"] == "error"


def test_require_anthropic_version(mock_factory: Any) -> None:
    req = {"model": "c", "max_tokens": 5, "messages": MESSAGES}
    assert http(mock_factory().port, b"POST", b"/v1/messages", req).status == 200  # default off
    m = mock_factory(require_anthropic_version=True)
    for _ in range(2):  # the second time the answer is cached by body: still refused
        resp = http(m.port, b"POST", b"/v1/messages", req)
        assert resp.status == 400
        assert orjson.loads(resp.body) == {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "anthropic-version: header is required",
            },
        }
        versioned = {"anthropic-version": "2023-06-01"}
        assert http(m.port, b"POST", b"/v1/messages", req, versioned).status == 200
    assert http(m.port, b"POST", b"/v1/chat/completions", CHAT).status == 200  # Messages only
    with claude(m) as client:  # the SDK always sends the header
        assert client.messages.create(model="c", max_tokens=5, messages=MESSAGES).content


def test_require_anthropic_version_option_and_help() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert options_from_args(parser.parse_args([])).require_anthropic_version is False
    ns = parser.parse_args(["--require-anthropic-version"])
    assert options_from_args(ns).require_anthropic_version is True
    assert "--require-anthropic-version" in parser.format_help()


# -- echo on Messages ------------------------------------------------------------------


def test_echo_on_messages_whole_and_streamed(mock: MockThread) -> None:
    req: Any = {"model": "c", "max_tokens": 100, "system": "Be brief.", "messages": MESSAGES}
    with claude(mock) as client:
        raw = client.messages.with_raw_response.create(
            **req, extra_headers={"x-mock-echo": "1", "X-Custom": "v"}
        )
        message = raw.parse()
        echo = raw.http_response.json()["echo"]
    assert message.content[0].type == "text"
    assert echo["method"] == "POST"
    assert echo["path"] == "/v1/messages"
    # the SDK's credential: x-api-key, or the Bearer header in recent versions
    sent = echo["headers"]
    assert sent.get("x-api-key") == "sk-ant" or sent.get("authorization") == "Bearer sk-ant"
    assert echo["headers"]["x-custom"] == "v"
    assert "anthropic-version" in echo["headers"]
    assert echo["body"] == {**req}
    resp = http(mock.port, b"POST", b"/v1/messages", {**req, "stream": True}, {"x-mock-echo": "1"})
    first = orjson.loads(sse_data(resp.chunks)[0])
    assert first["type"] == "message_start"
    assert first["echo"]["body"] == {**req, "stream": True}
    assert all(b'"echo"' not in c for c in resp.chunks[1:])
    with (
        claude(mock) as client,
        client.messages.stream(**req, extra_headers={"x-mock-echo": "1"}) as stream,
    ):
        assert stream.get_final_message().content[0].type == "text"
