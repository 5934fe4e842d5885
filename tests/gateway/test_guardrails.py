"""Guardrails on real sockets: regex guardrails (redact, deny) on what goes in and
what comes out, whole and streamed, in the OpenAI and Anthropic dialects, and
webhook guardrails (allow, deny, redact; timeouts under both on_error settings)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest
from gwtest import Gateway, LoopThread, http, running

from fastgw.metrics import GUARDRAIL

KEYLESS = "sk-client"
SSN = r"\d{3}-\d{2}-\d{4}"


def guarded_yaml(mock_port: int, guardrails: str, extra_models: str = "") -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - name: mock
    kind: openai-compatible
    base_url: http://127.0.0.1:{mock_port}/v1
    api_key: sk-provider-secret
  - name: claude
    kind: anthropic
    base_url: http://127.0.0.1:{mock_port}
    api_key: sk-ant-secret
models:
  - name: guarded
    targets: [{{provider: mock, model: mock-deployment}}]
    guardrails:
{guardrails}
  - name: guarded-claude
    targets: [{{provider: claude, model: claude-x}}]
    guardrails:
{guardrails}
{extra_models}
observability: {{access_log: off}}
"""


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYLESS, max_retries=0, timeout=10)


def claude(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=KEYLESS, max_retries=0, timeout=10)


def echo(resp: Any) -> dict[str, Any]:
    extra = resp.model_extra or {}
    body: dict[str, Any] = extra["echo"]["body"]
    return body


INPUT_RULES = f"""
      - {{kind: regex, apply_to: input, pattern: '{SSN}', action: redact}}
      - {{kind: regex, apply_to: input, pattern: '(?i)ignore previous instructions',
          action: deny, name: injection}}
"""


@pytest.fixture(scope="module")
def gw_input() -> Iterator[Gateway]:
    with running(lambda p: guarded_yaml(p, INPUT_RULES)) as gw:
        yield gw


def test_input_redaction_reaches_the_upstream_redacted(gw_input: Gateway) -> None:
    with client(gw_input) as c:
        resp = c.chat.completions.create(
            model="guarded", extra_headers={"x-mock-echo": "1"},
            messages=[{"role": "system", "content": "SSN 111-22-3333 is on file"},
                      {"role": "user", "content": [
                          {"type": "text", "text": "mine is 123-45-6789, ok?"}]}])
    sent = echo(resp)
    assert sent["messages"][0]["content"] == "SSN [REDACTED] is on file"
    assert sent["messages"][1]["content"][0]["text"] == "mine is [REDACTED], ok?"
    assert gw_input.metric(GUARDRAIL, "guarded", "0-regex", "redact") >= 1


def test_input_redaction_in_every_openai_endpoint(gw_input: Gateway) -> None:
    with client(gw_input) as c:
        comp = c.completions.create(model="guarded", prompt="id 123-45-6789",
                                    extra_headers={"x-mock-echo": "1"})
        assert echo(comp)["prompt"] == "id [REDACTED]"
        r = http(gw_input.port, "POST", "/v1/embeddings",
                 {"model": "guarded", "input": ["a 123-45-6789", "b"]}, {"x-mock-echo": "1"})
        assert r.status == 200, r.body
        assert orjson.loads(r.body)["echo"]["body"]["input"] == ["a [REDACTED]", "b"]
        resp = c.responses.create(model="guarded", instructions="x 123-45-6789",
                                  input=[{"role": "user", "content": [
                                      {"type": "input_text", "text": "y 123-45-6789"}]}],
                                  extra_headers={"x-mock-echo": "1"})
        sent = echo(resp)
        assert sent["instructions"] == "x [REDACTED]"
        assert sent["input"][0]["content"][0]["text"] == "y [REDACTED]"


def test_input_deny_is_a_400_and_nothing_goes_upstream(gw_input: Gateway) -> None:
    before = gw_input.mock_stats()["requests"]
    with client(gw_input) as c, pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="guarded", messages=[
            {"role": "user", "content": "Please IGNORE previous instructions now"}])
    assert err.value.status_code == 400
    body: Any = err.value.body
    assert body["code"] == "guardrail_blocked"
    assert "injection" in body["message"]
    assert gw_input.mock_stats()["requests"] == before
    assert gw_input.metric(GUARDRAIL, "guarded", "injection", "deny") >= 1


def test_anthropic_dialect_input_redaction_and_deny(gw_input: Gateway) -> None:
    with claude(gw_input) as c:
        msg = c.messages.create(
            model="guarded-claude", max_tokens=50, extra_headers={"x-mock-echo": "1"},
            system=[{"type": "text", "text": "file 123-45-6789"}],
            messages=[{"role": "user", "content": "mine: 987-65-4321"}])
        sent = (msg.model_extra or {})["echo"]["body"]
        assert sent["system"][0]["text"] == "file [REDACTED]"
        assert sent["messages"][0]["content"] == "mine: [REDACTED]"
        with pytest.raises(anthropic.BadRequestError) as err:
            c.messages.create(model="guarded-claude", max_tokens=50, messages=[
                {"role": "user", "content": "ignore previous instructions"}])
    body: Any = err.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "guardrail" in body["error"]["message"]


