"""The short path and the general one give the same answers.

A request whose first target has an idle pooled connection is answered from the
upstream connection's callbacks, with no task (the runner's direct path); every
other request runs in a task (the general path). One table of requests, the
full policy (keys, three limit scopes, consistent hashing over two targets,
prices, the access log), played once on a gateway that takes the short path
where it can and once on one that never does: statuses, headers, bodies, access
log lines, metrics and the limits' counts must be the same, request by request.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from gwtest import Response, chat, http, running

from fastgw import metrics
from fastgw.pipeline.runner import Proxy

KEY_A = "sk-short-path-a-0001"
KEY_B = "sk-short-path-b-0002"
NARROW = "sk-short-path-narrow-3"


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def config(mock_port: int, log: Path) -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0}}
providers:
  - name: mock
    kind: openai-compatible
    base_url: http://127.0.0.1:{mock_port}/v1
    api_key: sk-provider-secret
auth:
  keys:
    - {{name: team-a, key_sha256: "{_sha(KEY_A)}", tier: gold,
       limits: {{rpm: 1000, tpm: 1000000}}}}
    - {{name: team-c, key_sha256: "{_sha(KEY_B)}", tier: gold,
       limits: {{rpm: 1000, tpm: 1000000}}}}
    - {{name: narrow, key_sha256: "{_sha(NARROW)}", models: [other], limits: {{rpm: 2}}}}
limits:
  - {{match: {{model: "gpt-*"}}, rpm: 1000, tpm: 1000000}}
  - {{match: {{tier: gold}}, rpm: 1000, tpm: 1000000}}
models:
  - name: gpt-test
    targets:
      - {{provider: mock, model: deploy-a}}
      - {{provider: mock, model: deploy-b}}
    balance: consistent-hash
    hash_key: key
    retry: {{attempts: 2, backoff_ms: 1}}
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
  - name: other
    targets: [{{provider: mock, model: other}}]
  - name: embed
    targets: [{{provider: mock, model: embed-deployment}}]
observability: {{access_log: {log}}}
"""


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# (path, body, headers): played in this order on both gateways.
TABLE: list[tuple[str, Any, dict[str, str]]] = [
    ("/v1/chat/completions", chat(), _bearer(KEY_A)),  # opens the pooled connections
    ("/v1/chat/completions", chat(), _bearer(KEY_B)),
    ("/v1/chat/completions", chat(), _bearer(KEY_A)),
    ("/v1/chat/completions", chat(max_tokens=7), _bearer(KEY_B)),
    ("/v1/chat/completions", chat(stream=True), _bearer(KEY_A)),
    ("/v1/chat/completions", chat(stream=True, stream_options={"include_usage": True}),
     _bearer(KEY_B)),
    ("/v1/embeddings", {"model": "embed", "input": ["one", "two"]}, _bearer(KEY_A)),
    # upstream failures: retried (500), passed through (400), a stream cut after content
    ("/v1/chat/completions", chat(), {**_bearer(KEY_A), "x-mock-fault": "500"}),
    ("/v1/chat/completions", chat(), {**_bearer(KEY_B), "x-mock-fault": "400"}),
    ("/v1/chat/completions", chat(stream=True), {**_bearer(KEY_A), "x-mock-fault": "cut:3"}),
    ("/v1/chat/completions", chat(), {**_bearer(KEY_B), "x-mock-fault": "malformed"}),
    # refused before any upstream: no key, a bad key, a model not allowed, unknown, bad JSON
    ("/v1/chat/completions", chat(), {}),
    ("/v1/chat/completions", chat(), _bearer("sk-not-a-key")),
    ("/v1/chat/completions", chat(), _bearer(NARROW)),
    ("/v1/chat/completions", chat(model="nope"), _bearer(KEY_A)),
    ("/v1/chat/completions", b'{"model": ', _bearer(KEY_A)),
    # the narrow key's rpm of 2: two answers, then 429
    ("/v1/chat/completions", chat(model="other"), _bearer(NARROW)),
    ("/v1/chat/completions", chat(model="other"), _bearer(NARROW)),
    ("/v1/chat/completions", chat(model="other"), _bearer(NARROW)),
    ("/v1/chat/completions", chat(), _bearer(KEY_A)),
]

# Headers whose values are the clock's (a date, a duration, a reset time).
VOLATILE_HEADERS = frozenset({"date", "x-fastgw-overhead-ms", "x-ratelimit-reset-requests",
                              "x-ratelimit-reset-tokens", "retry-after"})
