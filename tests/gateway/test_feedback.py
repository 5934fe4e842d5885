"""Variants' feedback through running gateways: answers asked with the OpenAI SDK,
scores given with POST /v1/feedback (httpx) under the caller's own key. A score
counts for the variant that answered; another key's answer, an unknown or
expired one and a plain model's are 404 alike; bad bodies are 400 naming the
field; a second score of a name is 409. With Redis, an answer made on one
gateway is scored on another; Redis killed or stalled, answers are kept in memory (never
an error), counted in fastgw_redis_fallbacks_total{mode="feedback"}."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import openai
import orjson
import pytest
from gwtest import Gateway, running, wait_for
from redistest import RedisServer, redis_server

from fastgw import metrics

KEY_A = "sk-team-a-feedback"
KEY_B = "sk-team-b-feedback"
JWT_SECRET = "feedback-hmac-secret-0123456789abcdef"


def token(subject: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": subject, "aud": "fastgw", "iat": now, "exp": now + 300},
                      JWT_SECRET, algorithm="HS256")


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def feedback_yaml(port: int, feedback: str = "{names: [score, thumbs]}", redis_url: str = "",
                  dead: int | None = None, fallbacks: str = "[m2]") -> str:
    dead_provider = f"""
  - {{name: dead, kind: openai-compatible, base_url: "http://127.0.0.1:{dead}/v1",
     api_key: sk-x, timeouts: {{connect_s: 1}}}}""" if dead else ""
    m1_targets = "[{provider: dead, model: d1}]" if dead else "[{provider: mock, model: d1}]"
    redis = f"redis: {{url: \"{redis_url}\", timeout_s: 0.25}}" if redis_url else ""
    return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - {{name: mock, kind: openai-compatible, base_url: "http://127.0.0.1:{port}/v1",
     api_key: sk-provider}}{dead_provider}
models:
  - name: bot
    variants:
      - {{model: m1, weight: 1, name: v1}}
      - {{model: m2, weight: 1, name: v2}}
    sticky: header:x-user
  - name: m1
    targets: {m1_targets}
    fallbacks: {fallbacks}
  - name: m2
    targets: [{{provider: mock, model: d2}}]
auth:
  keys:
    - {{name: team-a, key_sha256: "{_sha(KEY_A)}"}}
    - {{name: team-b, key_sha256: "{_sha(KEY_B)}"}}
    - {{name: alice, key_sha256: "{_sha("sk-alice-key")}"}}
  jwt: {{secret: {JWT_SECRET}, algorithms: [HS256], audience: fastgw}}
feedback: {feedback}
{redis}
observability: {{access_log: off}}
"""


def ask(gw: Gateway, key: str = KEY_A, model: str = "bot", user: str = "u1",
        stream: bool = False) -> tuple[str, str | None]:
    """(x-request-id, x-fastgw-variant) of one answer asked with the OpenAI SDK."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hello"}], stream=stream,
        extra_headers={"x-user": user})
    answer = raw.parse()
    if isinstance(answer, openai.Stream):
        assert [c for c in answer]  # read to the end
    else:
        assert answer.choices[0].message.content
    return raw.headers["x-request-id"], raw.headers.get("x-fastgw-variant")


class Scored:
    """The gateway's answer to one POST /v1/feedback."""

    def __init__(self, status_code: int, doc: Any) -> None:
        self.status_code = status_code
        self.doc = doc
        self.text = orjson.dumps(doc).decode()

    def json(self) -> Any:
        return self.doc


def score(gw: Gateway, body: Any, key: str | None = KEY_A) -> Scored:
    """POST /v1/feedback with the OpenAI SDK's own client (raw bytes or a JSON body)."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key or "unused", max_retries=0,
                           default_headers=None if key else {"authorization": ""})
    kw: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"body": body}
    try:
        doc = client.post("/feedback", cast_to=object, **kw)
    except openai.APIStatusError as exc:
        return Scored(exc.status_code, orjson.loads(exc.response.content))
    return Scored(200, doc)


def counted(gw: Gateway, variant: str, name: str = "score") -> tuple[float, float]:
    """(fastgw_feedback_total, fastgw_feedback_value_sum) of bot's ``variant``."""
    total = gw.metric(metrics.FEEDBACK, "bot", variant, name)

    def value_sum() -> float:
        return float(metrics.FEEDBACK_VALUE.labels("bot", variant, name)._sum.get())

    return total, gw.lt.call(value_sum)


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(workdir=tmp_path) as server:
        yield server