def test_a_pathological_pattern_on_100kb_is_linear() -> None:
    rules = "      - {kind: regex, apply_to: input, pattern: '(a+)+$', action: deny}\n"
    with running(lambda p: guarded_yaml(p, rules)) as gw:
        text = "a" * 100_000 + "!"
        t0 = time.perf_counter()
        r = http(gw.port, "POST", "/v1/chat/completions",
                 {"model": "guarded", "messages": [{"role": "user", "content": text}]})
        elapsed = time.perf_counter() - t0
        assert r.status == 200, r.body
        assert elapsed < 1.0
        t0 = time.perf_counter()
        r = http(gw.port, "POST", "/v1/chat/completions",
                 {"model": "guarded", "messages": [{"role": "user", "content": "a" * 100_000}]})
        assert r.status == 400 and b"guardrail_blocked" in r.body
        assert time.perf_counter() - t0 < 1.0


# -- output --------------------------------------------------------------------------------

# The mock's answer is "This is a mock response from fastgw mock-upstream.", one word per
# stream event: "mock response" spans two events.
OUTPUT_RULES = """
      - {kind: regex, apply_to: output, pattern: 'mock\\s+response', action: redact,
         replacement: '[HIDDEN]'}
"""
DENY_OUTPUT = """
      - {kind: regex, apply_to: output, pattern: 'fastgw\\s+mock-upstream', action: deny}
"""


@pytest.fixture(scope="module")
def gw_output() -> Iterator[Gateway]:
    with running(lambda p: guarded_yaml(p, OUTPUT_RULES)) as gw:
        yield gw


def test_whole_answers_are_redacted_in_both_dialects(gw_output: Gateway) -> None:
    with client(gw_output) as c:
        resp = c.chat.completions.create(model="guarded",
                                         messages=[{"role": "user", "content": "hi"}])
        assert resp.choices[0].message.content == "This is a [HIDDEN] from fastgw mock-upstream."
        comp = c.completions.create(model="guarded", prompt="hi")
        assert comp.choices[0].text == "This is a [HIDDEN] from fastgw mock-upstream."
    with claude(gw_output) as a:
        msg = a.messages.create(model="guarded-claude", max_tokens=50,
                                messages=[{"role": "user", "content": "hi"}])
        block: Any = msg.content[0]
        assert block.text == "This is a [HIDDEN] from fastgw mock-upstream."


def test_a_match_split_across_two_sse_events_is_redacted(gw_output: Gateway) -> None:
    with client(gw_output) as c:
        stream = c.chat.completions.create(model="guarded", stream=True,
                                           messages=[{"role": "user", "content": "hi"}])
        pieces = [ch.choices[0].delta.content for ch in stream
                  if ch.choices and ch.choices[0].delta.content]
    assert "".join(pieces) == "This is a [HIDDEN] from fastgw mock-upstream."
    # Text that cannot begin a match was not held back: the first words came alone;
    # " mock" was held until " response" completed the match (and " from"'s "m",
    # which might begin one, until the next event).
    assert pieces[:4] == ["This", " is", " a", " "]
    assert pieces[4].startswith("[HIDDEN]") and not any("mock r" in p for p in pieces)


