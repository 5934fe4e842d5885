"""Dialects, end to end: what the gateway does for every request still holds when
the client and the deployment speak different dialects: fallbacks from an OpenAI
model to a Claude one (and back), failover of a stream before its first content,
tokens and cost counted from either usage, the direct path, a client leaving a
translated stream, endpoints a dialect lacks, the models list, the
configuration.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest
from anthropic.types import TextBlock
from dialect_helpers import TEXT, Setup, dialect_gateway, sse_json
from gwtest import connect, http, wait_for

from fastgw import metrics
from fastgw.config import parse_config
from fastgw.errors import ConfigError
from fastgw.pipeline.runner import Proxy

# Providers that always fail one way (the mock obeys a header the provider sends
# on every request), behind the recorder like the others.
PROVIDERS = """
  - {name: oa-500, kind: openai-compatible, base_url: "http://127.0.0.1:{rec}/v1",
     api_key: k, headers: {x-mock-fault: "500"}}
  - {name: an-500, kind: anthropic, base_url: "http://127.0.0.1:{rec}", api_key: k,
     headers: {x-mock-fault: "500"}}
  - {name: oa-first, kind: openai-compatible, base_url: "http://127.0.0.1:{rec}/v1",
     api_key: k, headers: {x-mock-fault: error-first}}
  - {name: an-first, kind: anthropic, base_url: "http://127.0.0.1:{rec}", api_key: k,
     headers: {x-mock-fault: error-first}}
  - {name: oa-stall, kind: openai-compatible, base_url: "http://127.0.0.1:{rec}/v1",
     api_key: k, headers: {x-mock-fault: "stall-token:5000"}, timeouts: {first_byte_s: 0.5}}
  - {name: an-stall, kind: anthropic, base_url: "http://127.0.0.1:{rec}", api_key: k,
     headers: {x-mock-fault: "stall-token:5000"}, timeouts: {first_byte_s: 0.5}}
"""
MODELS = """
  - {name: gpt-broken, targets: [{provider: oa-500, model: gpt-broken-dep}],
     fallbacks: [claude]}
  - {name: claude-broken, targets: [{provider: an-500, model: claude-broken-dep}],
     fallbacks: [gpt]}
  - {name: claude-flaky, balance: round-robin,
     targets: [{provider: an-first, model: claude-bad}, {provider: an, model: claude-dep}]}
  - {name: gpt-flaky, balance: round-robin,
     targets: [{provider: oa-first, model: gpt-bad}, {provider: oa, model: gpt-dep}]}
  - {name: claude-stall, balance: round-robin,
     targets: [{provider: an-stall, model: claude-bad}, {provider: an, model: claude-dep}]}
  - {name: gpt-stall, balance: round-robin,
     targets: [{provider: oa-stall, model: gpt-bad}, {provider: oa, model: gpt-dep}]}
  - {name: mixed-stall, balance: round-robin,
     targets: [{provider: oa-stall, model: gpt-bad}, {provider: an, model: claude-dep}]}
  - {name: both, targets: [{provider: an, model: claude-dep}, {provider: oa, model: gpt-dep}]}
