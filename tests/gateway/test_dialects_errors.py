"""Dialects, end to end: every error reaches the client in its own dialect, with the
matching status, whatever the dialect of the deployment (or of no deployment: the
gateway's own errors). An OpenAI client gets ``{"error": {"message", "type",
"param", "code"}}`` and the openai SDK's exception for the status; an Anthropic
client (``/v1/messages``) gets ``{"type": "error", "error": {"type", "message"}}``
and the anthropic SDK's. Streams that fail after their first content end with a
typed error event in the client's dialect and no end marker after it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest
from dialect_helpers import AN_KEY, CLIENT_KEY, OA_KEY, Setup, dialect_gateway, sse_json
from gwtest import http

OTHER_KEY = "sk-client-key-0002"
_KEYS = "".join(f'\n    - {{name: k{i}, key_sha256: "{hashlib.sha256(k.encode()).hexdigest()}"}}'
                for i, k in enumerate((CLIENT_KEY, OTHER_KEY)))
EXTRA = f"""
auth:
  keys:{_KEYS}
limits:
  - {{match: {{model: claude-lim}}, rpm: 1}}
  - {{match: {{model: gpt-lim}}, rpm: 1}}
"""
MODELS = """
  - {name: claude-lim, targets: [{provider: an, model: claude-dep}]}
  - {name: gpt-lim, targets: [{provider: oa, model: gpt-dep}]}
  - {name: claude-lax, targets: [{provider: an, model: claude-dep}],
     drop_unsupported_params: true}
  - {name: gpt-lax, targets: [{provider: oa, model: gpt-dep}], drop_unsupported_params: true}
  - {name: claude-429, targets: [{provider: an, model: claude-dep}], retry: {attempts: 1}}
  - {name: gpt-429, targets: [{provider: oa, model: gpt-dep}], retry: {attempts: 1}}