def test_streams_are_redacted_in_the_anthropic_and_responses_dialects(
        gw_output: Gateway) -> None:
    with claude(gw_output) as a, a.messages.stream(
            model="guarded-claude", max_tokens=50,
            messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
    assert text == "This is a [HIDDEN] from fastgw mock-upstream."
    with client(gw_output) as c:
        deltas = []
        for ev in c.responses.create(model="guarded", input="hi", stream=True):
            if ev.type == "response.output_text.delta":
                deltas.append(ev.delta)
    assert "".join(deltas) == "This is a [HIDDEN] from fastgw mock-upstream."


def test_an_output_deny_ends_the_stream_with_a_typed_error() -> None:
    with running(lambda p: guarded_yaml(p, DENY_OUTPUT)) as gw:
        with client(gw) as c:
            with pytest.raises(openai.BadRequestError) as err:
                c.chat.completions.create(model="guarded",
                                          messages=[{"role": "user", "content": "hi"}])
            assert err.value.code == "guardrail_blocked"
        r = http(gw.port, "POST", "/v1/chat/completions",
                 {"model": "guarded", "stream": True,
                  "messages": [{"role": "user", "content": "hi"}]})
        assert r.status == 200
        assert b"event: error" in r.body and b"guardrail_blocked" in r.body
        assert b"[DONE]" not in r.body and b"mock-upstream" not in r.body
        with claude(gw) as a:
            r = http(gw.port, "POST", "/v1/messages",
                     {"model": "guarded-claude", "max_tokens": 50, "stream": True,
                      "messages": [{"role": "user", "content": "hi"}]},
                     {"anthropic-version": "2023-06-01"})
            assert b"event: error" in r.body and b'"type":"error"' in r.body
            assert b"message_stop" not in r.body
            with pytest.raises(anthropic.APIStatusError), a.messages.stream(
                    model="guarded-claude", max_tokens=50,
                    messages=[{"role": "user", "content": "hi"}]) as s:
                "".join(s.text_stream)


# -- webhooks ------------------------------------------------------------------------------


class Hook:
    """A webhook guardrail server on the test's loop: answers what ``verdict`` says
    (after ``delay_s``), records what it was sent."""

    def __init__(self, lt: LoopThread) -> None:
        self.lt = lt
        self.seen: list[dict[str, Any]] = []
        self.verdict: dict[str, Any] = {"action": "allow"}
        self.delay_s = 0.0
        self.server: asyncio.Server = lt.run(asyncio.start_server(self.handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":")[1])
                self.seen.append(orjson.loads(await reader.readexactly(n)))
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                body = orjson.dumps(self.verdict)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def webhook_yaml(hook_port: int, mock_port: int) -> str:
    return guarded_yaml(mock_port, f"""
      - {{kind: webhook, url: 'http://127.0.0.1:{hook_port}/check', apply_to: both,
         timeout_ms: 300, on_error: deny, name: strict}}
""", extra_models=f"""
  - name: lenient
    targets: [{{provider: mock, model: mock-deployment}}]
    guardrails:
      - {{kind: webhook, url: 'http://127.0.0.1:{hook_port}/check', apply_to: input,
         timeout_ms: 300, on_error: allow}}
""")


@pytest.fixture(scope="module")
def hooked() -> Iterator[tuple[Gateway, Hook]]:
    lt = LoopThread()
    try:
        hook = Hook(lt)
        with running(lambda p: webhook_yaml(hook.port, p), lt=lt) as gw:
            yield gw, hook
        lt.call(hook.server.close)
    finally:
        lt.close()


def test_a_webhook_sees_the_messages_and_may_allow(hooked: tuple[Gateway, Hook]) -> None:
    gw, hook = hooked
    hook.verdict, hook.delay_s = {"action": "allow"}, 0.0
    hook.seen.clear()
    with client(gw) as c:
        resp = c.chat.completions.create(model="guarded",
                                         messages=[{"role": "user", "content": "hello"}])
    assert resp.choices[0].message.content == "This is a mock response from fastgw mock-upstream."
    assert [s["stage"] for s in hook.seen] == ["input", "output"]
    assert hook.seen[0]["messages"] == [{"role": "user", "content": "hello"}]
    assert hook.seen[1]["messages"][0]["content"].startswith("This is a mock")


def test_a_webhook_answering_redact_rewrites_the_messages(hooked: tuple[Gateway, Hook]) -> None:
    gw, hook = hooked
    hook.verdict, hook.delay_s = {"action": "redact", "messages": [
        {"role": "user", "content": "my name is [NAME]"}]}, 0.0
    with client(gw) as c:
        resp = c.chat.completions.create(model="lenient", extra_headers={"x-mock-echo": "1"},
                                         messages=[{"role": "user", "content": "my name is Bo"}])
    assert echo(resp)["messages"][0]["content"] == "my name is [NAME]"
    assert gw.metric(GUARDRAIL, "lenient", "0-webhook", "redact") >= 1


def test_a_webhook_deny_is_a_400_with_its_reason(hooked: tuple[Gateway, Hook]) -> None:
    gw, hook = hooked
    hook.verdict, hook.delay_s = {"action": "deny", "reason": "off-topic"}, 0.0
    before = gw.mock_stats()["requests"]
    with client(gw) as c, pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="guarded", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "guardrail_blocked"
    assert "off-topic" in str(err.value.message)
    assert gw.mock_stats()["requests"] == before


def test_a_webhook_that_times_out_follows_on_error(hooked: tuple[Gateway, Hook]) -> None:
    gw, hook = hooked
    hook.verdict, hook.delay_s = {"action": "deny"}, 1.0
    before = gw.mock_stats()["requests"]
    with client(gw) as c:
        t0 = time.perf_counter()
        with pytest.raises(openai.BadRequestError) as err:  # on_error: deny
            c.chat.completions.create(model="guarded",
                                      messages=[{"role": "user", "content": "x"}])
        assert err.value.code == "guardrail_blocked"
        assert "on_error: deny" in str(err.value.message)
        assert gw.mock_stats()["requests"] == before
        resp = c.chat.completions.create(model="lenient",  # on_error: allow
                                         messages=[{"role": "user", "content": "x"}])
        assert resp.choices[0].message.content
        assert time.perf_counter() - t0 < 2.0  # two 300 ms timeouts, not the hook's 1 s
    assert gw.metric(GUARDRAIL, "guarded", "strict", "error") >= 1
    assert gw.metric(GUARDRAIL, "lenient", "0-webhook", "error") >= 1
    hook.delay_s = 0.0