"""
HI: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    with dialect_gateway(MODELS, providers=PROVIDERS) as s:
        yield s


@pytest.fixture
def oai(setup: Setup) -> Iterator[openai.OpenAI]:
    with setup.openai() as c:
        yield c


@pytest.fixture
def ant(setup: Setup) -> Iterator[anthropic.Anthropic]:
    with setup.anthropic() as c:
        yield c


def text_of(content: list[Any]) -> str:
    return "".join(b.text for b in content if isinstance(b, TextBlock))


# -- fallbacks across dialects ------------------------------------------------------------------


def test_a_gpt_model_falls_back_to_a_claude_model_whole_and_streamed(
        setup: Setup, oai: openai.OpenAI) -> None:
    before = setup.gw.metric(metrics.FALLBACKS, "gpt-broken", "claude")
    n = len(setup.rec.seen)
    raw = oai.chat.completions.with_raw_response.create(model="gpt-broken", messages=HI)
    done = raw.parse()
    assert raw.headers["x-fastgw-provider"] == "an"
    assert raw.headers["x-fastgw-model"] == "claude-dep"
    assert raw.headers["x-fastgw-attempts"] == "3"  # two tries on gpt-broken, then Claude
    assert done.choices[0].message.content == TEXT and done.model == "claude-dep"
    assert [s.path for s in setup.rec.since(n)] == ["/v1/chat/completions"] * 2 + [
        "/v1/messages"]
    assert setup.gw.metric(metrics.FALLBACKS, "gpt-broken", "claude") - before == 1

    chunks = list(oai.chat.completions.create(model="gpt-broken", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    r = http(setup.gw.port, "POST", "/v1/chat/completions",
             {"model": "gpt-broken", "stream": True, "messages": HI})
    assert r.headers["x-fastgw-provider"] == "an"  # the 500s came before the head
    assert r.body.endswith(b"data: [DONE]\n\n") and b"message_start" not in r.body
    assert setup.gw.metric(metrics.FALLBACKS, "gpt-broken", "claude") - before == 3


def test_a_claude_model_falls_back_to_a_gpt_model_for_an_anthropic_client(
        setup: Setup, ant: anthropic.Anthropic) -> None:
    before = setup.gw.metric(metrics.FALLBACKS, "claude-broken", "gpt")
    raw = ant.messages.with_raw_response.create(model="claude-broken", max_tokens=50,
                                                messages=HI)
    message = raw.parse()
    assert raw.headers["x-fastgw-provider"] == "oa"
    assert message.model == "gpt-dep" and text_of(message.content) == TEXT
    with ant.messages.stream(model="claude-broken", max_tokens=50, messages=HI) as stream:
        final = stream.get_final_message()
    assert final.model == "gpt-dep" and text_of(final.content) == TEXT
    assert final.stop_reason == "end_turn"
    assert setup.gw.metric(metrics.FALLBACKS, "claude-broken", "gpt") - before == 2


# -- failover of a stream before its first content ----------------------------------------------


@pytest.mark.parametrize("model", ["claude-flaky", "gpt-flaky"])
def test_an_anthropic_stream_failing_over_before_content_stays_coherent(
        setup: Setup, ant: anthropic.Anthropic, model: str) -> None:
    # Round robin over [always error-first, good]: of two requests one starts on the
    # failing target, sends it the request, and resumes the stream on the good one.
    n = len(setup.rec.seen)
    for _ in range(2):
        with ant.messages.stream(model=model, max_tokens=50, messages=HI) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == TEXT == text_of(final.content)
        assert final.stop_reason == "end_turn"
    bodies = [http(setup.gw.port, "POST", "/v1/messages",
                   {"model": model, "max_tokens": 50, "stream": True, "messages": HI}).body
              for _ in range(2)]
    for body in bodies:
        names = [name for name, _ in sse_json(body)]
        assert names.count("message_start") == 1 and names[0] == "message_start"
        assert "error" not in names and names[-1] == "message_stop"
    bad = [s for s in setup.rec.since(n) if s.body["model"].endswith("-bad")]
    assert len(bad) == 2  # two of the four requests failed over


def test_an_openai_stream_failing_over_on_claude_before_content_stays_coherent(
        setup: Setup, oai: openai.OpenAI) -> None:
    n = len(setup.rec.seen)
    for _ in range(2):
        with oai.chat.completions.stream(model="claude-flaky", messages=HI) as stream:
            final = stream.get_final_completion()
        assert final.choices[0].message.content == TEXT
        assert final.choices[0].message.role == "assistant"
    bodies = [http(setup.gw.port, "POST", "/v1/chat/completions",
                   {"model": "claude-flaky", "stream": True, "messages": HI}).body
              for _ in range(2)]
    for body in bodies:
        assert body.count(b'"role":"assistant"') == 1 and body.endswith(b"data: [DONE]\n\n")
        assert b"event: error" not in body
    assert len([s for s in setup.rec.since(n) if s.body["model"] == "claude-bad"]) == 2


@pytest.mark.parametrize("model", ["gpt-stall", "claude-stall", "mixed-stall"])
def test_an_anthropic_stream_failing_over_after_its_opening_events_stays_coherent(
        setup: Setup, ant: anthropic.Anthropic, model: str) -> None:
    # The first target sends the events before the first content (message_start, and
    # from Anthropic content_block_start), then stalls past first_byte_s: the client
    # has them already, the stream resumed on the good target must not repeat them,
    # and must still open the blocks the client has not seen (mixed-stall: an OpenAI
    # target gave only message_start, the Anthropic one resumes with its blocks).
    n = len(setup.rec.seen)
    for _ in range(2):
        with ant.messages.stream(model=model, max_tokens=50, messages=HI) as stream:
            final = stream.get_final_message()
        assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", TEXT)]
    for _ in range(2):
        body = http(setup.gw.port, "POST", "/v1/messages",
                    {"model": model, "max_tokens": 50, "stream": True, "messages": HI}).body
        names = [name for name, _ in sse_json(body)]
        assert names.count("message_start") == 1 and names[0] == "message_start"
        assert names.count("content_block_start") == 1
        assert names[-1] == "message_stop" and "error" not in names
    assert len([s for s in setup.rec.since(n) if s.body["model"].endswith("-bad")]) == 2


def test_an_openai_stream_failing_over_after_its_role_chunk_stays_coherent(
        setup: Setup) -> None:
    for _ in range(2):
        body = http(setup.gw.port, "POST", "/v1/chat/completions",
                    {"model": "claude-stall", "stream": True, "messages": HI}).body
        assert body.count(b'"role":"assistant"') == 1 and body.endswith(b"data: [DONE]\n\n")
        chunks = [d for _, d in sse_json(body)[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == TEXT


# -- tokens and cost ------------------------------------------------------------------------------


class Counted:
    """Deltas of a model's token and cost counters."""

    def __init__(self, setup: Setup, model: str) -> None:
        self.gw = setup.gw
        self.model = model
        self.start = self.now()

    def now(self) -> tuple[float, float, float]:
        m = self.model
        return (self.gw.metric(metrics.TOKENS, m, "input"),
                self.gw.metric(metrics.TOKENS, m, "output"),
                self.gw.metric(metrics.COST, m, ""))

    def delta(self) -> tuple[float, float, float]:
        now = self.now()
        self.start, before = now, self.start
        return (now[0] - before[0], now[1] - before[1], now[2] - before[2])


