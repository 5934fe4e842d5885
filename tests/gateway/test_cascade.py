"""Cascades end to end: a model made of steps, chosen by request-side rules and by a
judge model asked through the gateway, escalating on length and on errors. The
client is the official OpenAI SDK; the steps are the mock upstream's deployments;
the judge is a small upstream of this test that answers SIMPLE or COMPLEX."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from gwtest import Gateway, LoopThread, running, wait_for

from fastgw.metrics import CASCADE, REQUESTS

# -- the judge upstream ------------------------------------------------------------------


class JudgeUpstream:
    """An OpenAI-compatible chat endpoint answering COMPLEX when the prompt asks to
    prove something, else SIMPLE; a prompt containing "slowly" is answered after
    ``slow_s``; one containing "broken" gets a 500."""

    def __init__(self, slow_s: float = 2.0) -> None:
        self.slow_s = slow_s
        self.prompts: list[str] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(1000):  # keep-alive, bounded
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                doc = orjson.loads(await reader.readexactly(length))
                prompt = doc["messages"][-1]["content"]
                self.prompts.append(prompt)
                if "slowly" in prompt:
                    await asyncio.sleep(self.slow_s)
                if "broken" in prompt:
                    status, body = b"500 Internal Server Error", orjson.dumps(
                        {"error": {"message": "judge broke", "type": "server_error"}})
                else:
                    verdict = "COMPLEX" if "prove" in prompt else "SIMPLE"
                    status, body = b"200 OK", orjson.dumps({
                        "id": "chatcmpl-judge", "object": "chat.completion", "created": 1,
                        "model": doc["model"],
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": verdict}}],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 1,
                                  "total_tokens": 12}})
                writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the gateway left, or the test's loop is closing
        finally:
            writer.close()


def _yaml(mock_port: int, judge_port: int, log: Path, extra: str = "") -> str:
    judge = ("{model: judge, prompt: 'Answer SIMPLE or COMPLEX. {input}', accept: '^SIMPLE', "
             "timeout_ms: 400, on_error: %s}")
    return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - {{name: mock, kind: openai-compatible, base_url: http://127.0.0.1:{mock_port}/v1}}
  - {{name: judges, kind: openai-compatible, base_url: http://127.0.0.1:{judge_port}/v1}}
  - name: down
    kind: openai-compatible
    base_url: http://127.0.0.1:9/v1
    timeouts: {{connect_s: 0.5}}
models:
  - name: cheap
    targets: [{{provider: mock, model: cheap-deployment}}]
    price: {{input_per_mtok: 1.0, output_per_mtok: 1.0}}
  - name: big
    targets: [{{provider: mock, model: big-deployment}}]
    price: {{input_per_mtok: 10.0, output_per_mtok: 10.0}}
  - name: broken
    targets: [{{provider: down, model: nowhere}}]
    retry: {{attempts: 1}}
  - name: judge
    targets: [{{provider: judges, model: judge-1}}]
    price: {{input_per_mtok: 1000.0, output_per_mtok: 1000.0}}
  - name: judged
    cascade:
      - {{model: cheap, accept_if: {{judge: {judge % "escalate"}}}}}
      - {{model: big}}
  - name: judged-cached
    cache: true
    cascade:
      - {{model: cheap, accept_if: {{judge: {judge % "escalate"}}}}}
      - {{model: big}}
  - name: judged-lenient
    cascade:
      - {{model: cheap, accept_if: {{judge: {judge % "accept"}}}}}
      - {{model: big}}
  - name: ruled
    cascade:
      - model: cheap
        accept_if: {{max_prompt_tokens: 40, header: {{x-tier: "free*"}},
                    metadata: {{team: "search-*"}}}}
      - {{model: big}}
  - name: escalating
    cascade:
      - {{model: cheap, escalate_on: [length]}}
      - {{model: big}}
  - name: failing-over
    cascade:
      - {{model: broken, escalate_on: [error]}}
      - {{model: big}}
  - name: not-on-errors
    cascade:
      - {{model: broken, escalate_on: [length]}}
      - {{model: big}}
observability: {{access_log: {log}}}
{extra}"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, JudgeUpstream,
                                                                    Path]]:
    log = tmp_path_factory.mktemp("cascade") / "access.log"
    lt = LoopThread()
    judge = JudgeUpstream()
    try:
        judge_port = lt.run(judge.start())
        with running(lambda port: _yaml(port, judge_port, log), lt=lt) as gw:
            yield gw, judge, log
    finally:
        if judge.server is not None:
            lt.call(judge.server.close)
        lt.close()


@pytest.fixture
def client(env: tuple[Gateway, JudgeUpstream, Path]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=env[0].url + "/v1", api_key="sk-client", max_retries=0,
                       timeout=10) as c:
        yield c


def _ask(client: openai.OpenAI, model: str, text: str, **extra: Any) -> tuple[str, Any]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **extra)
    return raw.headers["x-fastgw-model"], raw.parse()


def _lines(log: Path, pred: Any) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [d for d in (orjson.loads(x) for x in log.read_bytes().splitlines()) if pred(d)]


def _log_lines(log: Path, pred: Any, n: int = 1) -> list[dict[str, Any]]:
    """The access log's lines matching ``pred``, once there are ``n`` (the log is
    written off the loop, a little later)."""
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = _lines(log, pred)
        return len(found) >= n

    assert wait_for(enough, timeout=5), f"{n} matching access-log lines expected: {found}"
    return found


# -- the judge ----------------------------------------------------------------------------


def test_judge_answering_simple_keeps_the_cheap_step(
        env: tuple[Gateway, JudgeUpstream, Path], client: openai.OpenAI) -> None:
    gw, judge, _ = env
    before = gw.metric(CASCADE, "judged", "cheap")
    model, answer = _ask(client, "judged", "what is the capital of France?")
    assert model == "cheap-deployment"
    assert answer.choices[0].message.content
    assert "Answer SIMPLE or COMPLEX. what is the capital of France?" in judge.prompts
    assert gw.metric(CASCADE, "judged", "cheap") == before + 1


def test_judge_answering_complex_escalates_to_the_big_step(
        env: tuple[Gateway, JudgeUpstream, Path], client: openai.OpenAI) -> None:
    gw, _, _ = env
    before = gw.metric(CASCADE, "judged", "big")
    model, _ = _ask(client, "judged", "prove that there are infinitely many primes")
    assert model == "big-deployment"
    assert gw.metric(CASCADE, "judged", "big") == before + 1


def test_judge_reads_the_last_user_message(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="judged", messages=[
        {"role": "system", "content": "You help with proofs."},
        {"role": "user", "content": "prove it"},
        {"role": "assistant", "content": "Which one?"},
        {"role": "user", "content": [{"type": "text", "text": "the capital of Peru"}]}])
    assert raw.headers["x-fastgw-model"] == "cheap-deployment"


def test_judge_timeout_escalates_with_on_error_escalate(client: openai.OpenAI) -> None:
    t0 = time.monotonic()
    model, _ = _ask(client, "judged", "answer slowly please")
    assert model == "big-deployment"
    assert time.monotonic() - t0 < 1.8, "the judge's timeout_ms (400) bounds the wait"


def test_judge_timeout_accepts_with_on_error_accept(client: openai.OpenAI) -> None:
    t0 = time.monotonic()
    model, _ = _ask(client, "judged-lenient", "answer slowly please")
    assert model == "cheap-deployment"
    assert time.monotonic() - t0 < 1.8


def test_judge_error_status_follows_on_error(client: openai.OpenAI) -> None:
    assert _ask(client, "judged", "the judge is broken")[0] == "big-deployment"
    assert _ask(client, "judged-lenient", "the judge is broken")[0] == "cheap-deployment"


def test_judge_request_is_a_gateway_request_marked_in_the_log(
        env: tuple[Gateway, JudgeUpstream, Path], client: openai.OpenAI) -> None:
    gw, _, log = env
    def judge_ok(d: dict[str, Any]) -> bool:
        return d.get("judge") is True and d.get("model") == "judge" and d["status"] == 200

    before = gw.metric(REQUESTS, "judge", "judges", "200")
    seen = len(_lines(log, judge_ok))
    _ask(client, "judged", "what is two plus two, marked?")
    assert gw.metric(REQUESTS, "judge", "judges", "200") == before + 1
    line = _log_lines(log, judge_ok, seen + 1)[-1]
    assert line["provider"] == "judges" and line["served_model"] == "judge-1"
    assert line["tokens_in"] == 11 and line["tokens_out"] == 1
    assert line["cost_usd"] == pytest.approx(12 * 1000.0 / 1e6)
    client_lines = _log_lines(log, lambda d: d.get("model") == "judged" and "judge" not in d)
    assert client_lines[-1]["route"] in ("cheap", "big")


def test_streams_use_the_judge_too(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
            model="judged", stream=True,
            messages=[{"role": "user", "content": "prove the theorem"}]) as raw:
        assert raw.headers["x-fastgw-model"] == "big-deployment"
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text


def test_a_cached_cascade_answers_a_repeat_without_its_judge(
        env: tuple[Gateway, JudgeUpstream, Path], client: openai.OpenAI) -> None:
    gw, judge, _ = env
    asked = len(judge.prompts)
    before = gw.mock_stats()["requests"]
    answers = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="judged-cached", temperature=0,
            messages=[{"role": "user", "content": "cache this simple one"}])
        answers.append((raw.headers.get("x-fastgw-cache"), raw.headers.get("x-fastgw-model"),
                        raw.parse().choices[0].message.content))
    assert [a[0] for a in answers] == ["miss", "hit"]
    assert answers[0][1] == "cheap-deployment"  # a hit names no deployment: none answered
    assert answers[0][2] == answers[1][2]
    assert len(judge.prompts) == asked + 1  # the hit needed no judge
    assert gw.mock_stats()["requests"] == before + 1


# -- request-side rules -------------------------------------------------------------------


def test_rules_all_holding_keep_the_cheap_step(client: openai.OpenAI) -> None:
    model, _ = _ask(client, "ruled", "hi", extra_headers={"x-tier": "free-plus"},
                    metadata={"team": "search-ranking"}, store=True)
    assert model == "cheap-deployment"


@pytest.mark.parametrize("case", ["long prompt", "header mismatch", "header missing",
                                  "metadata mismatch"])
def test_one_rule_failing_escalates(client: openai.OpenAI, case: str) -> None:
    text = "word " * 100 if case == "long prompt" else "hi"
    headers = {} if case == "header missing" else {
        "x-tier": "paid" if case == "header mismatch" else "free"}
    team = "ads" if case == "metadata mismatch" else "search-x"
    model, _ = _ask(client, "ruled", text, extra_headers=headers, metadata={"team": team},
                    store=True)
    assert model == "big-deployment"


def test_metadata_in_fastgw_controls_counts(client: openai.OpenAI) -> None:
    model, _ = _ask(client, "ruled", "hi", extra_headers={"x-tier": "free"},
                    extra_body={"fastgw": {"metadata": {"team": "search-1"}}})
    assert model == "cheap-deployment"


def test_streams_follow_request_side_rules(client: openai.OpenAI) -> None:
    for text, expected in (("hi", "cheap-deployment"), ("word " * 100, "big-deployment")):
        with client.chat.completions.with_streaming_response.create(
                model="ruled", stream=True, messages=[{"role": "user", "content": text}],
                extra_headers={"x-tier": "free"},
                extra_body={"metadata": {"team": "search-a"}}) as raw:
            assert raw.headers["x-fastgw-model"] == expected
            assert list(raw.parse())


# -- escalation -----------------------------------------------------------------------------


def test_length_escalates_to_the_next_step(
        env: tuple[Gateway, JudgeUpstream, Path], client: openai.OpenAI) -> None:
    gw, _, log = env
    before = gw.mock_stats()["requests"]
    used = gw.metric(CASCADE, "escalating", "big")

    def escalated(d: dict[str, Any]) -> bool:
        return d.get("model") == "escalating" and d["status"] == 200 and d["attempts"] == 2

    seen = len(_lines(log, escalated))
    model, answer = _ask(client, "escalating", "tell me a long story escalated",
                         extra_headers={"x-mock-max-tokens": "2"})
    assert model == "big-deployment"
    assert answer.choices[0].finish_reason == "length"  # the last step's answer, as it is
    assert gw.mock_stats()["requests"] == before + 2
    assert gw.metric(CASCADE, "escalating", "big") == used + 1
    line = _log_lines(log, escalated, seen + 1)[-1]
    assert line["route"] == "big" and line["served_model"] == "big-deployment"


def test_a_complete_answer_does_not_escalate(
        env: tuple[Gateway, JudgeUpstream, Path], client: openai.OpenAI) -> None:
    gw, _, _ = env
    before = gw.mock_stats()["requests"]
    model, answer = _ask(client, "escalating", "short")
    assert model == "cheap-deployment"
    assert answer.choices[0].finish_reason == "stop"
    assert gw.mock_stats()["requests"] == before + 1


def test_length_on_a_stream_is_not_escalated(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
            model="escalating", stream=True, messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-mock-max-tokens": "2"}) as raw:
        assert raw.headers["x-fastgw-model"] == "cheap-deployment"
        reasons = [c.choices[0].finish_reason for c in raw.parse() if c.choices]
    assert "length" in reasons


def test_error_escalates_to_the_next_step(client: openai.OpenAI) -> None:
    model, answer = _ask(client, "failing-over", "hello")
    assert model == "big-deployment"
    assert answer.choices[0].message.content


def test_error_without_escalate_on_error_is_the_answer(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        _ask(client, "not-on-errors", "hello")
    assert err.value.status_code == 502


# -- the caller's credentials and limits ------------------------------------------------


def test_the_judge_asks_as_the_caller_and_counts_against_its_limits(tmp_path: Path) -> None:
    """A key allowed only the cascade model: its judge (a model the key may not
    name) is still asked, as that key, and each judged request costs two of the
    key's requests per minute."""
    digest = hashlib.sha256(b"sk-team").hexdigest()
    auth = f"""auth:
  keys: [{{name: team, key_sha256: "{digest}", models: [judged], limits: {{rpm: 3}}}}]
"""
    lt = LoopThread()
    judge = JudgeUpstream()
    try:
        judge_port = lt.run(judge.start())
        with running(lambda port: _yaml(port, judge_port, tmp_path / "a.log", auth), lt=lt) \
                as gw, openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-team",
                                     max_retries=0, timeout=10) as team:
            model, _ = _ask(team, "judged", "what is the capital of Chile?")
            assert model == "cheap-deployment"  # the judge answered SIMPLE
            assert judge.prompts == ["Answer SIMPLE or COMPLEX. what is the capital of Chile?"]
            with pytest.raises(openai.RateLimitError):  # judge 3rd of 3, the step 4th
                _ask(team, "judged", "and of Peru?")
            assert len(judge.prompts) == 2
            with pytest.raises(openai.PermissionDeniedError):  # the key itself may not
                _ask(team, "judge", "hello")
    finally:
        if judge.server is not None:
            lt.call(judge.server.close)
        lt.close()