def test_a_score_counts_for_the_variant_that_answered() -> None:
    with running(feedback_yaml) as gw:
        seen: dict[str, str] = {}
        for i in range(40):  # sticky by x-user: find one user per variant
            rid, variant = ask(gw, user=f"user-{i}")
            assert variant in ("v1", "v2")
            seen.setdefault(variant, rid)
            if len(seen) == 2:
                break
        assert set(seen) == {"v1", "v2"}
        before = {v: counted(gw, v) for v in seen}
        r = score(gw, {"request_id": seen["v2"], "name": "score", "value": 4})
        assert r.status_code == 200, r.text
        assert r.json() == {"ok": True, "request_id": seen["v2"], "model": "bot",
                            "variant": "v2", "name": "score", "value": 4.0}
        assert score(gw, {"request_id": seen["v1"], "name": "score", "value": 0.5}
                     ).status_code == 200
        assert counted(gw, "v2") == (before["v2"][0] + 1, before["v2"][1] + 4)
        assert counted(gw, "v1") == (before["v1"][0] + 1, before["v1"][1] + 0.5)
        # one score per name: the second is refused (and not counted); another name is fine
        again = score(gw, {"request_id": seen["v2"], "name": "score", "value": 5})
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "already_scored"
        assert counted(gw, "v2") == (before["v2"][0] + 1, before["v2"][1] + 4)
        assert score(gw, {"request_id": seen["v2"], "name": "thumbs", "value": 1}
                     ).status_code == 200
        assert counted(gw, "v2", "thumbs")[0] >= 1
        # a streamed answer is remembered as well
        rid, variant = ask(gw, user="user-stream", stream=True)
        assert variant is not None
        assert score(gw, {"request_id": rid, "name": "score", "value": 1}).status_code == 200
        # the variant's latency and failures are recorded per variant
        assert gw.metric(metrics.VARIANT_ERRORS, "bot", variant) == 0  # (flushed too)
        assert gw.lt.call(lambda: metrics.VARIANT_DURATION.labels("bot", variant)._sum.get()
                          ) > 0


def test_only_the_caller_answered_can_score_it() -> None:
    with running(feedback_yaml) as gw:
        rid, _ = ask(gw, key=KEY_A)
        plain, variant = ask(gw, key=KEY_A, model="m1")  # a model without variants
        assert variant is None
        others = score(gw, {"request_id": rid, "name": "score", "value": 1}, key=KEY_B)
        unknown = score(gw, {"request_id": "no-such-request", "name": "score", "value": 1})
        not_kept = score(gw, {"request_id": plain, "name": "score", "value": 1})
        for r in (others, unknown, not_kept):
            assert r.status_code == 404, r.text
            err = r.json()["error"]
            assert err["code"] == "request_not_found" and err["param"] == "request_id"
        # the refusal says the same whether the answer exists or not (ids aside)
        assert others.json()["error"]["message"].replace(rid, "X") == \
            unknown.json()["error"]["message"].replace("no-such-request", "X")
        assert score(gw, {"request_id": rid, "name": "score", "value": 1},
                     key=None).status_code == 401
        assert score(gw, {"request_id": rid, "name": "score", "value": 1},
                     key="sk-wrong").status_code == 401
        # B's refusal did not use up A's score
        assert score(gw, {"request_id": rid, "name": "score", "value": 1}).status_code == 200