"""
HI: list[Any] = [{"role": "user", "content": "hi"}]
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with dialect_gateway(MODELS, EXTRA) as s:
        yield s


@pytest.fixture
def oai(setup: Setup) -> Iterator[openai.OpenAI]:
    with setup.openai() as c:
        yield c


@pytest.fixture
def ant(setup: Setup) -> Iterator[anthropic.Anthropic]:
    with setup.anthropic() as c:
        yield c


def anthropic_error(body: object) -> dict[str, str]:
    """The error object of an Anthropic error body, checked to be exactly that shape."""
    assert isinstance(body, dict) and set(body) == {"type", "error"}
    assert body["type"] == "error"
    err = body["error"]
    assert set(err) == {"type", "message"} and isinstance(err["message"], str)
    return dict(err)


def openai_error(body: object) -> dict[str, Any]:
    """The error object of an OpenAI envelope (the SDK gives ``body`` unwrapped)."""
    assert isinstance(body, dict)
    err = body.get("error", body)
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str)
    return dict(err)


# -- the gateway's own errors ----------------------------------------------------------------


def test_unknown_model_is_404_in_each_clients_dialect(oai: openai.OpenAI,
                                                      ant: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as a_info:
        ant.messages.create(model="no-such-model", max_tokens=10, messages=HI)
    err = anthropic_error(a_info.value.body)
    assert err["type"] == "not_found_error" and "no-such-model" in err["message"]
    with pytest.raises(openai.NotFoundError) as o_info:
        oai.chat.completions.create(model="no-such-model", messages=HI)
    oerr = openai_error(o_info.value.body)
    assert oerr["type"] == "not_found_error" and oerr["code"] == "model_not_found"
    assert oerr["param"] == "model"


def test_a_stream_refused_before_its_head_is_a_plain_error_answer(setup: Setup) -> None:
    r = http(setup.gw.port, "POST", "/v1/messages",
             {"model": "nope", "max_tokens": 5, "stream": True, "messages": HI}, AUTH)
    assert r.status == 404 and r.headers["content-type"].startswith("application/json")
    assert anthropic_error(orjson.loads(r.body))["type"] == "not_found_error"


def test_credentials_missing_or_wrong_are_401_in_each_clients_dialect(setup: Setup) -> None:
    r = http(setup.gw.port, "POST", "/v1/messages",
             {"model": "claude", "max_tokens": 5, "messages": HI})
    assert r.status == 401
    assert anthropic_error(orjson.loads(r.body))["type"] == "authentication_error"
    with setup.anthropic("sk-wrong") as bad, pytest.raises(anthropic.AuthenticationError) as a:
        bad.messages.create(model="claude", max_tokens=5, messages=HI)
    assert anthropic_error(a.value.body)["type"] == "authentication_error"
    with setup.openai("sk-wrong") as bad_o, pytest.raises(openai.AuthenticationError) as o:
        bad_o.chat.completions.create(model="claude", messages=HI)
    assert openai_error(o.value.body)["type"] == "authentication_error"


def test_an_anthropic_sdk_key_works_as_x_api_key_and_as_bearer(setup: Setup) -> None:
    n = len(setup.rec.seen)
    with setup.anthropic(CLIENT_KEY) as by_header:
        assert by_header.messages.create(model="claude", max_tokens=5, messages=HI).content
    with setup.anthropic(None, auth_token=OTHER_KEY) as by_bearer:
        assert by_bearer.messages.create(model="gpt", max_tokens=5, messages=HI).content
    first, second = setup.rec.since(n)
    # Upstream, only the providers' keys.
    assert first.headers["x-api-key"] == AN_KEY and "authorization" not in first.headers
    assert second.headers["authorization"] == f"Bearer {OA_KEY}"
    assert "x-api-key" not in second.headers


def test_a_limit_hit_is_429_with_retry_after_in_each_clients_dialect(
        oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    ant.messages.create(model="claude-lim", max_tokens=5, messages=HI)  # rpm: 1
    with pytest.raises(anthropic.RateLimitError) as a:
        ant.messages.create(model="claude-lim", max_tokens=5, messages=HI)
    assert anthropic_error(a.value.body)["type"] == "rate_limit_error"
    assert int(a.value.response.headers["retry-after"]) >= 1
    oai.chat.completions.create(model="gpt-lim", messages=HI)
    with pytest.raises(openai.RateLimitError) as o:
        oai.chat.completions.create(model="gpt-lim", messages=HI)
    assert openai_error(o.value.body)["type"] == "rate_limit_error"
    assert int(o.value.response.headers["retry-after"]) >= 1


def test_an_unsupported_parameter_is_400_naming_it_and_nothing_goes_upstream(
        setup: Setup, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    n = len(setup.rec.seen)
    with pytest.raises(openai.BadRequestError) as o:
        oai.chat.completions.create(model="claude", messages=HI, seed=7)
    err = openai_error(o.value.body)
    assert (err["param"], err["code"]) == ("seed", "unsupported_parameter")
    assert "drop_unsupported_params" in err["message"]
    with pytest.raises(anthropic.BadRequestError) as a:
        ant.messages.create(model="gpt", max_tokens=5, messages=HI, extra_body={"top_k": 3})
    aerr = anthropic_error(a.value.body)
    assert aerr["type"] == "invalid_request_error" and "'top_k'" in aerr["message"]
    with pytest.raises(anthropic.BadRequestError) as a:  # a request OpenAI cannot take either
        ant.messages.create(model="gpt", max_tokens=5,
                            messages=[{"role": "user", "content": [
                                {"type": "document", "source": {
                                    "type": "text", "media_type": "text/plain",
                                    "data": "x"}}]}])
    assert "messages[0].content[0].type" in anthropic_error(a.value.body)["message"]
    assert setup.rec.since(n) == []


def test_unsupported_parameters_are_dropped_when_the_model_says_so(
        setup: Setup, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    n = len(setup.rec.seen)
    done = oai.chat.completions.create(model="claude-lax", messages=HI, seed=7,
                                       frequency_penalty=0.5, temperature=0.2)
    assert done.choices[0].message.content
    ant.messages.create(model="gpt-lax", max_tokens=5, messages=HI,
                        extra_body={"top_k": 3, "temperature": 0.2})
    to_anthropic, to_openai = setup.rec.since(n)
    assert to_anthropic.path == "/v1/messages"
    assert "seed" not in to_anthropic.body and "frequency_penalty" not in to_anthropic.body
    assert to_anthropic.body["temperature"] == 0.2  # what it can express is kept
    assert to_openai.path == "/v1/chat/completions"
    assert "top_k" not in to_openai.body and to_openai.body["temperature"] == 0.2


# -- upstream errors, translated ---------------------------------------------------------------


@pytest.mark.parametrize(("status", "a_type", "o_error"), [
    (400, "invalid_request_error", openai.BadRequestError),
    (404, "not_found_error", openai.NotFoundError),
    (413, "request_too_large", openai.APIStatusError),
])
def test_an_anthropic_4xx_reaches_an_openai_client_as_an_openai_envelope(
        setup: Setup, oai: openai.OpenAI, status: int, a_type: str,
        o_error: type[openai.APIStatusError]) -> None:
    fault = {"x-mock-fault": str(status)}
    upstream = http(setup.mock_port, "POST", "/v1/messages",
                    {"model": "m", "max_tokens": 5, "messages": HI}, fault)
    assert anthropic_error(orjson.loads(upstream.body))["type"] == a_type
    with pytest.raises(o_error) as o:
        oai.chat.completions.create(model="claude", messages=HI, extra_headers=fault)
    assert o.value.status_code == status
    assert o.value.response.headers["x-fastgw-attempts"] == "1"  # a 4xx is not retried
    err = openai_error(o.value.body)
    assert err["message"] == anthropic_error(orjson.loads(upstream.body))["message"]
    assert err["code"] == a_type  # Anthropic's detail kept
    assert err["type"] == {"request_too_large": "invalid_request_error"}.get(a_type, a_type)
    assert orjson.loads(o.value.response.content).keys() == {"error"}


@pytest.mark.parametrize(("status", "a_type", "a_error"), [
    (400, "invalid_request_error", anthropic.BadRequestError),
    (404, "not_found_error", anthropic.NotFoundError),
    (422, "invalid_request_error", anthropic.UnprocessableEntityError),
])
def test_an_openai_4xx_reaches_an_anthropic_client_in_anthropic_form(
        setup: Setup, ant: anthropic.Anthropic, status: int, a_type: str,
        a_error: type[anthropic.APIStatusError]) -> None:
    fault = {"x-mock-fault": f"{status}:context_length_exceeded"}
    upstream = http(setup.mock_port, "POST", "/v1/chat/completions",
                    {"model": "m", "messages": HI}, fault)
    message = orjson.loads(upstream.body)["error"]["message"]
    with pytest.raises(a_error) as a:
        ant.messages.create(model="gpt", max_tokens=5, messages=HI, extra_headers=fault)
    assert a.value.status_code == status
    assert anthropic_error(a.value.body) == {"type": a_type, "message": message}


def test_an_upstream_429_keeps_its_retry_after_across_dialects(
        oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    fault = {"x-mock-fault": "429:3"}
    with pytest.raises(openai.RateLimitError) as o:
        oai.chat.completions.create(model="claude-429", messages=HI, extra_headers=fault)
    assert o.value.response.headers["retry-after"] == "3"
    assert openai_error(o.value.body)["type"] == "rate_limit_error"
    with pytest.raises(anthropic.RateLimitError) as a:
        ant.messages.create(model="gpt-429", max_tokens=5, messages=HI, extra_headers=fault)
    assert a.value.response.headers["retry-after"] == "3"
    assert anthropic_error(a.value.body)["type"] == "rate_limit_error"


@pytest.mark.parametrize(("model", "fault", "provider"), [
    ("gpt", "500", "oa"),  # translated
    ("claude", "500", "an"),  # pass-through
    ("claude", "529", "an"),  # Anthropic's overloaded
])
def test_upstream_5xx_after_retries_is_502_api_error_for_an_anthropic_client(
        ant: anthropic.Anthropic, model: str, fault: str, provider: str) -> None:
    with pytest.raises(anthropic.InternalServerError) as a:
        ant.messages.create(model=model, max_tokens=5, messages=HI,
                            extra_headers={"x-mock-fault": fault})
    assert a.value.status_code == 502
    assert a.value.response.headers["x-fastgw-attempts"] == "2"
    err = anthropic_error(a.value.body)
    assert err["type"] == "api_error"
    assert f"upstream {provider!r} answered {fault}" in err["message"]
    assert AN_KEY not in err["message"] and OA_KEY not in err["message"]


def test_upstream_5xx_after_retries_is_502_for_an_openai_client(oai: openai.OpenAI) -> None:
    for fault in ("500", "529"):
        with pytest.raises(openai.InternalServerError) as o:
            oai.chat.completions.create(model="claude", messages=HI,
                                        extra_headers={"x-mock-fault": fault})
        assert o.value.status_code == 502
        err = openai_error(o.value.body)
        assert err["type"] == "api_error" and err["code"] == "upstream_error"
        assert f"upstream 'an' answered {fault}" in err["message"]


@pytest.mark.parametrize(("path", "doc"), [
    ("/v1/messages", {"model": "gpt", "max_tokens": 5}),
    ("/v1/messages", {"model": "claude", "max_tokens": 5}),
    ("/v1/chat/completions", {"model": "claude"}),
], ids=["anthropic-on-openai", "anthropic-on-anthropic", "openai-on-anthropic"])
def test_a_stream_failing_before_its_head_answers_in_the_clients_dialect(
        setup: Setup, path: str, doc: dict[str, Any]) -> None:
    # Twice: the second time an idle pooled connection takes the direct path, whose
    # error statuses a task takes over.
    for _ in range(2):
        for fault, status, a_type in (("400", 400, "invalid_request_error"),
                                      ("500", 502, "api_error")):
            r = http(setup.gw.port, "POST", path, {**doc, "stream": True, "messages": HI},
                     {**AUTH, "x-mock-fault": fault})
            assert r.status == status
            assert r.headers["content-type"].startswith("application/json")
            body = orjson.loads(r.body)
            if path == "/v1/messages":
                assert anthropic_error(body)["type"] == a_type
            else:
                assert openai_error(body)["type"] == ("invalid_request_error" if status == 400
                                                      else "api_error")
        assert http(setup.gw.port, "POST", path, {**doc, "messages": HI}, AUTH).status == 200


# -- streams failing after their first content ---------------------------------------------------


def _raw_stream(setup: Setup, path: str, doc: dict[str, Any], fault: str) -> bytes:
    r = http(setup.gw.port, "POST", path, {**doc, "stream": True},
             {**AUTH, "x-mock-fault": fault})
    assert r.status == 200
    return r.body


@pytest.mark.parametrize("fault", ["error-event", "cut:4"])
def test_openai_client_stream_from_anthropic_ends_with_a_typed_error_event(
        setup: Setup, oai: openai.OpenAI, fault: str) -> None:
    got: list[str] = []
    with pytest.raises(openai.APIError) as o:
        for chunk in oai.chat.completions.create(model="claude", messages=HI, stream=True,
                                                 extra_headers={"x-mock-fault": fault}):
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got).startswith("This")  # content came first: no failover any more
    assert not isinstance(o.value, openai.APIStatusError)  # in-band, after a 200

    events = sse_json(_raw_stream(setup, "/v1/chat/completions",
                                  {"model": "claude", "messages": HI}, fault))
    name, last = events[-1]
    assert name == "error" and set(last) == {"error"}
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert all(data != "[DONE]" for _, data in events)
    assert any(d["choices"][0]["delta"].get("content") for n, d in events[:-1])


@pytest.mark.parametrize(("model", "fault"), [
    ("gpt", "error-event"),  # the OpenAI upstream's error event, translated
    ("gpt", "cut:4"),  # the gateway's own error event
    ("claude", "error-event"),  # Anthropic's own event, passed through
    ("claude", "cut:4"),
])
def test_anthropic_client_stream_ends_with_a_typed_error_event(
        setup: Setup, ant: anthropic.Anthropic, model: str, fault: str) -> None:
    got: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as a, ant.messages.stream(
            model=model, max_tokens=100, messages=HI,
            extra_headers={"x-mock-fault": fault}) as stream:
        got.extend(stream.text_stream)
    assert "".join(got).startswith("This")
    assert a.value.status_code == 200  # in-band: the head said 200
    expected = "overloaded_error" if (model, fault) == ("claude", "error-event") else "api_error"
    assert anthropic_error(a.value.body)["type"] == expected

    events = sse_json(_raw_stream(setup, "/v1/messages",
                                  {"model": model, "max_tokens": 100, "messages": HI}, fault))
    name, last = events[-1]
    assert name == "error"
    anthropic_error(last)
    names = [n for n, _ in events]
    assert names.count("error") == 1 and "message_stop" not in names
    assert "content_block_delta" in names and names[0] == "message_start"