def test_tokens_and_cost_are_counted_from_anthropic_usage_whole_and_streamed(
        setup: Setup, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    counted = Counted(setup, "claude")  # price: 3 $/Mtok in, 15 $/Mtok out
    cache = {"x-mock-cache-read": "40"}
    done = oai.chat.completions.create(model="claude", messages=HI, extra_headers=cache)
    assert done.usage is not None
    prompt = done.usage.prompt_tokens  # the cache reads included
    expected: Any = (prompt, 8, pytest.approx((prompt * 3 + 8 * 15) / 1e6))
    assert counted.delta() == expected
    list(oai.chat.completions.create(model="claude", messages=HI, stream=True,
                                     extra_headers=cache))  # no usage chunk asked for
    assert wait_for(lambda: counted.now()[1] - counted.start[1] == 8, timeout=3)
    assert counted.delta() == expected
    # An Anthropic client on the same deployment (pass-through): the same counts.
    message = ant.messages.create(model="claude", max_tokens=50, messages=HI,
                                  extra_headers=cache)
    assert message.usage.input_tokens + 40 == prompt
    assert counted.delta() == expected
    with ant.messages.stream(model="claude", max_tokens=50, messages=HI,
                             extra_headers=cache) as stream:
        stream.get_final_message()
    assert wait_for(lambda: counted.now()[1] - counted.start[1] == 8, timeout=3)
    assert counted.delta() == expected


def test_tokens_and_cost_of_an_anthropic_client_on_an_openai_deployment(
        setup: Setup, ant: anthropic.Anthropic) -> None:
    counted = Counted(setup, "gpt")  # price: 1 $/Mtok in, 2 $/Mtok out
    message = ant.messages.create(model="gpt", max_tokens=50, messages=HI)
    prompt = message.usage.input_tokens
    expected: Any = (prompt, 8, pytest.approx((prompt + 16) / 1e6))
    assert counted.delta() == expected
    with ant.messages.stream(model="gpt", max_tokens=50, messages=HI) as stream:
        assert stream.get_final_message().usage.output_tokens == 8
    assert wait_for(lambda: counted.now()[1] - counted.start[1] == 8, timeout=3)
    assert counted.delta() == expected


# -- endpoints and the models list ---------------------------------------------------------------


def test_embeddings_on_an_anthropic_only_model_are_400_unsupported_endpoint(
        setup: Setup, oai: openai.OpenAI) -> None:
    n = len(setup.rec.seen)
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model="claude", input="hello")
    assert info.value.code == "unsupported_endpoint"
    assert "claude" in info.value.message
    assert setup.rec.since(n) == []
    # A model with deployments of both kinds serves embeddings from its OpenAI one.
    for _ in range(4):
        raw = oai.embeddings.with_raw_response.create(model="both", input="hello")
        assert raw.headers["x-fastgw-provider"] == "oa"
        assert len(raw.parse().data) == 1
    assert {s.path for s in setup.rec.since(n)} == {"/v1/embeddings"}


def test_models_list_is_openais_whatever_the_deployments(setup: Setup,
                                                        oai: openai.OpenAI) -> None:
    ids = {m.id for m in oai.models.list()}
    assert ids == {"gpt", "claude", "gpt-broken", "claude-broken", "claude-flaky",
                   "gpt-flaky", "claude-stall", "gpt-stall", "mixed-stall", "both"}
    assert oai.models.retrieve("claude").id == "claude"
    r = http(setup.gw.port, "GET", "/v1/models")
    doc = orjson.loads(r.body)
    assert doc["object"] == "list"
    assert all(m["object"] == "model" for m in doc["data"])