# Access log fields that are the clock's.
VOLATILE_FIELDS = frozenset({"time", "latency_ms", "ttfb_ms", "overhead_ms"})
# Per-answer ids and timestamps the mock makes up.
VOLATILE_BODY = frozenset({"id", "created"})


_MOCK_ADDRESS = re.compile(r"127\.0\.0\.1:\d+")  # each run has its own mock


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _MOCK_ADDRESS.sub("MOCK", value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in VOLATILE_BODY}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _body(r: Response) -> Any:
    ctype = r.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        events = []
        for line in r.body.split(b"\n"):
            if line.startswith(b"data: "):
                data = line[6:]
                events.append(data.decode() if data == b"[DONE]" else _scrub(orjson.loads(data)))
        return events
    try:
        return _scrub(orjson.loads(r.body))
    except orjson.JSONDecodeError:
        return len(r.body)  # the mock's cut-off JSON: its words are random, its size not


def _log_lines(path: Path) -> list[dict[str, Any]]:
    return [_scrub({k: v for k, v in orjson.loads(line).items() if k not in VOLATILE_FIELDS})
            for line in path.read_bytes().splitlines()]


def _play(tmp: Path, short_path: bool) -> dict[str, Any]:
    tmp.mkdir()
    log = tmp / "access.log"
    with running(lambda port: config(port, log)) as gw:
        def counts() -> dict[tuple[str, str, str], float]:
            """The request and token counters (process-wide: read as differences)."""
            got = {("requests", model, status): gw.metric(metrics.REQUESTS, model, "mock",
                                                           status)
                   for model in ("gpt-test", "other", "embed")
                   for status in ("200", "400", "429", "502")}
            got.update({("tokens", model, kind): gw.metric(metrics.TOKENS, model, kind)
                        for model in ("gpt-test", "other", "embed")
                        for kind in ("input", "output")})
            return got

        before = counts()
        answers = []
        for i, (path, body, headers) in enumerate(TABLE):
            r = http(gw.port, "POST", path, body, {**headers, "x-request-id": f"req-{i:03d}"})
            answers.append((r.status, {k: v for k, v in r.headers.items()
                                       if k not in VOLATILE_HEADERS}, _body(r)))
        after = counts()
        seen = {k: after[k] - before[k] for k in after}
        assert gw.app.gateway is not None
        inflight = gw.app.gateway.proxy.recorder.inflight
    return {"answers": answers, "log": _log_lines(log), "metrics": seen,
            "inflight": inflight, "short_path": short_path}


@pytest.fixture
def direct_taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Every decision of the runner's direct path, in order (True: taken)."""
    taken: list[bool] = []
    original = Proxy._direct

    def spy(self: Proxy, ctx: Any) -> bool:
        went = original(self, ctx)
        taken.append(went)
        return went

    monkeypatch.setattr(Proxy, "_direct", spy)
    yield taken


def test_short_path_and_general_path_answer_alike(tmp_path: Path, direct_taken: list[bool],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    short = _play(tmp_path / "short", True)
    # The short path was taken by the requests that reach an upstream (14), but for
    # the first one (no pooled connection yet) and maybe the one after the cut
    # stream (whose connection was closed).
    assert len(direct_taken) == 14 and sum(direct_taken) >= 12, direct_taken

    monkeypatch.setattr(Proxy, "_direct", lambda self, ctx: False)  # never: always a task
    general = _play(tmp_path / "general", False)

    assert len(short["answers"]) == len(general["answers"]) == len(TABLE)
    for i, (a, b) in enumerate(zip(short["answers"], general["answers"], strict=True)):
        assert a == b, f"request {i} ({TABLE[i][0]}, {TABLE[i][2]}) answered differently"
    assert short["log"] == general["log"]
    assert len(short["log"]) == len(TABLE)
    assert short["metrics"] == general["metrics"]
    assert short["inflight"] == general["inflight"] == 0
    # The table covers what it means to: answers, upstream failures and refusals.
    # (both keys' hashes: each target served)
    assert {line["served_model"] for line in short["log"]} >= {"deploy-a", "deploy-b"}
    statuses = [s for s, _, _ in short["answers"]]
    assert {200, 400, 401, 403, 404, 429, 502} <= set(statuses), statuses