def test_a_token_scores_its_own_answers_by_subject() -> None:
    with running(feedback_yaml) as gw:
        rid, _ = ask(gw, key=token("alice"))
        body = {"request_id": rid, "name": "score", "value": 1}
        # another subject, and the API key named like the subject, are other callers
        assert score(gw, body, key=token("bob")).status_code == 404
        assert score(gw, body, key="sk-alice-key").status_code == 404
        assert score(gw, body, key=KEY_A).status_code == 404
        # a new token of the same subject is the same caller
        r = score(gw, body, key=token("alice"))
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(("body", "param", "words"), [
    (b"not json", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    ({"name": "score", "value": 1}, "request_id", "x-request-id"),
    ({"request_id": "bad id with spaces", "name": "score", "value": 1}, "request_id", "128"),
    ({"request_id": "r1", "value": 1}, "name", "score, thumbs"),
    ({"request_id": "r1", "name": "clicks", "value": 1}, "name", "feedback.names"),
    ({"request_id": "r1", "name": "score"}, "value", "finite number"),
    ({"request_id": "r1", "name": "score", "value": "5"}, "value", "finite number"),
    ({"request_id": "r1", "name": "score", "value": True}, "value", "finite number"),
    ({"request_id": "r1", "name": "score", "value": -1}, "value", "0 or more"),
    (b'{"request_id": "r1", "name": "score", "value": 1e999}', None, "not valid JSON"),
])
def test_bad_bodies_are_400_naming_the_field(body: Any, param: str | None, words: str) -> None:
    with running(feedback_yaml) as gw:
        r = score(gw, body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == param
        assert words in err["message"]


def test_answers_are_forgotten_after_ttl_s() -> None:
    with running(lambda p: feedback_yaml(p, "{names: [score, thumbs], ttl_s: 1.5}")) as gw:
        rid = ask(gw)[0]
        assert score(gw, {"request_id": rid, "name": "thumbs", "value": 1}).status_code == 200
        time.sleep(2.0)
        assert score(gw, {"request_id": rid, "name": "score", "value": 1}).status_code == 404


def test_at_most_max_entries_answers_are_kept() -> None:
    with running(lambda p: feedback_yaml(p, "{max_entries: 2}")) as gw:
        first, second, third = (ask(gw, user=f"u{i}")[0] for i in range(3))
        assert score(gw, {"request_id": first, "name": "score", "value": 1}).status_code == 404
        assert score(gw, {"request_id": third, "name": "score", "value": 1}).status_code == 200
        assert score(gw, {"request_id": second, "name": "score", "value": 1}).status_code == 200


def test_answers_survive_a_reload_with_the_same_feedback_settings() -> None:
    with running(feedback_yaml) as gw:
        rid, _ = ask(gw)
        gw.reconfigure(feedback_yaml(gw.mock.port))
        assert score(gw, {"request_id": rid, "name": "score", "value": 1}).status_code == 200


def test_an_answer_served_by_a_fallback_can_be_scored() -> None:
    with running(lambda p: feedback_yaml(p, dead=_dead_port())) as gw:
        for i in range(40):
            rid, variant = ask(gw, user=f"user-{i}")
            if variant == "v1":  # m1's only target is down: m2 answered
                break
        assert variant == "v1"
        r = score(gw, {"request_id": rid, "name": "score", "value": 2})
        assert r.status_code == 200, r.text
        assert r.json()["variant"] == "v1"


def test_a_failed_answer_counts_as_its_variant_error_and_cannot_be_scored() -> None:
    with running(lambda p: feedback_yaml(p, dead=_dead_port(), fallbacks="[]")) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0)
        before = gw.metric(metrics.VARIANT_ERRORS, "bot", "v1")
        rid = None
        for i in range(40):
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="bot", messages=[{"role": "user", "content": "hello"}],
                    extra_headers={"x-user": f"user-{i}"})
            except openai.APIStatusError as exc:  # v1: m1's only target is down
                assert exc.status_code == 502
                assert exc.response.headers["x-fastgw-variant"] == "v1"
                rid = exc.response.headers["x-request-id"]
                break
            assert raw.headers["x-fastgw-variant"] == "v2"
        assert rid is not None
        assert gw.metric(metrics.VARIANT_ERRORS, "bot", "v1") == before + 1
        assert score(gw, {"request_id": rid, "name": "score", "value": 0}).status_code == 404


def test_an_answer_made_on_one_gateway_is_scored_on_another(redis_srv: RedisServer) -> None:
    def yaml(p: int) -> str:
        return feedback_yaml(p, "{names: [score], backend: redis}", redis_url=redis_srv.url)

    with running(yaml) as a, running(yaml) as b:
        rid, variant = ask(a)
        assert variant is not None
        key = f"fastgw:feedback:{{{rid}}}"
        assert wait_for(lambda: redis_srv.client().exists(key) == 1, timeout=10)
        assert 0 < redis_srv.client().ttl(key) <= 86400
        before = counted(b, variant)
        r = score(b, {"request_id": rid, "name": "score", "value": 3})
        assert r.status_code == 200, r.text
        assert counted(b, variant) == (before[0] + 1, before[1] + 3)
        # the mark is shared too: the same score on A is a repeat
        assert score(a, {"request_id": rid, "name": "score", "value": 3}).status_code == 409
        assert score(a, {"request_id": rid, "name": "score", "value": 3},
                     key=KEY_B).status_code == 404
        assert b.metric(metrics.REDIS_FALLBACKS, "feedback") == \
            a.metric(metrics.REDIS_FALLBACKS, "feedback")  # nothing fell back


@pytest.mark.parametrize("how", ["kill", "pause"])
def test_redis_down_answers_are_kept_in_memory(redis_srv: RedisServer, how: str) -> None:
    def yaml(p: int) -> str:
        return feedback_yaml(p, "{names: [score], backend: redis}", redis_url=redis_srv.url)

    with running(yaml) as gw:
        before = gw.metric(metrics.REDIS_FALLBACKS, "feedback")
        redis_srv.stop() if how == "kill" else redis_srv.pause()
        t0 = time.monotonic()
        rid, variant = ask(gw)
        assert variant is not None
        assert wait_for(lambda: gw.metric(metrics.REDIS_FALLBACKS, "feedback") > before,
                        timeout=5)
        r = score(gw, {"request_id": rid, "name": "score", "value": 1})
        assert r.status_code == 200, r.text
        assert time.monotonic() - t0 < 5.0  # redis.timeout_s is 0.25: no hang
        assert score(gw, {"request_id": rid, "name": "score", "value": 1}).status_code == 409
        assert gw.metric(metrics.REDIS_FALLBACKS, "feedback") - before >= 2