# -- the direct path and a client leaving -------------------------------------------------------


class Paths:
    def __init__(self) -> None:
        self.direct = 0
        self.tasks = 0


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[Paths]:
    """Counts the streams that began on the direct path and the tasks that ran."""
    seen = Paths()
    head, proceed = Proxy._direct_head, Proxy._proceed

    def counted_head(self: Proxy, ctx: Any) -> None:
        seen.direct += 1
        head(self, ctx)

    def counted_proceed(self: Proxy, *args: Any) -> Any:
        seen.tasks += 1
        return proceed(self, *args)

    # Patched before the gateway starts: the proxy binds its callbacks once.
    monkeypatch.setattr(Proxy, "_direct_head", counted_head)
    monkeypatch.setattr(Proxy, "_proceed", counted_proceed)
    yield seen


def test_translated_streams_take_the_direct_path_from_a_pooled_connection(
        paths: Paths) -> None:
    with dialect_gateway() as s:
        port = s.gw.port
        # Warm each provider's pool with a whole request (that one may take a task).
        assert http(port, "POST", "/v1/chat/completions",
                    {"model": "claude", "messages": HI}).status == 200
        assert http(port, "POST", "/v1/messages",
                    {"model": "gpt", "max_tokens": 5, "messages": HI}).status == 200
        paths.direct = paths.tasks = 0
        r = http(port, "POST", "/v1/chat/completions",
                 {"model": "claude", "stream": True, "messages": HI})
        assert r.status == 200 and r.body.endswith(b"data: [DONE]\n\n")
        assert b'"content":"This"' in r.body
        r = http(port, "POST", "/v1/messages",
                 {"model": "gpt", "max_tokens": 50, "stream": True, "messages": HI})
        assert r.status == 200 and r.body.endswith(b'data: {"type":"message_stop"}\n\n')
        assert (paths.direct, paths.tasks) == (2, 0)


@pytest.mark.parametrize(("path", "doc"), [
    ("/v1/chat/completions", {"model": "claude"}),
    ("/v1/messages", {"model": "gpt", "max_tokens": 50}),
], ids=["openai-on-anthropic", "anthropic-on-openai"])
@pytest.mark.parametrize("pooled", [False, True], ids=["task", "direct"])
def test_a_client_leaving_a_translated_stream_aborts_the_upstream(
        path: str, doc: dict[str, Any], pooled: bool) -> None:
    with dialect_gateway() as s:
        gw = s.gw
        if pooled:
            assert http(gw.port, "POST", path, {**doc, "messages": HI}).status == 200
        before = gw.mock_stats()["aborted_streams"]
        data = orjson.dumps({**doc, "stream": True, "messages": HI})
        with connect(gw.port) as sock:
            sock.sendall(b"POST %s HTTP/1.1\r\nhost: x\r\nx-mock-chunks: 20\r\n"
                         b"x-mock-chunk-interval-ms: 1000\r\ncontent-length: %d\r\n\r\n%s"
                         % (path.encode(), len(data), data))
            got = b""
            for _ in range(50):  # until the first content (then an event a second: 20 s)
                got += sock.recv(65536)
                if b"This" in got:
                    break
            assert b"This" in got
        assert wait_for(lambda: gw.mock_stats()["aborted_streams"] - before == 1, timeout=5)


# -- configuration ---------------------------------------------------------------------------------

CONFIG = """
providers:
  - {name: an, kind: anthropic, base_url: "https://api.anthropic.com", api_key: k,
     headers: {anthropic-version: "2023-06-01"}}
models:
  - name: claude
    targets: [{provider: an, model: claude-sonnet}]
    default_max_tokens: DEFAULT
    drop_unsupported_params: true
"""


def test_config_accepts_anthropic_providers_and_refuses_default_max_tokens_0(
        tmp_path: Path) -> None:
    cfg = parse_config(CONFIG.replace("DEFAULT", "1024"))
    assert cfg.providers[0].kind == "anthropic"
    assert cfg.models[0].default_max_tokens == 1024
    assert cfg.models[0].drop_unsupported_params is True
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG.replace("DEFAULT", "0"))
    errors = dict(info.value.errors)
    assert "at least 1" in errors["models[0].default_max_tokens"]

    path = tmp_path / "fastgw.yaml"
    path.write_text(CONFIG.replace("DEFAULT", "1024"))
    r = subprocess.run([sys.executable, "-m", "fastgw", "check-config", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    path.write_text(CONFIG.replace("DEFAULT", "0"))
    r = subprocess.run([sys.executable, "-m", "fastgw", "check-config", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "models[0].default_max_tokens" in r.stderr
