"""The official OpenAI SDK pointed at the gateway: what a user does first."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from gwtest import Gateway, minimal_yaml, running


@pytest.fixture(scope="module")
def gw() -> Iterator[Gateway]:
    yaml = lambda port: minimal_yaml(  # noqa: E731
        port, provider_extra="\n    timeouts: {first_byte_s: 1.0}")
    with running(yaml) as g:
        yield g


@pytest.fixture
def client(gw: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0,
                       timeout=10) as c:
        yield c


def test_chat_completion_returns_answer_from_target_deployment(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    done = raw.parse()
    assert done.model == "mock-deployment"  # the upstream saw the rewritten name
    assert done.choices[0].message.content
    assert done.usage is not None and done.usage.completion_tokens > 0
    assert raw.headers["x-fastgw-provider"] == "mock"
    assert raw.headers["x-fastgw-model"] == "mock-deployment"
    assert raw.headers["x-fastgw-attempts"] == "1"
    assert float(raw.headers["x-fastgw-overhead-ms"]) >= 0
    assert raw.headers["x-request-id"].startswith("req_")


def test_streaming_chat_yields_chunks_and_no_usage_chunk_unless_asked(
        client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="gpt-test", stream=True, messages=[{"role": "user", "content": "hi"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # The gateway asked upstream for usage but must not show it to this client.
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streaming_chat_keeps_usage_chunk_when_client_asks(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="gpt-test", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}]))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens > 0


def test_embeddings(client: openai.OpenAI) -> None:
    res = client.embeddings.create(model="gpt-test", input=["a", "b"])
    assert len(res.data) == 2
    assert len(res.data[0].embedding) > 0


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert ids == {"gpt-test", "same-name"}
    assert client.models.retrieve("gpt-test").id == "gpt-test"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_unknown_model_raises_not_found_with_helpful_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nope",
                                       messages=[{"role": "user", "content": "hi"}])
    assert "gpt-nope" in info.value.message
    assert "/v1/models" in info.value.message
    assert info.value.code == "model_not_found"


def test_upstream_429_reaches_client_as_rate_limit_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-test",
                                       messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-mock-fault": "429:7"})
    assert info.value.response.headers["retry-after"] == "7"


def test_upstream_400_passes_through_with_its_body(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-fault": "400:context_length_exceeded"})
    assert info.value.code == "context_length_exceeded"


def test_upstream_500_becomes_502_api_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-test",
                                       messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-mock-fault": "500"})
    assert info.value.status_code == 502
    assert "mock" in info.value.message


def test_upstream_stall_past_first_byte_s_becomes_504(client: openai.OpenAI) -> None:
    # The stall outlasts the client's own 10 s timeout: the 504 is the gateway's.
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-test",
                                       messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"x-mock-fault": "stall:30000"})
    assert info.value.status_code == 504
    assert "first_byte_s" in info.value.message


def test_missing_model_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", body={"messages": []}, cast_to=object)
    assert "model" in info.value.message
    assert info.value.param == "model"


def test_invalid_json_is_bad_request(gw: Gateway) -> None:
    import gwtest

    r = gwtest.http(gw.port, "POST", "/v1/chat/completions", b'{"model": "gpt-test",')
    assert r.status == 400
    assert b"not valid JSON" in r.body
    assert r.headers["content-type"] == "application/json"
